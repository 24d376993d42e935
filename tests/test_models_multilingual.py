"""The round-3 transformers families, each exactly as its reference computes it: SigLIP 2 NaFlex
(``Siglip2Model`` + ``Siglip2Processor``: aspect ratio kept, patches + mask + shapes), SigLIP 2 at a
fixed resolution (a ``siglip`` checkpoint with a Gemma tokenizer, queries lowercased as the model was
trained), Chinese-CLIP and MetaCLIP 2 (XLM-R tokenizer, EOS pooling) — on tiny checkpoints built offline
and saved as hub checkpoints are, loaded through the public ``hf:<folder>`` spec. The reference side of
every test calls transformers itself (``AutoProcessor`` + ``AutoModel``), never searchlite's code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch
from PIL import Image, ImageOps

from searchlite.imaging import load_image, to_rgb
from searchlite.models import load_embedder
from searchlite.models.light import read_meta

ATOL = 1e-5
QUERIES = ["a photo of two dogs on the beach", "海滩上的两只狗", "雪の中の赤い車", "Mixed 猫 and 犬!"]
FAMILIES = ["siglip2_naflex", "siglip2_fixed", "chinese_clip", "metaclip2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multilingual-models")
    return {name: getattr(tiny_models, f"build_{name}")(root / name) for name in FAMILIES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, sample_images) -> Path:
    """Every awkward shape: 1x1, very wide, very tall, grey, transparent, palette, CMYK, 16-bit."""
    import shutil

    folder = tmp_path_factory.mktemp("ml-photos")
    for p in sample_images:
        shutil.copy(p, folder / p.name)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)).save(folder / "one-pixel.png")
    Image.fromarray(rng.integers(0, 255, (12, 900, 3), dtype=np.uint8)).save(folder / "panorama.png")
    Image.fromarray(rng.integers(0, 255, (700, 15, 3), dtype=np.uint8)).save(folder / "tower.jpg", quality=95)
    return folder


def _reference_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img)
    # the processors leave modes to the caller: give them transformers' RGB conversion (16-bit grey is
    # the one mode where searchlite deliberately scales instead of clipping)
    return img if img.mode == "RGB" else to_rgb(img)


def _reference(folder: Path, family: str, images: list[Image.Image], texts: list[str]):
    """(image embeds, text embeds, logits_per_image) from transformers' own processor + model."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder, backend="pil")
    if family == "siglip2_naflex":
        text_kwargs: dict = {}  # Siglip2Processor's own call defaults (padding="max_length", 64)
    elif family == "siglip2_fixed":
        texts = [t.lower() for t in texts]  # SigLIP 2 was trained on lowercased text (its model card)
        text_kwargs = {"padding": "max_length", "max_length": 64}
    else:
        text_kwargs = {"padding": True}
    with torch.no_grad():
        img_in = processor(images=images, return_tensors="pt")
        txt_in = processor(text=texts, return_tensors="pt", **text_kwargs)
        out = model(**img_in, **txt_in)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_and_logits_equal_the_reference(family, checkpoints, photos):
    folder = checkpoints[family]
    emb = load_embedder(f"hf:{folder}", device="cpu", precision="fp32")
    paths = sorted(photos.iterdir())
    ours_img = emb.embed_images([load_image(p, draft=False).image for p in paths])
    ours_txt = emb.embed_texts(QUERIES)
    ref_img, ref_txt, ref_logits = _reference(folder, family, [_reference_image(p) for p in paths], QUERIES)
    np.testing.assert_allclose(ours_img, ref_img, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(ours_txt, ref_txt, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(emb.score.logits(ours_img @ ours_txt.T), ref_logits, atol=1e-4, rtol=ATOL)


def test_naflex_batches_carry_patches_mask_and_shapes(checkpoints, photos):
    """A NaFlex batch holds images of different aspect ratios: each keeps its own spatial shape."""
    emb = load_embedder(f"hf:{checkpoints['siglip2_naflex']}", device="cpu", precision="fp32")
    wide = emb.preprocess(load_image(photos / "panorama.png").image)
    tall = emb.preprocess(load_image(photos / "tower.jpg").image)
    assert set(wide) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert wide["pixel_values"].shape == tall["pixel_values"].shape == (256, 16 * 16 * 3)
    h, w = wide["spatial_shapes"]
    assert w > 4 * h and int(wide["pixel_attention_mask"].sum()) == h * w <= 256
    h, w = tall["spatial_shapes"]
    assert h > 4 * w
    # the draft target never goes below what the processor resizes to
    assert emb.input_size.for_image(900, 12)[0] >= int(wide["spatial_shapes"][1]) * 16


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, text=True,
                          env={**os.environ, "SEARCHLITE_NO_SERVER": "1", "SEARCHLITE_PRECISION": "fp32", **(env or {})},
                          timeout=600)


@pytest.mark.parametrize("family", ["siglip2_naflex", "chinese_clip"])
def test_index_and_search_in_three_languages_through_the_cli_and_the_light_path(family, checkpoints, photos,
                                                                               tmp_path):
    """`searchlite index` + `search --json` in English, Chinese and Japanese: every result's score,
    logit and probability are the reference model's for that image and the templated query, also on
    the light path (a cold search that imports neither torch nor transformers)."""
    from transformers import AutoModel

    folder, lib = checkpoints[family], tmp_path / "lib"
    done = _cli("index", str(photos), "--model", f"hf:{folder}", "-L", str(lib), "--no-draft", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == len(list(photos.iterdir()))
    meta = read_meta(next((lib / "models").iterdir()) / "text")
    assert meta is not None and meta["valid"], "the light path's export must validate for this family"

    paths = sorted(photos.iterdir())
    model = AutoModel.from_pretrained(folder).eval()
    ref_img, _, _ = _reference(folder, family, [_reference_image(p) for p in paths], ["x"])
    by_path = {str(p): v for p, v in zip(paths, ref_img)}
    for query in QUERIES[:3]:
        # the template rule (README): a multilingual model embeds a query in a non-Latin script as it
        # is; Latin script gets the model's template; Chinese-CLIP uses its Chinese template for all
        cjk = any(ord(c) > 0x2E80 for c in query)
        prompt = f"一张{query}的照片。" if family == "chinese_clip" else query if cjk \
            else f"This is a photo of {query}."
        _, ref_txt, _ = _reference(folder, family, [_reference_image(paths[0])], [prompt])
        code = ("import sys, json\nfrom searchlite.cli.main import main\n"
                f"sys.argv = ['searchlite', 'search', {query!r}, '-L', {str(lib)!r}, '--json', '-k', '5']\n"
                "try:\n    main()\nfinally:\n"
                "    heavy = [m for m in sys.modules if m == 'torch' or m.startswith('transformers')]\n"
                "    print('HEAVY', heavy, file=sys.stderr)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "SEARCHLITE_NO_SERVER": "1"}, timeout=300)
        assert out.returncode == 0, out.stderr
        assert "HEAVY []" in out.stderr
        results = json.loads(out.stdout)
        assert len(results) == 5
        cosines = {p: float(v @ ref_txt[0]) for p, v in by_path.items()}
        expected = sorted(cosines, key=lambda p: -cosines[p])[:5]
        assert [r["path"] for r in results] == expected
        for r in results:
            cos = cosines[r["path"]]
            assert r["score"] == pytest.approx(cos, abs=ATOL)
            if family.startswith("siglip"):
                logit = model.logit_scale.exp().item() * cos + model.logit_bias.item()
                assert r["probability"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-5)
            else:
                logit = model.logit_scale.exp().item() * cos
            assert r["logit"] == pytest.approx(logit, abs=1e-3)


def test_combined_queries_with_cjk_terms(checkpoints, photos, tmp_path, monkeypatch):
    """The ` + ` / ` - ` grammar with Chinese terms: the query vector is the normalised weighted sum of
    the reference text embeddings of each templated term."""
    from searchlite.library import Library

    folder = checkpoints["chinese_clip"]
    monkeypatch.setenv("SEARCHLITE_PRECISION", "fp32")  # parity is defined in fp32
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [f"hf:{folder}"])
    terms = ["海滩上的狗", "红色汽车", "雪"]
    _, ref, _ = _reference(folder, "chinese_clip", [_reference_image(next(photos.iterdir()))],
                           [f"一张{t}的照片。" for t in terms])
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    q = 2 * ref[0] + ref[1] - ref[2]
    q /= np.linalg.norm(q)
    results = lib.search("2:海滩上的狗 + 红色汽车 - 雪", k=3)
    vecs = lib.stored_vectors(lib.model_row(), [r.image_id for r in results])
    for r in results:
        assert r.score == pytest.approx(float(vecs[r.image_id] @ q), abs=ATOL)


def test_every_zoo_alias_parses_and_names_its_family():
    from searchlite.models.registry import parse_spec
    from searchlite.models.zoo import entries, families

    for alias, entry in entries().items():
        assert entry.family in families(), alias
        parsed = parse_spec(alias)
        assert parsed.alias == alias and parsed.entry is entry
        if alias != "demo":
            assert parse_spec(entry.spec).alias is not None


def test_models_json_lists_the_zoo_and_marks_what_indexed_the_library(tmp_path):
    from searchlite.models.zoo import entries

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    lib = tmp_path / "lib"
    before = _cli("models", "--json", "-L", str(lib))
    assert before.returncode == 0, before.stderr
    assert not (lib / "catalog.sqlite").exists()  # listing never creates a library
    listed = json.loads(before.stdout)
    assert {r["alias"] for r in listed} == set(entries())
    for r in listed:
        assert {"alias", "spec", "family", "languages", "dim", "license"} <= set(r)
        assert not r["indexed"]
    assert [r["alias"] for r in listed if r["default"]] == ["siglip2-base"]
    assert _cli("index", str(photos), "--model", "demo", "-L", str(lib)).returncode == 0
    after = {r["alias"]: r for r in json.loads(_cli("models", "--json", "-L", str(lib)).stdout)}
    assert after["demo"]["indexed"] and not any(r["indexed"] for a, r in after.items() if a != "demo")
    text = _cli("models", "-L", str(lib)).stdout
    assert any(line.startswith("* demo") for line in text.splitlines())


def test_bench_on_chinese_and_japanese_captions_equals_brute_force(checkpoints, photos, tmp_path):
    """`searchlite bench` on captions in Chinese and Japanese: recall@1 and MRR equal a brute-force
    ranking with the reference model's own embeddings (captions as-is, as bench embeds them)."""
    folder = checkpoints["chinese_clip"]
    paths = sorted(photos.iterdir())[:6]
    captions = ["海滩上的两只狗", "雪中的红色汽车", "一只猫的照片", "日落时的大树", "雪の中の赤い車", "猫の写真"]
    data = tmp_path / "data"
    data.mkdir()
    import shutil

    for p in paths:
        shutil.copy(p, data / p.name)
    (data / "captions.jsonl").write_text("\n".join(json.dumps({"image": p.name, "caption": c}, ensure_ascii=False)
                                                  for p, c in zip(paths, captions)) + "\n", encoding="utf-8")
    out = _cli("bench", str(data), "--model", f"hf:{folder}", "--precision", "fp32", "-L", str(tmp_path / "bench"),
               "--json", "-k", "1,5")
    assert out.returncode == 0, out.stderr
    got = next(iter(json.loads(out.stdout)["models"].values()))["text_to_image"]
    ref_img, ref_txt, _ = _reference(folder, "chinese_clip", [_reference_image(data / p.name) for p in paths], captions)
    sims = ref_txt @ ref_img.T
    ranks = [int((sims[i] > sims[i, i]).sum()) + 1 for i in range(len(captions))]
    assert got["recall@1"] == pytest.approx(np.mean([r == 1 for r in ranks]))
    assert got["mrr"] == pytest.approx(np.mean([1 / r for r in ranks]), abs=1e-6)


def test_cjk_queries_over_http_and_through_the_query_cache(checkpoints, photos, tmp_path, monkeypatch):
    """/api/search with URL-encoded Chinese gives the same ranking as the Python API, and a repeated
    CJK query is answered from the library's query cache (the encoder is not called again)."""
    from urllib.parse import quote

    from fastapi.testclient import TestClient

    from searchlite.library import Library
    from searchlite.web.app import create_app

    monkeypatch.setenv("SEARCHLITE_PRECISION", "fp32")
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([photos], [f"hf:{checkpoints['chinese_clip']}"])
    expected = [r.image_id for r in lib.search("海滩上的两只狗", k=5)]
    client = TestClient(create_app(lib, token="t"), base_url="http://127.0.0.1:8765")
    reply = client.get(f"/api/search?q={quote('海滩上的两只狗')}&k=5", headers={"Authorization": "Bearer t"})
    assert reply.status_code == 200, reply.text
    assert [r["id"] for r in reply.json()["results"]] == expected
    row = lib.model_row()
    encoder = lib.text_encoder(row)
    calls = []
    monkeypatch.setattr(encoder, "embed_texts", lambda texts: calls.append(texts) or np.zeros((len(texts), row.dim)))
    again = Library(tmp_path / "lib", device="cpu")
    again._encoders[row.id] = encoder
    assert [r.image_id for r in again.search("海滩上的两只狗", k=5)] == expected
    assert calls == []


def test_prompt_templates_follow_the_query_script():
    from searchlite.models.zoo import query_template, script_language

    assert [script_language(t) for t in ("海滩上的狗", "猫の写真", "한국어 사진", "Привет", "a dog", "café", "16:9")] == \
        ["zh", "ja", "ko", "other", None, None, None]
    en = "This is a photo of {}."
    assert query_template("siglip2-base", "siglip2-fixed", en, "a dog") == en
    assert query_template("siglip2-base", "siglip2-fixed", en, "海滩上的狗") == "{}"  # multilingual: raw
    assert query_template("siglip-base", "siglip", en, "海滩上的狗") == en  # an English-only model keeps its own
    assert query_template("chinese-clip", "chinese_clip", "一张{}的照片。", "海滩上的狗") == "一张{}的照片。"


@pytest.mark.slow
def test_naflex_batches_through_the_ray_engine_equal_the_local_engine(checkpoints, photos, tmp_path, monkeypatch):
    """The Ray engine carries NaFlex inputs (patches, mask, shapes) column by column: same vectors
    as the local engine for photos of every aspect ratio."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = pytest.importorskip("ray")
    from searchlite.library import Library

    monkeypatch.setenv("SEARCHLITE_PRECISION", "fp32")
    spec = f"hf:{checkpoints['siglip2_naflex']}"
    local = Library(tmp_path / "local", device="cpu")
    local.index([photos], [spec])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        distributed = Library(tmp_path / "ray", device="cpu")
        stats = distributed.index([photos], [spec], engine="ray")
    finally:
        ray.shutdown()
    assert stats.added == len(list(photos.iterdir()))

    def vectors(lib):
        results = lib.search("x", k=100)
        stored = lib.stored_vectors(lib.model_row(), [r.image_id for r in results])
        return {r.path: stored[r.image_id] for r in results}

    a, b = vectors(local), vectors(distributed)
    assert set(a) == set(b) and len(a) == stats.added
    assert min(float(a[p] @ b[p]) for p in a) >= 0.99999
