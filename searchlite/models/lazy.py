"""A model that loads when something first needs it.

An index run scans before it embeds: a re-index that finds nothing new, changed or lacking a
vector never loads a model (seconds and about a gigabyte saved). ``LazyEmbedder`` stands in for
an :class:`~searchlite.models.base.Embedder`; the first attribute read loads the real one (once,
thread-safe: decode threads may ask at the same time).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class LazyEmbedder:
    """An Embedder loaded by ``loader()`` on first use; ``loaded`` tells whether it has been."""

    def __init__(self, loader: Callable[[], Any], spec: str = "") -> None:
        self._loader = loader
        self._spec = spec
        self._lock = threading.Lock()
        self._model: Any = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        """The real embedder, loading it now if needed."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    log.info("loading model %s (something needs embedding)", self._spec)
                    self._model = self._loader()
        return self._model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never load for dunder/private probes (copy, pickle, hasattr)
            raise AttributeError(name)
        return getattr(self.get(), name)


def is_loaded(embedder: Any) -> bool:
    """False only for a LazyEmbedder that has not loaded its model."""
    return not isinstance(embedder, LazyEmbedder) or embedder.loaded


__all__ = ["LazyEmbedder", "is_loaded"]
