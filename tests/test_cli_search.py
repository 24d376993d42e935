"""Search and similar through the CLI and the Python API: JSON contract, calibration, filters, index types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library
from searchlite.query import Filters

runner = CliRunner()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, hf_siglip):
    """A library of 40 images (two folders, PNG and JPEG) indexed with the tiny SigLIP."""
    root = tmp_path_factory.mktemp("cli")
    photos = root / "photos"
    rng = np.random.default_rng(0)
    for i in range(40):
        folder = photos / ("2021" if i % 2 else "2022")
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((rng.random((30 + i, 40, 3)) * 255).astype(np.uint8))
        img.save(folder / f"img{i:02d}.{'png' if i % 4 else 'jpg'}")
    lib = root / "lib"
    result = runner.invoke(app, ["index", str(photos), "-m", f"hf:{hf_siglip}", "-L", str(lib), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return root, photos, lib, f"hf:{hf_siglip}"


def test_search_json_contract_and_siglip_probability(indexed, hf_siglip):
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    _, _, lib, spec = indexed
    out = runner.invoke(app, ["search", "a red car", "-k", "5", "-L", str(lib), "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    for key in ("rank", "path", "score", "logit", "probability"):
        assert key in rows[0]
    assert all(Path(r["path"]).is_absolute() for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)

    # the SigLIP probability is exactly the reference model's sigmoid(logits) for the templated text
    model = AutoModel.from_pretrained(hf_siglip).eval()
    proc = AutoImageProcessor.from_pretrained(hf_siglip, backend="pil")
    tok = AutoTokenizer.from_pretrained(hf_siglip)
    images = [Image.open(r["path"]).convert("RGB") for r in rows]
    text = tok(["This is a photo of a red car."], padding="max_length", max_length=64, return_tensors="pt")
    with torch.no_grad():
        ref = model(pixel_values=proc(images=images, return_tensors="pt")["pixel_values"],
                    input_ids=text["input_ids"])
    expected = torch.sigmoid(ref.logits_per_image[:, 0]).numpy()
    np.testing.assert_allclose([r["probability"] for r in rows], expected, atol=1e-5)
    np.testing.assert_allclose([r["logit"] for r in rows], ref.logits_per_image[:, 0].numpy(), atol=1e-4)


def test_min_prob_no_match(indexed):
    _, _, lib, _ = indexed
    out = runner.invoke(app, ["search", "a red car", "-L", str(lib), "--min-prob", "0.99999", "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout) == []
    out = runner.invoke(app, ["search", "a red car", "-L", str(lib), "--min-prob", "0.99999"])
    assert out.exit_code == 0 and 'no image matches "a red car"' in out.stdout
    everything = json.loads(runner.invoke(app, ["search", "a red car", "-L", str(lib), "-k", "100", "--json"]).stdout)
    some = json.loads(runner.invoke(app, ["search", "a red car", "-L", str(lib), "-k", "100", "--json",
                                          "--min-prob", str(np.median([r["probability"] for r in everything]))]).stdout)
    assert 0 < len(some) < len(everything) and all(r["probability"] >= some[-1]["probability"] for r in some)


def test_filters_return_k_results_when_k_exist(indexed):
    root, photos, lib, spec = indexed
    api = Library(lib, device="cpu")
    res = api.search("x", spec, k=7, filters=Filters(folder=photos / "2021"))
    assert len(res) == 7 and all("/2021/" in r.path for r in res)
    res = api.search("x", spec, k=10, filters=Filters(formats=("JPEG",)))
    assert len(res) == 10 and all(r.path.endswith(".jpg") for r in res)
    res = api.search("x", spec, k=50, filters=Filters(glob="*/2022/*.jpg"))
    assert len(res) == 10  # only 10 exist
    res = api.search("x", spec, k=5, filters=Filters(min_height=60))
    assert len(res) == 5 and all(r.height >= 60 for r in res)


def test_similar_excludes_the_query_and_reuses_its_vector(indexed):
    _, photos, lib, spec = indexed
    query = photos / "2022" / "img00.jpg"
    out = runner.invoke(app, ["similar", str(query), "-k", "3", "-L", str(lib), "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert len(rows) == 3 and str(query) not in {r["path"] for r in rows}
    api = Library(lib, device="cpu")
    vec, own = api.image_vector(query, api.model_row(spec))
    assert own is not None
    # an outside copy of an indexed image finds the original first
    outside = indexed[0] / "outside.png"
    Image.open(photos / "2021" / "img01.png").save(outside)
    assert api.similar(outside, spec, k=1)[0].path == str(photos / "2021" / "img01.png")


def test_errors_are_one_line_with_nonzero_exit(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "searchlite", "search", "x", "-L", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: no searchlite library")
    proc = subprocess.run([sys.executable, "-m", "searchlite", "index", str(tmp_path), "-m", "hf:/no/such/folder",
                           "-L", str(tmp_path / "lib")], capture_output=True, text=True)
    assert proc.returncode == 1 and "model folder not found" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_start_up_imports_no_heavy_modules():
    code = ("import sys; from searchlite.cli.main import app; "
            "print(sorted(m for m in ('torch', 'transformers', 'faiss', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sort_by_date_orders_the_whole_result_set_by_capture_time(indexed):
    """sort=date orders the whole result set (all 40 images here: within the relevance pool), not
    the most relevant k: the first page is the 8 earliest images, the next page the 8 after."""
    _, photos, lib, spec = indexed
    api = Library(lib, device="cpu")
    by_date = api.search("x", spec, k=8, sort="date") + api.search("x", spec, k=8, offset=8, sort="date")
    from datetime import datetime

    # no EXIF: the capture time is the file's mtime (to the microsecond)
    files = sorted(photos.rglob("img*.*"), key=lambda p: (datetime.fromtimestamp(p.stat().st_mtime_ns / 1e9), str(p)))
    assert [r.path for r in by_date] == [str(p) for p in files[:16]]
    assert [r.rank for r in by_date] == list(range(1, 17))


def test_terminal_previews_use_the_kitty_and_iterm_protocols(indexed, monkeypatch):
    import base64
    import io
    import re

    from searchlite.cli.common import inline_image, terminal_images

    _, photos, _, _ = indexed
    path = str(sorted((photos / "2021").iterdir())[0])
    kitty = inline_image(path, "kitty", size=64)
    chunks = re.findall(r"\x1b_G(.*?);(.*?)\x1b\\", kitty, flags=re.S)
    assert chunks[0][0].startswith("f=100,a=T,") and chunks[-1][0].endswith("m=0")
    png = Image.open(io.BytesIO(base64.b64decode("".join(c[1] for c in chunks))))
    assert png.format == "PNG" and max(png.size) <= 64
    iterm = inline_image(path, "iterm", size=64)
    assert iterm.startswith("\x1b]1337;File=inline=1") and iterm.endswith("\x07")
    assert terminal_images() is None  # not a terminal here: plain output
    out = runner.invoke(app, ["search", "x", "-L", str(indexed[2]), "-k", "2", "--preview"])
    assert out.exit_code == 0 and "\x1b" not in out.stdout
