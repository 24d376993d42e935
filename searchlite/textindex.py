"""The text a photo carries (OCR, place, names, camera, XMP/IPTC), stored in the catalog and indexed by FTS5.

Storage only: callers pass plain strings per field; who extracts them (OCR, EXIF, sidecars) lives elsewhere.
Rows are written in the caller's transaction, so text stays consistent with the image row (kill -9, moves,
deletions: the ``image_text`` rows cascade with their image and triggers keep both FTS tables in step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import text as sql
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

#: every text field, in the order results list why a photo matched
FIELDS: tuple[str, ...] = ("ocr", "place", "name", "folder", "camera", "keywords", "title", "description")


def _conn(db: Session | Connection) -> Connection:
    return db.connection() if isinstance(db, Session) else db


def replace_fields(db: Session | Connection, image_id: int, fields: Mapping[str, str | None]) -> None:
    """Set the given fields of one image (an empty or None value removes the field); others are untouched."""
    conn = _conn(db)
    for field, value in fields.items():
        if field not in FIELDS:
            raise ValueError(f"unknown text field {field!r} (known: {', '.join(FIELDS)})")
        value = (value or "").strip()
        if not value:
            conn.execute(sql("DELETE FROM image_text WHERE image_id = :i AND field = :f"), {"i": image_id, "f": field})
            continue
        conn.execute(
            sql("INSERT INTO image_text (image_id, field, text) VALUES (:i, :f, :t) "
                "ON CONFLICT (image_id, field) DO UPDATE SET text = excluded.text WHERE text != excluded.text"),
            {"i": image_id, "f": field, "t": value},
        )


def fields_of(db: Session | Connection, image_ids: Iterable[int]) -> dict[int, dict[str, str]]:
    """The stored text fields of some images: ``{image_id: {field: text}}``."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    out: dict[int, dict[str, str]] = {}
    conn = _conn(db)
    for lo in range(0, len(ids), 500):
        chunk = ids[lo:lo + 500]
        marks = ",".join(str(i) for i in chunk)  # ints only: safe to inline
        for image_id, field, value in conn.execute(
                sql(f"SELECT image_id, field, text FROM image_text WHERE image_id IN ({marks})")):
            out.setdefault(image_id, {})[field] = value
    return out


def counts(db: Session | Connection) -> dict[str, int]:
    """How many photos have each text field (``status``)."""
    rows = _conn(db).execute(sql("SELECT field, COUNT(*) FROM image_text GROUP BY field"))
    return {field: int(n) for field, n in rows}


def rebuild(db: Session | Connection) -> None:
    """Rebuild both FTS indexes from ``image_text`` (``reindex``; cheap next to the vectors)."""
    conn = _conn(db)
    conn.execute(sql("INSERT INTO image_text_words (image_text_words) VALUES ('rebuild')"))
    conn.execute(sql("INSERT INTO image_text_grams (image_text_grams) VALUES ('rebuild')"))


def integrity(db: Session | Connection) -> None:
    """Raise ``sqlite3`` / SQLAlchemy errors when an FTS index disagrees with ``image_text``."""
    conn = _conn(db)
    conn.execute(sql("INSERT INTO image_text_words (image_text_words, rank) VALUES ('integrity-check', 1)"))
    conn.execute(sql("INSERT INTO image_text_grams (image_text_grams, rank) VALUES ('integrity-check', 1)"))
