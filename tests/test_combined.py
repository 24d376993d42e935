"""Combined queries and prompt ensembling: parsing and the embedding-space math."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from searchlite.combined import Term, combine, ensemble_text_vector, parse_query
from searchlite.errors import QueryError
from searchlite.library import Library


def test_parse_signs_weights_and_hyphenated_words(tmp_path):
    assert parse_query("beach + sunset - people") == [
        Term(1.0, "text", "beach"), Term(1.0, "text", "sunset"), Term(-1.0, "text", "people")]
    assert parse_query("2:cat + 0.5:dog") == [Term(2.0, "text", "cat"), Term(0.5, "text", "dog")]
    assert parse_query("a red t-shirt") == [Term(1.0, "text", "a red t-shirt")]
    Image.new("RGB", (4, 4)).save(tmp_path / "p.jpg")
    assert parse_query(f"{tmp_path / 'p.jpg'} + snow")[0] == Term(1.0, "image", str(tmp_path / "p.jpg"))
    with pytest.raises(QueryError, match="image term not found"):
        parse_query("./missing.jpg + snow")
    with pytest.raises(QueryError):
        parse_query("cat +  + dog")


def test_combine_is_the_normalised_weighted_sum_of_normalised_terms():
    a, b, c = np.array([3.0, 0, 0]), np.array([0, 1.0, 0]), np.array([0, 0, 2.0])
    vectors = {"a": a, "b": b, "c": c}
    out = combine(parse_query("2:a + b - c"), lambda ts: np.stack([vectors[t] for t in ts]), lambda p: None)
    expected = np.array([2.0, 1.0, -1.0]) / np.sqrt(6)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(QueryError, match="cancel"):
        combine(parse_query("a - a"), lambda ts: np.stack([vectors[t] for t in ts]), lambda p: None)


def test_combined_search_uses_image_and_text_terms(tmp_path, hf_siglip):
    spec = f"hf:{hf_siglip}"
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [spec])
    emb = lib.embedder(spec)
    query = f"{photos / '3.png'} + 2:snow"
    got = lib.search(query, spec, k=11)
    assert str(photos / "3.png") not in {r.path for r in got}  # an image term is not its own result
    from searchlite.imaging import load_image

    def embedded(path: str) -> np.ndarray:  # independently of the library: decode + embed now
        return emb.embed_images([load_image(path, target_size=emb.image_size).image])[0]

    img = embedded(str(photos / "3.png"))
    txt = emb.embed_texts(["This is a photo of snow."])[0]
    q = img / np.linalg.norm(img) + 2 * txt / np.linalg.norm(txt)
    q /= np.linalg.norm(q)
    assert len(got) == 11
    for r in got:
        assert r.score == pytest.approx(float(embedded(r.path) @ q), abs=1e-5)


def test_prompt_ensemble_averages_normalised_template_embeddings(hf_clip):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from searchlite.models import load_embedder

    emb = load_embedder(f"hf:{hf_clip}", device="cpu")
    got = ensemble_text_vector(emb.embed_texts, "dog")
    each = emb.embed_texts([t("dog") for t in OPENAI_IMAGENET_TEMPLATES])
    mean = (each / np.linalg.norm(each, axis=1, keepdims=True)).mean(0)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), atol=1e-6)
    assert len(OPENAI_IMAGENET_TEMPLATES) == 80
