"""One validation of request parameters, used by the CLI, the socket server and the HTTP API alike.

Each check takes the value as a front end received it and returns the value to use, or raises
:class:`ParamError` with one line naming the parameter (the CLI exits 2 on it, HTTP answers 400,
the socket server answers ``ok: false``). The limits live here, once.
"""

from __future__ import annotations

import string
from datetime import date, datetime, time, timedelta
from typing import Any

from searchlite.errors import QueryError

#: results per request (a page), and how deep paging may go
MAX_K = 1000
MAX_OFFSET = 1_000_000
#: image sizes a size filter may ask for
MAX_SIZE = 1_000_000
#: SQLite's INTEGER range: an id outside it can name no row
MAX_ID = (1 << 63) - 1
MAX_TEXT = 2000


class ParamError(QueryError):
    """A request parameter out of its range or of the wrong form (a usage error: exit 2)."""

    exit_code = 2


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ParamError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    return value


def _ranged(value: Any, name: str, low: int, high: int) -> int:
    number = _integer(value, name)
    if not low <= number <= high:
        raise ParamError(f"{name} must be between {low} and {high}, got {number}")
    return number


def check_k(value: Any, name: str = "k", high: int = MAX_K) -> int:
    """Results per page: 1..``high``."""
    return _ranged(value, name, 1, high)


def check_offset(value: Any, name: str = "offset") -> int:
    """Where a page starts: 0..MAX_OFFSET."""
    return _ranged(0 if value is None else value, name, 0, MAX_OFFSET)


def check_min_prob(value: Any, name: str = "min_prob") -> float | None:
    """A probability cut: None, or a number in [0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ParamError(f"{name} must be between 0 and 1, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ParamError(f"{name} must be a number between 0 and 1, got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails this too
        raise ParamError(f"{name} must be between 0 and 1, got {value!r}")
    return number


def check_size(value: Any, name: str) -> int | None:
    """A minimum width/height: None, or 1..MAX_SIZE pixels."""
    if value is None:
        return None
    number = _integer(value, name)
    if not 1 <= number <= MAX_SIZE:
        raise ParamError(f"{name} must be a positive integer of at most {MAX_SIZE} pixels, got {number}")
    return number


def check_image_id(value: Any, name: str = "id") -> int:
    """A catalog image id: a positive integer within SQLite's range (else no row can have it)."""
    return _ranged(value, name, 1, MAX_ID)


def check_text(value: Any, name: str, *, required: bool = False, limit: int = MAX_TEXT) -> str | None:
    """A free text parameter (a query, a folder, a glob): at most ``limit`` characters, no NUL byte
    (no path or pattern has one; SQLite and the OS would cut it there)."""
    if value is None or value == "":
        if required:
            raise ParamError(f"{name} must be a non-empty text")
        return None
    if not isinstance(value, str):
        raise ParamError(f"{name} must be a text")
    if "\x00" in value:
        raise ParamError(f"{name} must not contain a NUL byte")
    if len(value) > limit:
        raise ParamError(f"{name} must be at most {limit} characters")
    if required and not value.strip():
        raise ParamError(f"{name} must be a non-empty text")
    return value


def check_template(template: Any, name: str = "template") -> str | None:
    """A prompt template: exactly one bare ``{}`` where the query goes (``{{``/``}}`` for braces).
    A format spec, conversion, index or name (``{:>50000000}``, ``{!r}``, ``{0}``, ``{x}``) is
    refused: it would be executed on the query."""
    template = check_text(template, name)
    if template is None:
        return None
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ParamError(f"bad {name} {template!r}: {exc} (use '{{}}' where the query goes, '{{{{' for a "
                         f"brace)") from exc
    fields = [(f, spec, conv) for _, f, spec, conv in parts if f is not None]
    if len(fields) != 1 or fields[0][0] != "":
        raise ParamError(f"bad {name} {template!r}: it needs exactly one '{{}}' where the query goes "
                         f"(e.g. \"a photo of {{}}.\")")
    if fields[0][1] or fields[0][2]:
        raise ParamError(f"bad {name} {template!r}: only a bare '{{}}' is allowed (no format spec or conversion)")
    return template


def parse_when(value: Any, *, end: bool = False, name: str = "date") -> datetime | None:
    """A date filter: an ISO date (the whole day: its first instant, or with ``end`` its last) or
    an ISO date-time, its UTC offset kept when given (``2026-12-02T23:00+05:00``)."""
    text = check_text(value, name, limit=64)
    if text is None:
        return None
    text = text.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is not None:
        first = datetime.combine(day, time())
        return first + timedelta(days=1) - timedelta(microseconds=1) if end else first
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ParamError(f"{name} must be a date (YYYY-MM-DD, or YYYY-MM-DDTHH:MM[:SS][+HH:MM]), got {text!r}") from None


def check_formats(values: Any, name: str = "format") -> tuple[str, ...]:
    """Format names (JPEG, png, heic...): a list, or comma-separated texts; up to 50 of 16 characters."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ParamError(f"{name} must be a list of format names")
    out = [f.strip() for value in values for f in value.split(",") if f.strip()]
    if len(out) > 50 or any(len(f) > 16 or "\x00" in f for f in out):
        raise ParamError(f"{name} takes up to 50 format names (JPEG, PNG, ...)")
    return tuple(out)


FILTER_KEYS = ("glob", "folder", "after", "before", "min_width", "min_height", "formats", "place", "near", "camera", "text")


def filter_fields(data: Any) -> dict[str, Any]:
    """A filters object (the JSON form: ``glob``, ``folder``, ``after``, ``before``, ``min_width``,
    ``min_height``, ``formats``) as a validated :class:`searchlite.query.Filters`. ``folder`` is
    taken as given (the CLI makes it absolute before). Returns the keyword arguments of
    :class:`searchlite.query.Filters` (``Filters.from_json`` builds one from them)."""
    from pathlib import Path

    data = data or {}
    if not isinstance(data, dict):
        raise ParamError("filters must be an object")
    unknown = set(data) - set(FILTER_KEYS)
    if unknown:
        raise ParamError(f"unknown filter {sorted(unknown)[0]!r}")
    folder = check_text(data.get("folder"), "folder", limit=4096)
    return dict(glob=check_text(data.get("glob"), "glob", limit=4096), folder=Path(folder) if folder else None,
                   after=parse_when(data.get("after"), name="after"),
                   before=parse_when(data.get("before"), end=True, name="before"),
                   min_width=check_size(data.get("min_width"), "min_width"),
                   min_height=check_size(data.get("min_height"), "min_height"),
                   formats=check_formats(data.get("formats"), "formats"), **check_text_filters(data))


def check_text_filters(data: dict, prefix: str = "") -> dict:
    """The hybrid-search filters (``place``, ``near``, ``camera``, ``text``) of a request or the CLI:
    ``near`` as ``[lat, lon, km]`` or ``"LAT,LON,KM"``; the others must hold a word."""
    from searchlite.errors import QueryError
    from searchlite.textfilters import parse_near

    near = data.get("near")
    if isinstance(near, list | tuple):
        if len(near) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in near):
            raise ParamError(f"{prefix or 'filter '}near must be [lat, lon, km] or \"LAT,LON,KM\"")
        near = ",".join(str(v) for v in near)
    elif near is not None and not isinstance(near, str):
        raise ParamError(f"{prefix or 'filter '}near must be [lat, lon, km] or \"LAT,LON,KM\"")
    out = {}
    try:
        for key in ("place", "camera", "text"):
            value = check_text(data.get(key), f"{prefix}{key}", limit=200)
            out[key] = filter_words(value, f"{prefix}{key}")
        out["near"] = parse_near(check_text(near, f"{prefix}near", limit=100), f"{prefix}near")
    except QueryError as exc:
        raise ParamError(str(exc)) from exc
    return out


def filter_words(value: str | None, name: str) -> str | None:
    """round4-hybrid: a text filter's value, which must hold a word (a letter or digit)."""
    if value is None or not value.strip():
        return None
    if not any(c.isalnum() for c in value):
        raise ParamError(f"filter {name} needs a word, got {value!r}")
    return value.strip()
