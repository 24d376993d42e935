"""Model spec strings -> Embedders.

Specs:
  ``openclip:<arch>@<pretrained tag | checkpoint file>``  e.g. ``openclip:ViT-B-32-quickgelu@openai``
  ``openclip:<folder>``                                   a folder with open_clip_config.json + weights
  ``openclip:<arch>@<tag | file>?tokenizer=<folder>``     a local copy of the hub tokenizer the
                                                          architecture names (offline SigLIP, nllb, worldwide)
  ``hf:<hub id | local folder>``                          e.g. ``hf:google/siglip-so400m-patch14-384``
  ``onnx:<folder>``                                       a searchlite ONNX model folder (runs without torch)
  ``immich:<folder | name>``                              Immich's ONNX layout (a folder, or immich-app/<name>)
  an alias from :data:`ALIASES` (``siglip``, ``siglip-base``, ``clip``, ``align``, ``demo``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from searchlite.errors import ModelLoadError
from searchlite.models.base import Embedder

DEMO_ALIAS = "demo"


def aliases() -> dict[str, str]:
    """Short names -> full specs, from the model zoo (``models/zoo.json``)."""
    from searchlite.models.zoo import entries

    return {alias: e.spec for alias, e in entries().items() if alias != DEMO_ALIAS}


def demo_model_dir() -> Path:
    """The bundled demo model (package data, or $SEARCHLITE_DEMO_MODEL)."""
    env = os.environ.get("SEARCHLITE_DEMO_MODEL")
    if env:
        return Path(env)
    from searchlite.sample_data import DEMO_MODEL_DIR

    return DEMO_MODEL_DIR


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: which backend, what to load, and the id stored with every vector."""

    backend: str  # "hf" | "openclip" | "onnx" | "immich"
    source: str  # hub id, folder, or open_clip architecture
    pretrained: str | None
    model_id: str
    alias: str | None = None  # the zoo entry this spec names (by alias or by its full spec)
    tokenizer: str | None = None  # openclip: a local tokenizer folder (or hub id) instead of the config's

    @property
    def entry(self):  # noqa: ANN201 - a ZooEntry | None (imported lazily)
        """The zoo entry of this model, or None for a model the zoo does not list."""
        from searchlite.models.zoo import entry

        return entry(self.alias) if self.alias else None

    @property
    def canonical(self) -> str:
        """A spec string that loads the same model from any working directory."""
        if self.model_id.startswith("demo#"):
            return DEMO_ALIAS
        if self.backend in ("hf", "onnx", "immich"):
            return f"{self.backend}:{self.source}"
        return (f"openclip:{self.source}" + (f"@{self.pretrained}" if self.pretrained else "")
                + (f"?tokenizer={self.tokenizer}" if self.tokenizer else ""))



def fingerprint_of(model_id: str) -> str | None:
    """The weights fingerprint in a local model's id ('hf:name#fp' -> 'fp'); None for hub ids."""
    return model_id.rsplit("#", 1)[1] if "#" in model_id else None


def same_model(a: str, b: str) -> bool:
    """Whether two model ids name the same weights: equal ids, or local models with the same
    fingerprint (a moved or renamed folder is the same model)."""
    fa, fb = fingerprint_of(a), fingerprint_of(b)
    return a == b or (fa is not None and fa == fb)


def stored_spec_missing(spec: str) -> Path | None:
    """For a spec stored in a library: its local folder or file when that no longer exists."""
    backend, _, rest = spec.partition(":")
    if backend not in ("hf", "openclip", "onnx", "immich"):
        return None
    for part in rest.replace("?tokenizer=", "@").split("@"):
        if part.startswith("/") and not Path(part).exists():
            return Path(part)
    return None


def fingerprint(path: Path) -> str:
    """A fast, move-proof fingerprint of a weights file or folder: size + head + tail bytes."""
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".json", ".model"}
    )
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 1 << 20:
                fh.seek(max(size - (1 << 20), 1 << 20))
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:12]


def parse_spec(spec: str) -> ModelSpec:
    """Resolve aliases and parse a spec string into a :class:`ModelSpec` (no weights are loaded)."""
    spec = spec.strip()
    if spec == DEMO_ALIAS:
        folder = demo_model_dir()
        if not folder.is_dir():
            raise ModelLoadError(
                f"the demo model is not at {folder}; run from a source checkout or set SEARCHLITE_DEMO_MODEL"
            )
        return ModelSpec("hf", str(folder), None, f"demo#{fingerprint(folder)}", DEMO_ALIAS)
    from searchlite.models.zoo import for_spec

    known = for_spec(spec)
    alias = known.alias if known is not None else None
    spec = aliases().get(spec, spec)
    backend, sep, rest = spec.partition(":")
    if backend == "onnx" and sep:
        return _onnx_spec(rest)
    if backend == "immich" and sep and rest:
        from searchlite.models.immich import resolve_folder

        folder = resolve_folder(rest)
        source = str(folder) if Path(rest).expanduser().is_dir() else rest
        return ModelSpec("immich", source, None, f"immich:{folder.name}#{fingerprint(folder / 'visual' / 'model.onnx')}")
    if not sep or backend not in {"hf", "openclip"} or not rest:
        raise ModelLoadError(
            f"bad model spec '{spec}': use hf:<hub id or folder>, openclip:<arch>@<tag or file>, onnx:<folder>, "
            f"openclip:<folder>, or an alias ({', '.join([*aliases(), DEMO_ALIAS])})"
        )
    if backend == "hf":
        folder = Path(rest).expanduser()
        if folder.is_dir():
            return ModelSpec("hf", str(folder.resolve()), None, f"hf:{folder.resolve().name}#{fingerprint(folder)}")
        return ModelSpec("hf", rest, None, f"hf:{rest}", alias)
    rest, tokenizer = _tokenizer_option(rest)
    arch, _, pretrained = rest.partition("@")
    folder = Path(arch).expanduser()
    if folder.is_dir():
        return ModelSpec("openclip", str(folder.resolve()), None,
                         f"openclip:{folder.resolve().name}#{fingerprint(folder)}", tokenizer=tokenizer)
    if not pretrained:
        raise ModelLoadError(
            f"openclip spec '{spec}' needs weights: openclip:{arch}@<pretrained tag or checkpoint file>"
        )
    weights = Path(pretrained).expanduser()
    if weights.is_file():
        return ModelSpec("openclip", arch, str(weights.resolve()), f"openclip:{arch}@{weights.stem}#{fingerprint(weights)}",
                         tokenizer=tokenizer)
    if pretrained.startswith((".", "/", "~")) or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}")
    return ModelSpec("openclip", arch, pretrained, f"openclip:{arch}@{pretrained}", alias, tokenizer)


def _onnx_spec(rest: str) -> ModelSpec:
    """``onnx:<folder>``: a validated searchlite ONNX model folder; its id is the exported model's."""
    from searchlite.models.onnx_model import read_model_meta

    folder = Path(rest).expanduser()
    meta = read_model_meta(folder) if folder.is_dir() else None
    if meta is None:
        raise ModelLoadError(f"onnx:{rest} is not a folder with a valid searchlite ONNX model (model.json, "
                             "visual.onnx, text/); write one with `searchlite models export SPEC --to DIR`")
    return ModelSpec("onnx", str(folder.resolve()), None, meta["model_id"])


def onnx_export_of(spec: ModelSpec) -> Path | None:
    """The validated ONNX export that comes with a spec: an ``onnx:`` folder itself, or an ``onnx/``
    folder beside a local model's weights (the bundled demo model's) exported from the same weights."""
    from searchlite.models.onnx_model import read_model_meta

    if spec.backend == "onnx":
        return Path(spec.source)
    folder = Path(spec.source) / "onnx"
    if spec.source.startswith("/") and folder.is_dir():
        meta = read_model_meta(folder)
        if meta is not None and meta["model_id"] == spec.model_id:
            return folder
    return None


def _tokenizer_option(rest: str) -> tuple[str, str | None]:
    """``ARCH@weights?tokenizer=/folder`` -> (``ARCH@weights``, absolute folder or hub id)."""
    rest, sep, query = rest.partition("?")
    if not sep:
        return rest, None
    key, eq, value = query.partition("=")
    if key != "tokenizer" or not eq or not value:
        raise ModelLoadError(f"bad openclip spec option '?{query}': the one option is ?tokenizer=<folder or hub id>")
    folder = Path(value).expanduser()
    if folder.is_dir():
        return rest, str(folder.resolve())
    if value.startswith((".", "/", "~")):
        raise ModelLoadError(f"tokenizer folder not found: {value}")
    return rest, value


@lru_cache(maxsize=8)
def _load(spec: ModelSpec, device: str, batch_size: int, precision: str) -> Embedder:
    from searchlite.models.precision import configure

    if spec.backend == "hf":
        from searchlite.models.hf import HFEmbedder

        emb = HFEmbedder(spec.source, spec.model_id, device=device, batch_size=batch_size, precision="fp32",
                         entry=spec.entry)
    else:
        from searchlite.models.openclip import OpenClipEmbedder

        entry = spec.entry
        emb = OpenClipEmbedder(spec.source, spec.pretrained, spec.model_id, device=device,
                               batch_size=batch_size, precision="fp32",
                               tokenizer=spec.tokenizer or (entry.text.get("tokenizer") if entry else None),
                               lang=entry.lang if entry else None)
    return configure(emb, precision)  # resolved for the device and validated against fp32


@lru_cache(maxsize=8)
def load_onnx(folder: str, batch_size: int = 32, precision: str = "fp32") -> Embedder:
    """The ONNX engine on an export folder (cached per process); ``int8``: the validated quantized
    image tower (see :mod:`searchlite.models.quantize`)."""
    from searchlite.models.onnx_model import OnnxEmbedder

    emb = OnnxEmbedder(Path(folder), batch_size=batch_size)
    if precision == "int8":
        from searchlite.models.quantize import use_int8

        use_int8(emb)
    return emb


@lru_cache(maxsize=8)
def load_immich(spec: ModelSpec, batch_size: int = 32, precision: str = "fp32") -> Embedder:
    """The ONNX engine on an Immich-layout folder (see :mod:`searchlite.models.immich`)."""
    from searchlite.models.immich import load, resolve_folder

    emb = load(resolve_folder(spec.source), spec.model_id, batch_size)
    if precision == "int8":
        from searchlite.models.quantize import use_int8

        use_int8(emb)
    return emb


def load_embedder(spec: str | ModelSpec, device: str = "auto", batch_size: int = 32,
                  precision: str = "auto", runtime: str = "auto") -> Embedder:
    """Load (or reuse from this process's cache) the Embedder for a spec string, in ``precision``
    (auto|fp32|bf16|fp16|int8; see :mod:`searchlite.models.precision`) on ``runtime`` (auto|torch|onnx;
    see :mod:`searchlite.models.runtime`). ``onnx`` without an export at hand loads the torch model:
    the library exports it (:meth:`searchlite.library.Library.index`)."""
    from searchlite.models.base import resolve_device
    from searchlite.models.precision import check_precision
    from searchlite.models.runtime import check_runtime, require_torch, wants_onnx

    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    check_runtime(runtime)
    precision = check_precision(precision)
    if parsed.backend == "immich":
        return load_immich(parsed, batch_size, "int8" if precision == "int8" else "fp32")
    export = onnx_export_of(parsed)
    if export is not None and (parsed.backend == "onnx" or wants_onnx(runtime, precision, True)):
        return load_onnx(str(export), batch_size, "int8" if precision == "int8" else "fp32")
    require_torch(f"model {parsed.canonical}")
    if precision == "int8":  # int8 is the ONNX engine's: the torch model is loaded to be exported
        precision = "fp32"
    if parsed.backend == "openclip":  # a missing hub tokenizer fails here, before torch is imported
        from searchlite.models.openclip import preflight

        entry = parsed.entry
        preflight(parsed.source, parsed.tokenizer or (entry.text.get("tokenizer") if entry else None))
    return _load(parsed, resolve_device(device), batch_size, check_precision(precision))
