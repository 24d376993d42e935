"""Issue 26 item 9: the family of an open_clip model comes from the zoo's ``match`` (by
architecture), so a SigLIP 2 / XLM-R / NLLB checkpoint given as a file gets the multilingual rule
(raw text for a non-Latin query) as its alias does; users add zoo entries in ``models.json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.errors import ModelLoadError

CAT = "一只猫的照片"
EN = "This is a photo of {}."


@pytest.mark.parametrize(("arch", "sigmoid", "expected"), [
    ("ViT-B-16-SigLIP2", True, "openclip-siglip2"),
    ("ViT-SO400M-16-SigLIP2-384", True, "openclip-siglip2"),
    ("xlm-roberta-base-ViT-B-32", False, "openclip-multilingual"),
    ("nllb-clip-base", False, "openclip-multilingual"),
    ("nllb-clip-base-siglip", True, "openclip-siglip-multilingual"),
    ("ViT-H-14-worldwide-quickgelu", False, "openclip-multilingual"),
    ("ViT-B-16-SigLIP", True, "openclip-siglip"),  # SigLIP 1: English
    ("ViT-B-32", False, "openclip"),
])
def test_openclip_family_follows_the_architecture(arch, sigmoid, expected):
    from searchlite.models.zoo import openclip_family

    assert openclip_family(arch, sigmoid).name == expected


def test_every_openclip_alias_has_the_family_its_architecture_matches():
    """The zoo's entries and its match rules agree (one piece of knowledge, not two)."""
    from searchlite.models.zoo import entries, families, openclip_family

    for alias, entry in entries().items():
        if entry.spec.startswith("openclip:"):
            arch = entry.spec.removeprefix("openclip:").partition("@")[0]
            sigmoid = families()[entry.family].probability == "sigmoid"
            assert openclip_family(arch, sigmoid).name == entry.family, alias


def test_a_multilingual_checkpoint_by_file_gets_the_raw_text_rule():
    from searchlite.models.zoo import openclip_family, query_template

    for arch, sigmoid in (("ViT-B-16-SigLIP2", True), ("xlm-roberta-large-ViT-H-14", False)):
        fam = openclip_family(arch, sigmoid)
        spec = f"openclip:{arch}@/weights/model.safetensors"  # no alias names this spec
        assert query_template(spec, fam.name, fam.templates[0], CAT) == "{}"
        assert query_template(spec, fam.name, fam.templates[0], "a cat") == fam.templates[0]
    fam = openclip_family("ViT-B-16-SigLIP", True)  # English-only SigLIP keeps its template
    assert query_template("openclip:ViT-B-16-SigLIP@/w.safetensors", fam.name, EN, CAT) == EN


@pytest.fixture(scope="module")
def tiny_siglip2_by_file(tmp_path_factory):
    """A tiny SigLIP 2 registered as an open_clip architecture and given as a checkpoint file."""
    import open_clip
    import tiny_openclip

    root = tmp_path_factory.mktemp("siglip2-file")
    folder = tiny_openclip.build(root / "siglip2", "siglip2")
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    (root / "ViT-B-16-SigLIP2-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root / "ViT-B-16-SigLIP2-tiny.json")
    return f"openclip:ViT-B-16-SigLIP2-tiny@{folder}/open_clip_model.safetensors?tokenizer={folder}"


def test_a_siglip2_checkpoint_file_searches_chinese_with_the_raw_text(tiny_siglip2_by_file, tmp_path):
    """End to end: index with the file spec, search a Chinese query; the scores are the cosines of
    the raw text's vector (computed here from the model), not of an English frame around it."""
    from searchlite.imaging import load_image
    from searchlite.library import Library
    from searchlite.models import load_embedder

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    lib = Library(tmp_path / "lib", device="cpu", precision="fp32")
    lib.index([photos], [tiny_siglip2_by_file])
    row = lib.catalog.models()[0]
    assert row.family == "openclip-siglip2"
    emb = load_embedder(tiny_siglip2_by_file, device="cpu", precision="fp32")
    paths = sorted(photos.iterdir())
    images = emb.embed_images([load_image(p, draft=False).image for p in paths])
    raw, framed = emb.embed_texts([CAT, EN.format(CAT)])
    assert not np.allclose(images @ raw, images @ framed, atol=1e-3)  # the two rules differ measurably
    got = {Path(r.path).name: r.score for r in lib.search(CAT, k=10)}
    expected = {p.name: float(s) for p, s in zip(paths, images @ raw)}
    assert got.keys() == expected.keys()
    for name, score in expected.items():
        assert got[name] == pytest.approx(score, abs=1e-4)
    lib.catalog.engine.dispose()


USER_ENTRY = {"models": {"my-siglip2": {"spec": "openclip:ViT-B-16-SigLIP2@/opt/models/siglip2.safetensors",
                                         "family": "openclip-siglip2", "dim": 768, "license": "apache-2.0"}}}


def test_a_user_zoo_entry_in_the_config_dir_is_found_by_alias(tmp_path, monkeypatch):
    from searchlite.models.registry import aliases
    from searchlite.models.zoo import entry, query_template

    monkeypatch.setenv("SEARCHLITE_CONFIG", str(tmp_path / "config"))
    assert entry("my-siglip2") is None
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "models.json").write_text(json.dumps(USER_ENTRY))
    found = entry("my-siglip2")
    assert found is not None and found.spec == USER_ENTRY["models"]["my-siglip2"]["spec"]
    assert found.languages == ("multi",) and found.templates == (EN,)  # the family's rules merged under it
    assert aliases()["my-siglip2"] == found.spec
    assert query_template("my-siglip2", found.family, found.template, CAT) == "{}"
    assert entry("siglip2-base") is not None  # the package's zoo stays


def test_a_user_zoo_entry_in_the_library_folder_is_found_by_alias(tmp_path, monkeypatch):
    from searchlite.library import Library
    from searchlite.models.zoo import entry, use_library

    monkeypatch.setenv("SEARCHLITE_CONFIG", str(tmp_path / "no-config"))
    lib = Library(tmp_path / "lib")
    try:
        (lib.path / "models.json").write_text(json.dumps(USER_ENTRY))
        assert entry("my-siglip2").family == "openclip-siglip2"
    finally:
        lib.catalog.engine.dispose()
        use_library(None)
    assert entry("my-siglip2") is None


@pytest.mark.parametrize(("document", "message"), [
    ({"models": {"x": {"spec": "openclip:ViT-B-32@openai", "family": "openclip", "lisence": "mit"}}},
     "zoo entry 'x': unknown key 'lisence'"),
    ({"models": {"x": {"spec": "openclip:ViT-B-32@openai", "family": "no-such"}}}, "unknown family 'no-such'"),
    ({"modles": {}}, "unknown key 'modles'"),
    ({"models": {"x": {"family": "openclip"}}}, "zoo entry 'x' has no spec"),
])
def test_a_bad_user_zoo_file_gives_a_clear_one_line_error(tmp_path, monkeypatch, document, message):
    from searchlite.models.zoo import entries

    monkeypatch.setenv("SEARCHLITE_CONFIG", str(tmp_path))
    (tmp_path / "models.json").write_text(json.dumps(document))
    with pytest.raises(ModelLoadError) as info:
        entries()
    text = str(info.value)
    assert message in text and str(tmp_path / "models.json") in text and "\n" not in text


def test_a_user_zoo_file_that_is_not_json_names_the_line(tmp_path, monkeypatch):
    from searchlite.models.zoo import entries

    monkeypatch.setenv("SEARCHLITE_CONFIG", str(tmp_path))
    (tmp_path / "models.json").write_text('{"models": {\n  "x": }\n}')
    with pytest.raises(ModelLoadError, match=r"models\.json: not valid JSON \(line 2"):
        entries()


def test_the_catalog_column_holds_every_zoo_family_name():
    """ModelRow.family was String(8) while storing 'siglip2-fixed' (13)."""
    from searchlite.catalog import ModelRow
    from searchlite.models.zoo import families

    length = ModelRow.__table__.c.family.type.length
    assert length is None or length >= max(len(name) for name in families())
