"""Duplicate photos: exact copies by content hash, near copies by embedding, grouped without chaining.

1. **Exact duplicates**: images whose bytes hash alike (``images.sha256``, stored by the indexer)
   form one unit; identical bytes give identical vectors, so a unit behaves as one photo below.
2. **Candidate pairs** come from the one search layer (:func:`searchlite.store.pairs.similar_pairs`:
   a range search where the index has a safe one, a k-NN with a radius cut on HNSW and IVF-PQ,
   the exact tail scored block-wise), every candidate verified with the exact stored vectors.
   This module is a client of that layer, never of the ANN library itself.
   A second channel links pairs whose perceptual hashes (``images.phash``, :mod:`searchlite.phash`)
   differ in at most a few bits, whatever the model says (a half-size re-encode the embedding can
   place at cosine 0.69); both channels feed the grouping below, and each member reports which
   one links it to the keeper (``channel``: "phash", "embedding" or "both").
   One physical file (device + inode) reached by two paths is one photo: never its own duplicate.
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
from collections.abc import Callable, Sequence
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
from searchlite.rawphoto import RAW_EXTENSIONS
from searchlite.store import ModelIndex
from searchlite.store.pairs import QUERY_CHUNK, similar_pairs

log = logging.getLogger(__name__)

#: The threshold for models the zoo does not know (cosine of two image embeddings).
DEFAULT_THRESHOLD = 0.95


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
    phash: str | None = None
    channel: str | None = None  # how it is linked to the keeper: "phash" | "embedding" | "both" (keeper: None)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "similarity": round(self.similarity, 6), "width": self.width,
                "height": self.height, "size": self.size, "taken_at": self.taken_at, "channel": self.channel}

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def is_raw(self) -> bool:
        return self.companion is not None or os.path.splitext(self.path)[1].lower() in RAW_EXTENSIONS


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
    from searchlite.decoders import open_image

    try:
        with open_image(path) as im:
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


# -- grouping --------------------------------------------------------------------------------------------
def _members(catalog: Catalog, image_ids: Sequence[int]) -> dict[int, Member]:
    ids = sorted({int(i) for i in image_ids})
    out: dict[int, Member] = {}
    cols = [ImageRow.id, ImageRow.root_id, ImageRow.relpath, ImageRow.width, ImageRow.height, ImageRow.size,
            ImageRow.taken_at, ImageRow.taken_offset, ImageRow.companion, ImageRow.sha256, ImageRow.phash,
            Root.path.label("root")]
    with catalog.Session() as s:
        for start in range(0, len(ids), 900):
            for r in s.execute(select(*cols).join(Root, Root.id == ImageRow.root_id)
                               .where(ImageRow.id.in_(ids[start:start + 900]))):
                out[r.id] = Member(r.id, join_path(r.root, r.relpath), 1.0, r.width, r.height, r.size,
                                   format_taken(r.taken_at, r.taken_offset), r.root_id, r.relpath, r.companion,
                                   r.sha256, r.taken_at, r.phash)
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
                members: dict[int, Member], threshold: float,
                linked: Callable[[int, int], bool] | None = None) -> list[list[int]]:
    """Complete-linkage groups of units (unit id -> its image ids): seeds best-keeper first; a
    neighbour of the seed joins when it is linked to every unit already in the group: its exact
    cosine is at least ``threshold``, or ``linked(a, b)`` says so (another channel, e.g. the
    perceptual hash). Returns groups of unit ids (each of more than one image)."""

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
            if all(float(vectors[g] @ v) >= threshold or (linked is not None and linked(g, cand)) for g in group):
                group.append(cand)
                assigned.add(cand)
        if sum(len(units[u]) for u in group) > 1:
            groups.append(group)
    return groups


def _hashes(catalog: Catalog, filters: Filters | None) -> tuple[np.ndarray, np.ndarray]:
    """(image ids, uint64 perceptual hashes) of the indexed images that have one (after filters)."""
    from searchlite.phash import to_bits

    conds = filters.conditions(catalog) if filters is not None and filters.active() else []
    with catalog.Session() as s:
        rows = s.execute(select(ImageRow.id, ImageRow.phash).join(Root, Root.id == ImageRow.root_id).where(
            ImageRow.status == "ok", ImageRow.phash.is_not(None), *conds).order_by(ImageRow.id)).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    return ids, to_bits([r[1] for r in rows])


def _bits(m: Member) -> int | None:
    return int(m.phash, 16) if m.phash else None


def find_duplicates(catalog: Catalog, model: ModelRow, index: ModelIndex, threshold: float,
                    filters: Filters | None = None, chunk: int = QUERY_CHUNK,
                    hash_distance: int | None = None) -> list[Group]:
    """Duplicate groups (largest first), each with its suggested keeper first. Read-only.

    Two channels link photos: the embedding (exact cosine >= ``threshold``) and the perceptual
    hash (at most ``hash_distance`` bits apart; None: :data:`searchlite.phash.HASH_DISTANCE`; a
    negative value turns the channel off). Both feed one complete-linkage grouping; each member
    reports the channel that links it to the keeper."""
    from searchlite.phash import HASH_DISTANCE, check_distance, hash_pairs

    if not -1.0 <= threshold <= 1.0:
        raise QueryError(f"--threshold must be a cosine between -1 and 1, got {threshold}")
    distance = HASH_DISTANCE if hash_distance is None else hash_distance
    use_hash = distance >= 0
    if use_hash:
        check_distance(distance)
    rows = _query_rows(catalog, model, filters)
    a, b, sims = similar_pairs(index, rows, threshold, chunk)
    row_image = _images_of_rows(catalog, model.id, np.union1d(a, b)) if len(a) else {}
    pairs = [(row_image.get(ra), row_image.get(rb)) for ra, rb in zip(a.tolist(), b.tolist())]
    if use_hash:
        hash_ids, bits = _hashes(catalog, filters)
        hi, hj, _ = hash_pairs(bits, distance)
        pairs += list(zip(hash_ids[hi].tolist(), hash_ids[hj].tolist()))
    classes = _exact_classes(catalog, filters)
    unit_of: dict[int, int] = {}
    units: dict[int, list[int]] = {}
    for ids in classes:
        units[ids[0]] = ids
        unit_of.update({i: ids[0] for i in ids})
    edges: dict[int, dict[int, float]] = {}
    for ia, ib in pairs:
        if ia is None or ib is None:
            continue
        ua, ub = unit_of.setdefault(ia, ia), unit_of.setdefault(ib, ib)
        if ua == ub:
            continue
        units.setdefault(ua, [ua])
        units.setdefault(ub, [ub])
        edges.setdefault(ua, {})[ub] = edges.setdefault(ub, {})[ua] = 0.0  # exact cosine below
    members = _members(catalog, list(unit_of))
    units = {u: [i for i in ims if i in members] for u, ims in units.items() if u in members}
    # each unit's vector: identical bytes, identical vectors, so any member's stored one
    store_rows = catalog.rows_of(model.id, list(units))
    vec_rows = {u: store_rows[u] for u in units if u in store_rows}
    vectors = dict(zip(vec_rows, index.store.get(np.fromiter(vec_rows.values(), np.int64)))) if vec_rows else {}
    edges = {u: {v: float(vectors[u] @ vectors[v]) for v in nb if v in vectors}
             for u, nb in edges.items() if u in vectors}
    unit_bits = {u: _bits(members[u]) for u in units}

    def hashed(u: int, v: int) -> bool:
        bu, bv = unit_bits.get(u), unit_bits.get(v)
        return use_hash and bu is not None and bv is not None and (bu ^ bv).bit_count() <= distance

    out = []
    for group in group_pairs(units, edges, vectors, members, threshold, hashed):
        people = distinct_files([members[i] for u in group for i in units[u]])
        if len(people) < 2:
            continue  # one file reached by two paths (a link): an image is never its own duplicate
        keeper = choose_keeper(people)
        kv = vectors.get(unit_of[keeper.image_id])
        for m in people:
            mv = vectors.get(unit_of[m.image_id])
            same = m is keeper or (m.sha256 is not None and m.sha256 == keeper.sha256)
            m.similarity = 1.0 if same or kv is None or mv is None else float(min(1.0, kv @ mv))
            if m is not keeper:
                by_vec = same or m.similarity >= threshold
                kb, mb = _bits(keeper), _bits(m)
                by_hash = use_hash and kb is not None and mb is not None and (kb ^ mb).bit_count() <= distance
                m.channel = "both" if by_vec and by_hash else "phash" if by_hash else "embedding"
        rest = sorted((m for m in people if m is not keeper), key=lambda m: (-m.similarity, m.path))
        out.append(Group(keeper.path, [keeper, *rest]))
    out.sort(key=lambda g: (-len(g.members), g.keep))
    return out


# -- one physical file, several paths -------------------------------------------------------------------
def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a local file, following links; None when remote or unreadable."""
    if "://" in path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def distinct_files(members: Sequence[Member]) -> list[Member]:
    """Members less the extra paths of one physical file (a file link, or a folder link inside a
    root): per (device, inode), the path without a link in it is kept, else the shortest."""
    best: dict[tuple[int, int], Member] = {}
    out: list[Member] = []
    for m in members:
        ident = file_identity(m.path)
        if ident is None:
            out.append(m)
            continue
        seen = best.get(ident)
        if seen is None or _path_rank(m.path) < _path_rank(seen.path):
            best[ident] = m
    chosen = {id(m) for m in best.values()}
    return out + [m for m in members if id(m) in chosen]


def _path_rank(path: str) -> tuple[bool, int, str]:
    return os.path.realpath(path) != os.path.abspath(path), len(path), path


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
        keeper = group.members[0]
        kept = {i for i in (file_identity(keeper.path),
                            file_identity(join_path(roots[keeper.root_id], keeper.companion))
                            if keeper.companion and keeper.root_id in roots else None) if i is not None}
        for m in group.members[1:]:
            if "://" in m.path:
                report.skipped.append((m.path, "not a local file"))
                continue
            if file_identity(m.path) in kept:
                report.skipped.append((m.path, f"it is the same file as the kept {group.keep} (a link); not moved"))
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


__all__ = ["DEFAULT_THRESHOLD", "Group", "Member", "MoveReport", "choose_keeper",
           "default_threshold", "find_duplicates", "group_pairs", "move_duplicates"]
