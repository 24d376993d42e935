"""Query engine: filters as SQL over indexed columns, ANN search of a model's segments with those
filters inside FAISS, results joined with the catalog, and calibrated probabilities.

Probability = ``sigmoid(a * cos + b)``. SigLIP: ``a = exp(logit_scale)``, ``b = logit_bias`` (the
model's own probability). CLIP / ALIGN: Platt parameters fitted by ``searchlite calibrate`` and
stored per model; until then a documented fallback (:data:`FALLBACK_CENTER`).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from searchlite.catalog import Catalog, ImageRow, ModelRow, Root, VectorRow, join_path
from searchlite.errors import QueryError
from searchlite.imaging import format_names, format_taken
from searchlite.store import ModelIndex

#: Uncalibrated CLIP/ALIGN fallback: probability 0.5 at this cosine, slope = the model's logit scale.
#: Matching image-caption pairs of CLIP ViT-B/32 score ~0.30 cosine, unrelated ones ~0.15-0.20.
FALLBACK_CENTER = {"clip": 0.25, "align": 0.30}
SORTS = ("relevance", "date")


def calibration(model: ModelRow) -> tuple[float, float]:
    """The (a, b) of ``sigmoid(a*cos + b)`` for a model: its own scale and bias for models trained
    with a sigmoid loss (the row's ``probability`` rule), else a fitted Platt calibration, else the
    zoo family's documented fallback centre."""
    if model.probability == "sigmoid":
        return model.scale, model.bias
    if model.calib_a is not None and model.calib_b is not None:
        return model.calib_a, model.calib_b
    return model.scale, -model.scale * fallback_center(model.family)


def fallback_center(family: str) -> float:
    """The cosine at which an uncalibrated Platt model's probability is 0.5 (zoo family data)."""
    from searchlite.models.zoo import family as zoo_family

    known = zoo_family(family)
    return known.center if known is not None else FALLBACK_CENTER.get(family, 0.25)


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def parse_date(value: str, end: bool = False, name: str = "date") -> datetime:
    """A filter date, the same for the CLI, the socket server, the HTTP API and the page: an ISO
    date-time as given, or a date alone meaning that whole day: its first instant, or with
    ``end`` (``before``) its last one, 23:59:59.999999, so ``before <= it`` is exactly ``before the
    next day 00:00`` (capture times are stored to the microsecond). Bad input is a QueryError."""
    value = value.strip()
    try:
        day = date.fromisoformat(value)
    except ValueError:
        day = None
    if day is not None:
        first = datetime.combine(day, time())
        return first + timedelta(days=1) - timedelta(microseconds=1) if end else first
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS]), got {value!r}") from exc


def check_template(template: str | None) -> str | None:
    """A prompt template must contain exactly one '{}' and no other replacement field."""
    if template is None:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise QueryError(f"bad template {template!r}: {exc} (use '{{}}' where the query goes, '{{{{' for a brace)") from exc
    if fields != [""]:
        raise QueryError(f"bad template {template!r}: it needs exactly one '{{}}' where the query goes "
                         f"(e.g. \"a photo of {{}}.\")")
    return template


@dataclass
class Filters:
    """Result filters; all must hold. Evaluated in SQL (indexed columns), then inside the search."""

    glob: str | None = None  # shell pattern on the absolute path, e.g. "*/2023/*" or "*.png"
    folder: Path | None = None
    after: datetime | None = None  # capture time (EXIF, else file mtime)
    before: datetime | None = None
    min_width: int | None = None
    min_height: int | None = None
    formats: tuple[str, ...] = ()
    # round4-hybrid: the text a photo carries and where it was taken (searchlite.textfilters)
    place: str | None = None  # city, region or country; case- and accent-insensitive words
    near: tuple[float, float, float] | None = None  # (lat, lon, km)
    camera: str | None = None  # make / model / lens words
    text: str | None = None  # the photo carries this text (OCR or metadata)

    TEXT_KEYS = ("place", "near", "camera", "text")

    def to_json(self) -> dict:
        out = {"glob": self.glob, "folder": str(self.folder) if self.folder else None,
               "after": self.after.isoformat() if self.after else None,
               "before": self.before.isoformat() if self.before else None,
               "min_width": self.min_width, "min_height": self.min_height, "formats": list(self.formats)}
        # round4-hybrid: only when set, so older servers keep accepting the filters of a plain search
        out.update({k: list(v) if k == "near" else v for k in self.TEXT_KEYS if (v := getattr(self, k)) is not None})
        return out

    @classmethod
    def from_json(cls, data: dict | None) -> Filters:
        """Parse and validate (types, ranges) a filters object from a request."""
        data = data or {}
        if not isinstance(data, dict):
            raise QueryError("filters must be an object")
        unknown = set(data) - {"glob", "folder", "after", "before", "min_width", "min_height", "formats",
                               *cls.TEXT_KEYS}
        if unknown:
            raise QueryError(f"unknown filter {sorted(unknown)[0]!r}")

        def text(key: str) -> str | None:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise QueryError(f"filter {key} must be a string")
            return value or None

        def when(key: str) -> datetime | None:
            value = text(key)
            return parse_date(value, end=key == "before", name=f"filter {key}") if value else None

        def size(key: str) -> int | None:
            value = data.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise QueryError(f"filter {key} must be a positive integer")
            return value

        formats = data.get("formats") or []
        if not isinstance(formats, list) or not all(isinstance(f, str) for f in formats):
            raise QueryError("filter formats must be a list of strings")
        folder = text("folder")
        # round4-hybrid: near as [lat, lon, km] or "lat,lon,km"
        near = data.get("near")
        if isinstance(near, list | tuple):
            if len(near) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in near):
                raise QueryError("filter near must be [lat, lon, km] or \"LAT,LON,KM\"")
            near = ",".join(str(v) for v in near)
        elif near is not None and not isinstance(near, str):
            raise QueryError("filter near must be [lat, lon, km] or \"LAT,LON,KM\"")
        from searchlite.textfilters import parse_near

        return cls(glob=text("glob"), folder=Path(folder) if folder else None, after=when("after"),
                   before=when("before"), min_width=size("min_width"), min_height=size("min_height"),
                   formats=tuple(formats), place=filter_words(text("place"), "place"),
                   near=parse_near(near, "filter near"), camera=filter_words(text("camera"), "camera"),
                   text=filter_words(text("text"), "text"))

    def active(self) -> bool:
        return any([self.glob, self.folder, self.after, self.before, self.min_width, self.min_height, self.formats,
                    self.place, self.near, self.camera, self.text])  # round4-hybrid: the text filters

    def conditions(self, catalog: Catalog) -> list:
        """SQL conditions on images (joined with roots) equivalent to these filters."""
        conds = []
        if self.glob:
            pattern = self.glob.replace("[!", "[^")  # fnmatch's negation in SQLite GLOB syntax
            conds.append((Root.path + "/" + ImageRow.relpath).op("GLOB")(pattern))
        if self.folder:
            conds.append(self._folder_condition(catalog))
        if self.after:
            conds.append(ImageRow.taken_at >= self.after)
        if self.before:
            conds.append(ImageRow.taken_at <= self.before)
        if self.min_width:
            conds.append(ImageRow.width >= self.min_width)
        if self.min_height:
            conds.append(ImageRow.height >= self.min_height)
        if self.formats:  # aliases, any case (jpg, MPO -> JPEG; tif; heic...); unknown: QueryError
            conds.append(ImageRow.format.in_(format_names(self.formats)))
        conds += self._text_conditions()  # round4-hybrid
        return conds

    def _text_conditions(self) -> list:
        """round4-hybrid: place, near, camera and text as SQL conditions (searchlite.textfilters)."""
        if not (self.place or self.near or self.camera or self.text):
            return []
        from searchlite import textfilters as tf

        conds = []
        if self.place:
            conds.append(tf.place_condition(self.place))
        if self.near:
            conds.append(tf.near_condition(*self.near))
        if self.camera:
            conds.append(tf.camera_condition(self.camera))
        if self.text:
            conds.append(tf.contains_condition(self.text))
        return conds

    def _folder_condition(self, catalog: Catalog):
        """Inside the folder as given, or as resolved: the one rule of ``Catalog.locate_all``."""
        return catalog.folder_condition(self.folder)


def filter_words(value: str | None, name: str) -> str | None:
    """round4-hybrid: a text filter's value, which must hold a word (a letter or digit)."""
    if value is None or not value.strip():
        return None
    if not any(c.isalnum() for c in value):
        raise QueryError(f"filter {name} needs a word, got {value!r}")
    return value.strip()


@dataclass
class SearchResult:
    """One ranked image."""

    rank: int
    path: str
    score: float  # cosine similarity
    logit: float  # model-scaled: scale*cos + bias (SigLIP), scale*cos (CLIP), cos/temperature (ALIGN)
    probability: float
    image_id: int
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    extra: dict = field(default_factory=dict)
    sort_time: datetime | None = field(default=None, repr=False, compare=False)

    FIELDS = ("rank", "path", "score", "logit", "probability", "image_id", "width", "height", "taken_at")

    @classmethod
    def from_dict(cls, data: dict) -> SearchResult:
        return cls(**{k: data.get(k) for k in cls.FIELDS}, extra={k: v for k, v in data.items() if k not in cls.FIELDS})

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.FIELDS}
        d.update(self.extra)
        return d


def result_of(model: ModelRow, hit, cos: float, prob: float) -> SearchResult:  # noqa: ANN001 - a catalog row
    """One result from a light image row (:meth:`Catalog.results_for_rows`) and its cosine."""
    extra = {"raw": join_path(hit.root_path, hit.companion)} if hit.companion else {}
    return SearchResult(0, join_path(hit.root_path, hit.relpath), float(cos), float(model.scale * cos + model.bias),
                        prob, hit.id, hit.width, hit.height, format_taken(hit.taken_at, hit.taken_offset), extra,
                        hit.taken_at)


def allowed_rows(catalog: Catalog, model: ModelRow, filters: Filters, session: Session | None = None,
                 store_rows: int | None = None) -> np.ndarray:
    """The sorted store rows of the live images that pass the filters (exact, from SQL), read in
    ``session`` (a search's read transaction, so they match its index snapshot) and, given
    ``store_rows``, only rows below it (the snapshot's committed rows).

    The rows come back as one ``group_concat`` string parsed by numpy rather than one Python row
    each: 10k matching images at 1M, 12 ms instead of 20. A match so large that the string passes
    SQLite's length limit (about 100M rows) is read row by row instead."""
    conditions = filters.conditions(catalog)
    if store_rows is not None:
        conditions.append(VectorRow.store_row < store_rows)

    def matching(column):  # noqa: ANN001, ANN202 - a SQLAlchemy select over the filter's images
        return (select(column).join(ImageRow, ImageRow.id == VectorRow.image_id)
                .join(Root, Root.id == ImageRow.root_id).where(VectorRow.model_ref == model.id, *conditions))

    with catalog.reading(session) as s:
        try:
            with s.begin_nested():  # a savepoint: a failure leaves the read transaction usable
                text = s.execute(matching(func.group_concat(VectorRow.store_row))).scalar()
            rows = np.array(text.split(","), dtype=np.int64) if text else np.zeros(0, np.int64)
        except DBAPIError as exc:  # sqlite3.DataError: string or blob too big
            if "too big" not in str(exc):
                raise
            rows = np.fromiter(s.execute(matching(VectorRow.store_row)).scalars(), dtype=np.int64)
    return np.sort(rows)


#: Rows per candidate window of an approximate index (see :func:`search_vectors`).
WINDOW = 100
#: ``sort="date"`` orders this many results of the relevance ranking (those passing min_prob).
DATE_POOL = 1000


def _windows(index: ModelIndex, query: np.ndarray, allowed: np.ndarray | None, exclude: np.ndarray | None,
             want: int, window: int = WINDOW) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The relevance ranking of one query as (scores, rows) pieces, independent of the page asked
    for. An exact search (flat index, or a filter scored exactly) ranks by (score, row): its top
    ``want`` is the ranking's first ``want`` rows. An approximate one (HNSW, IVF, IVF-PQ) yields
    fixed windows: window j is the top-``window`` search leaving out (FAISS IDSelector) the
    original exclusions and every row of windows 0..j-1, so windows never overlap and never
    depend on k or offset; the ranking ends at the first empty window."""
    if index.is_exact(allowed):
        yield index.search(query, want, allowed, exclude)
        return
    seen = exclude if exclude is not None else np.zeros(0, np.int64)
    while True:
        scores, rows = index.search(query, window, allowed, seen)
        if not len(rows):
            return
        yield scores, rows
        seen = np.union1d(seen, rows)


def search_vectors(catalog: Catalog, model: ModelRow, index: ModelIndex, query: np.ndarray, k: int,
                   filters: Filters | None = None, exclude_images: set[int] | None = None,
                   min_prob: float | None = None, sort: str = "relevance", offset: int = 0) -> list[SearchResult]:
    """Results [offset, offset+k) of one ranking of the query vector: filters and deletions are
    applied inside the search, so every result that exists is found, whatever the filter's
    selectivity.

    Everything is read from one snapshot (:meth:`ModelIndex.reading`): the filter's rows, the
    vectors and the result rows, even while an index run commits. The ranking does not depend on
    k or offset (see :func:`_windows`), so consecutive pages never repeat or skip an image. The
    result set is the ranking's results with probability >= ``min_prob``; ``sort="date"`` orders
    its pool by capture time, then pages through it: the results (probability >= ``min_prob``) among
the top DATE_POOL of one search (exact, or one approximate search of DATE_POOL)."""
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    filters = filters or Filters()
    q = np.asarray(query, dtype=np.float32)
    # sort=date: the pool is one search of DATE_POOL (a set; its relevance order does not matter)
    want, window = (DATE_POOL, DATE_POOL) if sort == "date" else (offset + k, WINDOW)
    a, b = calibration(model)
    results: list[SearchResult] = []
    with index.reading() as session:
        allowed = allowed_rows(catalog, model, filters, session, index.store.committed) if filters.active() else None
        exclude = np.array(sorted(catalog.rows_of(model.id, exclude_images, session).values()), dtype=np.int64) \
            if exclude_images else None
        below = False
        for scores, rows in _windows(index, q, allowed, exclude, want, window):
            at = 0
            while at < len(rows) and len(results) < want and not (below and a > 0):
                # join only as many rows as are still wanted (a window holds more than a first page needs)
                piece = slice(at, at + max(want - len(results), 20))
                at = piece.stop
                joined = catalog.results_for_rows(model.id, rows[piece], session)
                for cos, row in zip(scores[piece].tolist(), rows[piece].tolist()):
                    hit = joined.get(row)
                    if hit is None:
                        continue  # not a live image of this snapshot
                    prob = float(sigmoid(a * cos + b))
                    if min_prob is not None and prob < min_prob:
                        below = True  # ranked by cosine (a > 0): the rest of the ranking scores lower
                        continue
                    results.append(result_of(model, hit, cos, prob))
            if len(results) >= want or (below and a > 0) or sort == "date":
                break  # enough, or below min_prob, or the date pool (one window) is complete
    results = results[:want]
    if sort == "date":
        results.sort(key=lambda r: (r.sort_time or datetime.min, r.path))
    results = results[offset:offset + k]
    for rank, r in enumerate(results, 1 + offset):
        r.rank = rank
    return results
