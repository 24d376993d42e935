"""The hybrid benchmark: a generated set (signs in four scripts, GPS EXIF, XMP keywords), `bench --hybrid`."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.sample_data import hybrid
from searchlite.textnorm import fold

runner = CliRunner()


def test_generated_set_carries_what_its_truth_says(tmp_path):
    hybrid.generate(tmp_path, 31, seed=3)
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert {q["kind"] for q in queries} >= {"ocr-latin", "ocr-zh", "ocr-ja", "ocr-ko", "place", "keywords", "caption"}
    for t in truth:
        gps = Image.open(tmp_path / t["image"]).getexif().get_ifd(0x8825)
        if t["lat"] is None:
            assert not gps
        else:
            degrees = gps[2][0] + gps[2][1] / 60 + gps[2][2] / 3600
            assert abs(degrees - t["lat"]) < 1e-4
        sidecar = (tmp_path / t["image"]).with_suffix(".xmp")
        assert sidecar.is_file() == ("keywords" in t["fields"])
    for q in queries:  # every text query is in the truth of each of its photos
        if not q["kind"].startswith("caption"):  # caption kinds: photos that look like the query
            fields = {t["image"]: " ".join(t["fields"].values()) for t in truth}
            assert all(fold(q["query"]) in fold(fields[name]) for name in q["relevant"])


def test_bench_hybrid_is_at_least_both_and_keeps_captions(tmp_path):
    hybrid.generate(tmp_path / "set", 36, seed=4)
    out = runner.invoke(app, ["bench", str(tmp_path / "set"), "--hybrid", "-m", "demo", "-L", str(tmp_path / "lib"),
                              "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    mixed = result["table"]["mixed"]
    for metric in ("R@1", "R@5", "MRR@10"):
        assert mixed["hybrid-prob"][metric] >= max(mixed["vector"][metric], mixed["text"][metric])
    caption = result["table"]["caption"]
    assert caption["hybrid-prob"] == caption["vector"]
    assert result["caption_top10_identical"] == 1.0
    assert result["table"]["ocr-ko"]["text"]["R@1"] == 1.0  # Hangul substrings through the trigram index


def test_bench_extracted_is_a_clear_error_without_the_extraction_stage(tmp_path):
    import inspect

    from searchlite.library import Library

    hybrid.generate(tmp_path / "set", 4, seed=1)
    out = runner.invoke(app, ["bench", str(tmp_path / "set"), "--hybrid", "--extracted", "-m", "demo",
                              "-L", str(tmp_path / "lib"), "--device", "cpu"])
    if "ocr" not in inspect.signature(Library.index).parameters:
        assert out.exit_code != 0 and "--extracted needs the index stage" in str(out.exception)
