"""Per-model locks of a library, shared by every front end of one process: a model's embedder and
index are used by one request at a time, while requests on other models (and reads that need no
model: thumbnails, files) run beside them. The library's own lock guards state changes only."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

_LOCKS: weakref.WeakKeyDictionary[Any, dict[int, threading.Lock]] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(lib: Any, model_ref: int) -> threading.Lock:
    """The lock of one model of a library (shared by every front end of this process)."""
    with _LOCKS_GUARD:
        locks = _LOCKS.setdefault(lib, {})
        return locks.setdefault(model_ref, threading.Lock())


@contextlib.contextmanager
def models_locked(lib: Any, model_refs: Iterable[int]) -> Iterator[None]:
    """Hold the locks of some models (taken in id order: two requests never deadlock)."""
    with contextlib.ExitStack() as stack:
        for ref in sorted(set(model_refs)):
            stack.enter_context(model_lock(lib, ref))
        yield


def indexed_refs(lib: Any) -> list[int]:
    return [m.id for m in lib.catalog.models(indexed_only=True)]
