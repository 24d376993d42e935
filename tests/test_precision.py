"""The precision policy: what auto picks with and without native bf16 (the capability is mocked,
so these pass on any CPU), the validation fallback, fp32 = the reference model's own fp32 forward
bit for bit, the catalog's per-precision counts, and the --precision options."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from searchlite import Library
from searchlite.cli.main import app
from searchlite.imaging import load_image
from searchlite.models import load_embedder, precision
from searchlite.models.registry import _load

TEXTS = ["a photo of a cat", "two dogs in the snow", "a red car on the beach"]


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """No $SEARCHLITE_PRECISION (conftest pins fp32 for the rest of the suite), no cached models."""
    monkeypatch.delenv("SEARCHLITE_PRECISION", raising=False)
    _load.cache_clear()
    yield
    _load.cache_clear()


def native_bf16(monkeypatch, value: bool, speedup: float = 2.5) -> None:
    """Mock the CPU: native bf16 or not, and how much faster its bf16 matmul measures."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: value)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)


def _reference_fp32(folder, images, texts):
    """transformers' own fp32 forward (no searchlite code): normalised image and text embeddings."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        img = model.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
        txt = model.get_text_features(**tokenizer(texts, return_tensors="pt", padding="max_length", max_length=64))
    img, txt = (getattr(x, "pooler_output", x).numpy() for x in (img, txt))
    norm = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # noqa: E731
    return norm(img.astype(np.float32)), norm(txt.astype(np.float32))


def _images(sample_images):
    return [load_image(p, draft=False).image for p in sample_images]


def test_auto_is_fp32_without_native_bf16_and_bf16_with_it(monkeypatch, hf_siglip):
    native_bf16(monkeypatch, False)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("auto", "mps") == "fp32"
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    assert emb.precision == "fp32" and "no native bf16" in emb.precision_note
    _load.cache_clear()
    native_bf16(monkeypatch, True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    assert precision.resolve_precision("fp32", "cpu") == "fp32"
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    assert emb.precision == "bf16" and emb.precision_note.startswith("bf16 (validated")
    assert min(emb.precision_check["min_cosine_images"], emb.precision_check["min_cosine_texts"]) >= 0.999
    monkeypatch.setenv("SEARCHLITE_PRECISION", "fp32")  # the override beats the machine's choice
    assert precision.resolve_precision("auto", "cpu") == "fp32"


def test_auto_is_fp32_where_native_bf16_measures_slower(monkeypatch, hf_siglip):
    native_bf16(monkeypatch, True, speedup=0.56)  # e.g. a Xeon with AVX512-BF16 but no AMX
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"  # asked for: runs (validated)
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    assert emb.precision == "fp32" and "measured 0.56x fp32" in emb.precision_note
    _load.cache_clear()
    assert load_embedder(f"hf:{hf_siglip}", device="cpu", precision="bf16").precision == "bf16"


def test_the_bf16_measurement_compares_real_matmuls():
    speedup = precision.cpu_bf16_speedup.__wrapped__(repeats=1)  # the unmocked, uncached measurement
    assert np.isfinite(speedup) and 0.01 < speedup < 100


def test_detection_needs_the_cpu_flag(monkeypatch):
    precision.cpu_has_native_bf16.cache_clear()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx2", "fma"})
    try:
        assert precision.cpu_has_native_bf16() is False
    finally:
        precision.cpu_has_native_bf16.cache_clear()


def test_fp32_is_the_reference_fp32_forward_bit_for_bit(monkeypatch, hf_siglip, sample_images):
    native_bf16(monkeypatch, True)  # even where auto would be bf16
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu", precision="fp32")
    images = _images(sample_images)
    ref_img, ref_txt = _reference_fp32(hf_siglip, images, TEXTS)
    assert emb.precision == "fp32"
    np.testing.assert_array_equal(emb.embed_images(images), ref_img)
    np.testing.assert_array_equal(emb.embed_texts(TEXTS), ref_txt)


def test_auto_on_a_bf16_cpu_stays_within_cosine_0999(monkeypatch, hf_siglip, sample_images):
    native_bf16(monkeypatch, True)
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    assert emb.precision == "bf16"
    images = _images(sample_images)
    ref_img, ref_txt = _reference_fp32(hf_siglip, images, TEXTS)
    got_img, got_txt = emb.embed_images(images), emb.embed_texts(TEXTS)
    assert not np.array_equal(got_img, ref_img)  # it really ran in bf16
    assert (got_img * ref_img).sum(1).min() >= 0.999
    assert (got_txt * ref_txt).sum(1).min() >= 0.999


def test_a_failing_validation_falls_back_to_fp32_and_says_why(monkeypatch, hf_align, sample_images, caplog):
    native_bf16(monkeypatch, True)
    monkeypatch.setattr(precision, "MIN_COSINE", 1.5)  # no precision can pass: the check must fail
    with caplog.at_level(logging.WARNING, logger="searchlite.models.precision"):
        emb = load_embedder(f"hf:{hf_align}", device="cpu")
    assert emb.precision == "fp32"
    assert "bf16 failed validation" in emb.precision_note and "below 1.5" in emb.precision_note
    assert any("failed validation" in r.getMessage() for r in caplog.records)
    assert emb.precision_check["channels_last"]  # ALIGN's EfficientNet was tried in channels_last ...
    images = _images(sample_images)
    reference = load_embedder(f"hf:{hf_align}", device="cpu", precision="fp32")
    # ... and is back to exactly the fp32 path
    np.testing.assert_array_equal(emb.embed_images(images), reference.embed_images(images))


def test_a_precision_that_breaks_falls_back_with_the_error(monkeypatch, hf_siglip):
    native_bf16(monkeypatch, True)
    real = precision.autocast

    def broken(device, chosen):
        if chosen == "bf16":
            raise RuntimeError("no bf16 kernel for this op")
        return real(device, chosen)

    monkeypatch.setattr(precision, "autocast", broken)
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu")
    assert emb.precision == "fp32" and "no bf16 kernel" in emb.precision_note


def _photos(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray((rng.random((40, 52, 3)) * 255).astype(np.uint8)).save(folder / f"{seed}-{i}.jpg")
    return folder


def test_the_catalog_records_the_precision_of_stored_vectors(monkeypatch, tmp_path, hf_siglip):
    native_bf16(monkeypatch, True)
    spec = f"hf:{hf_siglip}"
    photos = _photos(tmp_path / "photos", 5)
    Library(tmp_path / "lib", device="cpu", precision="fp32").index([photos], [spec])
    lib = Library(tmp_path / "lib", device="cpu")
    assert json.loads(lib.model_row(spec).precision) == {"fp32": 5}
    _photos(photos, 3, seed=1)  # three more, indexed with auto = bf16 here: mixing is allowed
    lib.index([photos], [spec])
    assert json.loads(lib.model_row(spec).precision) == {"bf16": 3, "fp32": 5}
    assert lib.status()["models"][0]["precision"] == {"bf16": 3, "fp32": 5}
    out = CliRunner().invoke(app, ["status", "-L", str(tmp_path / "lib")])
    assert out.exit_code == 0 and "embedded in bf16 3, fp32 5" in out.stdout
    out = CliRunner().invoke(app, ["status", "-L", str(tmp_path / "lib"), "--json"])
    assert json.loads(out.stdout)["models"][0]["precision"] == {"bf16": 3, "fp32": 5}
    # the text export is checked against torch's fp32, not the bf16 run: it stays valid
    assert lib.export_text(lib.model_row(spec))["valid"]


def test_index_precision_option(monkeypatch, tmp_path, hf_siglip):
    native_bf16(monkeypatch, True)
    photos = _photos(tmp_path / "photos", 2)
    out = CliRunner().invoke(app, ["index", str(photos), "-m", f"hf:{hf_siglip}", "-L", str(tmp_path / "lib"),
                                   "--precision", "fp32", "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(Library(tmp_path / "lib").model_row().precision) == {"fp32": 2}
    bad = CliRunner().invoke(app, ["index", str(photos), "-L", str(tmp_path / "lib"), "--precision", "fp8"])
    assert bad.exit_code == 2 and "must be one of auto, fp32, bf16, fp16" in bad.output  # a usage error
    with pytest.raises(Exception, match="--precision must be one of"):
        Library(tmp_path / "lib", precision="half")


def test_bench_precision(monkeypatch, tmp_path, hf_siglip):
    from searchlite.sample_data import generate

    native_bf16(monkeypatch, False)  # bf16 asked for explicitly runs (emulated) on any CPU
    monkeypatch.setenv("SEARCHLITE_CACHE", str(tmp_path / "cache"))  # only this test's bench libraries
    data = tmp_path / "set"
    generate.generate(data, 12, 5, "test")
    spec = f"hf:{hf_siglip}"
    results = {}
    for mode in ("fp32", "bf16"):
        out = CliRunner().invoke(app, ["bench", str(data), "-m", spec, "--precision", mode, "--json",
                                       "--device", "cpu"])
        assert out.exit_code == 0, out.output
        results[mode] = json.loads(out.stdout)["models"][spec]["text_to_image"]
        assert 0 <= results[mode]["recall@1"] <= 1
    # each precision has its own cache library: bf16's vectors are bf16's, not fp32's cached ones
    from searchlite.config import cache_dir

    counts = [json.loads(Library(p, create=False).model_row(spec).precision) for p in (cache_dir() / "bench").iterdir()]
    assert {"bf16": 12} in counts and {"fp32": 12} in counts
    assert abs(results["bf16"]["recall@1"] - results["fp32"]["recall@1"]) <= 1 / 12 + 1e-9
    bad = CliRunner().invoke(app, ["bench", str(data), "-m", spec, "--precision", "int4"])
    assert bad.exit_code != 0


def test_resident_query_path_takes_the_faster_validated_tower(monkeypatch, tmp_path, hf_siglip):
    from searchlite.models.light import OnnxTextEncoder

    spec = f"hf:{hf_siglip}"
    photos = _photos(tmp_path / "photos", 2)
    native_bf16(monkeypatch, True)
    Library(tmp_path / "lib", device="cpu").index([photos], [spec])  # exports the ONNX tower
    times = {}
    monkeypatch.setattr(precision, "one_query_ms",
                        lambda enc, *a, **k: times["onnx" if isinstance(enc, OnnxTextEncoder) else "torch"])

    def encoder(resident, **kwargs):
        _load.cache_clear()
        lib = Library(tmp_path / "lib", device="cpu", resident=resident, **kwargs)
        return lib, lib.text_encoder(lib.model_row(spec))

    times.update(onnx=5.0, torch=2.0)
    lib, enc = encoder(True)
    assert getattr(enc, "precision", None) == "bf16"
    assert lib.text_paths[lib.model_row(spec).id]["one_query_ms"] == {"onnx-fp32": 5.0, "torch-bf16": 2.0}
    times.update(onnx=1.0, torch=2.0)
    assert isinstance(encoder(True)[1], OnnxTextEncoder)
    lib, enc = encoder(False)  # the one-shot CLI: the light path, the torch model never loaded
    assert isinstance(enc, OnnxTextEncoder) and not lib._embedders
    native_bf16(monkeypatch, False)  # torch would run fp32 here: ONNX, without loading torch's model
    lib, enc = encoder(True)
    assert isinstance(enc, OnnxTextEncoder) and not lib._embedders
    lib, enc = encoder(False, precision="bf16")  # asked for bf16 explicitly: the bf16 torch tower
    assert getattr(enc, "precision", None) == "bf16"
