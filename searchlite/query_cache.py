"""The query-vector cache: recent query embeddings per model, in bounded process memory.

It is kept off the catalog on purpose: a search (even a cache hit) never opens a write
transaction, so readers never wait on an index run's write lock, and a library on read-only
media needs no special case. Keys are hashed (a long template or query costs 32 bytes here),
and each model keeps at most ``per_model`` entries, least recently used dropped first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

#: query embeddings kept per model by default (Immich keeps an LRU of 100), and at most
PER_MODEL = 256
MAX_PER_MODEL = 4096


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class QueryCache:
    """A thread-safe LRU of query vectors, per model, keyed by a hash of the query key."""

    def __init__(self, per_model: int = PER_MODEL) -> None:
        self.per_model = per_model
        self._models: dict[int, OrderedDict[bytes, np.ndarray]] = {}
        self._lock = threading.Lock()

    def get(self, model_ref: int, keys: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (each hit becomes the most recent)."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            entries = self._models.get(model_ref)
            if not entries:
                return out
            for key in keys:
                digest = _digest(key)
                vector = entries.get(digest)
                if vector is not None:
                    entries.move_to_end(digest)
                    out[key] = vector
        return out

    def put(self, model_ref: int, vectors: dict[str, np.ndarray], keep: int | None = None) -> None:
        """Remember vectors, keeping the ``keep`` (default ``per_model``) most recent of the model."""
        limit = max(1, min(keep or self.per_model, MAX_PER_MODEL))
        with self._lock:
            entries = self._models.setdefault(model_ref, OrderedDict())
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
