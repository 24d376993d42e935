"""The indexer's text stage: name, folder, camera, XMP/IPTC, place and (opt-in) OCR text of each photo.

Runs beside decoding: :meth:`TextStage.prepare` (in a decode thread) reads the metadata and queues OCR on
the stage's own worker thread, so OCR overlaps decoding and embedding; :meth:`TextStage.apply` writes
the fields in the same catalog transaction as the image row. ``images.text_sig`` records what the text
was read from (the path and each sidecar's name, mtime and size): a sidecar edit or a move changes it,
so the next run re-reads the text of that photo without re-embedding it. ``images.ocr_version`` records
the OCR model that read a photo; OCR failures go to ``images.text_error`` (never fatal).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from searchlite import textindex
from searchlite.catalog import ImageRow, chunked, join_path
from searchlite.metatext import MetaText, read_meta, sidecar_paths
from searchlite.paths import printable
from searchlite.textnorm import name_words

log = logging.getLogger(__name__)

#: bump when what the stage extracts changes: every photo's text is then re-read once (no re-embedding)
TEXT_VERSION = 1
_FIELDS_NOT_OCR = tuple(f for f in textindex.FIELDS if f != "ocr")


@dataclass
class TextJob:
    """What the text stage found for one decoded file (attached to ``Done.text``)."""

    path: str
    sig: str | None = None
    meta: MetaText | None = None
    place: str = ""
    ocr: Future | None = None
    timings: dict[str, float] = field(default_factory=dict)


def name_fields(root: str, relpath: str) -> dict[str, str]:
    """``name`` (the file name's words) and ``folder`` (the words of the root's name and the relative folders)."""
    rel = relpath.replace("\\", "/")
    folder, _, name = rel.rpartition("/")
    root_name = os.path.basename(root.rstrip("/\\")) if "://" not in root else root.rstrip("/").rsplit("/", 1)[-1]
    folders = [root_name, *folder.split("/")]
    # a name that is not UTF-8 keeps its other words; its odd bytes show as \xff (printable)
    return {"name": printable(name_words(name)), "folder": printable(name_words(" ".join(p for p in folders if p)))}


class _Listings:
    """Folder listings (lower-cased name -> name) of XMP files, cached for a run: one ``scandir`` per folder."""

    def __init__(self, keep: int = 256) -> None:
        self._cache: OrderedDict[str, dict[str, tuple[str, int, int]]] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def get(self, folder: str) -> dict[str, tuple[str, int, int]]:
        with self._lock:
            if folder in self._cache:
                self._cache.move_to_end(folder)
                return self._cache[folder]
        found: dict[str, tuple[str, int, int]] = {}
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.name.lower().endswith(".xmp") and entry.is_file():
                        st = entry.stat()
                        found[entry.name.lower()] = (entry.name, st.st_mtime_ns, st.st_size)
        except OSError:
            pass
        with self._lock:
            self._cache[folder] = found
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
        return found

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()


class TextStage:
    """Extracts and stores the text fields of the photos one index run touches."""

    def __init__(self, ocr: bool = False, places: bool | None = None) -> None:
        from searchlite import places as places_mod

        self.ocr_enabled = ocr
        self.ocr_version: str | None = None
        if ocr:
            from searchlite import ocr as ocr_mod

            self.ocr_version = ocr_mod.version()  # a clear error now when the extra is missing
        self.places = places_mod.available() if places is None else places
        self._listings = _Listings()
        self._pool: ThreadPoolExecutor | None = None
        self._engine_lock = threading.Lock()
        self._ocr_due: set[int] = set()  # scanned images not yet read by this OCR model (OCR on)
        self.timings: dict[str, float] = {"meta_s": 0.0, "ocr_gate_s": 0.0, "ocr_read_s": 0.0}
        self.counts: dict[str, int] = {"ocr_photos": 0, "ocr_with_text": 0, "ocr_failed": 0, "text_refreshed": 0}

    # -- what needs text work --------------------------------------------------------------------
    def _sidecars(self, path: str) -> list[tuple[Path, int, int]]:
        """The sidecars of an image with their mtime and size (from the cached folder listing)."""
        if "://" in path:
            return []
        listing = self._listings.get(os.path.dirname(path))
        found = sidecar_paths(Path(path), {k: v[0] for k, v in listing.items()})
        return [(p, *listing[p.name.lower()][1:]) for p in found]

    def signature(self, path: str) -> str:
        """What a photo's text is read from: its path, its sidecars (name, mtime, size) and the gazetteer."""
        sidecars = [[p.name, mtime, size] for p, mtime, size in self._sidecars(path)]
        # "g": whether place names were available (installing the extra later fills them in)
        # ASCII JSON: a file name that is not UTF-8 (surrogate escapes) is stored as \\udcxx, never refused
        return json.dumps({"v": TEXT_VERSION, "g": int(self.places), "p": path, "x": sidecars},
                          separators=(",", ":"))

    def read(self, path: str) -> TextJob:
        """The metadata text of one file (EXIF, XMP, IPTC, sidecars, place), without OCR."""
        start = time.perf_counter()
        job = TextJob(path, sig=self.signature(path))
        if "://" not in path:
            job.meta = read_meta(Path(path), [p for p, _, _ in self._sidecars(path)])
            if self.places and job.meta.lat is not None:
                job.place = self._place(job.meta.lat, job.meta.lon)
        job.timings["meta_s"] = time.perf_counter() - start
        return job

    def due(self, s, rows: list, roots: Mapping[int, str]) -> set[int]:
        """Ids among scanned ``rows`` (image_id, relpath, root_id) whose text must be read again:
        a new signature (sidecar edited, path changed, older stage) or OCR on and not yet read by this model."""
        known: dict[int, tuple[str | None, str | None]] = {}
        for part in chunked(r.image_id for r in rows):
            for image_id, sig, version in s.execute(select(ImageRow.id, ImageRow.text_sig, ImageRow.ocr_version)
                                                    .where(ImageRow.id.in_(part))).tuples():
                known[image_id] = (sig, version)
        out = set()
        for r in rows:
            sig, version = known.get(r.image_id, (None, None))
            if self.ocr_enabled and version != self.ocr_version:
                self._ocr_due.add(r.image_id)
                out.add(r.image_id)
            elif sig != self.signature(join_path(roots[r.root_id], r.relpath)):
                out.add(r.image_id)
        return out

    # -- extraction (decode threads) -----------------------------------------------------------------
    def prepare(self, done: Any) -> None:
        """Read the metadata text of a decoded file and queue its OCR (runs in a decode thread)."""
        if done.error:
            done.text = None
            return
        job = self.read(done.work.path)
        if self._wants_ocr(done):
            job.ocr = self._ocr_pool().submit(self._read_ocr, job.path)
        done.text = job

    def _wants_ocr(self, done: Any) -> bool:
        if not self.ocr_enabled or done.moved_from is not None or "://" in done.work.path:
            return False
        new_content = done.work.state == "new" or (done.work.state == "changed" and not done.same_content)
        return new_content or done.work.image_id in self._ocr_due

    def _place(self, lat: float, lon: float) -> str:
        from searchlite.places import place_text

        try:
            return place_text(lat, lon)
        except Exception as exc:  # noqa: BLE001 - a gazetteer problem must not fail indexing
            log.warning("no place name for %.5f,%.5f: %s", lat, lon, exc)
            return ""

    def _ocr_pool(self) -> ThreadPoolExecutor:
        with self._engine_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="ocr")
            return self._pool

    def _read_ocr(self, path: str):
        from searchlite.ocr import read_file

        return read_file(path)

    def close(self) -> None:
        """Stop the OCR worker (pending reads are cancelled: their images were not committed)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._listings.forget()

    def wait(self, batch: list) -> None:
        """Wait for the OCR of a batch before its transaction opens (the write lock is never held for OCR)."""
        from concurrent.futures import wait

        for d in batch:
            if getattr(d, "text", None) is None and not d.error:  # an engine without the decode hook (Ray)
                try:
                    self.prepare(d)
                except Exception as exc:  # noqa: BLE001 - apply() falls back to the names alone
                    log.warning("no text for %s: %s", d.work.path, exc)
        futures = [d.text.ocr for d in batch if getattr(d, "text", None) is not None and d.text.ocr is not None]
        if futures:
            wait(futures)

    # -- storage (the image row's transaction) ---------------------------------------------------------
    def apply(self, s, row: ImageRow, done: Any, roots: Mapping[int, str]) -> None:
        """Write the text fields of one committed image row (``row`` already holds its final path)."""
        self._ocr_due.discard(done.work.image_id)
        if done.error:
            textindex.replace_fields(s, row.id, dict.fromkeys(textindex.FIELDS))
            row.lat = row.lon = row.text_sig = row.ocr_version = row.text_error = None
            return
        job: TextJob | None = getattr(done, "text", None)
        path = join_path(roots[row.root_id], row.relpath)
        if job is None or job.path != path:  # the metadata read failed earlier, or the path differs
            try:
                job = self.read(path)
            except Exception as exc:  # noqa: BLE001 - never fail the image row's transaction over its text
                log.warning("no metadata text for %s: %s", path, exc)
                job = TextJob(path, sig=self.signature(path))
        fields: dict[str, str | None] = dict.fromkeys(_FIELDS_NOT_OCR)
        fields.update(name_fields(roots[row.root_id], row.relpath))
        meta = job.meta or MetaText()
        fields.update({k: v for k, v in meta.fields.items() if k in fields})
        if not fields.get("camera") and row.camera:
            fields["camera"] = row.camera  # a RAW file: the decoder's make + model
        fields["place"] = job.place
        row.lat, row.lon = meta.lat, meta.lon
        new_content = done.work.state == "new" or (done.work.state == "changed" and not done.same_content)
        if job.ocr is not None:
            fields["ocr"], row.text_error = self._ocr_text(job, path)
            row.ocr_version = self.ocr_version
        elif new_content and done.moved_from is None:
            fields["ocr"], row.ocr_version, row.text_error = None, None, None  # the old content's text is gone
        textindex.replace_fields(s, row.id, {k: printable(v) if v else v for k, v in fields.items()})
        if row.text_sig is not None and row.text_sig != job.sig and done.work.state == "same":
            self.counts["text_refreshed"] += 1
        row.text_sig = job.sig
        self.timings["meta_s"] += job.timings.get("meta_s", 0.0)

    def _ocr_text(self, job: TextJob, path: str) -> tuple[str | None, str | None]:
        try:
            result = job.ocr.result()
        except Exception as exc:  # noqa: BLE001 - OCR failures are recorded per photo, never fatal
            self.counts["ocr_failed"] += 1
            log.warning("OCR failed for %s: %s", path, exc)
            return None, f"ocr failed: {type(exc).__name__}: {exc}"
        self.counts["ocr_photos"] += 1
        self.counts["ocr_with_text"] += bool(result.lines)
        self.timings["ocr_gate_s"] += result.gate_s
        self.timings["ocr_read_s"] += result.read_s
        return result.text or None, None

    def stats(self) -> dict[str, float | int | str]:
        """For ``IndexStats.stages``: what the text stage did (nothing when it did nothing)."""
        out: dict[str, float | int | str] = {k: round(v, 3) for k, v in self.timings.items() if v}
        out.update({k: v for k, v in self.counts.items() if v})
        if out and self.ocr_version:
            out["ocr"] = self.ocr_version
        return out




# -- library settings and reports (Library.index / status / errors) ------------------------------------
OCR_META_KEY = "ocr"


def resolve_ocr(catalog: Any, requested: bool | None) -> bool:
    """Whether this run reads text in photos: ``index --ocr`` / ``--no-ocr`` are stored with the library,
    so later runs (and ``watch``) keep the choice; None keeps the stored one (off for a new library)."""
    from searchlite.catalog import Meta

    if requested is None:
        with catalog.Session() as s:
            row = s.get(Meta, OCR_META_KEY)
            return bool(row is not None and row.value == "1")
    if requested:
        from searchlite.ocr import version

        version()  # the one-line error naming the extra, before the choice is stored
    with catalog.WriteSession.begin() as s:
        s.merge(Meta(key=OCR_META_KEY, value="1" if requested else "0"))
    return requested


def text_status(catalog: Any) -> dict[str, Any]:
    """``status``: photos per text field, and whether OCR is on for this library."""
    with catalog.Session() as s:
        counts = textindex.counts(s)
    return {"text": {f: int(counts.get(f, 0)) for f in textindex.FIELDS}, "ocr_enabled": resolve_ocr(catalog, None)}


def text_errors(catalog: Any) -> list[tuple[str, str]]:
    """``errors``: (path, reason) of photos whose text could not be read (OCR failures)."""
    from searchlite.catalog import Root

    with catalog.Session() as s:
        rows = s.execute(select(Root.path, ImageRow.relpath, ImageRow.text_error)
                         .join(Root, Root.id == ImageRow.root_id)
                         .where(ImageRow.text_error.is_not(None)).order_by(ImageRow.id))
        return [(join_path(root, rel), err or "") for root, rel, err in rows]


__all__ = ["TEXT_VERSION", "TextJob", "TextStage", "name_fields", "resolve_ocr", "text_errors", "text_status"]
