"""searchlite: semantic image search with SigLIP, CLIP and ALIGN.

The public API is re-exported lazily so that ``import searchlite`` (and the CLI) stay instant.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: name -> module. These are the types the README's Python API uses (and the only ones the front
#: ends, cli/ web/ server.py, import): the library, its results and filters, index statistics, errors.
_EXPORTS = {
    "Library": "searchlite.library",
    "SearchResult": "searchlite.query",
    "Filters": "searchlite.query",
    "IndexStats": "searchlite.indexer",
    "load_embedder": "searchlite.models.registry",
    "parse_spec": "searchlite.models.registry",
    "load_image": "searchlite.imaging",
    "SearchliteError": "searchlite.errors",
    "ModelLoadError": "searchlite.errors",
    "ImageDecodeError": "searchlite.errors",
    "LibraryError": "searchlite.errors",
    "QueryError": "searchlite.errors",
    "DatasetError": "searchlite.errors",
}

__all__ = sorted(_EXPORTS)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'searchlite' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
