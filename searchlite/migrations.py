"""Catalog schema migrations: explicit, ordered, each creating exactly its own version's schema.

``STEPS[v]`` upgrades a version-``v`` catalog to ``v + 1`` inside one transaction (a fresh library
runs every step from v0, so new and upgraded catalogs are built by the same statements). The DDL is
written out rather than derived from the ORM classes: a later step that adds a column must not find
it already there because ``create_all`` ran with the newest classes.

v3 moves raw vectors out of SQLite into the vector store: the step below only creates the new
tables; the rows of the legacy ``embeddings`` table are moved by
:func:`searchlite.store.migrate.move_legacy_vectors` (resumable, chunk by chunk), which drops the
table once it is empty.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection

_V1 = """
CREATE TABLE meta ("key" VARCHAR NOT NULL, value TEXT NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE roots (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, path VARCHAR NOT NULL,
    added_at DATETIME NOT NULL, UNIQUE (path));
CREATE TABLE models (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, model_id VARCHAR NOT NULL,
    spec VARCHAR NOT NULL, dim INTEGER NOT NULL, family VARCHAR(8) NOT NULL, scale FLOAT NOT NULL,
    bias FLOAT NOT NULL, template VARCHAR NOT NULL, index_type VARCHAR(16) NOT NULL, index_factory VARCHAR,
    index_file VARCHAR, index_seq INTEGER NOT NULL, index_stale INTEGER NOT NULL, calib_a FLOAT,
    calib_b FLOAT, calib_report TEXT, created_at DATETIME NOT NULL, UNIQUE (model_id));
CREATE TABLE runs (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, started_at DATETIME NOT NULL,
    finished_at DATETIME, stats TEXT);
CREATE TABLE images (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, root_id INTEGER NOT NULL,
    relpath VARCHAR NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 VARCHAR(64),
    width INTEGER, height INTEGER, format VARCHAR(16), taken_at DATETIME, camera VARCHAR,
    status VARCHAR(8) NOT NULL, error TEXT, seen_run INTEGER NOT NULL, indexed_at DATETIME,
    UNIQUE (root_id, relpath), FOREIGN KEY(root_id) REFERENCES roots (id) ON DELETE CASCADE);
CREATE INDEX ix_images_taken_at ON images (taken_at);
CREATE INDEX ix_images_sha256 ON images (sha256);
CREATE INDEX ix_images_status ON images (status);
CREATE INDEX ix_images_root_id ON images (root_id);
CREATE TABLE embeddings (seq INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, model_ref INTEGER NOT NULL,
    image_id INTEGER NOT NULL, vector BLOB NOT NULL, UNIQUE (model_ref, image_id),
    FOREIGN KEY(model_ref) REFERENCES models (id) ON DELETE CASCADE,
    FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE);
CREATE INDEX ix_embeddings_image_id ON embeddings (image_id);
"""

_V2 = "CREATE INDEX ix_embeddings_model_seq ON embeddings (model_ref, seq);"

_V3 = """
CREATE TABLE vectors (model_ref INTEGER NOT NULL, image_id INTEGER NOT NULL, store_row INTEGER NOT NULL,
    PRIMARY KEY (model_ref, image_id),
    FOREIGN KEY(model_ref) REFERENCES models (id) ON DELETE CASCADE,
    FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE) WITHOUT ROWID;
CREATE UNIQUE INDEX ix_vectors_store_row ON vectors (model_ref, store_row);
CREATE INDEX ix_vectors_image_id ON vectors (image_id);
CREATE TABLE tombstones (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, model_ref INTEGER NOT NULL,
    store_row INTEGER NOT NULL, UNIQUE (model_ref, store_row));
CREATE TRIGGER tr_vectors_tombstone AFTER DELETE ON vectors BEGIN
    INSERT OR IGNORE INTO tombstones (model_ref, store_row) VALUES (old.model_ref, old.store_row); END;
CREATE TABLE index_segments (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, model_ref INTEGER NOT NULL,
    name VARCHAR NOT NULL, kind VARCHAR(8) NOT NULL, factory VARCHAR NOT NULL, row_lo INTEGER NOT NULL,
    row_hi INTEGER NOT NULL, count INTEGER NOT NULL, trained_count INTEGER NOT NULL, created_at DATETIME NOT NULL,
    UNIQUE (model_ref, name), FOREIGN KEY(model_ref) REFERENCES models (id) ON DELETE CASCADE);
CREATE TABLE query_cache (model_ref INTEGER NOT NULL, "key" VARCHAR NOT NULL, vector BLOB NOT NULL,
    used_at DATETIME NOT NULL, PRIMARY KEY (model_ref, "key"),
    FOREIGN KEY(model_ref) REFERENCES models (id) ON DELETE CASCADE);
ALTER TABLE models ADD COLUMN indexed BOOLEAN NOT NULL DEFAULT 1;
ALTER TABLE models ADD COLUMN store_rows INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models DROP COLUMN index_factory;
ALTER TABLE models DROP COLUMN index_file;
ALTER TABLE models DROP COLUMN index_seq;
ALTER TABLE models DROP COLUMN index_stale;
ALTER TABLE images DROP COLUMN seen_run;
ALTER TABLE images ADD COLUMN taken_source VARCHAR(16);
ALTER TABLE images ADD COLUMN taken_offset INTEGER;
ALTER TABLE images ADD COLUMN companion VARCHAR;
UPDATE images SET taken_source = 'exif' WHERE taken_at IS NOT NULL;
UPDATE images SET taken_at = datetime(mtime_ns / 1000000000, 'unixepoch', 'localtime'), taken_source = 'mtime'
    WHERE taken_at IS NULL AND mtime_ns > 0;
CREATE INDEX ix_images_format ON images (format);
"""

#: v4 (round 3): how a model's scores become probabilities is data of the model row
#: ("sigmoid": its own logit_scale/bias; "platt": a fitted calibration); the precision that produced
#: a model's stored vectors (counts per precision, JSON); a root's exclusions (JSON list of
#: gitignore-style patterns) and whether the default exclusions apply.
_V4 = """
ALTER TABLE models ADD COLUMN probability VARCHAR(16) NOT NULL DEFAULT 'platt';
UPDATE models SET probability = 'sigmoid' WHERE family = 'siglip';
ALTER TABLE models ADD COLUMN precision TEXT;
ALTER TABLE roots ADD COLUMN excludes TEXT;
ALTER TABLE roots ADD COLUMN default_excludes BOOLEAN NOT NULL DEFAULT 1;
"""

#: v5 (round 4, hybrid search): the text a photo carries, one row per (image, field) —
#: ocr | place | name | folder | camera | keywords | title | description — indexed twice by FTS5 as
#: external-content tables over ``image_text``: ``image_text_words`` (unicode61 words, accents folded,
#: for bm25 on words, exact phrases and name prefixes) and ``image_text_grams`` (trigrams, so Chinese and
#: Japanese substrings match: "东京站" inside "东京站出口"). Triggers keep both in step with ``image_text``
#: inside the same transaction, and rows go with their image (ON DELETE CASCADE fires the triggers).
#: ``images.lat``/``lon``: GPS position (degrees); ``text_sig``: what the metadata text was read from
#: (so a sidecar change re-reads text without re-embedding); ``ocr_version``: the OCR model that read the
#: photo (NULL: not read); ``text_error``: why reading text failed (never fatal).
_V5_TEXT = """
CREATE TABLE image_text (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, image_id INTEGER NOT NULL,
    field VARCHAR(16) NOT NULL, text TEXT NOT NULL, UNIQUE (image_id, field),
    FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE);
CREATE VIRTUAL TABLE image_text_words USING fts5(text, content='image_text', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE image_text_grams USING fts5(text, content='image_text', content_rowid='id',
    tokenize='trigram');
CREATE TRIGGER tr_image_text_ai AFTER INSERT ON image_text BEGIN
    INSERT INTO image_text_words (rowid, text) VALUES (new.id, new.text);
    INSERT INTO image_text_grams (rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER tr_image_text_ad AFTER DELETE ON image_text BEGIN
    INSERT INTO image_text_words (image_text_words, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO image_text_grams (image_text_grams, rowid, text) VALUES ('delete', old.id, old.text); END;
CREATE TRIGGER tr_image_text_au AFTER UPDATE ON image_text BEGIN
    INSERT INTO image_text_words (image_text_words, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO image_text_grams (image_text_grams, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO image_text_words (rowid, text) VALUES (new.id, new.text);
    INSERT INTO image_text_grams (rowid, text) VALUES (new.id, new.text); END;
CREATE INDEX ix_image_text_field ON image_text (field);
ALTER TABLE images ADD COLUMN lat FLOAT;
ALTER TABLE images ADD COLUMN lon FLOAT;
ALTER TABLE images ADD COLUMN text_sig VARCHAR;
ALTER TABLE images ADD COLUMN ocr_version VARCHAR(32);
ALTER TABLE images ADD COLUMN text_error TEXT;
"""


def statements(sql: str) -> list[str]:
    """Split a script into complete SQL statements (a trigger body's inner ';' does not end it)."""
    out, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    return out


def _script(sql: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        for statement in statements(sql):
            conn.exec_driver_sql(statement)

    return run


def _v2_to_v3(conn: Connection) -> None:
    _script(_V3)(conn)
    # a legacy table without vectors (a new library) has nothing to move: drop it here
    if conn.exec_driver_sql("SELECT 1 FROM embeddings LIMIT 1").first() is None:
        conn.exec_driver_sql("DROP TABLE embeddings")


#: round 4 (scan): the identity of a photo on disk, so one file reached through two paths is one image.
_IMAGES_IDENTITY = """
ALTER TABLE images ADD COLUMN dev INTEGER;
ALTER TABLE images ADD COLUMN inode INTEGER;
CREATE INDEX ix_images_identity ON images (inode, dev);
"""
images_identity = _script(_IMAGES_IDENTITY)

#: round 4 (search): each image's 64-bit perceptual hash (16 hex digits, searchlite.phash), written
#: at index time from the decode made for the model; NULL until the image is next decoded.
_R4_IMAGE_PHASH = """
ALTER TABLE images ADD COLUMN phash VARCHAR(16);
"""

#: STEPS[v] upgrades a version-v catalog to v + 1. A release that changes the schema appends a step.
#: round 4 (onnx): the engine that embedded a model's vectors (torch | onnx; NULL: torch).
_MODEL_RUNTIME = """
ALTER TABLE models ADD COLUMN runtime VARCHAR(16);
"""

STEPS: list[Callable[[Connection], None]] = [_script(_V1), _script(_V2), _v2_to_v3, _script(_V4), _script(_V5_TEXT),
                                             _script(_MODEL_RUNTIME), images_identity, _script(_R4_IMAGE_PHASH)]


def current_version(conn: Connection) -> int:
    """The schema version of an open catalog (0 for an empty file)."""
    if conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'meta'")).first() is None:
        return 0
    row = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
    return int(row[0]) if row else 0


def set_version(conn: Connection, version: int) -> None:
    conn.execute(text("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', :v)"), {"v": str(version)})
