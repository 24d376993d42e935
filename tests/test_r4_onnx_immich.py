"""Round 4, Immich's ONNX layout: `models export SPEC --to DIR` writes it (Immich's file names, input
and output names, int32 token ids); fed the way Immich's own loader feeds it, and read back through
``immich:DIR``, it matches open_clip's reference (cos >= 0.99999); a library indexed through the Immich
files agrees with one indexed through open_clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_openclip
import torch
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library
from searchlite.models import load_embedder

TEXTS = ["a photo of a dog", "Two CATS on the beach!", "", "naïve café &amp; 東京"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray((rng.random((40 + 7 * i, 52, 3)) * 255).astype(np.uint8)) for i in range(4)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def immich_dir(oc_clip, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("immich") / "clip-tiny"
    out = CliRunner().invoke(app, ["models", "export", f"openclip:{oc_clip}", "--to", str(dest), "--json"])
    assert out.exit_code == 0, out.output
    return dest


@pytest.fixture(scope="module")
def reference(oc_clip):
    model, preprocess, tokenizer = tiny_openclip.reference(oc_clip)
    with torch.no_grad():
        images = _unit(model.encode_image(torch.stack([preprocess(im) for im in _images()])).numpy())
        texts = _unit(model.encode_text(tokenizer(TEXTS)).numpy())
    return preprocess, tokenizer, images, texts


def test_layout_and_names_are_immichs(immich_dir):
    import onnxruntime as ort

    for name in ("config.json", "visual/model.onnx", "visual/preprocess_cfg.json", "textual/model.onnx",
                 "textual/tokenizer.json", "textual/tokenizer_config.json"):
        assert (immich_dir / name).is_file(), name
    visual = ort.InferenceSession(str(immich_dir / "visual" / "model.onnx"))
    textual = ort.InferenceSession(str(immich_dir / "textual" / "model.onnx"))
    assert [i.name for i in visual.get_inputs()] == ["image"] and visual.get_inputs()[0].type == "tensor(float)"
    assert [i.name for i in textual.get_inputs()] == ["text"] and textual.get_inputs()[0].type == "tensor(int32)"
    assert visual.get_outputs()[0].name == textual.get_outputs()[0].name == "embedding"
    pre = json.loads((immich_dir / "visual" / "preprocess_cfg.json").read_text())
    assert set(pre) >= {"size", "mean", "std", "interpolation", "resize_mode"}
    assert "context_length" in json.loads((immich_dir / "config.json").read_text())["text_cfg"]


def test_fed_as_immich_feeds_it_matches_open_clip(immich_dir, reference):
    """Immich's loader, step for step (textual.py: Tokenizer.from_file, padding to context_length with the
    config's pad_token, truncation, int32 "text"; visual.py: "image"), against open_clip's own forward."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    preprocess, _, ref_images, ref_texts = reference
    visual = ort.InferenceSession(str(immich_dir / "visual" / "model.onnx"))
    pixels = np.stack([preprocess(im).numpy() for im in _images()])
    ours = _unit(visual.run(None, {"image": pixels})[0])
    assert float((ours * ref_images).sum(1).min()) >= 0.99999
    ctx = json.loads((immich_dir / "config.json").read_text())["text_cfg"]["context_length"]
    pad = json.loads((immich_dir / "textual" / "tokenizer_config.json").read_text())["pad_token"]
    tok = Tokenizer.from_file(str(immich_dir / "textual" / "tokenizer.json"))
    tok.enable_padding(length=ctx, pad_token=pad, pad_id=tok.token_to_id(pad))
    tok.enable_truncation(max_length=ctx)
    textual = ort.InferenceSession(str(immich_dir / "textual" / "model.onnx"))
    plain = [t for t in TEXTS if t.isascii() and "&" not in t]  # Immich's clean_text (ftfy, html) aside
    ids = np.array([tok.encode(" ".join(t.split())).ids for t in plain], dtype=np.int32)
    emb = _unit(textual.run(None, {"text": ids})[0])
    ref = ref_texts[[TEXTS.index(t) for t in plain]]
    assert float((emb * ref).sum(1).min()) >= 0.99999


def test_immich_spec_matches_open_clip(immich_dir, reference):
    _, _, ref_images, ref_texts = reference
    emb = load_embedder(f"immich:{immich_dir}")
    assert float((emb.embed_images(_images()) * ref_images).sum(1).min()) >= 0.99999
    assert float((emb.embed_texts(TEXTS) * ref_texts).sum(1).min()) >= 0.99999


def test_a_library_through_immich_files_agrees_with_open_clip(immich_dir, oc_clip, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, im in enumerate(_images() * 2):
        im.rotate(30 * i).save(photos / f"{i}.png")
    a = Library(tmp_path / "a", device="cpu")
    a.index([photos], [f"immich:{immich_dir}"])
    b = Library(tmp_path / "b", device="cpu", runtime="torch")
    b.index([photos], [f"openclip:{oc_clip}"])
    ra = a.search("a photo of a dog", f"immich:{immich_dir}", k=8)
    rb = b.search("a photo of a dog", f"openclip:{oc_clip}", k=8)
    assert [Path(r.path).name for r in ra] == [Path(r.path).name for r in rb]
    assert np.allclose([r.score for r in ra], [r.score for r in rb], atol=1e-5)
    assert a.status()["models"][0]["runtime"] == "onnx"


def test_immich_layout_refuses_a_transformers_model(hf_siglip, tmp_path):
    out = CliRunner().invoke(app, ["models", "export", f"hf:{hf_siglip}", "--to", str(tmp_path / "x")])
    assert out.exit_code != 0 and "open_clip" in (out.output + str(out.exception))
