"""Round 4, ``--precision int8``: the ONNX image tower quantized (MatMul, per-channel, dynamic),
validated on the model's probes at load, recorded per vector; a failed validation falls back to fp32."""

from __future__ import annotations

import numpy as np
import pytest

from searchlite.library import Library
from searchlite.models import quantize
from searchlite.models.registry import load_onnx, onnx_export_of, parse_spec
from searchlite.sample_data import generate


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-int8")
    generate.generate(folder, 24, 99, "test")
    return folder


def test_int8_is_validated_recorded_and_close_to_fp32(demo_images, tmp_path):
    load_onnx.cache_clear()
    int8 = Library(tmp_path / "int8", device="cpu", precision="int8")
    int8.index([demo_images], ["demo"])
    fp32 = Library(tmp_path / "fp32", device="cpu", runtime="onnx")
    fp32.index([demo_images], ["demo"])
    model = int8.status()["models"][0]
    assert model["runtime"] == "onnx" and model["precision"] == {"int8": 24}
    assert fp32.status()["models"][0]["precision"] == {"fp32": 24}
    emb = int8.embedder_for(int8.model_row("demo"))
    check = emb.precision_check
    assert emb.precision == "int8" and check["min_cosine"] >= 0.99 and check["top10_overlap"] >= 0.9
    assert check["reduce_range"] == (quantize.cpu_vnni() is None)
    # int8 image vectors against fp32 ones of the same images (fp32 ONNX == torch, tested elsewhere)
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted(demo_images.glob("*.png"))]
    ref = fp32.embedder_for(fp32.model_row("demo")).embed_images(images)
    assert float((emb.embed_images(images) * ref).sum(axis=1).min()) >= 0.99
    # the text tower stays fp32: same query vector
    row_a, row_b = int8.model_row("demo"), fp32.model_row("demo")
    assert np.allclose(int8.text_vectors(row_a, ["x"]), fp32.text_vectors(row_b, ["x"]), atol=1e-6)


def test_int8_below_the_bar_falls_back_to_fp32_with_the_reason(monkeypatch):
    load_onnx.cache_clear()
    monkeypatch.setattr(quantize, "MIN_COSINE", 1.01)
    try:
        lib_emb = load_onnx(str(onnx_export_of(parse_spec("demo"))), 32, "int8")
        assert lib_emb.precision == "fp32"
        assert lib_emb.precision_note.startswith("fp32 (int8 failed validation")
    finally:
        load_onnx.cache_clear()


def test_check_int8_against_hand_computed_values():
    fp32 = np.eye(3, dtype=np.float32)
    int8 = np.array([[1, 0, 0], [0, 0.6, 0.8], [0, 0, 1]], dtype=np.float32)
    texts = np.eye(3, dtype=np.float32)
    out = quantize.check_int8(fp32, int8, texts, k=1)
    assert out["min_cosine"] == pytest.approx(0.6)
    # query 2 (texts[2]) scores image 1 at 0.8 and image 2 at 1.0 in int8: its top-1 stays image 2;
    # query 1 scores image 1 at 0.6, the others 0: kept; so every top-1 is kept
    assert out["top10_overlap"] == pytest.approx(1.0)
    moved = quantize.check_int8(fp32, np.array([[1, 0, 0], [0, 0.6, 0.8], [0, 0.2, 0.1]], dtype=np.float32),
                                texts, k=1)
    assert moved["top10_overlap"] == pytest.approx(2 / 3)  # query 2's top-1 is image 1 now
