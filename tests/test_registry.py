"""Model spec parsing, stable model ids, offline errors and the open_clip checkpoint-file form."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from searchlite.errors import ModelLoadError
from searchlite.models import load_embedder, parse_spec
from searchlite.models.registry import aliases


def test_aliases_and_hub_specs():
    assert parse_spec("siglip").model_id == "hf:google/siglip-so400m-patch14-384"
    assert parse_spec("clip").source == "openai/clip-vit-base-patch32"
    assert set(aliases()) >= {"siglip", "siglip-base", "clip", "align"}
    spec = parse_spec("openclip:ViT-B-32-quickgelu@openai")
    assert (spec.backend, spec.source, spec.pretrained) == ("openclip", "ViT-B-32-quickgelu", "openai")


@pytest.mark.parametrize("bad, message", [
    ("nonsense", "bad model spec"),
    ("tf:whatever", "bad model spec"),
    ("openclip:ViT-B-32", "needs weights"),
    ("openclip:ViT-B-32@/no/such/file.safetensors", "checkpoint file not found"),
])
def test_bad_specs_say_what_to_do(bad, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_spec(bad)


def test_local_model_id_survives_a_move_and_changes_with_weights(tmp_path, hf_clip):
    moved = tmp_path / "elsewhere" / hf_clip.name
    shutil.copytree(hf_clip, moved)
    assert parse_spec(f"hf:{hf_clip}").model_id == parse_spec(f"hf:{moved}").model_id
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert parse_spec(f"hf:{hf_clip}").model_id != parse_spec(f"hf:{moved}").model_id


def test_offline_hub_model_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError) as info:
        load_embedder("hf:google/this-model-is-not-cached", device="cpu")
    text = str(info.value)
    assert "hf:google/this-model-is-not-cached" in text and "local folder" in text and "\n" not in text


def test_openclip_architecture_with_checkpoint_file(tmp_path, oc_clip):
    import open_clip

    cfg = json.loads((oc_clip / "open_clip_config.json").read_text())["model_cfg"]
    (tmp_path / "Tiny-Test-CLIP.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "Tiny-Test-CLIP.json")
    weights = oc_clip / "open_clip_model.safetensors"
    by_file = load_embedder(f"openclip:Tiny-Test-CLIP@{weights}", device="cpu")
    by_folder = load_embedder(f"openclip:{oc_clip}", device="cpu")
    assert by_file.model_id.startswith("openclip:Tiny-Test-CLIP@open_clip_model#")
    texts = ["a photo of a cat", "two dogs"]
    np.testing.assert_allclose(by_file.embed_texts(texts), by_folder.embed_texts(texts), atol=1e-6)
    with pytest.raises(ModelLoadError, match="neither a checkpoint file nor a pretrained tag"):
        load_embedder("openclip:Tiny-Test-CLIP@not-a-tag", device="cpu")
