"""Query engine: filters as SQL over indexed columns, ANN search of a model's segments with those
filters inside FAISS, results joined with the catalog, and calibrated probabilities.

Probability = ``sigmoid(a * cos + b)``. SigLIP: ``a = exp(logit_scale)``, ``b = logit_bias`` (the
model's own probability). CLIP / ALIGN: Platt parameters fitted by ``searchlite calibrate`` and
stored per model; until then the zoo family's documented fallback centre (``center`` in zoo.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from searchlite.catalog import Catalog, ImageRow, ModelRow, Root, VectorRow, join_path
from searchlite.errors import QueryError
from searchlite.imaging import format_names, format_taken
from searchlite.paths import as_bytes
from searchlite.store import ModelIndex

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
    """The cosine at which an uncalibrated Platt model's probability is 0.5 (zoo family data: CLIP's
    matching pairs score ~0.30 cosine, unrelated ones ~0.15-0.20); a family the zoo no longer
    lists gets the zoo's own default centre."""
    from searchlite.models.zoo import DEFAULT_CENTER
    from searchlite.models.zoo import family as zoo_family

    known = zoo_family(family)
    return known.center if known is not None else DEFAULT_CENTER


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def parse_date(value: str, end: bool = False, name: str = "date") -> datetime:
    """A filter date, the same for the CLI, the socket server, the HTTP API and the page: an ISO
    date-time as given, or a date alone meaning that whole day: its first instant, or with
    ``end`` (``before``) its last one, 23:59:59.999999, so ``before <= it`` is exactly ``before the
    next day 00:00`` (capture times are stored to the microsecond). Bad input is a QueryError."""
    from searchlite.params import parse_when

    return parse_when(value, end=end, name=name)


def check_template(template: str | None) -> str | None:
    """A prompt template must contain exactly one bare '{}' (see :func:`searchlite.params.check_template`)."""
    from searchlite.params import check_template as check

    return check(template)


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
        """Parse and validate a filters object from a request (:func:`searchlite.params.filter_fields`)."""
        from searchlite.params import filter_fields

        return cls(**filter_fields(data))

    def active(self) -> bool:
        return any([self.glob, self.folder, self.after, self.before, self.min_width, self.min_height, self.formats,
                    self.place, self.near, self.camera, self.text])  # round4-hybrid: the text filters

    def conditions(self, catalog: Catalog) -> list:
        """SQL conditions on images (joined with roots) equivalent to these filters."""
        conds = []
        if self.glob:
            conds.append(glob_condition(self.glob))
        if self.folder:
            conds.append(self._folder_condition(catalog))
        if self.after:
            conds.append(time_condition(self.after, after=True))
        if self.before:
            conds.append(time_condition(self.before, after=False))
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


def glob_condition(glob: str):
    """Paths matching a shell pattern; a pattern with bytes that are not UTF-8 (surrogate-escaped,
    as from the command line) is matched byte for byte against names stored as bytes."""
    from sqlalchemy import String, cast, literal
    from sqlalchemy.types import LargeBinary

    pattern = glob.replace("[!", "[^")  # fnmatch's negation in SQLite GLOB syntax
    try:
        pattern.encode("utf-8")
        bound = literal(pattern, String)
    except UnicodeEncodeError:
        bound = cast(literal(as_bytes(pattern), LargeBinary), String)
    return (Root.path + "/" + ImageRow.relpath).op("GLOB")(bound)


def time_condition(when: datetime, *, after: bool):
    """Capture times on/after (or on/before) ``when``. A time with a UTC offset is an instant:
    compared as such with the photos that record their offset, and as the wall-clock time it names
    with those that do not; a time without one is wall-clock time, as capture times are."""
    from sqlalchemy import and_, or_

    wall = when.replace(tzinfo=None)
    plain = ImageRow.taken_at >= wall if after else ImageRow.taken_at <= wall
    if when.tzinfo is None or when.utcoffset() is None:
        return plain
    utc = (when - when.utcoffset()).replace(tzinfo=None).isoformat(sep=" ")
    instant = func.julianday(ImageRow.taken_at) - ImageRow.taken_offset / 1440.0
    bound = func.julianday(utc)
    return or_(and_(ImageRow.taken_offset.is_(None), plain),
               and_(ImageRow.taken_offset.is_not(None), instant >= bound if after else instant <= bound))



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


#: ``sort="date"`` orders this many results of the relevance ranking (those passing min_prob).
DATE_POOL = 1000


def min_cosine(min_prob: float | None, a: float, b: float) -> float | None:
    """The cosine at which ``sigmoid(a*cos + b)`` reaches ``min_prob`` (None: no cut, or a <= 0)."""
    if min_prob is None or a <= 0:
        return None
    if min_prob <= 0:
        return -np.inf
    if min_prob >= 1:
        return np.inf
    return float((np.log(min_prob / (1 - min_prob)) - b) / a)


def search_vectors(catalog: Catalog, model: ModelRow, index: ModelIndex, query: np.ndarray, k: int,
                   filters: Filters | None = None, exclude_images: set[int] | None = None,
                   min_prob: float | None = None, sort: str = "relevance", offset: int = 0) -> list[SearchResult]:
    """Results [offset, offset+k) of one ranking of the query vector: filters and deletions are
    applied inside the search, so every result that exists is found, whatever the filter's
    selectivity.

    Everything is read from one snapshot (:meth:`ModelIndex.reading`): the filter's rows, the
    vectors and the result rows, even while an index run commits. The ranking
    (:class:`searchlite.store.ranking.Ranking`) does not depend on k or offset and is kept per
    query and index state, so consecutive pages never repeat or skip an image and page n reads
    what pages 0..n-1 computed; it ends with every live row. The result set is the ranking's
    results with probability >= ``min_prob`` (complete: scored exactly past the index's reach);
    ``sort="date"`` orders the first DATE_POOL of them by capture time, then pages through it."""
    if sort not in SORTS:
        raise QueryError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    filters = filters or Filters()
    q = np.asarray(query, dtype=np.float32)
    a, b = calibration(model)
    cut = min_cosine(min_prob, a, b)
    start, count = (0, DATE_POOL) if sort == "date" else (offset, k)
    results: list[SearchResult] = []
    with index.reading() as session:
        allowed = allowed_rows(catalog, model, filters, session, index.store.committed) if filters.active() else None
        exclude = np.array(sorted(catalog.rows_of(model.id, exclude_images, session).values()), dtype=np.int64) \
            if exclude_images else None
        ranking = index.rankings.get(index, q, allowed, exclude, cut)

        def is_live(rows: np.ndarray) -> np.ndarray:
            joined = catalog.results_for_rows(model.id, rows, session)
            return np.array([int(r) in joined for r in rows], dtype=bool)

        scores, rows = ranking.page(index, start, count, is_live, cut)
        joined = catalog.results_for_rows(model.id, rows, session)
        for cos, row in zip(scores.tolist(), rows.tolist()):
            hit = joined.get(row)
            if hit is None:
                continue
            prob = float(sigmoid(a * cos + b))
            if cut is None and min_prob is not None and prob < min_prob:
                continue  # a <= 0: no cosine cut applies, so the probability is checked here
            results.append(result_of(model, hit, cos, prob))
    if sort == "date":
        results.sort(key=lambda r: (r.sort_time or datetime.min, r.path))
        results = results[offset:offset + k]
    for rank, r in enumerate(results, 1 + offset):
        r.rank = rank
    return results
