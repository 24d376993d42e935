"""Duplicate photos: exact copies by content hash, near copies by embedding, grouped without chaining.

1. **Exact duplicates**: images whose bytes hash alike (``images.sha256``, stored by the indexer)
   form one unit; identical bytes give identical vectors, so a unit behaves as one photo below.
2. **Candidate pairs** come from the library's own index (:class:`searchlite.store.ModelIndex`): a
   FAISS *range* search of every stored vector, in chunks of :data:`QUERY_CHUNK`, over each index
   segment (radius lowered by :data:`MARGIN` because compressed codes score approximately), and an
   exact block-wise range search of the tail the segments do not cover. Every candidate is then
   verified with the exact stored vectors. Memory is bounded by the chunk and the pairs found:
   no n x n matrix is ever made.
3. **Groups without chaining** (complete linkage): a photo joins a group only when it is within
   the threshold of *every* member already in it, so A~B and B~C never pull in a C far from A.
   We chose "every other member" over "the keeper" because it does not depend on which member
   is kept: any member may be kept (the keeper rule reads EXIF from the files after grouping),
   every moved-away photo is a near copy of the one kept, and two members of a group are never
   further apart than the threshold (with "within the keeper" two members may differ by twice
   the angle: cos 0.80 at a threshold of 0.95). Seeds are taken best-keeper first, so the photo
   most worth keeping collects its copies; only a seed's own neighbours can join its group.
4. **The keeper**: most pixels, then the RAW of a RAW+JPEG pair (a RAW file, or an image with a
   RAW companion), then the largest file, then the most EXIF fields (not stored in the catalog:
   counted from the files, and only for members still tied), then the oldest capture date, then
   the path.

``find_duplicates`` is read-only; ``move_duplicates`` moves non-keepers (library lock held).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select, update

from searchlite.catalog import Catalog, ImageRow, ModelRow, Root, VectorRow, join_path
from searchlite.errors import LibraryError, QueryError
from searchlite.imaging import format_taken
from searchlite.query import Filters, allowed_rows
from searchlite.store import ModelIndex

log = logging.getLogger(__name__)

#: The threshold for models the zoo does not know (cosine of two image embeddings).
DEFAULT_THRESHOLD = 0.95
#: Query vectors per range search (memory: QUERY_CHUNK x the tail block of scores).
QUERY_CHUNK = 4096
#: Rows of the exact tail scored per block against a query chunk (4096 x 16384 floats = 256 MB).
TAIL_BLOCK = 16384
#: Inverted lists probed per query in IVF segments. A near copy lies in its original's cell or a
#: neighbouring one: planted pairs at 100k (IVF1264,SQ8), recall 0.98 at nprobe 1, 1.000 at 2, 4
#: and 16 (0.15, 0.25, 0.61 ms a query); ordinary search probes 16 for ranking far neighbours too.
NPROBE = 4
#: Compressed segments (SQ8, PQ) score approximately: search a little below the threshold, then verify.
MARGIN = 0.02
RAW_SUFFIXES = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                          ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".dcr", ".mrw",
                          ".mos", ".raw"})


def default_threshold(spec: str) -> float:
    """The model's zoo value (``defaults.duplicate_threshold``) when the zoo knows it, else
    :data:`DEFAULT_THRESHOLD`."""
    from searchlite.models import zoo

    entry = zoo.for_spec(spec)
    value = entry.defaults.get("duplicate_threshold") if entry is not None else None
    return float(value) if value is not None else DEFAULT_THRESHOLD


@dataclass
class Member:
    """One image of a duplicate group."""

    image_id: int
    path: str
    similarity: float  # cosine to the keeper (1.0 for the keeper and exact copies)
    width: int | None
    height: int | None
    size: int
    taken_at: str | None
    root_id: int = 0
    relpath: str = ""
    companion: str | None = None
    sha256: str | None = None
    taken: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "similarity": round(self.similarity, 6), "width": self.width,
                "height": self.height, "size": self.size, "taken_at": self.taken_at}

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def is_raw(self) -> bool:
        return self.companion is not None or os.path.splitext(self.path)[1].lower() in RAW_SUFFIXES


@dataclass
class Group:
    """A set of photos that are copies of each other, with the one to keep."""

    keep: str
    members: list[Member]  # the keeper first

    def as_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "members": [m.as_dict() for m in self.members]}


@dataclass
class MoveReport:
    moved: list[tuple[str, str]] = field(default_factory=list)  # (old path, new path)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def exif_fields(path: str) -> int:
    """How many EXIF fields a file carries (0 when unreadable): a header read, no decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            exif = im.getexif()
            return len(exif) + sum(len(exif.get_ifd(tag)) for tag in (0x8769, 0x8825))
    except Exception:  # noqa: BLE001 - a tie-breaker only
        return 0


def choose_keeper(members: Sequence[Member], exif: Callable[[str], int] = exif_fields) -> Member:
    """The member to keep: most pixels, the RAW of a pair, the largest file, the most EXIF
    fields, the oldest capture date, then the smallest path."""
    tied = list(members)
    for key in (lambda m: m.pixels, lambda m: int(m.is_raw), lambda m: m.size):
        best = max(key(m) for m in tied)
        tied = [m for m in tied if key(m) == best]
    if len(tied) > 1:
        counts = {m.image_id: exif(m.path) for m in tied}
        best = max(counts.values())
        tied = [m for m in tied if counts[m.image_id] == best]
    return min(tied, key=lambda m: (m.taken is None, m.taken or datetime.min, m.path))


# -- candidate pairs from the index ------------------------------------------------------------------
def _query_rows(catalog: Catalog, model: ModelRow, filters: Filters | None) -> np.ndarray:
    if filters is not None and filters.active():
        return allowed_rows(catalog, model, filters)
    parts = list(catalog.live_rows(model.id))
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _chunks(index: ModelIndex, rows: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, vectors) of sorted ``rows`` in pieces of at most ``chunk``, read with plain reads
    (not the memory map, so the process does not keep the whole store's pages)."""
    if not len(rows):
        return
    lo = int(rows[0])
    hi = int(rows[-1]) + 1
    span = max(chunk, 1)
    for start, block in index.store.read_chunks(lo, hi, span):
        at = rows[(rows >= start) & (rows < start + len(block))]
        if len(at):
            yield at, np.ascontiguousarray(block[at - start])


def _selector(index: ModelIndex, seg: Any, allowed: np.ndarray | None, dead: np.ndarray) -> tuple[Any, Any]:
    from searchlite.vectors import bitmap_selector, excluding_selector

    if allowed is not None:
        inside = allowed[(allowed >= seg.row_lo) & (allowed < seg.row_hi)]
        return bitmap_selector(inside, seg.row_hi) if len(inside) else (False, None)
    inside = dead[(dead >= seg.row_lo) & (dead < seg.row_hi)]
    return excluding_selector(inside) if len(inside) else (None, None)


def _range_segment(vi: Any, queries: np.ndarray, radius: float, selector: Any) -> tuple[np.ndarray, np.ndarray]:
    """(query position, row) pairs a segment scores at least ``radius``."""
    import faiss

    if vi.kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=128, sel=selector)
    elif vi.kind in ("ivf", "ivfpq"):
        ivf = faiss.try_extract_index_ivf(vi.index)
        params = faiss.SearchParametersIVF(nprobe=min(ivf.nlist, NPROBE), sel=selector)
    else:
        params = faiss.SearchParameters(sel=selector)
    lims, _, ids = vi.index.range_search(queries, float(radius), params=params)
    pos = np.repeat(np.arange(len(queries), dtype=np.int64), np.diff(lims).astype(np.int64))
    return pos, ids.astype(np.int64)


def candidate_pairs(index: ModelIndex, rows: np.ndarray, threshold: float, chunk: int = QUERY_CHUNK,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair (a < b) of ``rows`` (sorted live store rows) whose exact cosine is at least
    ``threshold``, as (a, b, similarity) arrays: range searches of the index, verified exactly."""
    dead = index.snap.tombstones if index.snap is not None else np.zeros(0, np.int64)
    everything = len(rows) == index.live
    allowed = None if everything else rows
    selectors = {seg.name: _selector(index, seg, allowed, dead) for seg, _ in index.segments}
    covered, committed = index.covered, index.store.committed
    tail = rows[rows >= covered]
    found_a, found_b, found_s = [], [], []
    for q_rows, q in _chunks(index, rows, chunk):
        cand_pos, cand_rows = [], []
        for seg, vi in index.segments:
            selector, _keep = selectors[seg.name]
            if selector is False:
                continue
            pos, hit = _range_segment(vi, q, threshold - (MARGIN if ",SQ" in vi.factory or ",PQ" in vi.factory
                                                           else 1e-6), selector)
            cand_pos.append(pos)
            cand_rows.append(hit)
        for lo in range(0, len(tail), TAIL_BLOCK):  # the exact tail (the whole store below 100k)
            block_rows = tail[lo:lo + TAIL_BLOCK]
            scores = q @ index.store.get(block_rows).T
            qi, bi = np.nonzero(scores >= threshold - 1e-6)
            cand_pos.append(qi.astype(np.int64))
            cand_rows.append(block_rows[bi])
        if not cand_pos:
            continue
        pos, hit = np.concatenate(cand_pos), np.concatenate(cand_rows)
        a = q_rows[pos]
        keep = (hit != a) & (hit >= 0) & (hit < committed)
        pos, a, hit = pos[keep], a[keep], hit[keep]
        if not len(hit):
            continue
        sims = np.empty(len(hit), np.float32)
        order = np.argsort(hit, kind="stable")
        for start in range(0, len(order), 65536):  # verify with the exact stored vectors
            at = order[start:start + 65536]
            sims[at] = np.einsum("ij,ij->i", q[pos[at]], index.store.get(hit[at]))
        ok = sims >= threshold
        found_a.append(np.minimum(a[ok], hit[ok]))
        found_b.append(np.maximum(a[ok], hit[ok]))
        found_s.append(sims[ok])
    if not found_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    a, b, s = np.concatenate(found_a), np.concatenate(found_b), np.concatenate(found_s)
    key = a * (int(committed) + 1) + b
    _, first = np.unique(key, return_index=True)
    return a[first], b[first], s[first]


# -- grouping --------------------------------------------------------------------------------------------
def _members(catalog: Catalog, image_ids: Sequence[int]) -> dict[int, Member]:
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, Member] = {}
    cols = [ImageRow.id, ImageRow.root_id, ImageRow.relpath, ImageRow.width, ImageRow.height, ImageRow.size,
            ImageRow.taken_at, ImageRow.taken_offset, ImageRow.companion, ImageRow.sha256, Root.path.label("root")]
    with catalog.Session() as s:
        for start in range(0, len(ids), 900):
            for r in s.execute(select(*cols).join(Root, Root.id == ImageRow.root_id)
                               .where(ImageRow.id.in_(ids[start:start + 900]))):
                out[r.id] = Member(r.id, join_path(r.root, r.relpath), 1.0, r.width, r.height, r.size,
                                   format_taken(r.taken_at, r.taken_offset), r.root_id, r.relpath, r.companion,
                                   r.sha256, r.taken_at)
    return out


def _images_of_rows(catalog: Catalog, model_ref: int, rows: np.ndarray) -> dict[int, int]:
    """store row -> image id for rows that still map to an image."""
    rows_list = [int(r) for r in rows]
    out: dict[int, int] = {}
    with catalog.Session() as s:
        for start in range(0, len(rows_list), 900):
            out.update(s.execute(select(VectorRow.store_row, VectorRow.image_id).where(
                VectorRow.model_ref == model_ref, VectorRow.store_row.in_(rows_list[start:start + 900]))).tuples().all())
    return out


def _exact_classes(catalog: Catalog, filters: Filters | None) -> list[list[int]]:
    """Image ids of the indexed images that share their bytes with another one (after filters)."""
    conds = filters.conditions(catalog) if filters is not None and filters.active() else []
    with catalog.Session() as s:
        base = (select(ImageRow.sha256, ImageRow.id).join(Root, Root.id == ImageRow.root_id)
                .where(ImageRow.status == "ok", ImageRow.sha256.is_not(None), *conds))
        dup = (select(ImageRow.sha256).join(Root, Root.id == ImageRow.root_id)
               .where(ImageRow.status == "ok", ImageRow.sha256.is_not(None), *conds)
               .group_by(ImageRow.sha256).having(func.count() > 1))
        rows = s.execute(base.where(ImageRow.sha256.in_(dup)).order_by(ImageRow.sha256, ImageRow.id)).all()
    classes: dict[str, list[int]] = {}
    for sha, image_id in rows:
        classes.setdefault(sha, []).append(image_id)
    return list(classes.values())


def group_pairs(units: dict[int, list[int]], edges: dict[int, dict[int, float]], vectors: dict[int, np.ndarray],
                members: dict[int, Member], threshold: float) -> list[list[int]]:
    """Complete-linkage groups of units (unit id -> its image ids): seeds best-keeper first; a
    neighbour of the seed joins when its exact cosine to every unit already in the group is at
    least ``threshold``. Returns groups of unit ids (each of more than one image)."""

    def rank(unit: int) -> tuple:
        m = members[unit]
        return (-m.pixels, -int(m.is_raw), -m.size, m.taken is None, m.taken or datetime.min, m.path)

    assigned: set[int] = set()
    groups = []
    for seed in sorted(set(edges) | {u for u, ims in units.items() if len(ims) > 1}, key=rank):
        if seed in assigned:
            continue
        group = [seed]
        assigned.add(seed)
        for cand, _ in sorted(edges.get(seed, {}).items(), key=lambda kv: (-kv[1], kv[0])):
            if cand in assigned:
                continue
            v = vectors[cand]
            if all(float(vectors[g] @ v) >= threshold for g in group):
                group.append(cand)
                assigned.add(cand)
        if sum(len(units[u]) for u in group) > 1:
            groups.append(group)
    return groups


def find_duplicates(catalog: Catalog, model: ModelRow, index: ModelIndex, threshold: float,
                    filters: Filters | None = None, chunk: int = QUERY_CHUNK) -> list[Group]:
    """Duplicate groups (largest first), each with its suggested keeper first. Read-only."""
    if not -1.0 <= threshold <= 1.0:
        raise QueryError(f"--threshold must be a cosine between -1 and 1, got {threshold}")
    rows = _query_rows(catalog, model, filters)
    a, b, sims = candidate_pairs(index, rows, threshold, chunk)
    row_image = _images_of_rows(catalog, model.id, np.union1d(a, b)) if len(a) else {}
    classes = _exact_classes(catalog, filters)
    unit_of: dict[int, int] = {}
    units: dict[int, list[int]] = {}
    for ids in classes:
        units[ids[0]] = ids
        unit_of.update({i: ids[0] for i in ids})
    edges: dict[int, dict[int, float]] = {}
    for ra, rb, s in zip(a.tolist(), b.tolist(), sims.tolist()):
        ia, ib = row_image.get(ra), row_image.get(rb)
        if ia is None or ib is None:
            continue
        ua, ub = unit_of.setdefault(ia, ia), unit_of.setdefault(ib, ib)
        if ua == ub:
            continue
        units.setdefault(ua, [ua])
        units.setdefault(ub, [ub])
        edges.setdefault(ua, {})[ub] = max(s, edges.get(ua, {}).get(ub, -1.0))
        edges.setdefault(ub, {})[ua] = max(s, edges.get(ub, {}).get(ua, -1.0))
    members = _members(catalog, list(unit_of))
    units = {u: [i for i in ims if i in members] for u, ims in units.items() if u in members}
    # each unit's vector: identical bytes, identical vectors, so any member's stored one
    store_rows = catalog.rows_of(model.id, list(units))
    vec_rows = {u: store_rows[u] for u in units if u in store_rows}
    vectors = dict(zip(vec_rows, index.store.get(np.fromiter(vec_rows.values(), np.int64)))) if vec_rows else {}
    edges = {u: {v: s for v, s in nb.items() if v in vectors} for u, nb in edges.items() if u in vectors}
    out = []
    for group in group_pairs(units, edges, vectors, members, threshold):
        people = [members[i] for u in group for i in units[u]]
        keeper = choose_keeper(people)
        kv = vectors.get(unit_of[keeper.image_id])
        for m in people:
            mv = vectors.get(unit_of[m.image_id])
            same = m is keeper or (m.sha256 is not None and m.sha256 == keeper.sha256)
            m.similarity = 1.0 if same or kv is None or mv is None else float(min(1.0, kv @ mv))
        rest = sorted((m for m in people if m is not keeper), key=lambda m: (-m.similarity, m.path))
        out.append(Group(keeper.path, [keeper, *rest]))
    out.sort(key=lambda g: (-len(g.members), g.keep))
    return out


# -- moving non-keepers ---------------------------------------------------------------------------------
def _move_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))  # a rename on one file system; copy2 (mtime kept) + unlink across


def move_duplicates(catalog: Catalog, groups: Sequence[Group], target: Path) -> MoveReport:
    """Move every non-keeper (and its RAW companion) to ``target/<its path below its root>`` and
    record the new place in the catalog, file by file (the caller holds the library lock). Never
    deletes; never overwrites (an existing destination is skipped and reported)."""
    from searchlite.indexer.scan import resolve_root

    target = Path(target).expanduser().resolve()
    roots = catalog.roots()
    for path in roots.values():
        if "://" not in path and (Path(path) == target or Path(path).is_relative_to(target)):
            raise LibraryError(f"--move-to {target} holds the library folder {path}; choose a folder outside it")
        if "://" not in path and target.is_relative_to(Path(path)):
            # the moved copies would be scanned again as part of that folder and moved deeper on every run
            raise LibraryError(f"--move-to {target} lies inside the library folder {path}; choose a folder "
                               "outside every indexed folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LibraryError(f"cannot create {target}: {exc.strerror or exc}") from exc
    from searchlite.indexer.textstage import name_fields
    from searchlite.textindex import replace_fields

    report = MoveReport()
    dest_root, prefix = resolve_root(catalog, str(target))
    dest_path = catalog.roots()[dest_root]
    for group in groups:
        for m in group.members[1:]:
            if "://" in m.path:
                report.skipped.append((m.path, "not a local file"))
                continue
            relpath = prefix + m.relpath
            dst = target / m.relpath
            companion = prefix + m.companion if m.companion else None
            src_raw = Path(join_path(roots[m.root_id], m.companion)) if m.companion else None
            dst_raw = target / m.companion if m.companion else None
            if dst.exists() or (dst_raw is not None and dst_raw.exists()):
                report.skipped.append((m.path, f"{dst} already exists"))
                continue
            if not Path(m.path).is_file():
                report.skipped.append((m.path, "no longer on disk"))
                continue
            with catalog.WriteSession.begin() as s:
                taken = s.scalar(select(ImageRow.id).where(ImageRow.root_id == dest_root, ImageRow.relpath == relpath))
            if taken is not None:
                report.skipped.append((m.path, f"the library already has an image at {dst}"))
                continue
            _move_file(Path(m.path), dst)
            try:
                if src_raw is not None and src_raw.is_file():
                    _move_file(src_raw, dst_raw)
                with catalog.WriteSession.begin() as s:
                    s.execute(update(ImageRow).where(ImageRow.id == m.image_id).values(
                        root_id=dest_root, relpath=relpath, companion=companion))
                    # round4-text: the name and folder words follow the file (the rest: next index run)
                    replace_fields(s, m.image_id, name_fields(dest_path, relpath))
            except BaseException:
                _move_file(dst, Path(m.path))  # put it back: the catalog still says it is there
                if src_raw is not None and dst_raw is not None and dst_raw.is_file():
                    _move_file(dst_raw, src_raw)
                raise
            report.moved.append((m.path, str(dst)))
    return report


__all__ = ["DEFAULT_THRESHOLD", "Group", "Member", "MoveReport", "candidate_pairs", "choose_keeper",
           "default_threshold", "find_duplicates", "group_pairs", "move_duplicates"]
