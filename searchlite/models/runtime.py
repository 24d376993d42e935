"""Which engine runs a model's towers: ``torch`` (the reference) or ``onnx`` (onnxruntime).

``auto``: a model that already has a validated ONNX export (an ``onnx:`` folder, the export bundled
beside a local model, e.g. the demo model's, or the library's own export of it) runs on ONNX when torch
is not installed, or when ``int8`` is asked for; otherwise on torch. ``onnx``: export once into the
library (needs torch for that one step) and run on ONNX. ``torch``: always torch (needs the
``searchlite[torch]`` extra).
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from searchlite.errors import ModelLoadError

RUNTIMES = ("auto", "torch", "onnx")
#: What a user is told when a spec needs torch and torch is not installed.
TORCH_EXTRA = "install searchlite[torch]"


def check_runtime(runtime: str) -> str:
    """The runtime name, or a one-line error naming the choices."""
    if runtime not in RUNTIMES:
        raise ModelLoadError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return runtime


@lru_cache(maxsize=1)
def torch_available() -> bool:
    """Whether torch can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require_torch(what: str) -> None:
    """A one-line ModelLoadError naming the extra when torch is missing."""
    if not torch_available():
        raise ModelLoadError(f"{what} needs torch: {TORCH_EXTRA}")


def wants_onnx(runtime: str, precision: str, has_export: bool) -> bool:
    """Whether a model should run on the ONNX engine (see the module docstring)."""
    if runtime == "onnx" or precision == "int8":
        return True
    if runtime == "torch":
        return False
    return has_export and not torch_available()
