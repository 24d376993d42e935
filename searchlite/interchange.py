"""Parquet import and export: the interchange format with the distributed indexer and other tools.

Schema (one row per image; DuckDB, LanceDB, Spark and pandas read it as is):

=============  ===========================================  ========
column         type                                         required
=============  ===========================================  ========
path           string: absolute path or URI (s3://, gs://)  yes
vector         list or fixed_size_list of float32/float16   yes
sha256         string (hex)                                  no
size           int64 (bytes)                                 no
mtime_ns       int64                                         no
width, height  int32                                         no
taken_at       timestamp (wall-clock capture time)           no
taken_offset   int16 (minutes east of UTC of taken_at)       no
taken_source   string (exif, exif-digitized, raw, mtime...)  no
format         string (JPEG, PNG, HEIF...; --format)         no
companion      string: absolute path of a paired RAW file    no
camera         string (EXIF make and model)                  no
path_bytes     binary: exact bytes of a non-UTF-8 file name   no
=============  ===========================================  ========

Export writes every column; import reads the optional ones that are there, so files written
before a column existed still import. Import reads streaming (one record batch at a time),
L2-normalises, and commits each batch the way an index run does (store rows fsynced, then one
catalog transaction). A path already in the library gets its vector for this model replaced.
Bad rows are counted and skipped: among them paths without an image extension (the server would
never serve such a file, and an import must not make one reachable). A root an import makes from
a file's parent folder (no --root, and no known root contains the file) is recorded: the web
server serves nothing under it until that folder is indexed or named with ``import --root``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from searchlite.catalog import (
    IMPORTED_ROOTS,
    Catalog,
    ImageRow,
    Meta,
    ModelRow,
    Root,
    VectorRow,
    chunked,
    imported_roots,
    join_path,
    utcnow,
)
from searchlite.errors import LibraryError
from searchlite.imaging import is_image_name
from searchlite.paths import as_bytes, printable
from searchlite.store import VectorStore, VectorWriter
from searchlite.store.builder import SegmentBuilder

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536
PART_ROWS = 1_000_000
OPTIONAL = ("sha256", "size", "mtime_ns", "width", "height", "taken_at", "taken_offset", "taken_source", "format",
            "companion", "camera", "path_bytes")
MAX_PROBLEMS = 100


def _files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.parquet") if p.is_file())
        if files:
            return files
        raise LibraryError(f"no .parquet files in {source}")
    raise LibraryError(f"no such file or folder: {source}")


#: optional columns that hold whole numbers, and those that hold text
INTEGER_COLUMNS = ("size", "mtime_ns", "width", "height", "taken_offset")
TEXT_COLUMNS = ("sha256", "taken_source", "format", "companion", "camera")


def _whole(value: Any) -> int | None:
    """An integer column value as int (an integral float or a decimal string too); None when it is
    no whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):  # a column written from CSV: "640" is a whole number, "wide" is not
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _open(path: Path) -> Any:
    """A ParquetFile, or a one-line error for a file that is not Parquet (or cannot be read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LibraryError(f"{path}: not a readable Parquet file ({detail})") from exc


def _first_bad(path: Path, column: str, check: Callable[[Any], bool]) -> tuple[int, Any] | None:
    """(row, value) of the first non-null value of a column that fails ``check`` (read column-wise)."""
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=[column]):
        for value in batch.column(0).to_pylist():
            if value is not None and not check(value):
                return row, value
            row += 1
    return None


def _check_types(path: Path, schema: Any) -> None:
    """Optional columns of the wrong type: a one-line error naming the column and its first bad
    row, before anything is written (a stored 'wide' width would break later commands)."""
    import pyarrow as pa

    for name in INTEGER_COLUMNS:
        if name in schema.names and not pa.types.is_integer(schema.field(name).type) and \
                not pa.types.is_null(schema.field(name).type):
            bad = _first_bad(path, name, lambda v: _whole(v) is not None)
            if bad is not None:
                raise LibraryError(f"{path}: column '{name}' must hold integers; row {bad[0]} has {bad[1]!r}")
    for name in TEXT_COLUMNS:
        field = schema.field(name) if name in schema.names else None
        if field is not None and not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
                                      or pa.types.is_null(field.type)):
            bad = _first_bad(path, name, lambda v: isinstance(v, str)) or (0, None)
            raise LibraryError(f"{path}: column '{name}' must be a string, not {field.type} "
                               f"(row {bad[0]} has {bad[1]!r})")
    if "sha256" in schema.names:
        bad = _first_bad(path, "sha256", lambda v: _sha(v) is not None)
        if bad is not None:
            raise LibraryError(f"{path}: column 'sha256' must hold 64 hex digits; row {bad[0]} has {bad[1]!r}")


def _sha(value: Any) -> str | None:
    text = value.strip().lower() if isinstance(value, str) else ""
    return text if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else None


def _format(value: Any) -> str | None:
    """A format value through the scan's alias table (jpg, MPO -> JPEG; tif -> TIFF); an unknown
    name is kept upper-case."""
    from searchlite.imaging import FORMATS

    text = _text(value, 16)
    if text is None:
        return None
    key = text.lower().lstrip(".")
    for fmt, aliases in FORMATS.items():
        if key == fmt.lower() or key in aliases:
            return fmt
    return text.upper()


def resolve_import_root(root: str | None) -> str | None:
    """``--root`` as an absolute folder or URI: a relative path is taken from the current folder."""
    if not root or "://" in root:
        return root
    return os.path.abspath(os.path.expanduser(root))


def _check_schema(path: Path, schema: Any) -> list[str]:
    """The columns to read; a one-line error when the required ones are missing or mistyped."""
    import pyarrow as pa

    names = set(schema.names)
    for required in ("path", "vector"):
        if required not in names:
            raise LibraryError(f"{path}: no '{required}' column (the import schema needs path and vector)")
    if not (pa.types.is_string(schema.field("path").type) or pa.types.is_large_string(schema.field("path").type)):
        raise LibraryError(f"{path}: column 'path' must be a string, not {schema.field('path').type}")
    vtype = schema.field("vector").type
    if not (pa.types.is_list(vtype) or pa.types.is_large_list(vtype) or pa.types.is_fixed_size_list(vtype)) or \
            not (pa.types.is_float32(vtype.value_type) or pa.types.is_float16(vtype.value_type)):
        raise LibraryError(f"{path}: column 'vector' must be a list of float32 or float16, not {vtype}")
    _check_types(path, schema)
    return ["path", "vector"] + [c for c in OPTIONAL if c in names]


def _vectors(column: Any, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 vectors, and a mask of the rows that have exactly ``dim`` values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_fixed_size_list(column.type):
        ok = np.full(len(column), column.type.list_size == dim)
    else:
        ok = pc.fill_null(pc.list_value_length(column), -1).to_numpy(zero_copy_only=False) == dim
    ok &= ~column.is_null().to_numpy(zero_copy_only=False)
    out = np.zeros((len(column), dim), np.float32)
    if ok.any():
        values = pc.list_flatten(column.filter(pa.array(ok))).to_numpy(zero_copy_only=False)
        out[ok] = values.astype(np.float32, copy=False).reshape(-1, dim)
    return out, ok


def _normalise_path(raw: Any) -> str | None:
    if not isinstance(raw, str) or not raw.strip():
        return None
    if "://" in raw:
        scheme, _, rest = raw.partition("://")
        return f"{scheme}://{rest}" if rest.strip("/") else None
    if not raw.startswith("/"):
        return None
    return os.path.normpath(raw)


def _text(value: Any, longest: int | None = None) -> str | None:
    """A non-empty string column value (at most ``longest`` characters), else None."""
    if not isinstance(value, str) or not value.strip() or (longest is not None and len(value) > longest):
        return None
    return value.strip()


def _wall_clock(value: Any) -> tuple[datetime | None, int | None]:
    if not isinstance(value, datetime):
        return None, None
    if value.tzinfo is None:
        return value, None
    offset = int(value.utcoffset().total_seconds() // 60)
    return value.replace(tzinfo=None), offset


class _Roots:
    """Finds or creates the root of each imported path (an existing root containing it, else
    --root, else its parent folder: a later `index` of a parent folder adopts such roots).
    Looked up once per folder."""

    def __init__(self, catalog: Catalog, root: str | None) -> None:
        self.catalog = catalog
        self.root = root.rstrip("/") if root and root != "/" else root
        self.folders: dict[str, tuple[int, str]] = {}  # folder -> (root id, relpath prefix)
        self.parents: set[str] = set()  # roots made from a parent folder in this batch (not yet recorded)

    def __call__(self, s, path: str) -> tuple[int, str]:
        folder, _, name = path.rpartition("/")
        known = self.folders.get(folder)
        if known is None:
            found = self.catalog.locate(path)
            if found is not None:
                known = (found[0], found[1][: len(found[1]) - len(name)])
            else:
                base = self.root if self.root and path.startswith(self.root + "/") else folder
                prefix = path[len(base) + 1:len(path) - len(name)]
                known = (self.catalog.root_id(s, base), prefix)
                if base != self.root:
                    self.parents.add(base)
            self.folders[folder] = known
        return known[0], known[1] + name


def claim_roots(catalog: Catalog, folders: list[str | Path]) -> None:
    """Folders that were indexed or named with ``import --root``: roots at or under them are the
    user's own again (the server serves their images)."""
    marked = imported_roots(catalog)
    if not marked:
        return
    names: set[str] = set()
    for folder in map(str, folders):
        local = os.path.expanduser(folder)
        names |= {folder.rstrip("/")} if "://" in folder else {os.path.abspath(local), os.path.realpath(local)}
    kept = {r for r in marked if not any(r == n or r.startswith(n.rstrip("/") + "/") for n in names)}
    if kept != marked:
        with catalog.WriteSession.begin() as s:
            s.merge(Meta(key=IMPORTED_ROOTS, value=json.dumps(sorted(kept))))


def import_parquet(catalog: Catalog, model: ModelRow, source: str | Path,
                   root: str | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Import a Parquet file or folder of vectors for ``model`` (library lock held by the caller)."""
    start = time.perf_counter()
    root = resolve_import_root(root)
    files = _files(Path(source).expanduser())
    readers = [(f, _open(f)) for f in files]
    columns = {f: _check_schema(f, r.schema_arrow) for f, r in readers}  # all schemas checked before any write
    total = sum(r.metadata.num_rows for _, r in readers)
    writer = VectorWriter(catalog, [model])
    roots = _Roots(catalog, root)
    if root:
        claim_roots(catalog, [root])
    summary: dict[str, Any] = {"rows": 0, "imported": 0, "added": 0, "replaced": 0, "skipped": 0, "problems": []}
    for f, reader in readers:
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=columns[f]):
            _import_batch(catalog, model, writer, roots, batch, f, summary)
            if progress:
                progress(summary["rows"], total)
    catalog.optimize()
    summary["index"] = SegmentBuilder(catalog, catalog.model(model.id), writer.stores[model.id]).maintain()
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["problems"] = summary["problems"][:MAX_PROBLEMS]
    return summary


def _import_batch(catalog: Catalog, model: ModelRow, writer: VectorWriter, roots: _Roots, batch: Any, file: Path,
                  summary: dict) -> None:
    data = {name: batch.column(name).to_pylist() for name in batch.schema.names if name != "vector"}
    vectors, ok = _vectors(batch.column("vector"), model.dim)
    finite = np.isfinite(vectors).all(axis=1)
    norms = np.linalg.norm(vectors, axis=1)
    # a file name that is not UTF-8 travels as its exact bytes (path_bytes); path then holds it escaped
    raw_paths = [os.fsdecode(b) if b is not None else p
                 for p, b in zip(data["path"], data.get("path_bytes") or [None] * len(data["path"]))]
    paths = [_normalise_path(p) for p in raw_paths]
    first_row = summary["rows"]
    summary["rows"] += len(paths)
    keep: dict[str, int] = {}  # path -> row in batch (the last one wins within a batch)
    for i, path in enumerate(paths):
        reason = ("path must be absolute or a URI" if path is None else
                  "path has no image file extension" if not is_image_name(path) else
                  f"vector length is not {model.dim}" if not ok[i] else
                  "vector has NaN or infinite values" if not finite[i] else
                  "vector is all zeros" if norms[i] == 0 else None)
        if reason:
            summary["skipped"] += 1
            if len(summary["problems"]) < MAX_PROBLEMS:
                summary["problems"].append(f"{file.name} row {first_row + i}: {reason}")
        else:
            keep.pop(path, None)
            keep[path] = i
    if not keep:
        return
    order = list(keep.values())
    # L2-normalise, leaving vectors that already are unit length bit-for-bit (an export round-trips exactly)
    scale = np.where(np.abs(norms[order] - 1.0) > 1e-6, norms[order], 1.0).astype(np.float32)
    store_rows = writer.append(model.id, vectors[order] / scale[:, None])
    with writer.transaction() as s:
        image_ids = _upsert_images(s, roots, keep, data)
        replaced = sum(s.execute(delete(VectorRow).where(VectorRow.model_ref == model.id, VectorRow.image_id.in_(part)))
                       .rowcount for part in chunked(image_ids))  # a batch has up to 65,536 rows
        s.execute(insert(VectorRow), [dict(model_ref=model.id, store_row=r, image_id=i)
                                      for r, i in zip(store_rows, image_ids)])
    summary["replaced"] += replaced
    summary["added"] += len(keep) - replaced
    summary["imported"] += len(keep)


def _upsert_images(s, roots: _Roots, keep: dict[str, int], data: dict) -> list[int]:
    """Image ids for the kept paths (in order): existing rows are updated, new ones inserted."""
    now = utcnow()
    located = [roots(s, path) for path in keep]
    if roots.parents:  # recorded in the transaction that creates them
        s.merge(Meta(key=IMPORTED_ROOTS, value=json.dumps(sorted(imported_roots(roots.catalog, s) | roots.parents))))
        roots.parents.clear()
    rows = []
    for path, (root_id, relpath), i in zip(keep, located, keep.values()):
        fields: dict[str, Any] = {key: _whole(data[key][i]) for key in ("size", "mtime_ns", "width", "height")
                                  if key in data}
        if "sha256" in data:
            fields["sha256"] = _sha(data["sha256"][i])
        taken, offset = _wall_clock(data["taken_at"][i]) if "taken_at" in data else (None, None)
        if "taken_offset" in data and _whole(data["taken_offset"][i]) is not None:
            offset = _whole(data["taken_offset"][i])
        if taken is not None:
            source = _text(data["taken_source"][i], 16) if "taken_source" in data else None
            fields.update(taken_at=taken, taken_offset=offset, taken_source=source or "import")
        fields.update(format=_format(data["format"][i]) if "format" in data else None,
                      camera=_text(data["camera"][i], 200) if "camera" in data else None,
                      companion=_companion(path, relpath, data["companion"][i] if "companion" in data else None))
        rows.append((root_id, relpath, {k: v for k, v in fields.items() if v is not None}))
    existing = _ids(s, [(r, rel) for r, rel, _ in rows])
    for r, rel, fields in rows:
        if (r, rel) in existing:
            s.execute(ImageRow.__table__.update().where(ImageRow.id == existing[(r, rel)]).values(
                status="ok", error=None, indexed_at=now, **fields))
    columns = ("sha256", "size", "mtime_ns", "width", "height", "taken_at", "taken_offset", "taken_source", "format",
               "camera", "companion")
    fresh = [dict({c: None for c in columns}, root_id=r, relpath=rel, status="ok", error=None, indexed_at=now,
                  **{"size": -1, "mtime_ns": 0, **fields}) for r, rel, fields in rows if (r, rel) not in existing]
    if fresh:
        s.execute(insert(ImageRow), fresh)
        existing.update(_ids(s, [(f["root_id"], f["relpath"]) for f in fresh]))
    return [existing[(r, rel)] for r, rel, _ in rows]


def _companion(path: str, relpath: str, value: Any) -> str | None:
    """A RAW companion's relpath in the image's root (the catalog's form), if it lies in that root."""
    companion = _normalise_path(value)
    root = path[: len(path) - len(relpath)]  # 'ROOT/'
    if companion is None or not companion.startswith(root) or not is_image_name(companion):
        return None
    return companion[len(root):]


def _ids(s, keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Image ids of (root id, relpath) pairs that have a row."""
    out: dict[tuple[int, str], int] = {}
    for root_id in {r for r, _ in keys}:
        names = [rel for r, rel in keys if r == root_id]
        for start in range(0, len(names), 900):
            out.update({(root_id, rel): image_id for rel, image_id in s.execute(
                select(ImageRow.relpath, ImageRow.id).where(ImageRow.root_id == root_id,
                                                            ImageRow.relpath.in_(names[start:start + 900])))})
    return out


def _export_rows(catalog: Catalog, model: ModelRow, chunk: int = BATCH_ROWS) -> Iterator[list]:
    last = -1
    cols = [VectorRow.store_row, Root.path.label("root"), ImageRow.relpath, ImageRow.sha256, ImageRow.size,
            ImageRow.mtime_ns, ImageRow.width, ImageRow.height, ImageRow.taken_at, ImageRow.taken_offset,
            ImageRow.taken_source, ImageRow.format, ImageRow.companion, ImageRow.camera]
    while True:
        with catalog.Session() as s:
            rows = s.execute(select(*cols).join(ImageRow, ImageRow.id == VectorRow.image_id)
                             .join(Root, Root.id == ImageRow.root_id)
                             .where(VectorRow.model_ref == model.id, VectorRow.store_row > last)
                             .order_by(VectorRow.store_row).limit(chunk)).all()
        if not rows:
            return
        yield rows
        last = rows[-1].store_row


def export_schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("vector", pa.list_(pa.float32(), dim)), ("sha256", pa.string()),
                      ("size", pa.int64()), ("mtime_ns", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
                      ("taken_at", pa.timestamp("us")), ("taken_offset", pa.int16()), ("taken_source", pa.string()),
                      ("format", pa.string()), ("companion", pa.string()), ("camera", pa.string()),
                      ("path_bytes", pa.binary())])


class _Parts:
    """Parquet output: one file, or ``part-NNNNN.parquet`` files of PART_ROWS rows; each file is
    written under a temp name and renamed once complete."""

    def __init__(self, out: Path, schema: Any, parts: bool) -> None:
        self.out, self.schema, self.parts = out, schema, parts
        self.writer: Any = None
        self.tmp: Path | None = None
        self.rows = self.count = 0

    def write(self, table: Any) -> None:
        import pyarrow.parquet as pq

        if self.writer is None or (self.parts and self.rows >= PART_ROWS):
            self.close()
            target = self.out / f"part-{self.count:05d}.parquet" if self.parts else self.out
            self.tmp = target.with_name(target.name + ".tmp")
            self.writer, self.rows, self.count = pq.ParquetWriter(self.tmp, self.schema), 0, self.count + 1
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            os.replace(self.tmp, self.tmp.with_suffix(""))
            self.writer = None


def export_parquet(catalog: Catalog, model: ModelRow, store: VectorStore, out: Path) -> dict:
    """Write every live vector of a model with its image's metadata (see the module docstring)."""
    import pyarrow as pa

    total = catalog.count_vectors(model.id)
    schema = export_schema(model.dim)
    parts = total > PART_ROWS
    if parts:
        out.mkdir(parents=True, exist_ok=True)
    elif out.is_dir():
        out = out / "vectors.parquet"
    output = _Parts(out, schema, parts)
    written = 0
    for rows in _export_rows(catalog, model):
        vectors = store.get(np.array([r.store_row for r in rows], dtype=np.int64))
        paths = [join_path(r.root, r.relpath) for r in rows]
        output.write(pa.table({
            "path": [printable(p) for p in paths],
            "path_bytes": [as_bytes(p) if printable(p) != p else None for p in paths],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), model.dim),
            "sha256": [r.sha256 for r in rows],
            "size": [r.size if r.size is not None and r.size >= 0 else None for r in rows],
            "mtime_ns": [r.mtime_ns or None for r in rows],
            "width": [r.width for r in rows], "height": [r.height for r in rows],
            "taken_at": [r.taken_at for r in rows], "taken_offset": [r.taken_offset for r in rows],
            "taken_source": [r.taken_source for r in rows], "format": [r.format for r in rows],
            "companion": [printable(join_path(r.root, r.companion)) if r.companion else None for r in rows],
            "camera": [r.camera for r in rows],
        }, schema=schema))
        written += len(rows)
    if output.writer is None and output.count == 0:
        output.write(schema.empty_table())  # an empty model still gives a valid file
    output.close()
    store.close()
    return {"rows": written, "path": str(out), "model": model.spec, "dim": model.dim,
            "exported_at": datetime.now(timezone.utc).isoformat()}
