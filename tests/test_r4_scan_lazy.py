"""Round 4 (scan): a re-index that changes nothing loads no model; `watch` and
`models export --force` refuse a read-only library with one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

import searchlite.library as library_module
from searchlite.cli.main import app
from searchlite.errors import LibraryError
from searchlite.library import Library

runner = CliRunner()


def _photo(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


@pytest.fixture
def loads(monkeypatch):
    """Counts every model load of the library module (the one road to a model)."""
    count = {"n": 0}
    real = library_module.load_embedder

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(library_module, "load_embedder", counting)
    return count


def test_a_reindex_that_changes_nothing_loads_no_model(tmp_path, loads):
    photos = tmp_path / "photos"
    for i in range(3):
        _photo(photos / f"{i}.jpg", (40 * i, 10, 10))
    Library(tmp_path / "lib").index([photos], ["demo"])
    assert loads["n"] == 1
    for models in (["demo"], []):  # named, or the library's own models
        stats = Library(tmp_path / "lib").index([photos], models)
        assert loads["n"] == 1  # scanned, nothing to embed: no model
        assert (stats.added, stats.updated, stats.unchanged, stats.removed, stats.failed) == (0, 0, 3, 0, 0)
    os.utime(photos / "0.jpg", ns=(1, 1))  # touched, same bytes: hashed, not embedded
    stats = Library(tmp_path / "lib").index([photos])
    assert loads["n"] == 1 and stats.unchanged == 3 and stats.updated == 0
    (photos / "2.jpg").unlink()
    stats = Library(tmp_path / "lib").index([photos])
    assert loads["n"] == 1 and stats.removed == 1
    _photo(photos / "new.jpg", (1, 200, 1))
    lib = Library(tmp_path / "lib")
    stats = lib.index([photos])
    assert loads["n"] == 2 and stats.added == 1  # something to embed: the model loads, once
    results = lib.search("anything", k=5)
    assert len(results) == 3


def test_a_missing_stored_model_still_fails_clearly_without_loading(tmp_path, loads, monkeypatch):
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", (1, 2, 3))
    Library(tmp_path / "lib").index([photos], ["demo"])
    monkeypatch.setattr(library_module, "stored_spec_missing", lambda spec: "/gone/model")
    with pytest.raises(Exception, match="no longer at /gone/model"):
        Library(tmp_path / "lib").index([photos])
    assert loads["n"] == 1


def _read_only(tmp_path: Path, monkeypatch) -> Path:
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", (1, 2, 3))
    Library(tmp_path / "lib").index([photos], ["demo"])
    monkeypatch.setenv("SEARCHLITE_READ_ONLY", "1")
    return photos


def test_watch_on_a_read_only_library_exits_with_one_line(tmp_path, monkeypatch):
    photos = _read_only(tmp_path, monkeypatch)
    with pytest.raises(LibraryError, match="read-only.*`watch`"):
        from searchlite.watch import start_watching

        start_watching(Library(tmp_path / "lib"), [photos])
    out = runner.invoke(app, ["watch", str(photos), "-L", str(tmp_path / "lib")])
    # a SearchliteError: the CLI's entry point prints it as one line and exits non-zero (no loop)
    assert out.exit_code != 0 and isinstance(out.exception, LibraryError) and "`watch`" in str(out.exception)


def test_models_export_force_refuses_a_read_only_library(tmp_path, monkeypatch):
    _read_only(tmp_path, monkeypatch)
    models = tmp_path / "lib" / "models"

    def written():
        return sorted((p.relative_to(models), p.stat().st_mtime_ns) for p in models.rglob("*") if p.is_file())

    before = written()
    out = runner.invoke(app, ["models", "export", "demo", "--force", "-L", str(tmp_path / "lib")])
    assert out.exit_code != 0 and isinstance(out.exception, LibraryError) and "read-only" in str(out.exception)
    assert written() == before  # the export folder untouched
