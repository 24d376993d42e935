"""Catalog schema versioning and migrations, checked against real catalogs written by earlier
releases (tests/fixtures/library-v1 and -v2 were built by the v1 and v2 code: 14 sample images
indexed with the demo model, then one deleted)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from searchlite import catalog as catalog_module
from searchlite import migrations
from searchlite.catalog import SCHEMA_VERSION, Catalog
from searchlite.errors import LibraryError

FIXTURES = Path(__file__).parent / "fixtures"


def _schema(db: Path) -> dict[str, object]:
    """Every table's columns, indexes (with their columns and uniqueness), foreign keys, and the
    triggers: the structure, independent of how the DDL text was spelled."""
    with sqlite3.connect(db) as conn:
        out: dict[str, object] = {}
        for kind, name in conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')"):
            if name == "sqlite_sequence":
                continue
            if kind == "trigger":
                out[name] = "trigger"
                continue
            indexes = {}
            for _, index, unique, _, _ in conn.execute(f"PRAGMA index_list('{name}')"):
                cols = [c[2] for c in conn.execute(f"PRAGMA index_info('{index}')")]
                indexes[tuple(cols)] = unique
            out[name] = (sorted(conn.execute(f"PRAGMA table_info('{name}')").fetchall()), indexes,
                         sorted(r[2:5] for r in conn.execute(f"PRAGMA foreign_key_list('{name}')")))
        return out


def _fresh_at(version: int, folder: Path) -> Path:
    """A new catalog built by running the first ``version`` migration steps."""
    folder.mkdir(parents=True)
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{folder / 'catalog.sqlite'}")
    with engine.begin() as conn:
        for step in migrations.STEPS[:version]:
            step(conn)
        migrations.set_version(conn, version)
    engine.dispose()
    return folder / "catalog.sqlite"


def test_new_catalog_is_at_current_version_in_wal_mode(tmp_path):
    cat = Catalog(tmp_path)
    assert cat.schema_version == SCHEMA_VERSION == 5
    with cat.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


@pytest.mark.parametrize("version", [1, 2])
def test_each_step_creates_exactly_its_own_versions_schema(tmp_path, version):
    """A new library built up to version v has the very schema the v code wrote (so a later
    ALTER TABLE step never meets a column or index that already exists)."""
    fresh = _fresh_at(version, tmp_path / "fresh")
    assert _schema(fresh) == _schema(FIXTURES / f"library-v{version}" / "catalog.sqlite")


@pytest.mark.parametrize("version", [1, 2])
def test_upgrading_a_real_old_catalog_gives_the_new_schema_and_keeps_every_vector(tmp_path, version):
    lib_dir = tmp_path / "lib"
    shutil.copytree(FIXTURES / f"library-v{version}", lib_dir)
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        old_vectors = {image_id: np.frombuffer(blob, np.float32) for image_id, blob in
                       conn.execute("SELECT image_id, vector FROM embeddings")}
        old_images = conn.execute("SELECT id, relpath, sha256 FROM images ORDER BY id").fetchall()
    from searchlite.library import Library

    lib = Library(lib_dir, device="cpu")
    assert lib.catalog.schema_version == SCHEMA_VERSION
    assert _schema(lib_dir / "catalog.sqlite") == _schema(Catalog(tmp_path / "new").folder / "catalog.sqlite")
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        assert conn.execute("SELECT id, relpath, sha256 FROM images ORDER BY id").fetchall() == old_images
    row = lib.model_row("demo")
    moved = lib.stored_vectors(row, list(old_vectors))
    assert set(moved) == set(old_vectors) and len(old_vectors) == 13
    for image_id, vec in old_vectors.items():
        np.testing.assert_array_equal(moved[image_id], vec)
    assert not list((lib_dir / "vectors").rglob("index-g*.faiss"))  # the old single-file indexes are gone
    expected = json.loads((lib_dir / "expected-search.json").read_text())
    got = [[r.path, r.image_id, r.score] for r in lib.search("a red circle", "demo", k=5)]
    assert [g[:2] for g in got] == [e[:2] for e in expected]
    np.testing.assert_allclose([g[2] for g in got], [e[2] for e in expected], atol=1e-5)


def test_newer_catalog_is_refused_not_rewritten(tmp_path):
    cat = Catalog(tmp_path)
    with cat.engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema_version'"), {"v": SCHEMA_VERSION + 1})
    with pytest.raises(LibraryError, match="newer searchlite"):
        Catalog(tmp_path)


def test_a_future_step_runs_once_on_new_and_old_catalogs(tmp_path, monkeypatch):
    old = Catalog(tmp_path / "old")
    with old.WriteSession.begin() as s:
        old.root_id(s, tmp_path / "photos")
    ran = []

    def add_rating(conn):
        ran.append(1)
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN rating INTEGER")

    monkeypatch.setattr(migrations, "STEPS", [*migrations.STEPS, add_rating])
    monkeypatch.setattr(catalog_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    assert Catalog(tmp_path / "old").schema_version == SCHEMA_VERSION + 1
    assert Catalog(tmp_path / "new").schema_version == SCHEMA_VERSION + 1  # no "duplicate column"
    assert list(Catalog(tmp_path / "old").roots().values()) == [str(tmp_path / "photos")]
    assert ran == [1, 1]  # once per catalog, never again


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(LibraryError, match="no searchlite library"):
        Catalog(tmp_path / "nothing", create=False)


def test_library_paths_with_url_characters(tmp_path):
    """A folder named with '?' or '#' holds its catalog (a sqlite:/// URL string would cut the path)."""
    folder = tmp_path / "what?#fragment"
    cat = Catalog(folder)
    with cat.WriteSession.begin() as s:
        cat.root_id(s, "/photos")
    assert (folder / "catalog.sqlite").is_file()
    assert list(Catalog(folder).roots().values()) == ["/photos"]
    assert not (tmp_path / "what").exists()
