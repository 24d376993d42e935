"""Catalog schema versioning and migrations."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from searchlite import catalog as catalog_module
from searchlite.catalog import SCHEMA_VERSION, Catalog
from searchlite.errors import LibraryError


def test_new_catalog_is_at_current_version_in_wal_mode(tmp_path):
    cat = Catalog(tmp_path)
    assert cat.schema_version == SCHEMA_VERSION
    with cat.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_newer_catalog_is_refused_not_rewritten(tmp_path):
    cat = Catalog(tmp_path)
    with cat.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": SCHEMA_VERSION + 1})
    with pytest.raises(LibraryError, match="newer searchlite"):
        Catalog(tmp_path)


def test_pending_migrations_run_in_order_and_keep_data(tmp_path, monkeypatch):
    cat = Catalog(tmp_path)
    with cat.Session.begin() as s:
        cat.root_id(s, tmp_path / "photos")
    ran = []

    def v1_to_v2(engine):
        ran.append("v1->v2")
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE images ADD COLUMN rating INTEGER"))

    monkeypatch.setattr(catalog_module, "MIGRATIONS", [*catalog_module.MIGRATIONS, v1_to_v2])
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    upgraded = Catalog(tmp_path)
    assert ran == ["v1->v2"] and upgraded.schema_version == SCHEMA_VERSION + 1
    assert list(upgraded.roots().values()) == [str(tmp_path / "photos")]
    Catalog(tmp_path)
    assert ran == ["v1->v2"]  # not re-run


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(LibraryError, match="no searchlite library"):
        Catalog(tmp_path / "nothing", create=False)


def test_version_1_catalog_is_upgraded_with_its_data(tmp_path):
    cat = Catalog(tmp_path)
    with cat.Session.begin() as s:
        cat.root_id(s, tmp_path / "photos")
    with cat.engine.begin() as conn:  # make it look like a release-1 catalog
        conn.execute(text("DROP INDEX ix_embeddings_model_seq"))
        conn.execute(text("UPDATE meta SET value = '1' WHERE key = 'schema_version'"))
    upgraded = Catalog(tmp_path)
    assert upgraded.schema_version == SCHEMA_VERSION == 2
    with upgraded.engine.connect() as conn:
        names = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'"))}
    assert "ix_embeddings_model_seq" in names
    assert list(upgraded.roots().values()) == [str(tmp_path / "photos")]
