"""Immich's ONNX model layout, read and written (Immich's machine-learning service,
``immich_ml/models/clip/visual.py`` and ``textual.py``)::

    <model>/config.json                  open_clip's model config (embed_dim, vision_cfg, text_cfg)
    <model>/visual/model.onnx            input "image" (n, 3, H, W) float32 -> output 0: the embedding
    <model>/visual/preprocess_cfg.json   size, mean, std, interpolation, resize_mode (squash | shortest)
    <model>/textual/model.onnx           input "text" (n, context) int32 -> output 0: the embedding
    <model>/textual/tokenizer.json       a `tokenizers` JSON; padded to text_cfg.context_length with
    <model>/textual/tokenizer_config.json   its "pad_token", truncated; text cleaned as open_clip does
                                         (``text_cfg.tokenizer_kwargs.clean == "canonicalize"`` or not)

Spec ``immich:<folder>`` or ``immich:<name>`` (the hub repo ``immich-app/<name>``, e.g.
``immich:ViT-B-16-SigLIP2__webli``). Immich's files do not carry the trained logit scale and bias; a
folder we write adds ``searchlite.json`` with them (and the family and template), else they come from
the config's ``init_logit_scale`` / ``init_logit_bias`` (probabilities then need calibration).
``searchlite models export SPEC --to DIR`` writes this layout from a validated searchlite ONNX export.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from searchlite.errors import ModelLoadError

log = logging.getLogger(__name__)

HUB_ORG = "immich-app"
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}
_RESAMPLE_CODE = {v: k for k, v in _RESAMPLE.items()}


def is_immich_folder(folder: Path) -> bool:
    return (folder / "visual" / "model.onnx").is_file() and (folder / "textual" / "model.onnx").is_file() \
        and (folder / "config.json").is_file()


def resolve_folder(rest: str) -> Path:
    """``immich:`` spec rest -> a local folder in Immich's layout (the hub repo, cached first)."""
    folder = Path(rest).expanduser()
    if folder.is_dir():
        if not is_immich_folder(folder):
            raise ModelLoadError(f"{rest} is not in Immich's layout (config.json, visual/model.onnx, textual/model.onnx)")
        return folder.resolve()
    if rest.startswith((".", "/", "~")):
        raise ModelLoadError(f"Immich model folder not found: {rest}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a dependency of tokenizers
        raise ModelLoadError("immich:<name> needs huggingface_hub to download the model") from exc
    patterns = ["config.json", "visual/*", "textual/*"]
    try:
        return Path(snapshot_download(f"{HUB_ORG}/{rest}", allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub once
        try:
            return Path(snapshot_download(f"{HUB_ORG}/{rest}", allow_patterns=patterns))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load immich:{rest}: not cached and the hub repo {HUB_ORG}/{rest} could not "
                                 f"be downloaded ({type(exc).__name__})") from exc


def _steps(cfg: dict) -> list[dict]:
    size = cfg["size"][0] if isinstance(cfg["size"], list) else cfg["size"]
    resample = _RESAMPLE_CODE.get(str(cfg.get("interpolation", "bicubic")).lower())
    if resample is None:
        raise ModelLoadError(f"unsupported interpolation {cfg.get('interpolation')!r} in preprocess_cfg.json")
    mode = cfg.get("resize_mode", "shortest")
    if mode == "squash":
        steps = [{"op": "rgb"}, {"op": "resize", "size": [size, size], "resample": resample}]
    elif mode == "shortest":
        steps = [{"op": "rgb"}, {"op": "resize", "short": size, "resample": resample},
                 {"op": "crop", "size": [size, size], "rounding": "round"}]
    else:
        raise ModelLoadError(f"unsupported resize_mode {mode!r} in preprocess_cfg.json")
    steps.append({"op": "normalize", "scale": 1 / 255, "mean": list(cfg["mean"]), "std": list(cfg["std"]),
                  "float64": False})
    return steps


def model_meta(folder: Path, model_id: str) -> tuple[dict, dict]:
    """(model meta, text meta) of an Immich folder, as :class:`OnnxEmbedder` reads them."""
    from searchlite.models.onnx_model import FORMAT, VERSION

    config = json.loads((folder / "config.json").read_text())
    text_cfg = config.get("text_cfg", {})
    pre = json.loads((folder / "visual" / "preprocess_cfg.json").read_text())
    ours = {}
    if (folder / "searchlite.json").is_file():
        ours = json.loads((folder / "searchlite.json").read_text())
    bias = config.get("init_logit_bias")
    family = ours.get("family") or ("siglip" if bias is not None else "clip")
    score = ours.get("score") or {"scale": math.exp(config.get("init_logit_scale", math.log(100.0))),
                                  "bias": float(bias or 0.0)}
    size = pre["size"][0] if isinstance(pre["size"], list) else pre["size"]
    meta = {"format": FORMAT, "version": VERSION, "model_id": model_id, "family": family,
            "template": ours.get("template") or ("This is a photo of {}." if family.startswith("siglip")
                                                 else "a photo of {}."),
            "score": score, "probability": ours.get("probability") or ("sigmoid" if score["bias"] else "platt"),
            "input_size": [size, size, 0, 0], "dim": int(config["embed_dim"]), "preprocess": _steps(pre),
            "preprocess_config": pre, "valid": True}
    tok_cfg = json.loads((folder / "textual" / "tokenizer_config.json").read_text())
    clean = "canonicalize" if (text_cfg.get("tokenizer_kwargs") or {}).get("clean") == "canonicalize" else "whitespace"
    text = {"version": 2, "model_id": model_id, "dim": int(config["embed_dim"]), "valid": True, "inputs": ["input_ids"],
            "feeds": {"input_ids": "text"}, "int32": True, "clean": clean, "prepare": {},
            "pad": {"length": int(text_cfg.get("context_length", 77)), "token": tok_cfg["pad_token"]},
            "onnx": "model.onnx"}
    return meta, text


def load(folder: Path, model_id: str, batch_size: int = 32) -> Any:
    """The ONNX engine on an Immich-layout folder."""
    from searchlite.models.onnx_model import OnnxEmbedder

    meta, text = model_meta(folder, model_id)
    return OnnxEmbedder(folder, meta, batch_size=batch_size, visual=folder / "visual" / "model.onnx",
                        text=(folder / "textual", text))


def _rename_io(src: Path, dst: Path, inputs: dict[str, str], output: str, int32_input: str | None = None) -> None:
    """Copy an ONNX graph renaming its inputs (and its first output), optionally taking an int32
    input cast to the graph's int64 (Immich feeds token ids as int32)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    for value in graph.input:
        if value.name in inputs:
            old, new = value.name, inputs[value.name]
            if new == int32_input:
                value.name = new
                value.type.tensor_type.elem_type = TensorProto.INT32
                cast = helper.make_node("Cast", [new], [old + "_i64"], to=TensorProto.INT64)
                for node in graph.node:
                    node.input[:] = [old + "_i64" if i == old else i for i in node.input]
                graph.node.insert(0, cast)
            else:
                value.name = new
                for node in graph.node:
                    node.input[:] = [new if i == old else i for i in node.input]
    old_out = graph.output[0].name
    graph.output[0].name = output
    for node in graph.node:
        node.output[:] = [output if o == old_out else o for o in node.output]
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data", size_threshold=1024)


def _preprocess_cfg(steps: list[dict]) -> dict:
    ops = [s["op"] for s in steps]
    resize = next(s for s in steps if s["op"] == "resize")
    norm = next(s for s in steps if s["op"] == "normalize")
    if "crop" in ops:
        crop = next(s for s in steps if s["op"] == "crop")
        if "short" not in resize or crop["size"][0] != crop["size"][1] or crop["size"][0] != resize["short"] \
                or crop.get("rounding") != "round":
            raise ModelLoadError("Immich's layout has no such resize + crop (only squash, or shortest side + center crop)")
        size, mode = resize["short"], "shortest"
    else:
        if "size" not in resize or resize["size"][0] != resize["size"][1]:
            raise ModelLoadError("Immich's layout takes square inputs only")
        size, mode = resize["size"][0], "squash"
    if abs(norm["scale"] - 1 / 255) > 1e-9 or norm.get("float64"):
        raise ModelLoadError("Immich's layout rescales by 1/255 in float32 only (open_clip models)")
    return {"size": [size, size], "mean": norm["mean"], "std": norm["std"],
            "interpolation": _RESAMPLE[int(resize["resample"])], "resize_mode": mode}


def write(export: Path, dest: Path, model_cfg: dict | None = None) -> Path:
    """Write Immich's layout into ``dest`` from a validated searchlite ONNX export folder (open_clip
    models: Immich runs open_clip's preprocessing and a `tokenizers` tokenizer)."""
    from searchlite.models.light import read_meta
    from searchlite.models.onnx_model import read_model_meta

    meta, text = read_model_meta(export), read_meta(export / "text")
    if meta is None or text is None:
        raise ModelLoadError(f"{export} holds no valid searchlite ONNX export to write in Immich's layout")
    if text.get("inputs") != ["input_ids"] or text.get("lang"):
        raise ModelLoadError("Immich's layout feeds the text tower token ids only (no mask, no language codes)")
    tokenizer = json.loads((export / "text" / "tokenizer.json").read_text())
    if "searchlite_slow_sentencepiece" in tokenizer:
        raise ModelLoadError("this model's tokenizer is not a `tokenizers` JSON, which Immich's layout needs")
    pre = _preprocess_cfg(meta["preprocess"])
    dest.mkdir(parents=True, exist_ok=True)
    _rename_io(export / "visual.onnx", dest / "visual" / "model.onnx", {"pixel_values": "image"}, "embedding")
    _rename_io(export / "text" / "text.onnx", dest / "textual" / "model.onnx", {"input_ids": "text"}, "embedding",
               int32_input="text")
    (dest / "visual" / "preprocess_cfg.json").write_text(json.dumps(pre, indent=1))
    padding = tokenizer.get("padding") or {}
    truncation = tokenizer.get("truncation") or {}
    context = int(padding.get("strategy", {}).get("Fixed") or truncation.get("max_length") or 77)
    shutil.copyfile(export / "text" / "tokenizer.json", dest / "textual" / "tokenizer.json")
    (dest / "textual" / "tokenizer_config.json").write_text(json.dumps({"pad_token": padding.get("pad_token", "!")}))
    cfg = dict(model_cfg or {})
    cfg["embed_dim"] = int(meta["dim"])
    text_cfg = dict(cfg.get("text_cfg") or {})
    text_cfg["context_length"] = context
    if text.get("clean") == "canonicalize":
        text_cfg["tokenizer_kwargs"] = {**(text_cfg.get("tokenizer_kwargs") or {}), "clean": "canonicalize"}
    elif text.get("clean") not in ("lower", "whitespace"):
        raise ModelLoadError("Immich cleans texts as open_clip does; this model's text preparation differs")
    cfg["text_cfg"] = text_cfg
    cfg.setdefault("vision_cfg", {"image_size": pre["size"][0]})
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    (dest / "searchlite.json").write_text(json.dumps({k: meta[k] for k in ("family", "template", "score",
                                                                           "probability", "model_id")}, indent=1))
    return dest
