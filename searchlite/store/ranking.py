"""The ranking of one query, kept so that pages read it instead of recomputing it.

A :class:`Ranking` holds the (score, row) pairs of one query ranked so far. It grows by windows of
the search layer (:meth:`ModelIndex.search`): window j asks for the top ``WINDOW * 2**j`` with
efSearch / nprobe widened by the same factor, and appends the rows not ranked yet, re-scored
exactly and ordered by (score desc, row asc). When the approximate index runs out (fewer rows than
asked, nothing new, or a window past :data:`EXACT_SWITCH` of the live rows), every remaining row is
scored exactly from the store and appended: the ranking then holds every live row (of the filter)
exactly once, so pages never skip or repeat an image. An exact search (flat index, or a filter
scored exactly) gives prefix-consistent windows, so the same code serves both.

:class:`RankingCache` keeps the latest rankings (a small LRU keyed by the index state, the query
vector, the filter's rows and the exclusions): page n reads what pages 0..n-1 computed.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from searchlite.store.segments import ModelIndex

log = logging.getLogger(__name__)

#: The first window (rows); each next window doubles the rows asked for and the search's width.
WINDOW = 100
#: An approximate ranking asked for more than this fraction of the live rows is finished exactly.
EXACT_SWITCH = 0.25
#: Rankings kept per model index, and rows kept in all of them together (12 bytes a row).
CACHE_RANKINGS = 16
CACHE_ROWS = 8_000_000


def _digest(a: np.ndarray | None) -> bytes | None:
    return None if a is None else hashlib.blake2b(np.ascontiguousarray(a).tobytes(), digest_size=16).digest()


class Ranking:
    """The ranking of one query over one snapshot of a model's index, grown on demand."""

    def __init__(self, index: ModelIndex, query: np.ndarray, allowed: np.ndarray | None,
                 exclude: np.ndarray | None) -> None:
        self.query = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        self.allowed = allowed
        self.exclude = exclude
        self.exact_index = index.is_exact(allowed)
        self.scores = np.zeros(0, np.float32)
        self.rows = np.zeros(0, np.int64)
        self.complete = False
        self.searches = 0  # index searches made (windows and the exact finish)
        self.live = np.zeros(0, bool)  # per ranked row: whether it maps to a live image (checked prefix)
        self.lock = threading.RLock()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def held(self) -> int:
        """Array elements this ranking keeps (ranked rows and the filter's rows): its memory, in units."""
        return len(self.rows) + (len(self.allowed) if self.allowed is not None else 0)

    def _append(self, scores: np.ndarray, rows: np.ndarray) -> int:
        fresh = ~np.isin(rows, self.rows)
        scores, rows = scores[fresh].astype(np.float32), rows[fresh].astype(np.int64)
        order = np.lexsort((rows, -scores))
        self.scores = np.concatenate([self.scores, scores[order]])
        self.rows = np.concatenate([self.rows, rows[order]])
        return len(rows)

    def extend(self, index: ModelIndex) -> None:
        """Rank one more window (or finish exactly); a no-op once complete."""
        if self.complete:
            return
        target = max(2 * len(self.rows), WINDOW)
        if not self.exact_index and target > EXACT_SWITCH * max(index.live, 1):
            self.finish_exact(index)
            return
        scores, rows = index.search(self.query, target, self.allowed, self.exclude, widen=target / WINDOW)
        self.searches += 1
        added = self._append(scores, rows)
        if len(rows) < target or not added:
            if self.exact_index:
                self.complete = True
            else:
                self.finish_exact(index)

    def finish_exact(self, index: ModelIndex) -> None:
        """Append every remaining row, scored exactly from the store: the ranking is complete."""
        if self.complete:
            return
        scores, rows = index.exact_ranking(self.query, self.allowed, self.exclude)
        self.searches += 1
        self._append(scores, rows)
        self.complete = True

    def page(self, index: ModelIndex, offset: int, k: int, is_live: Callable[[np.ndarray], np.ndarray],
             min_score: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of live results [offset, offset+k) in ranking order, among rows scoring at
        least ``min_score`` (a complete set: the ranking is finished exactly when its windows run
        below it). ``is_live(rows)`` says which rows map to a live image (checked once a row)."""
        need = offset + k
        with self.lock:
            while True:
                good = self.live & (self.scores[:len(self.live)] >= min_score) if min_score is not None else self.live
                count = int(good.sum())
                if count >= need:
                    break
                if len(self.live) < len(self.rows):  # check the next piece of ranked rows
                    lo = len(self.live)
                    hi = min(len(self.rows), lo + max(need - count, 100))
                    self.live = np.concatenate([self.live, np.asarray(is_live(self.rows[lo:hi]), bool)])
                    continue
                if self.complete:
                    break
                if min_score is not None and len(self.rows) and self.scores[-1] < min_score:
                    self.finish_exact(index)  # the windows ran below the cut: the rest, exactly
                else:
                    self.extend(index)
            at = np.flatnonzero(good)[offset:need]
            return self.scores[at], self.rows[at]


class RankingCache:
    """A small LRU of rankings keyed by (index state, query, filter rows, exclusions, cut)."""

    def __init__(self, size: int = CACHE_RANKINGS, max_rows: int = CACHE_ROWS) -> None:
        self.size = size
        self.max_rows = max_rows
        self._items: OrderedDict[tuple, Ranking] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: ModelIndex, query: np.ndarray, allowed: np.ndarray | None, exclude: np.ndarray | None,
            cut: float | None = None) -> Ranking:
        """The cached ranking of this query on the index's current state, or a new one."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(-1)
        key = (index.model_ref, index.version, _digest(q), _digest(allowed), _digest(exclude), cut)
        with self._lock:
            ranking = self._items.get(key)
            if ranking is None:
                ranking = self._items[key] = Ranking(index, q, allowed, exclude)
            self._items.move_to_end(key)
            self._trim()
            return ranking

    def _trim(self) -> None:
        while len(self._items) > self.size or (
                len(self._items) > 1 and sum(r.held for r in self._items.values()) > self.max_rows):
            self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


__all__ = ["EXACT_SWITCH", "WINDOW", "Ranking", "RankingCache"]
