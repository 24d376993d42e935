"""Every command does exactly what it says (the correctness round): each test names the item of
the issue it covers and compares against an independent reference (the reference model, brute
force, or a hand computation)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.errors import ImageDecodeError, QueryError
from searchlite.imaging import MAX_PIXELS, load_image
from searchlite.library import Library

runner = CliRunner()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, text=True,
                          env={**os.environ, "SEARCHLITE_NO_SERVER": "1", **(env or {})})


def _photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        path = folder / f"img{i:02d}.png"
        Image.fromarray((rng.random((32 + i % 5, 40, 3)) * 255).astype(np.uint8)).save(path)
        os.utime(path, ns=(1_600_000_000_000_000_000 + i * 86_400 * 10**9,) * 2)  # one day apart
        out.append(path)
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, hf_siglip):
    """40 images indexed with the tiny SigLIP (model A); copied per test by ``library``."""
    root = tmp_path_factory.mktemp("correct")
    photos = _photos(root / "photos", 40)
    Library(root / "lib", device="cpu").index([root / "photos"], [f"hf:{hf_siglip}"])
    return root, photos


@pytest.fixture()
def library(base, tmp_path):
    root, photos = base
    shutil.copytree(root / "lib", tmp_path / "lib")
    return Library(tmp_path / "lib", device="cpu"), photos


def _align_reference(folder: Path, texts: list[str], paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(cosines, logits) of ALIGN for each (image, text) pair, straight from transformers."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    proc = AutoImageProcessor.from_pretrained(folder, backend="pil")
    images = [Image.open(p).convert("RGB") for p in paths]
    enc = tok(texts, padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        out = model(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"], **enc)
    cos = (out.image_embeds @ out.text_embeds.T).numpy()
    return cos, out.logits_per_image.numpy()


# -- 1. rerank uses the template (and ensemble, sort) in both stages --------------------------------
def test_1_rerank_scores_equal_model_b_own_scores_for_the_template(library, hf_siglip, hf_align):
    lib, _ = library
    a, b = f"hf:{hf_siglip}", f"hf:{hf_align}"
    template = "a photograph of {}, taken today."
    out = lib.rerank("a red car", a, b, k=8, candidates=20, template=template)
    assert len(out) == 8
    cos, logits = _align_reference(hf_align, [template.format("a red car")], [r.path for r in out])
    np.testing.assert_allclose([r.score for r in out], cos[:, 0], atol=1e-5)
    np.testing.assert_allclose([r.logit for r in out], logits[:, 0], atol=1e-4)
    # the first stage used the template too: its pool is A's own top 20 for the templated text
    pool = lib.search("a red car", a, k=20, template=template)
    assert {r.image_id for r in out} <= {r.image_id for r in pool}
    assert [r.extra["first_stage"]["rank"] for r in out] == [
        next(p.rank for p in pool if p.image_id == r.image_id) for r in out]
    by_date = lib.rerank("a red car", a, b, k=8, candidates=20, template=template, sort="date")
    assert {r.image_id for r in by_date} == {r.image_id for r in out}
    times = [os.stat(r.path).st_mtime_ns for r in by_date]
    assert times == sorted(times)


def test_1_rerank_with_ensemble_uses_b_own_ensembled_text(library, hf_siglip, hf_clip):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    lib, _ = library
    out = lib.rerank("dog", f"hf:{hf_siglip}", f"hf:{hf_clip}", k=5, candidates=15, ensemble=True)
    model = AutoModel.from_pretrained(hf_clip).eval()
    tok = AutoTokenizer.from_pretrained(hf_clip)
    proc = AutoImageProcessor.from_pretrained(hf_clip, backend="pil")
    with torch.no_grad():
        txt = model.get_text_features(**tok([t("dog") for t in OPENAI_IMAGENET_TEMPLATES], padding=True,
                                            return_tensors="pt")).pooler_output
        img = model.get_image_features(pixel_values=proc(images=[Image.open(r.path).convert("RGB") for r in out],
                                                         return_tensors="pt")["pixel_values"]).pooler_output
    txt = torch.nn.functional.normalize(txt, dim=-1).mean(0)
    txt = txt / txt.norm()
    img = torch.nn.functional.normalize(img, dim=-1)
    np.testing.assert_allclose([r.score for r in out], (img @ txt).numpy(), atol=1e-5)


def test_1_rrf_and_prob_fusions_match_hand_computation(library, hf_siglip, hf_align):
    lib, _ = library
    a, b = f"hf:{hf_siglip}", f"hf:{hf_align}"
    stage1 = lib.search("a blue house", a, k=12)
    cos_b, _ = _align_reference(hf_align, ["a photo of a blue house."], [r.path for r in stage1])
    cos_b = cos_b[:, 0]
    rank_b = {stage1[i].image_id: n + 1 for n, i in enumerate(sorted(range(12), key=lambda i: (-cos_b[i],
                                                                                                stage1[i].image_id)))}
    rrf = {r.image_id: 1 / (60 + r.rank) + 1 / (60 + rank_b[r.image_id]) for r in stage1}
    got = lib.rerank("a blue house", a, b, k=12, candidates=12, fusion="rrf")
    assert [r.image_id for r in got] == sorted(rrf, key=lambda i: (-rrf[i], i))
    np.testing.assert_allclose([r.extra["fused"] for r in got], [rrf[r.image_id] for r in got], rtol=1e-12)
    # prob: the mean of A's SigLIP probability and B's (uncalibrated ALIGN fallback: p = 0.5 at cos 0.30)
    b_row = lib.find_model(b)
    p_b = {r.image_id: 1 / (1 + np.exp(-(b_row.scale * c - b_row.scale * 0.30))) for r, c in zip(stage1, cos_b)}
    mean = {r.image_id: (r.probability + p_b[r.image_id]) / 2 for r in stage1}
    got = lib.rerank("a blue house", a, b, k=12, candidates=12, fusion="prob")
    assert [r.image_id for r in got] == sorted(mean, key=lambda i: (-mean[i], i))
    np.testing.assert_allclose([r.extra["fused"] for r in got], [mean[r.image_id] for r in got], atol=1e-6)


# -- 3. read commands never change what a library is ------------------------------------------------
def test_3_rerank_compare_calibrate_never_make_a_model_indexed(library, hf_siglip, hf_align, tmp_path):
    lib, photos = library
    a, b = f"hf:{hf_siglip}", f"hf:{hf_align}"
    lib_dir = str(lib.path)
    assert runner.invoke(app, ["search", "a cat", "-L", lib_dir, "--rerank", b, "--candidates", "5"]).exit_code == 0
    assert runner.invoke(app, ["compare", "a cat", "--models", f"{a},{b}", "-L", lib_dir, "-k", "3",
                          "--candidates", "6"]).exit_code == 0
    from searchlite.sample_data import generate

    generate.generate(tmp_path / "set", 12, 1, "test")
    out = runner.invoke(app, ["calibrate", str(tmp_path / "set"), "-m", b, "-L", lib_dir, "--json"])
    assert out.exit_code == 0, out.output
    fresh = Library(lib_dir, device="cpu")
    b_row = fresh.find_model(b)
    assert b_row is not None and not b_row.indexed and b_row.calib_a is not None  # calibration kept, not indexed
    assert fresh.catalog.count_vectors(b_row.id) == 20  # only the cached re-scoring vectors (the pool of 20)
    with pytest.raises(QueryError, match="has not indexed this library.*searchlite index PATH --model"):
        fresh.search("a cat", b)
    status = fresh.status()
    assert [m["model"] for m in status["models"] if m["indexed"]] == [a]
    # a plain index run re-embeds nothing and never loads B, even once B's folder is gone
    shutil.move(hf_align, tmp_path / "align-away")
    try:
        stats = fresh.index([photos[0].parent])
    finally:
        shutil.move(tmp_path / "align-away", hf_align)
    assert (stats.added, stats.updated, stats.unchanged) == (0, 0, 40)
    assert list(stats.index) == [fresh.model_row(a).model_id]


def test_3_cached_vectors_are_reused_by_rescoring(library, hf_siglip, hf_align, monkeypatch):
    lib, _ = library
    b = f"hf:{hf_align}"
    first = lib.rerank("a tree", f"hf:{hf_siglip}", b, k=5, candidates=5)
    calls = []
    emb = lib.embedder(b)
    monkeypatch.setattr(type(emb), "embed_images", lambda self, images: calls.append(len(images)))
    again = Library(lib.path, device="cpu").rerank("a tree", f"hf:{hf_siglip}", b, k=5, candidates=5)
    assert calls == [] and [r.image_id for r in again] == [r.image_id for r in first]


# -- 4. a moved model keeps its index ------------------------------------------------------------
def test_4_a_moved_model_folder_keeps_the_library(tmp_path, hf_siglip):
    model = tmp_path / "models" / "mine"
    shutil.copytree(hf_siglip, model)
    photos = _photos(tmp_path / "photos", 10)
    lib_dir = str(tmp_path / "lib")
    assert _cli("index", str(tmp_path / "photos"), "-m", f"hf:{model}", "-L", lib_dir, "--device", "cpu").returncode == 0
    before = json.loads(_cli("search", "a dog", "-L", lib_dir, "--json").stdout)
    moved = tmp_path / "elsewhere" / "renamed-model"
    moved.parent.mkdir()
    model.rename(moved)
    # text queries run on the library's own exported text tower: the folder is not needed for them
    light = _cli("search", "a dog", "-L", lib_dir, "--json")
    assert light.returncode == 0 and json.loads(light.stdout) == before
    shutil.rmtree(tmp_path / "lib" / "models")  # without that export (and a text not in the query cache),
    lost = _cli("search", "a dog on the grass", "-L", lib_dir)  # the model itself is needed
    assert lost.returncode == 1 and lost.stderr.count("\n") == 1
    assert "pass --model with its new location" in lost.stderr and "Traceback" not in lost.stderr
    found = _cli("search", "a dog", "-L", lib_dir, "--json", "--model", f"hf:{moved}")
    assert found.returncode == 0, found.stderr

    def same(results: list[dict]) -> bool:  # the stored vectors answer; the query vector comes from the
        # torch tower now and from the ONNX export before (the query cache is per process since round 4)
        return [r["image_id"] for r in results] == [r["image_id"] for r in before] and \
            np.allclose([r["score"] for r in results], [r["score"] for r in before], atol=1e-5)

    assert same(json.loads(found.stdout))
    again = _cli("search", "a dog", "-L", lib_dir, "--json")  # the new location was recorded
    assert again.returncode == 0 and same(json.loads(again.stdout))
    reindexed = _cli("index", str(tmp_path / "photos"), "-m", f"hf:{moved}", "-L", lib_dir, "--json")
    assert json.loads(reindexed.stdout)["unchanged"] == len(photos) and json.loads(reindexed.stdout)["added"] == 0


# -- 5. changed files never vanish from search --------------------------------------------------------
def test_5_changed_files_stay_searchable_through_a_kill_mid_run(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = _photos(tmp_path / "photos", 24)
    lib_dir = tmp_path / "lib"
    Library(lib_dir, device="cpu").index([tmp_path / "photos"], [spec])
    rng = np.random.default_rng(7)
    for path in photos[:12]:  # new content, new size and mtime
        Image.fromarray((rng.random((50, 50, 3)) * 255).astype(np.uint8)).save(path)
    run = subprocess.run([sys.executable, "-m", "searchlite", "index", str(tmp_path / "photos"), "-L", str(lib_dir),
                          "--batch-size", "2", "--workers", "1", "--device", "cpu"],
                         env={**os.environ, "SEARCHLITE_CRASH_AT": "store-synced:3"}, capture_output=True)
    assert run.returncode == -9  # killed after its third batch was written, before it committed
    lib = Library(lib_dir, device="cpu")
    found = {r.path for r in lib.search("x", spec, k=100)}
    assert found == {str(p) for p in photos}  # nothing vanished, nothing pending
    stats = lib.index([tmp_path / "photos"], [spec])
    assert stats.updated == 12 - 4 and stats.unchanged == 12 + 4  # two batches of 2 had committed
    emb = lib.embedder(spec)
    for r in lib.search("x", spec, k=100):
        expected = emb.embed_images([load_image(r.path, target_size=emb.image_size).image])[0]
        np.testing.assert_allclose(lib.stored_vectors(lib.model_row(spec), [r.image_id])[r.image_id], expected,
                                   atol=1e-6)


def test_5_touch_counts_as_unchanged(library):
    lib, photos = library
    for path in photos[:20]:
        os.utime(path, ns=(time.time_ns(), time.time_ns()))
    stats = lib.index([photos[0].parent])
    assert stats.as_dict() | {"seconds": 0, "index": {}, "stages": {}} == {"added": 0, "updated": 0, "moved": 0, "removed": 0,
                                                             "failed": 0, "unchanged": 40, "skipped": 0,
                                                             "skipped_by_extension": {}, "aliases": 0,
                                                             "seconds": 0, "index": {}, "stages": {}}


# -- 6. writers take the lock; deletions are durable --------------------------------------------------
def test_6_reindex_takes_the_library_lock(library):
    from searchlite.errors import LibraryError
    from searchlite.locking import library_lock

    lib, _ = library
    with library_lock(lib.path), pytest.raises(LibraryError, match="another searchlite process is writing"):
        lib.reindex(None, "hnsw")
    assert "HNSW" in lib.reindex(None, "hnsw")


def test_6_deletions_are_durable_and_filtered_from_a_graph_index(library):
    lib, photos = library
    lib.reindex(None, "hnsw")  # an HNSW graph cannot drop nodes: deleted rows are tombstoned
    for path in photos[:4]:
        path.unlink()
    lib.index([photos[0].parent])
    fresh = Library(lib.path, device="cpu")  # a new process: only what is on disk
    got = {r.path for r in fresh.search("x", k=100)}
    assert got == {str(p) for p in photos if p.exists()}
    assert fresh.status()["models"][0]["stale"] == 4
    assert "4 deleted awaiting compaction" in _cli("status", "-L", str(lib.path)).stdout
    for path in photos[4:10]:  # past 20% of the segment deleted: it is rebuilt without them
        path.unlink()
    lib.index([photos[0].parent])
    fresh = Library(lib.path, device="cpu")
    assert {r.path for r in fresh.search("x", k=100)} == {str(p) for p in photos if p.exists()}
    assert fresh.status()["models"][0]["stale"] == 0 and "HNSW" in fresh.status()["models"][0]["index"]


# -- 7. leftovers of a crash are cleaned ---------------------------------------------------------------
def test_7_temp_and_orphan_index_files_are_removed_by_the_next_writer(library):
    lib, photos = library
    lib.reindex(None, "hnsw")
    folder = next((lib.path / "vectors").iterdir())
    (folder / "seg-000000000000-000000000040-abcdef.faiss.x1y2.tmp").write_bytes(b"half")
    (folder / "seg-000000000000-000000000040-123456.faiss").write_bytes(b"orphan")
    lib.index([photos[0].parent])
    names = sorted(p.name for p in folder.iterdir() if "seg-" in p.name)
    assert len(names) == 1 and names[0].endswith(".faiss") and "123456" not in names[0]


# -- 10. one pixel limit, searchlite's own -----------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_10_the_pixel_limit_is_searchlites_on_both_sides():
    assert MAX_PIXELS == 256_000_000
    below = _png_header(16_000, 15_000)  # 240 MP: above Pillow's own 179 MP limit, below ours
    with pytest.raises(ImageDecodeError) as err:
        load_image(below)
    assert "limit" not in str(err.value) and "bomb" not in str(err.value)  # it got past the guard to decoding
    above = _png_header(16_001, 16_000)  # 256.016 MP
    with pytest.raises(ImageDecodeError, match=r"over searchlite's limit of 256,000,000 pixels"):
        load_image(above)


# -- 13. errors are one line, exit 1 ----------------------------------------------------------------------
def test_13_a_locked_catalog_is_a_one_line_error(library):
    lib, photos = library
    conn = sqlite3.connect(lib.path / "catalog.sqlite")
    conn.execute("BEGIN EXCLUSIVE")
    try:
        out = _cli("index", str(photos[0].parent), "-L", str(lib.path), env={"SEARCHLITE_BUSY_TIMEOUT_MS": "200"})
    finally:
        conn.rollback()
        conn.close()
    assert out.returncode == 1 and "locked" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_13_an_unusable_library_folder_is_a_one_line_error(tmp_path):
    out = _cli("index", str(tmp_path), "-L", "/dev/null/lib")
    assert out.returncode == 1 and out.stderr.startswith("error: cannot create the library folder")
    assert out.stderr.count("\n") == 1


def test_13_a_damaged_index_file_is_a_one_line_error(library):
    lib, _ = library
    lib.reindex(None, "hnsw")
    segment = next((lib.path / "vectors").rglob("seg-*.faiss"))
    segment.write_bytes(b"not a faiss index at all")
    out = _cli("search", "x", "-L", str(lib.path))
    assert out.returncode == 1 and "cannot read the index" in out.stderr and "reindex" in out.stderr
    assert out.stderr.count("\n") == 1
    assert "HNSW" in Library(lib.path, device="cpu").reindex(None, "hnsw")  # and reindex mends it


# -- 14. tests never write outside tmp; calibrate's bench library goes to the cache dir ----------------
def test_14_calibrate_keeps_its_bench_library_in_the_cache_dir(tmp_path, hf_clip, isolated_home):
    from searchlite.config import cache_dir
    from searchlite.sample_data import generate

    assert cache_dir().is_relative_to(isolated_home)
    generate.generate(tmp_path / "set", 12, 1, "test")
    cache = tmp_path / "cache"
    out = _cli("calibrate", str(tmp_path / "set"), "-m", f"hf:{hf_clip}", "-L", str(tmp_path / "lib"),
               env={"SEARCHLITE_CACHE": str(cache)})
    assert out.returncode == 0, out.stderr
    assert list((cache / "bench").iterdir())  # the embedded dataset is cached there


# -- 12. the declared open_clip minimum supports local-dir: folders ------------------------------------
def test_12_open_clip_minimum_supports_local_dir_folders():
    """local-dir: arrived in open_clip 3.0.0 (absent from the 2.32.0 wheel's factory.py)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    req = next(Requirement(r) for r in requires("searchlite") if r.startswith("open_clip_torch"))
    minimum = min(Version(s.version) for s in req.specifier if s.operator == ">=")
    assert minimum >= Version("3.0.0")


# -- templates are validated everywhere --------------------------------------------------------------
@pytest.mark.parametrize("template", ["no placeholder", "a {x} b", "{} and {}", "{0}"])
def test_bad_templates_are_one_line_errors(library, template):
    lib, _ = library
    with pytest.raises(QueryError, match="exactly one|only a bare"):
        lib.search("x", template=template)
    out = _cli("search", "x", "--template", template, "-L", str(lib.path))
    # round 4: a bad parameter is a usage error (searchlite.params: exit 2), one line, everywhere
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr



# -- 15. layering ----------------------------------------------------------------------------------------
def test_15_storage_knows_nothing_of_models_and_the_cli_goes_through_library():
    probe = ("import sys, searchlite.catalog, searchlite.migrations, searchlite.store, searchlite.store.builder, "
             "searchlite.store.segments, searchlite.vectors, searchlite.interchange; "
             "print(sorted(m for m in sys.modules if m.startswith(('searchlite.models', 'torch', 'transformers'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    cli = Path(__file__).resolve().parent.parent / "searchlite" / "cli"
    source = "\n".join(p.read_text() for p in cli.glob("*.py"))
    for module in ("searchlite.rerank", "searchlite.calibration", "searchlite.combined", "searchlite.catalog"):
        assert module not in source, f"the CLI reaches {module} directly instead of through Library"
