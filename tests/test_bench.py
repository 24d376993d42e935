"""`searchlite bench` end to end on a tiny offline model: its numbers equal a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.evaluation.datasets import read_captions, read_labelled
from searchlite.evaluation.metrics import retrieval_metrics
from searchlite.imaging import load_image
from searchlite.models import load_embedder
from searchlite.sample_data import generate as sample_generate


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "set"
    sample_generate.generate(folder, 40, 3, "test")
    return folder


def test_bench_json_equals_direct_computation(tmp_path, captioned, hf_siglip, hf_clip):
    a, b = f"hf:{hf_siglip}", f"hf:{hf_clip}"
    out = CliRunner().invoke(app, ["bench", str(captioned), "-m", a, "-m", b, "--rerank", f"{a}:{b}",
                                   "-L", str(tmp_path / "cache"), "--json", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    for key in ("models", "rerank", "ann"):
        assert key in result
    ds = read_captions(captioned)
    texts, relevant, per_image = ds.queries()
    for spec in (a, b):
        emb = load_embedder(spec, device="cpu")
        img = emb.embed_images([load_image(p, target_size=emb.image_size).image for p in ds.images])
        sims = emb.embed_texts(texts) @ img.T
        expected_t2i = retrieval_metrics(sims, relevant, (1, 5, 10))
        expected_i2t = retrieval_metrics(sims.T, per_image, (1, 5, 10))
        got = result["models"][spec]
        for key in ("recall@1", "recall@5", "recall@10", "mrr"):
            assert got["text_to_image"][key] == pytest.approx(expected_t2i[key], abs=1e-9)
            assert got["image_to_text"][key] == pytest.approx(expected_i2t[key], abs=1e-9)
        assert set(result["ann"][spec]["by_type"]) >= {"flat", "hnsw", "ivf"}
        assert result["ann"][spec]["by_type"]["flat"]["recall@10"] == 1.0
    assert set(result["rerank"][f"{a}:{b}"]) >= {"text_to_image", "image_to_text"}
    # cached: a rerun embeds nothing and gives the same numbers
    again = CliRunner().invoke(app, ["bench", str(captioned), "-m", a, "-L", str(tmp_path / "cache"), "--json"])
    assert json.loads(again.stdout)["models"][a]["text_to_image"] == result["models"][a]["text_to_image"]


def test_image_to_image_bench_on_class_folders(tmp_path, captioned, hf_siglip):
    import shutil

    rows = [json.loads(line) for line in (captioned / "captions.jsonl").read_text().splitlines()]
    classes = tmp_path / "classes"
    for row in rows:
        colour = row["caption"].split()[2]
        (classes / colour).mkdir(parents=True, exist_ok=True)
        shutil.copy(captioned / row["image"], classes / colour / row["image"])
    out = CliRunner().invoke(app, ["bench", str(classes), "-m", f"hf:{hf_siglip}", "-L", str(tmp_path / "c"),
                                   "--json"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)["models"][f"hf:{hf_siglip}"]["image_to_image"]
    labelled = read_labelled(classes)
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    vecs = emb.embed_images([load_image(p, target_size=emb.image_size).image for p in labelled.images])
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    expected = retrieval_metrics(sims, labelled.relevant, (1, 5, 10), with_map=True)
    for key in ("recall@1", "recall@10", "mrr", "map"):
        assert got[key] == pytest.approx(expected[key], abs=1e-9)
