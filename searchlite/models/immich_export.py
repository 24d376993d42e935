"""``searchlite models export SPEC --to DIR``: a torch model's validated ONNX export written in
Immich's layout (:mod:`searchlite.models.immich`), with open_clip's model config beside it."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from searchlite.errors import ModelLoadError


def openclip_config(source: str) -> dict:
    """open_clip's model config of a spec's architecture (a local-dir folder's, or a built-in one's)."""
    folder = Path(source)
    if folder.is_dir():
        return json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    import open_clip

    cfg = open_clip.get_model_config(source)
    if cfg is None:
        raise ModelLoadError(f"open_clip has no config for {source}")
    return dict(cfg)


def export_immich(spec: str, dest: Path) -> dict:
    """Export ``spec`` (an open_clip model) and write it in Immich's layout into ``dest``; its meta."""
    from searchlite.models.immich import write
    from searchlite.models.onnx_export import export_model
    from searchlite.models.registry import load_embedder, parse_spec

    parsed = parse_spec(spec)
    if parsed.backend != "openclip":
        raise ModelLoadError("Immich's layout holds open_clip models (it runs open_clip's preprocessing); "
                             f"{spec} is a {parsed.backend} model")
    emb = load_embedder(parsed, device="cpu", precision="fp32", runtime="torch")
    with tempfile.TemporaryDirectory() as tmp:
        meta = export_model(emb, Path(tmp) / "onnx")
        if not meta["valid"]:
            raise ModelLoadError(f"{spec} could not be exported to ONNX: {meta.get('reason')}")
        write(Path(tmp) / "onnx", Path(dest), openclip_config(parsed.source))
    return meta
