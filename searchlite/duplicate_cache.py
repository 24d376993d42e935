"""Duplicate groups computed once per library state and kept in memory.

Finding duplicates reads every vector (minutes at a million photos); the web page asks for it
page by page. :class:`GroupsCache` keeps the groups of the latest few requests keyed by what they
depend on: the model's index state (committed vectors, segments, tombstones), the images table
(:func:`images_state`: count, newest id, newest index time, and sums that change when a photo is
moved or renamed), the threshold, the hash distance and the filters. Any index run, move or
deletion changes the key, so a stale result is never served; pages read the cached list.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from searchlite.catalog import Catalog, ImageRow

#: Results kept (one per model / threshold / filter combination asked for recently).
CACHE_SIZE = 4


def images_state(catalog: Catalog) -> tuple:
    """A fingerprint of the images table that changes with any add, removal, re-index or move."""
    with catalog.Session() as s:
        return tuple(s.execute(select(func.count(), func.max(ImageRow.id), func.max(ImageRow.indexed_at),
                                      func.total(ImageRow.root_id), func.total(func.length(ImageRow.relpath)),
                                      func.count(ImageRow.phash), func.count(ImageRow.sha256))
                               .where(ImageRow.status == "ok")).one())


class GroupsCache:
    """A small LRU of duplicate results keyed by library state and request."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple, list] = OrderedDict()
        self._lock = threading.Lock()
        self._busy: dict[tuple, threading.Lock] = {}
        self.computed = 0  # how many times a result was computed (not read from the cache)

    @staticmethod
    def key(model_ref: int, index_version: Any, images: tuple, threshold: float, hash_distance: int | None,
            filters: Any) -> tuple:
        text = json.dumps(filters.to_json(), sort_keys=True) if filters is not None and filters.active() else ""
        return model_ref, index_version, images, round(float(threshold), 9), hash_distance, text

    def get(self, key: tuple, compute: Callable[[], list]) -> list:
        """The cached groups for ``key``, computed once (concurrent askers wait for the first)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            groups = compute()
            with self._lock:
                self.computed += 1
                self._items[key] = groups
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._busy.pop(key, None)
            return groups

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


__all__ = ["GroupsCache", "images_state"]
