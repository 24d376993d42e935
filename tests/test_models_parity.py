"""Reference parity: searchlite's embeddings and logits equal the reference libraries' own outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from searchlite.imaging import load_image, to_rgb
from searchlite.models import load_embedder

TEXTS = ["a photo of a cat", "two dogs in the snow", "a red car on the beach with people and a big green tree"]
ATOL = 1e-5


def _reference_image(path: Path) -> Image.Image:
    """What a user of the reference library passes in: the decoded, EXIF-rotated image."""
    with Image.open(path) as img:
        img.load()
        return ImageOps.exif_transpose(img)


def _hf_reference(folder: Path, images: list[Image.Image], texts: list[str], family: str):
    """Model(**inputs) with exactly what the checkpoint's own tokenizer and processor emit."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    kwargs = {"padding": "max_length", "max_length": 64} if family in ("siglip", "align") else {"padding": True}
    text_inputs = tokenizer(texts, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"], **text_inputs)
    return out


@pytest.mark.parametrize("family", ["siglip", "siglip_mask", "clip", "align"])
def test_hf_parity_with_model_and_processor(family, request, sample_images):
    folder = request.getfixturevalue(f"hf_{family}")
    emb = load_embedder(f"hf:{folder}", device="cpu", precision="fp32")
    family = family.split("_")[0]
    assert emb.family == family

    ours_img = emb.embed_images([load_image(p, draft=False).image for p in sample_images])
    ours_txt = emb.embed_texts(TEXTS)
    # ALIGN's EfficientNet processor does not convert modes itself; give it transformers' RGB conversion
    # (16-bit greyscale is the one mode where searchlite deliberately scales instead of clipping).
    ref_images = []
    for p in sample_images:
        img = _reference_image(p)
        if family == "align" or img.mode.startswith("I"):
            img = to_rgb(img)
        ref_images.append(img)
    ref = _hf_reference(folder, ref_images, TEXTS, family)

    np.testing.assert_allclose(ours_img, ref.image_embeds.numpy(), atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(ours_txt, ref.text_embeds.numpy(), atol=ATOL, rtol=ATOL)
    logits = emb.score.logits(ours_img @ ours_txt.T)
    np.testing.assert_allclose(logits, ref.logits_per_image.numpy(), atol=1e-4, rtol=ATOL)


@pytest.mark.parametrize("family", ["siglip", "siglip_mask", "clip", "align"])
def test_hf_parity_with_zero_shot_pipeline(family, request, sample_images):
    from transformers import AutoImageProcessor, pipeline

    folder = request.getfixturevalue(f"hf_{family}")
    family = family.split("_")[0]
    emb = load_embedder(f"hf:{folder}", device="cpu", precision="fp32")
    labels = ["cat", "dog", "red car"]
    template = emb.template
    pipe = pipeline("zero-shot-image-classification", model=str(folder),
                    image_processor=AutoImageProcessor.from_pretrained(folder, backend="pil"), device="cpu")
    txt = emb.embed_texts([template.format(label) for label in labels])
    for path in sample_images:
        if Image.open(path).mode not in ("RGB", "L", "CMYK"):
            continue  # the pipeline drops alpha instead of compositing; parity is defined on opaque images
        result = pipe(str(path), candidate_labels=labels, hypothesis_template=template)
        ref = {r["label"]: r["score"] for r in result}
        logits = emb.score.logits(emb.embed_images([load_image(path, draft=False).image]) @ txt.T)[0]
        if family == "siglip":
            probs = 1 / (1 + np.exp(-logits))
        else:
            probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(probs, [ref[label] for label in labels], atol=ATOL)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_openclip_parity(family, request, sample_images):
    import open_clip

    folder = request.getfixturevalue(f"oc_{family}")
    emb = load_embedder(f"openclip:{folder}", device="cpu", precision="fp32")
    # the zoo's open_clip families (round 4: the family comes from the zoo, not a name in the code)
    assert emb.family == {"clip": "openclip", "siglip": "openclip-siglip"}[family]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model.eval()
    images = [_reference_image(p) for p in sample_images]
    images = [to_rgb(i) if i.mode.startswith("I") or "A" in i.getbands() or i.info.get("transparency") is not None
              else i for i in images]
    with torch.no_grad():
        ref_img = model.encode_image(torch.stack([preprocess(i) for i in images]), normalize=True).numpy()
        ref_txt = model.encode_text(tokenizer(TEXTS), normalize=True).numpy()
        ref_logits = (model.logit_scale.exp() * torch.from_numpy(ref_img @ ref_txt.T)).numpy()
        if model.logit_bias is not None:
            ref_logits = ref_logits + model.logit_bias.item()
    ours_img = emb.embed_images([load_image(p, draft=False).image for p in sample_images])
    ours_txt = emb.embed_texts(TEXTS)
    np.testing.assert_allclose(ours_img, ref_img, atol=ATOL)
    np.testing.assert_allclose(ours_txt, ref_txt, atol=ATOL)
    np.testing.assert_allclose(emb.score.logits(ours_img @ ours_txt.T), ref_logits, atol=1e-4)


def test_siglip_padding_matters(hf_siglip):
    """Guard for the parity test's sensitivity: SigLIP pools the last position, so padding changes
    the embedding. If searchlite padded differently, the parity test above would fail."""
    emb = load_embedder(f"hf:{hf_siglip}", device="cpu", precision="fp32")
    padded = emb.embed_texts(["a photo of a cat"])
    enc = emb.tokenizer(["a photo of a cat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        unpadded = emb.model.get_text_features(input_ids=enc["input_ids"]).pooler_output
    unpadded = torch.nn.functional.normalize(unpadded, dim=-1).numpy()
    assert not np.allclose(padded, unpadded, atol=1e-3)


def test_score_params_match_checkpoint(hf_siglip, hf_clip, hf_align):
    from transformers import AutoModel

    sig = AutoModel.from_pretrained(hf_siglip)
    s = load_embedder(f"hf:{hf_siglip}", device="cpu", precision="fp32").score
    assert s.scale == pytest.approx(sig.logit_scale.exp().item()) and s.bias == pytest.approx(sig.logit_bias.item())
    clip = AutoModel.from_pretrained(hf_clip)
    assert load_embedder(f"hf:{hf_clip}", device="cpu", precision="fp32").score.scale == pytest.approx(clip.logit_scale.exp().item())
    align = AutoModel.from_pretrained(hf_align)
    assert load_embedder(f"hf:{hf_align}", device="cpu", precision="fp32").score.scale == pytest.approx(1 / align.temperature.item())


def test_both_kinds_of_siglip_tokenizer_are_covered(hf_siglip, hf_siglip_mask):
    """The two SigLIP fixtures differ exactly in whether the tokenizer emits a mask, and the mask
    matters: without it the embedding of a padded text moves."""
    from transformers import AutoTokenizer

    assert "attention_mask" not in AutoTokenizer.from_pretrained(hf_siglip)(["a cat"])
    assert "attention_mask" in AutoTokenizer.from_pretrained(hf_siglip_mask)(["a cat"])
    emb = load_embedder(f"hf:{hf_siglip_mask}", device="cpu", precision="fp32")
    enc = emb.tokenizer(["a photo of a cat"], return_tensors="pt", padding="max_length", max_length=64)
    with torch.no_grad():
        unmasked = emb.model.get_text_features(input_ids=enc["input_ids"]).pooler_output
    unmasked = torch.nn.functional.normalize(unmasked, dim=-1).numpy()
    assert not np.allclose(emb.embed_texts(["a photo of a cat"]), unmasked, atol=1e-3)
