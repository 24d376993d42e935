"""Filters over the text a photo carries and its position: ``place``, ``camera``, ``text``, ``near``.

Each becomes one SQL condition on ``images`` (a sub-select of ``image_text`` through FTS5, or a
distance on ``images.lat``/``lon``), so they run inside the search like the other filters: every
photo that passes is found, whatever the filter's selectivity.
"""

from __future__ import annotations

import math
import re

from sqlalchemy import ColumnElement, and_, func
from sqlalchemy import text as sql

from searchlite.catalog import ImageRow
from searchlite.errors import QueryError
from searchlite.textindex import FIELDS
from searchlite.textnorm import fold
from searchlite.textquery import has_cjk

EARTH_KM = 6371.0088  # mean Earth radius (IUGG), as haversine distances are usually given
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def parse_near(value: str | None, name: str = "near") -> tuple[float, float, float] | None:
    """``"LAT,LON,KM"`` as three floats, validated (latitude -90..90, longitude -180..180, km > 0)."""
    if value is None or not str(value).strip():
        return None
    parts = [p.strip() for p in str(value).split(",")]
    try:
        lat, lon, km = (float(p) for p in parts) if len(parts) == 3 else (math.nan,) * 3
    except ValueError:
        lat = lon = km = math.nan
    if not (-90 <= lat <= 90 and -180 <= lon <= 180 and 0 < km < 40100):
        raise QueryError(f"{name} must be LAT,LON,KM (latitude -90..90, longitude -180..180, km > 0), got {value!r}")
    return lat, lon, km


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km (the reference for :func:`near_condition`)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_KM * math.asin(min(1.0, math.sqrt(h)))


def near_condition(lat: float, lon: float, km: float) -> ColumnElement:
    """Photos within ``km`` of (lat, lon): a bounding box on the columns, then the haversine
    distance in SQL (SQLite's math functions)."""
    dlat = math.degrees(km / EARTH_KM)
    coslat = math.cos(math.radians(lat))
    box = [ImageRow.lat.is_not(None), ImageRow.lon.is_not(None), ImageRow.lat.between(lat - dlat, lat + dlat)]
    if coslat > 1e-6 and dlat / coslat < 180 and abs(lat) + dlat < 90:
        dlon = dlat / coslat
        lo, hi = lon - dlon, lon + dlon
        if lo >= -180 and hi <= 180:  # a box across the antimeridian: no longitude box, the distance decides
            box.append(ImageRow.lon.between(lo, hi))
    p1 = math.radians(lat)
    lat2, lon2 = func.radians(ImageRow.lat), func.radians(ImageRow.lon)
    h = (func.pow(func.sin((lat2 - p1) / 2), 2)
         + math.cos(p1) * func.cos(lat2) * func.pow(func.sin((lon2 - math.radians(lon)) / 2), 2))
    return and_(*box, 2 * EARTH_KM * func.asin(func.min(1.0, func.sqrt(h))) <= km)


def _quote(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def text_condition(value: str, fields: tuple[str, ...], key: str, prefix: bool = False) -> ColumnElement:
    """Photos whose text in ``fields`` holds ``value``: its words as a phrase (case and accents
    folded; with ``prefix`` the last word may be a prefix), or for Chinese/Japanese/Korean a
    substring. ``key`` names the bound parameters (one per filter)."""
    value = value.strip()
    if not value:
        raise QueryError(f"filter {key} is empty")
    bad = set(fields) - set(FIELDS)
    if bad:
        raise ValueError(f"unknown text fields {sorted(bad)}")
    marks = ",".join(f"'{f}'" for f in fields)  # from FIELDS only: safe to inline
    if has_cjk(value):
        chunks = value.split()
        if all(len(c) >= 3 for c in chunks):
            inner = ("SELECT t.image_id FROM image_text_grams g JOIN image_text t ON t.id = g.rowid "
                     f"WHERE image_text_grams MATCH :{key} AND t.field IN ({marks})")
            return sql(f"images.id IN ({inner})").bindparams(**{key: " AND ".join(_quote(c) for c in chunks)})
        likes = " AND ".join(f"t.text LIKE :{key}{i} ESCAPE '\\'" for i in range(len(chunks)))
        params = {f"{key}{i}": "%" + re.sub(r"([%_\\])", r"\\\1", c) + "%" for i, c in enumerate(chunks)}
        return sql(f"images.id IN (SELECT t.image_id FROM image_text t WHERE t.field IN ({marks}) AND {likes})"
                   ).bindparams(**params)
    words = _WORD.findall(fold(value))
    if not words:
        raise QueryError(f"filter {key} has no words: {value!r}")
    expr = _quote(" ".join(words)) + (" *" if prefix else "")
    inner = ("SELECT t.image_id FROM image_text_words w JOIN image_text t ON t.id = w.rowid "
             f"WHERE image_text_words MATCH :{key} AND t.field IN ({marks})")
    return sql(f"images.id IN ({inner})").bindparams(**{key: expr})


def place_condition(value: str) -> ColumnElement:
    """``--place``: the place field (locality, city, region, country) holds these words."""
    return text_condition(value, ("place",), "f_place")


def camera_condition(value: str) -> ColumnElement:
    """``--camera``: the camera field (make, model, lens) holds these words, the last one possibly
    a prefix when it holds a digit (``x100`` finds X100V and X100F)."""
    last = value.split()[-1] if value.split() else ""
    return text_condition(value, ("camera",), "f_camera", prefix=any(c.isdigit() for c in last))


def contains_condition(value: str) -> ColumnElement:
    """``--text``: the photo carries this text (OCR, or any metadata field), as a phrase."""
    return text_condition(value, FIELDS, "f_text")
