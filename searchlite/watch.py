"""Keep a library current with its folders: file-system events (``watchdog``: inotify, FSEvents,
ReadDirectoryChangesW) debounced into batches, each batch one run of the ordinary incremental
indexer over the folders it touched, plus a periodic full scan for events a platform drops.

Why this shape: the indexer already decides new / changed / moved / deleted set-wise and commits in
checkpoints, so the watcher only has to say *where* to look. A move is seen as a deletion in one
folder and a creation in another; both folders go into the same run, where the new file's content
hash matches the vanished one and the image keeps its id and vectors. A crash loses at most the
batch in flight (the next scan redoes it). One writer at a time: a batch that finds the library
lock taken (an `index` run, another watcher) is retried later, nothing is dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from searchlite.errors import LibraryError
from searchlite.indexer.exclude import inside_library

log = logging.getLogger(__name__)

#: Seconds without a new event before a batch is indexed.
DEBOUNCE = 2.0
#: A batch is indexed at the latest this long after its first event, even while events keep coming.
MAX_DELAY = 30.0
#: Seconds between full scans of the watched folders (0 or None: never).
RESCAN_EVERY = 3600.0
#: Seconds before a batch that found the library locked is tried again.
RETRY = 5.0
#: Only these events can change what a folder holds (watchdog >= 4 also reports opens and
#: read-only closes, which the indexer's own reads would cause).
CHANGES = frozenset({"created", "modified", "moved", "deleted", "closed"})


@dataclass
class Run:
    """One index run of the watcher."""

    folders: list[str]
    stats: Any  # IndexStats
    full: bool = False


@dataclass
class _Pending:
    folders: set[str] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    not_before: float = 0.0


def _interesting(path: str, is_dir: bool) -> bool:
    from searchlite.imaging import IMAGE_EXTENSIONS

    suffix = os.path.splitext(path)[1].lower()
    return is_dir or suffix in IMAGE_EXTENSIONS or suffix == ".xmp"  # round4-text: a sidecar edit re-reads text


class Watcher:
    """Watches folders and indexes what changes; ``stop()`` ends it (see :func:`start_watching`)."""

    def __init__(self, lib: Any, roots: Sequence[str | Path], models: Sequence[str] = (), *,
                 debounce: float = DEBOUNCE, max_delay: float = MAX_DELAY, rescan_every: float | None = RESCAN_EVERY,
                 retry: float = RETRY, include_hidden: bool = False, index_options: dict | None = None,
                 on_run: Callable[[Run], None] | None = None) -> None:
        # a read-only library could never take a batch: one clear error now, not a loop of failures
        lib.catalog.require_writable("watch")
        self.library_path = Path(lib.path)
        self.roots = [str(Path(r).expanduser().resolve()) for r in roots]
        for root in self.roots:
            if not Path(root).is_dir():
                raise LibraryError(f"not a folder: {root}")
        self.models = list(models)
        self.debounce, self.max_delay, self.retry = debounce, max_delay, retry
        self.rescan_every = rescan_every or None
        self.include_hidden = include_hidden
        self.index_options = dict(index_options or {})
        self.on_run = on_run
        self.runs: list[Run] = []
        self.errors: list[str] = []
        self._writer = _writer_library(lib)
        self._pending = _Pending()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._busy = False
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._next_scan = float("inf")

    # -- events ----------------------------------------------------------------------------------------
    def _event(self, event: Any) -> None:
        if event.event_type not in CHANGES:
            return
        for path in (event.src_path, getattr(event, "dest_path", "") or ""):
            path = os.fsdecode(path)
            if not path or not _interesting(path, event.is_directory):
                continue
            if inside_library(path, self.library_path):
                continue  # the library's own files (a library kept inside a watched folder)
            root = next((r for r in self.roots if Path(path).is_relative_to(r)), None)
            if root is None or (not self.include_hidden and any(
                    part.startswith(".") for part in Path(path).relative_to(root).parts)):
                continue
            folder = path if event.is_directory and event.event_type != "deleted" else os.path.dirname(path)
            if event.is_directory and event.event_type in ("moved", "deleted"):
                folder = os.path.dirname(path)  # the old and new names' parent sees both sides
            self.notify(folder)

    def notify(self, folder: str | Path) -> None:
        """Mark a folder as changed (events call this; so may a caller that knows better)."""
        now = time.monotonic()
        with self._cond:
            if not self._pending.folders:
                self._pending.first = now
            self._pending.folders.add(str(folder))
            self._pending.last = now
            self._cond.notify_all()

    # -- batches -----------------------------------------------------------------------------------------
    def _targets(self, folders: set[str]) -> list[str]:
        """The fewest existing folders inside the watched roots that cover every changed folder."""
        out: set[str] = set()
        for folder in folders:
            path = Path(folder)
            root = next((r for r in self.roots if path == Path(r) or path.is_relative_to(r)), None)
            if root is None:
                continue
            while not path.is_dir() and path != Path(root):
                path = path.parent  # a deleted (or renamed-away) folder: its parent shows it gone
            out.add(str(path))
        ordered = sorted(out, key=lambda p: len(Path(p).parts))
        kept: list[str] = []
        for p in ordered:
            if not any(Path(p).is_relative_to(k) for k in kept):
                kept.append(p)
        return kept

    def _due(self, now: float) -> bool:
        p = self._pending
        if not p.folders or now < p.not_before:
            return False
        return now - p.last >= self.debounce or now - p.first >= self.max_delay

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                full = now >= self._next_scan
                if not full and not self._due(now):
                    self._cond.wait(timeout=min(self.debounce / 4, 0.5))
                    continue
                folders = set(self.roots) if full else set(self._pending.folders)
                if not full:
                    self._pending = _Pending()
                self._busy = True
            try:
                self._index(folders, full)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _index(self, folders: set[str], full: bool) -> None:
        targets = self.roots if full else self._targets(folders)
        if not targets:
            return
        try:
            stats = self._writer.index(targets, self.models, include_hidden=self.include_hidden, **self.index_options)
        except LibraryError as exc:
            if "another searchlite process is writing" not in str(exc):
                self.errors.append(str(exc))
                log.warning("watch: indexing %s failed: %s", targets, exc)
                if full:
                    self._scheduled()
                return
            log.info("watch: library busy, retrying %s in %.0f s", targets, self.retry)
            with self._cond:  # put the batch back, try again later
                if full:
                    self._next_scan = time.monotonic() + self.retry
                else:
                    if not self._pending.folders:
                        self._pending.first = time.monotonic()
                    self._pending.folders |= folders
                    self._pending.last = time.monotonic()
                    self._pending.not_before = time.monotonic() + self.retry
            return
        except Exception as exc:  # noqa: BLE001 - a watcher must outlive one failed batch
            self.errors.append(f"{type(exc).__name__}: {exc}")
            log.exception("watch: indexing %s failed", targets)
            return
        if full:
            self._scheduled()
        run = Run(list(targets), stats, full)
        self.runs.append(run)
        if self.on_run is not None:
            self.on_run(run)

    def _scheduled(self) -> None:
        self._next_scan = time.monotonic() + self.rescan_every if self.rescan_every else float("inf")

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self, initial_scan: bool = True) -> Watcher:
        """Begin watching (and, with ``initial_scan``, index the folders once now, catching up
        with what changed while nobody watched)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:  # noqa: D102 - watchdog's hook
                watcher._event(event)

        self._observer = Observer()
        for root in self.roots:
            self._observer.schedule(Handler(), root, recursive=True)
        self._observer.start()
        if initial_scan:
            self._next_scan = time.monotonic()
        else:
            self._scheduled()
        self._thread = threading.Thread(target=self._loop, name="searchlite-watch", daemon=True)
        self._thread.start()
        return self

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no change is waiting and no run is in progress (True), or ``timeout``."""
        end = time.monotonic() + timeout
        with self._cond:
            while self._pending.folders or self._busy or self._next_scan <= time.monotonic():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 0.2))
        return True

    def stop(self) -> None:
        """Stop watching; a run in progress finishes first."""
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _writer_library(lib: Any) -> Any:
    """A Library of the same folder for the watcher's thread (its own catalog connections), which
    loads each model once instead of once per batch."""
    from searchlite.library import Library

    class WatchLibrary(Library):
        _loaded: dict[str, Any]

        def embedder(self, spec: str) -> Any:
            cache = self.__dict__.setdefault("_loaded", {})
            if spec not in cache:
                cache[spec] = super().embedder(spec)
            return cache[spec]

    return WatchLibrary(lib.path, device=lib.device, batch_size=lib.batch_size,
                        precision=getattr(lib, "precision", "auto"), resident=True)


def start_watching(lib: Any, roots: Sequence[str | Path], models: Sequence[str] = (), *,
                   initial_scan: bool = True, **options: Any) -> Watcher:
    """Watch ``roots`` of a library in background threads and index what changes; returns the
    running :class:`Watcher` (``.stop()``, ``.wait_idle()``, ``.runs``). Options: ``debounce``,
    ``max_delay``, ``rescan_every`` (seconds; None: no periodic scan), ``retry``, ``include_hidden``,
    ``index_options`` (passed to ``Library.index``), ``on_run`` (called after each run)."""
    return Watcher(lib, roots, models, **options).start(initial_scan=initial_scan)


__all__ = ["Run", "Watcher", "start_watching"]
