"""The query-vector cache: recent query embeddings per model, in bounded process memory.

It is kept off the catalog on purpose: a search (even a cache hit) never opens a write
transaction, so readers never wait on an index run's write lock, and a library on read-only
media needs no special case. Keys are hashed (a long template or query costs 16 bytes here);
each model keeps at most ``per_model`` entries and the cache at most ``models`` models, least
recently used dropped first. One cache serves the process (:func:`shared`): every ``Library``
of a library folder in a process shares its entries, under a key naming the catalog file.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

#: query embeddings kept per model by default (Immich keeps an LRU of 100), and at most
PER_MODEL = 256
MAX_PER_MODEL = 4096
#: models (of any libraries) a process keeps queries for
MODELS = 64


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class QueryCache:
    """A thread-safe LRU of query vectors, per model, keyed by a hash of the query key."""

    def __init__(self, per_model: int = PER_MODEL, models: int = MODELS) -> None:
        self.per_model, self.max_models = per_model, models
        self._models: OrderedDict[Hashable, OrderedDict[bytes, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: Hashable, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (each hit becomes the most recent)."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            entries = self._models.get(model)
            if not entries:
                return out
            self._models.move_to_end(model)
            for key in keys:
                digest = _digest(key)
                vector = entries.get(digest)
                if vector is not None:
                    entries.move_to_end(digest)
                    out[key] = vector
        return out

    def put(self, model: Hashable, vectors: dict[str, np.ndarray], keep: int | None = None) -> None:
        """Remember vectors, keeping the ``keep`` (default ``per_model``) most recent of the model."""
        limit = max(1, min(keep or self.per_model, MAX_PER_MODEL))
        with self._lock:
            entries = self._models.setdefault(model, OrderedDict())
            self._models.move_to_end(model)
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)
            for key, vector in vectors.items():
                digest = _digest(key)
                stored = np.array(vector, dtype=np.float32, copy=True)
                stored.setflags(write=False)
                entries[digest] = stored
                entries.move_to_end(digest)
            while len(entries) > limit:
                entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(entries) for entries in self._models.values())

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


_SHARED = QueryCache()


def shared() -> QueryCache:
    """The process's query cache."""
    return _SHARED
