"""Issue 19, round 3, query side: one snapshot per search (item 3), whole-day dates (7), pagination
over one ranking for every index type (8), the query grammar, --print0 and short IN lists (9),
usage errors (17) and the public API (19). Rankings are checked against brute force."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_storage import brute, synthetic, write_parquet
from typer.testing import CliRunner

from searchlite.cli.main import app
from searchlite.library import Library
from searchlite.query import Filters, parse_date, search_vectors

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _import(lib: Library, spec: str, vectors: np.ndarray, path: Path, start: int = 0) -> None:
    write_parquet(path, vectors, start=start)
    assert lib.import_vectors(path, spec)["imported"] == len(vectors)


def _widths(n: int) -> np.ndarray:
    return 100 + np.arange(n) % 50  # write_parquet's widths


# -- item 3: a search reads one snapshot --------------------------------------------------------------
def test_3_rows_committed_after_the_index_refresh_are_not_out_of_range(tmp_path, hf_siglip):
    """The index was refreshed, then an index run committed more rows, then the filter ran: the old
    code read the new rows from SQL against the old snapshot (IndexError: store row out of range)."""
    spec = f"hf:{hf_siglip}"
    vectors = synthetic(800, seed=3)
    lib = Library(tmp_path / "lib", device="cpu")
    _import(lib, spec, vectors[:500], tmp_path / "a.parquet")
    row = lib.model_row(spec)
    index = lib.model_index(row)  # refreshed: 500 rows
    writer = Library(tmp_path / "lib", device="cpu")  # another "process" commits 300 more
    _import(writer, spec, vectors[500:], tmp_path / "b.parquet", start=500)
    q = vectors[7]
    got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, index, q, 30, Filters(min_width=120))]
    assert got == brute(vectors, q, 30, _widths(800) >= 120)  # the search caught up, consistently


def test_3_a_commit_during_the_search_is_not_seen_by_it(tmp_path, hf_siglip, monkeypatch):
    """A commit between the snapshot and the filter's SQL (inside the search) changes nothing: the
    filter's rows come from the snapshot's read transaction."""
    import searchlite.query as query

    spec = f"hf:{hf_siglip}"
    vectors = synthetic(800, seed=4)
    lib = Library(tmp_path / "lib", device="cpu")
    _import(lib, spec, vectors[:500], tmp_path / "a.parquet")
    row = lib.model_row(spec)
    real = query.allowed_rows
    committed = []

    def commit_first(*args, **kwargs):
        if not committed:
            committed.append(True)
            _import(Library(tmp_path / "lib", device="cpu"), spec, vectors[500:], tmp_path / "b.parquet", start=500)
        return real(*args, **kwargs)

    monkeypatch.setattr(query, "allowed_rows", commit_first)
    q = vectors[11]
    got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), q, 30, Filters(min_width=1))]
    assert committed and got == brute(vectors[:500], q, 30)  # the snapshot's 500 images, none of the 300
    got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), q, 30, Filters(min_width=1))]
    assert got == brute(vectors, q, 30)  # the next search sees them


def test_3_filtered_searches_during_an_index_run_never_fail(tmp_path, hf_siglip):
    """Filtered searches in a loop while another thread imports batch after batch: no exception, and
    each answer is the brute-force answer over the images of the snapshot it read."""
    spec = f"hf:{hf_siglip}"
    batches, size = 12, 150
    vectors = synthetic(batches * size, seed=5)
    lib = Library(tmp_path / "lib", device="cpu")
    _import(lib, spec, vectors[:size], tmp_path / "0.parquet")
    row = lib.model_row(spec)
    done = threading.Event()
    failures: list[BaseException] = []

    def index_run() -> None:
        writer = Library(tmp_path / "lib", device="cpu")
        try:
            for b in range(1, batches):
                _import(writer, spec, vectors[b * size:(b + 1) * size], tmp_path / f"{b}.parquet", start=b * size)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=index_run)
    thread.start()
    searches, rng = 0, np.random.default_rng(0)
    try:
        while not done.is_set() or searches < 5:
            q = vectors[int(rng.integers(0, size))]
            index = lib.model_index(row)
            results = search_vectors(lib.catalog, row, index, q, 25, Filters(min_width=120))
            seen = index.store.committed  # the snapshot that search read (rows = import order here)
            assert [r.image_id - 1 for r in results] == brute(vectors[:seen], q, 25, _widths(seen) >= 120)
            searches += 1
    finally:
        thread.join(timeout=300)
    assert not failures, failures
    assert searches >= 5 and lib.model_index(row).store.committed == batches * size


# -- item 7: a date without a time is the whole day ---------------------------------------------------
def test_7_parse_date_gives_the_whole_day_and_refuses_bad_dates():
    assert parse_date("2026-12-01") == datetime(2026, 12, 1)
    assert parse_date("2026-12-01", end=True) == datetime(2026, 12, 1, 23, 59, 59, 999999)
    assert parse_date("2026-12-01T10:30", end=True) == datetime(2026, 12, 1, 10, 30)
    from searchlite.errors import QueryError

    for bad in ("2026-13-01", "yesterday", "2026-12-01T25:00"):
        with pytest.raises(QueryError):
            parse_date(bad)
    js = (ROOT / "searchlite" / "web" / "static" / "app.js").read_text()
    assert "T23:59:59" not in js  # the page sends the date; the server gives it the whole day


@pytest.fixture(scope="module")
def dated(tmp_path_factory, hf_siglip):
    """Images taken around 2026-12-01 (one per instant below), imported."""
    folder = tmp_path_factory.mktemp("dated")
    times = [datetime(2026, 11, 30, 23, 59, 59), datetime(2026, 12, 1), datetime(2026, 12, 1, 12, 0),
             datetime(2026, 12, 1, 23, 59, 59, 500000), datetime(2026, 12, 2), datetime(2026, 12, 2, 0, 0, 1)]
    vectors = synthetic(len(times), seed=7)
    write_parquet(folder / "v.parquet", vectors, taken_at=times)
    lib = Library(folder / "lib", device="cpu")
    lib.import_vectors(folder / "v.parquet", f"hf:{hf_siglip}")
    return folder / "lib", times, f"hf:{hf_siglip}"


def _days(paths: list[str], times: list[datetime]) -> list[datetime]:
    return sorted(times[int(Path(p).stem[3:])] for p in paths)


def test_7_before_and_after_a_date_mean_that_whole_day_in_the_cli_server_and_http_api(dated, monkeypatch):
    lib_path, times, spec = dated
    monkeypatch.setenv("SEARCHLITE_NO_SERVER", "1")
    dec1 = [t for t in times if t.date() == datetime(2026, 12, 1).date()]
    until_dec1 = [t for t in times if t < datetime(2026, 12, 2)]
    out = runner.invoke(app, ["search", "x", "-k", "50", "-L", str(lib_path), "--json", "--before", "2026-12-01"])
    assert out.exit_code == 0, out.output
    assert _days([r["path"] for r in json.loads(out.stdout)], times) == until_dec1
    out = runner.invoke(app, ["search", "x", "-k", "50", "-L", str(lib_path), "--json", "--after", "2026-12-01",
                              "--before", "2026-12-01"])
    assert _days([r["path"] for r in json.loads(out.stdout)], times) == dec1
    # the socket server's request parser and the HTTP API read dates the same way
    from searchlite.server import parse_request

    _, args = parse_request({"command": "search", "args": {"text": "x", "filters": {"after": "2026-12-01",
                                                                                      "before": "2026-12-01"}}})
    lib = Library(lib_path, device="cpu")
    assert _days([r.path for r in lib.search("x", spec, k=50, filters=args["filters"])], times) == dec1
    fastapi = pytest.importorskip("fastapi")
    del fastapi
    from fastapi.testclient import TestClient

    from searchlite.web.app import create_app

    client = TestClient(create_app(lib), base_url="http://127.0.0.1:8765")
    body = client.get("/api/search", params={"q": "x", "k": 50, "after": "2026-12-01", "before": "2026-12-01"}).json()
    assert _days([r["path"] for r in body["results"]], times) == dec1
    assert client.get("/api/search", params={"q": "x", "before": "2026-13-01"}).status_code == 400


# -- item 8: pages of one ranking ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clustered(tmp_path_factory, hf_siglip):
    folder = tmp_path_factory.mktemp("pages")
    vectors = synthetic(20_000, seed=8)
    write_parquet(folder / "v.parquet", vectors)
    lib = Library(folder / "lib", device="cpu")
    lib.import_vectors(folder / "v.parquet", f"hf:{hf_siglip}")
    return lib, vectors, f"hf:{hf_siglip}"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_8_ten_pages_of_20_are_the_k_200_ranking_for_every_index_type(clustered, kind):
    lib, vectors, spec = clustered
    lib.reindex(spec, kind)
    row = lib.model_row(spec)

    def page(q, k, offset, **kw):
        return search_vectors(lib.catalog, row, lib.model_index(row), q, k, offset=offset, **kw)

    # random directions (seeds 1500, 2500) and one near the data (image 2250): queries on which the
    # old pool of k+offset candidates gave pages that repeat and skip (HNSW, IVF-PQ)
    near = vectors[2250] + 0.3 * synthetic(1, seed=2250)[0]
    for n, q in enumerate([np.random.default_rng(1500).normal(size=vectors.shape[1]),
                           np.random.default_rng(2500).normal(size=vectors.shape[1]), near]):
        q = (q / np.linalg.norm(q)).astype(np.float32)
        whole = [r.image_id for r in page(q, 200, 0)]
        pages = [[r.image_id for r in page(q, 20, 20 * p)] for p in range(10)]
        joined = [i for p in pages for i in p]
        assert len(whole) == 200 and len(set(joined)) == 200  # no duplicate, no gap
        assert joined == whole
        ranks = [r.rank for p in range(10) for r in page(q, 20, 20 * p)]
        assert ranks == list(range(1, 201))
        if n == 2:  # quality, for a query like the data: the ranking's top 20 is (near) the exact top 20
            exact = {i + 1 for i in brute(vectors, q, 20)}
            assert len(exact & set(whole[:20])) >= (20 if kind == "flat" else 18)
        if n:
            continue
        # sort=date: the concatenated pages are one date order over the whole result set
        by_date = [r for p in range(10) for r in page(q, 20, 20 * p, sort="date")]
        times = [r.taken_at for r in by_date]
        assert len({r.image_id for r in by_date}) == 200 and times == sorted(times)
        assert [r.image_id for r in by_date] == [r.image_id for r in page(q, 200, 0, sort="date")]


# -- item 9: grammar, --print0, IN lists ----------------------------------------------------------------
def test_9_a_weight_needs_a_letter_quote_or_path_after_the_colon(tmp_path):
    from searchlite.combined import Term, parse_query

    assert parse_query("16:9 panorama") == [Term(1.0, "text", "16:9 panorama")]
    assert parse_query("0:00 on a clock") == [Term(1.0, "text", "0:00 on a clock")]
    assert parse_query("2:cat") == [Term(2.0, "text", "cat")]
    assert parse_query("0.5:dog + 2:\"16:9 view\" - 'a:b'") == [
        Term(0.5, "text", "dog"), Term(2.0, "text", "16:9 view"), Term(-1.0, "text", "a:b")]
    assert parse_query("3:été") == [Term(3.0, "text", "été")]
    Image.new("RGB", (4, 4)).save(tmp_path / "p.jpg")
    assert parse_query("2:./p.jpg + snow", base=tmp_path)[0] == Term(2.0, "image", str(tmp_path / "p.jpg"))


def test_9_print0_and_escaped_paths(tmp_path, hf_siglip, monkeypatch):
    monkeypatch.setenv("SEARCHLITE_NO_SERVER", "1")
    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["plain.png", "two\nlines.png", "tab\there.png"]
    rng = np.random.default_rng(9)
    for name in names:
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(photos / name)
    lib = str(tmp_path / "lib")
    assert runner.invoke(app, ["index", str(photos), "-m", f"hf:{hf_siglip}", "-L", lib, "--device", "cpu"]).exit_code == 0
    out = runner.invoke(app, ["search", "x", "-L", lib, "--print0"])
    assert out.exit_code == 0, out.output
    assert sorted(out.stdout_bytes.split(b"\0")[:-1]) == sorted(os.fsencode(photos / n) for n in names)
    out = runner.invoke(app, ["similar", str(photos / "plain.png"), "-L", lib, "-0"])
    assert sorted(out.stdout_bytes.split(b"\0")[:-1]) == sorted(os.fsencode(photos / n) for n in names[1:])
    out = runner.invoke(app, ["search", "x", "-L", lib, "--paths"])
    lines = out.stdout.splitlines()
    assert len(lines) == 3  # one line per result
    assert sorted(lines) == sorted([str(photos / "plain.png"), f"$'{photos}/two\\nlines.png'",
                                    f"$'{photos}/tab\\there.png'"])
    # the escaped form is what bash reads back as the name
    back = subprocess.run(["bash", "-c", f"printf '%s' {lines[[i for i, x in enumerate(lines) if 'two' in x][0]]}"],
                          capture_output=True).stdout
    assert back == os.fsencode(photos / "two\nlines.png")


@pytest.fixture()
def sqlite_999():
    """Every SQLite connection opened meanwhile allows 999 host parameters (older or stricter builds)."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def limit(dbapi_connection, _record):
        dbapi_connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    event.listen(Engine, "connect", limit)
    yield
    event.remove(Engine, "connect", limit)


def test_9_a_batch_past_999_parameters_imports_indexes_and_searches(tmp_path, hf_siglip, sqlite_999, monkeypatch):
    spec = f"hf:{hf_siglip}"
    lib = Library(tmp_path / "lib", device="cpu")
    from sqlalchemy.exc import OperationalError

    with lib.catalog.engine.connect() as conn:  # the limit really applies
        with pytest.raises(OperationalError, match="too many SQL variables"):
            conn.exec_driver_sql("SELECT 1 WHERE 1 IN (" + ",".join("?" * 1000) + ")", tuple(range(1000)))
    vectors = synthetic(2500, seed=9)
    _import(lib, spec, vectors, tmp_path / "v.parquet")  # one batch of 2,500 rows
    _import(lib, spec, vectors, tmp_path / "v.parquet")  # again: every row replaced in one batch
    row = lib.model_row(spec)
    q = vectors[5]
    got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), q, 10)]
    assert got == brute(vectors, q, 10)
    # an index run of more files than 999 in one scan chunk
    photos = tmp_path / "photos"
    photos.mkdir()
    tile = np.zeros((8, 8, 3), np.uint8)
    for i in range(1100):
        tile[0, 0] = (i % 256, i // 256, 7)
        Image.fromarray(tile).save(photos / f"{i:04d}.png")
    monkeypatch.setenv("SEARCHLITE_NO_SERVER", "1")
    out = runner.invoke(app, ["index", str(photos), "-m", spec, "-L", str(tmp_path / "lib2"), "--device", "cpu",
                              "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["added"] == 1100
    out = runner.invoke(app, ["index", str(photos), "-L", str(tmp_path / "lib2"), "--device", "cpu", "--json"])
    assert json.loads(out.stdout)["unchanged"] == 1100
    keys = [f"k{i}" for i in range(1500)]  # the query cache reads any number of keys
    lib2 = Library(tmp_path / "lib2", device="cpu")
    row2 = lib2.model_row(spec)
    lib2.catalog.cache_queries(row2.id, {k: np.ones(4, np.float32) for k in keys}, keep=2000)
    assert len(lib2.catalog.cached_queries(row2.id, keys)) == 1500


# -- item 17: usage errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, says", [
    ([], "Usage:"),
    (["search", "x", "--bogus"], "No such option: --bogus"),
    (["search", "x", "-k", "0"], "-k"),
    (["search", "x", "--after", "2026-13-01"], "--after"),
    (["index", ".", "--index", "bogus"], "--index must be one of"),
])
def test_17_usage_errors_are_short_with_exit_2(tmp_path, args, says):
    env = dict(os.environ, SEARCHLITE_NO_SERVER="1")
    proc = subprocess.run([sys.executable, "-m", "searchlite", *args, *(["-L", str(tmp_path / "lib")] if args else [])],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output and says in output
    if args:  # click's usage line, its hint and one error line
        assert len(proc.stderr.strip().splitlines()) <= 4, proc.stderr
    assert not (tmp_path / "lib").exists()  # nothing was created


def test_17_the_typer_range_is_pinned():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"typer>=0.12,<0.30"' in text


# -- item 19: the public API ----------------------------------------------------------------------------------
PUBLIC = {"Library", "SearchResult", "Filters", "IndexStats", "SearchliteError", "ModelLoadError",
          "ImageDecodeError", "LibraryError", "QueryError", "DatasetError"}


def test_19_public_types_are_exported_and_front_ends_import_them_from_searchlite():
    import searchlite
    from searchlite import errors, indexer, library, query

    for name in PUBLIC:
        assert name in searchlite.__all__ and name in dir(searchlite)
    assert searchlite.Filters is query.Filters and searchlite.SearchResult is query.SearchResult
    assert searchlite.Library is library.Library and searchlite.IndexStats is indexer.IndexStats
    assert searchlite.QueryError is errors.QueryError and issubclass(searchlite.QueryError, searchlite.SearchliteError)
    front = [*sorted((ROOT / "searchlite" / "cli").glob("*.py")), *sorted((ROOT / "searchlite" / "web").glob("*.py")),
             ROOT / "searchlite" / "server.py"]
    wrong = []
    for path in front:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module not in ("searchlite", "searchlite.library"):
                wrong += [f"{path.name}: {a.name} from {node.module}" for a in node.names if a.name in PUBLIC]
    assert not wrong


def test_a_read_command_beside_an_open_library_keeps_the_catalog_intact(tmp_path, hf_siglip):
    """A second Library on a catalog this process already has open, then `searchlite status` in
    another process: the writability probe of opening a catalog once opened and closed the catalog
    file, which drops every POSIX lock SQLite holds on it in this process, so the other process's
    last connection deleted the -shm still in use here ("disk I/O error", "database disk image is
    malformed" next)."""
    import sqlite3

    spec = f"hf:{hf_siglip}"
    vectors = synthetic(300, seed=12)
    lib = Library(tmp_path / "lib", device="cpu")
    _import(lib, spec, vectors[:200], tmp_path / "a.parquet")
    row = lib.model_row(spec)
    assert len(search_vectors(lib.catalog, row, lib.model_index(row), vectors[0], 5)) == 5  # connections open
    again = Library(tmp_path / "lib", device="cpu")  # e.g. a server's request, a test's fresh view
    assert len(again.search("x", spec, k=3)) == 3
    env = dict(os.environ, SEARCHLITE_NO_SERVER="1")
    out = subprocess.run([sys.executable, "-m", "searchlite", "status", "-L", str(lib.path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (lib.path / "catalog.sqlite-shm").exists()
    _import(lib, spec, vectors[200:], tmp_path / "b.parquet", start=200)
    got = [r.image_id - 1 for r in search_vectors(lib.catalog, row, lib.model_index(row), vectors[0], 10)]
    assert got == brute(vectors, vectors[0], 10)
    conn = sqlite3.connect(str(lib.path / "catalog.sqlite"))
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
