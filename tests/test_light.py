"""The light query path: ONNX text towers validated against torch for every family and backend,
fallback to torch when an export is missing or broken, the query cache, a cold search that
imports no torch, and the optional background server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.library import Library
from searchlite.models import load_embedder
from searchlite.models.export import MAX_ABS, MIN_COS, export_text_tower
from searchlite.models.light import OnnxTextEncoder, load_light_encoder, read_meta
from searchlite.server import request

#: Texts that are not among the export's probes.
FRESH = ["two big red circles on a black background", "A Dog, running; on the beach at SUNSET!",
         "une photo d'un chat", "3 cats & 2 dogs", "", "the " * 100]


@pytest.mark.parametrize("fixture, backend", [("hf_siglip", "hf"), ("hf_siglip_mask", "hf"), ("hf_clip", "hf"),
                                              ("hf_align", "hf"), ("oc_clip", "openclip"),
                                              ("oc_siglip", "openclip")])
def test_export_matches_the_torch_text_tower(fixture, backend, request, tmp_path):
    emb = load_embedder(f"{backend}:{request.getfixturevalue(fixture)}", device="cpu")
    meta = export_text_tower(emb, tmp_path / "text")
    assert meta["valid"], meta.get("reason")
    assert meta["max_abs_diff"] <= MAX_ABS and meta["min_cosine"] >= MIN_COS
    light = OnnxTextEncoder(tmp_path / "text", meta)
    ours, reference = light.embed_texts(FRESH), emb.embed_texts(FRESH)
    assert np.abs(ours - reference).max() <= MAX_ABS
    assert (ours * reference).sum(axis=1).min() >= MIN_COS


@pytest.fixture(scope="module")
def light_library(tmp_path_factory, hf_siglip):
    root = tmp_path_factory.mktemp("light")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray((rng.random((30, 30, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    lib = Library(root / "lib", device="cpu")
    lib.index([photos], [f"hf:{hf_siglip}"])  # exports the text tower as it goes
    return root / "lib", f"hf:{hf_siglip}"


def test_index_exports_once_and_searches_use_it(light_library):
    lib_dir, spec = light_library
    lib = Library(lib_dir, device="cpu")
    row = lib.model_row(spec)
    assert read_meta(lib.export_folder(row)) is not None
    assert isinstance(lib.text_encoder(row), OnnxTextEncoder)
    torch_lib = Library(lib_dir, device="cpu")
    torch_lib._encoders[row.id] = torch_lib.embedder_for(row)
    for text in ("a red car", "snow + 2:dog"):
        a = lib.search(text, k=5)
        b = torch_lib.search(text, k=5)
        assert [r.image_id for r in a] == [r.image_id for r in b]
        np.testing.assert_allclose([r.score for r in a], [r.score for r in b], atol=1e-5)


def test_a_missing_or_broken_export_falls_back_to_torch(light_library, tmp_path):
    import shutil

    lib_dir, spec = light_library
    copy = tmp_path / "lib"
    shutil.copytree(lib_dir, copy)
    lib = Library(copy, device="cpu")
    row = lib.model_row(spec)
    folder = lib.export_folder(row)
    expected = [r.image_id for r in lib.search("a red car", k=5)]
    weights = folder / "text.onnx.data"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated weights
    assert load_light_encoder(folder) is None
    weights.write_bytes(data)
    assert load_light_encoder(folder) is not None
    (folder / "text.onnx").write_bytes(b"corrupt")
    assert load_light_encoder(folder) is None
    broken = Library(copy, device="cpu")
    assert not isinstance(broken.text_encoder(row), OnnxTextEncoder)
    broken.catalog.engine.dispose()
    with broken.catalog.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM query_cache")
    assert [r.image_id for r in Library(copy, device="cpu").search("a red car", k=5)] == expected
    shutil.rmtree(folder)
    assert load_light_encoder(folder) is None
    meta = Library(copy, device="cpu").export_text(row)
    assert meta["valid"] and isinstance(Library(copy, device="cpu").text_encoder(row), OnnxTextEncoder)


def test_repeated_and_paged_queries_skip_the_encoder(light_library, monkeypatch):
    lib_dir, spec = light_library
    lib = Library(lib_dir, device="cpu")
    row = lib.model_row(spec)
    encoder = lib.text_encoder(row)
    calls = []
    original = encoder.embed_texts
    monkeypatch.setattr(encoder, "embed_texts", lambda texts: calls.append(list(texts)) or original(texts))
    first = lib.search("a cached query", k=3)
    second = lib.search("a cached query", k=3, offset=3)
    assert len(calls) == 1  # the page after the first came from the cache
    again = Library(lib_dir, device="cpu").search("a cached query", k=6)  # another process: computed again
    assert [r.image_id for r in first + second] == [r.image_id for r in again]
    for i in range(110):
        lib.catalog.cache_queries(row.id, {f"text\x1ffill {i}": np.zeros(row.dim, np.float32)}, keep=100)
    # the cache is bounded process memory, never the catalog (round 4: the read path never writes)
    assert len(lib.catalog.cached_queries(row.id, [f"text\x1ffill {i}" for i in range(110)])) == 100
    with lib.catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM query_cache").scalar() == 0


def test_a_cold_cli_search_imports_neither_torch_nor_transformers(light_library):
    lib_dir, _ = light_library
    code = ("import sys\nfrom searchlite.cli.main import main\n"
            f"sys.argv = ['searchlite', 'search', 'a red car', '-L', {str(lib_dir)!r}, '--json', '-k', '3']\n"
            "try:\n    main()\nfinally:\n"
            "    heavy = [m for m in sys.modules if m == 'torch' or m.startswith('transformers')]\n"
            "    print('HEAVY', heavy, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "SEARCHLITE_NO_SERVER": "1"})
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr
    assert len(json.loads(out.stdout)) == 3


def test_search_serve_starts_a_background_server_that_exits_when_idle(light_library, tmp_path):
    import shutil

    lib_dir, _ = light_library
    copy = tmp_path / "lib"
    shutil.copytree(lib_dir, copy)
    env = {**os.environ, "SEARCHLITE_SERVE_IDLE": "4"}
    env.pop("SEARCHLITE_NO_SERVER", None)
    out = subprocess.run([sys.executable, "-m", "searchlite", "search", "a red car", "-L", str(copy), "--serve",
                          "--json"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    deadline = time.time() + 60
    while request(copy, "ping", {}, timeout=1) is None:
        assert time.time() < deadline, (copy / "serve.log").read_text()
        time.sleep(0.2)
    reply = request(copy, "search", {"text": "a red car", "k": 3})
    assert reply["ok"] and len(reply["results"]) == 3
    deadline = time.time() + 30
    while request(copy, "ping", {}, timeout=1) is not None:
        assert time.time() < deadline, "the server did not exit when idle"
        time.sleep(0.5)
    while (copy / "searchlite.sock").exists():  # it stops answering first, then removes its socket file
        assert time.time() < deadline, "the server left its socket file behind"
        time.sleep(0.2)


def test_models_export_command(light_library, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from searchlite.cli.main import app

    lib_dir, spec = light_library
    copy = tmp_path / "lib"
    shutil.copytree(lib_dir, copy)
    out = CliRunner().invoke(app, ["models", "export", spec, "-L", str(copy), "--force", "--json"])
    assert out.exit_code == 0, out.output
    meta = json.loads(out.stdout)
    assert meta["valid"] and meta["max_abs_diff"] <= MAX_ABS
    listing = CliRunner().invoke(app, ["models"])
    assert listing.exit_code == 0 and "siglip-base" in listing.stdout
    assert Path(copy / "models").is_dir()
