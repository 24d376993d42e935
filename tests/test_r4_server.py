"""Round 4, the server's items (issue 26: 6, 10, 11, 18, 19, 20, 21) and its design rules: one
validation of request parameters, the read path never writes, the server lock guards state not work,
`serve` as one object that owns its parts."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite import Filters
from searchlite.library import Library

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from searchlite.web.app import create_app  # noqa: E402

BASE = "http://127.0.0.1:8765"
BAD_NAME = os.fsdecode(b"bad\xff.png")  # a name that is not UTF-8


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SEARCHLITE_NO_SERVER": "1", **(env or {})}, cwd=cwd)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo model over 12 small images, one with a name that is not UTF-8."""
    root = tmp_path_factory.mktemp("r4server")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(4)
    for i in range(11):
        Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(photos / f"{i:02d}.png")
    Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8)).save(os.path.join(photos, BAD_NAME))
    lib = Library(root / "lib", device="cpu")
    lib.index([photos], ["demo"])
    ids = {os.path.basename(r.path): r.image_id for r in lib.search("x", k=100)}
    assert len(ids) == 12
    return root, photos, lib, ids


# -- one validation (items 6, 20, 21) --------------------------------------------------------------------
@pytest.mark.parametrize("template", ["{:>50000000}", "{!r}", "{0}", "{x}", "a {} {}", "none", "{!s:>3}"])
def test_6_only_a_bare_field_is_a_template(template):
    from searchlite import params

    with pytest.raises(params.ParamError):
        params.check_template(template)


def test_6_plain_templates_still_work():
    from searchlite import params

    assert params.check_template("a photo of {}.") == "a photo of {}."
    assert params.check_template("{{literal}} {}").format("cat") == "{literal} cat"  # str.format's own reading


@pytest.mark.parametrize("check, value", [
    ("check_min_prob", 2), ("check_min_prob", -1), ("check_min_prob", float("nan")),
    ("check_image_id", 99999999999999999999), ("check_image_id", 0), ("check_k", 0), ("check_offset", -1),
    ("check_size", 0), ("check_text", "a\x00b"),
])
def test_out_of_range_parameters_are_refused(check, value):
    from searchlite import params

    with pytest.raises(params.ParamError):
        getattr(params, check)(value, "name")


def test_limits_are_the_same_for_every_front_end():
    from searchlite import params
    from searchlite.server import handle

    # the socket server and HTTP refuse what the CLI refuses, by the same limits
    reply = handle(None, {"command": "search", "args": {"text": "x", "k": params.MAX_K + 1}})
    assert reply["ok"] is False and f"between 1 and {params.MAX_K}" in reply["error"]
    reply = handle(None, {"command": "search", "args": {"text": "x", "template": "{:>50000000}"}})
    assert reply["ok"] is False and "bare" in reply["error"]
    reply = handle(None, {"command": "search", "args": {"text": "x", "filters": {"folder": "a\x00b"}}})
    assert reply["ok"] is False and "NUL" in reply["error"]


@pytest.mark.parametrize("args, says", [
    (["search", "x", "--min-prob", "2"], "--min-prob"),
    (["search", "x", "--min-prob", "-1"], "--min-prob"),
    (["search", "x", "--min-width", "0"], "--min-width"),
    (["similar", "x.png", "--min-prob", "1.5"], "--min-prob"),
    (["search", "x", "--template", "{:>50000000}"], "--template"),
])
def test_21_cli_refuses_what_http_refuses(tmp_path, args, says):
    proc = _cli(*args, "-L", str(tmp_path / "lib"), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "lib").exists()


def test_21_a_bad_precision_variable_is_named():
    from searchlite.errors import ModelLoadError
    from searchlite.models.precision import resolve_precision

    os.environ["SEARCHLITE_PRECISION"], saved = "bf32", os.environ.get("SEARCHLITE_PRECISION")
    try:
        with pytest.raises(ModelLoadError, match=r"\$SEARCHLITE_PRECISION must be one of"):
            resolve_precision("auto", "cpu")
    finally:
        os.environ["SEARCHLITE_PRECISION"] = saved or "fp32"


def test_21_no_eos_warning_from_a_siglip_tokenizer(hf_siglip, recwarn):
    from searchlite.models.hf import HFEmbedder

    emb = HFEmbedder(str(hf_siglip), f"hf:{hf_siglip}", device="cpu")
    eos = emb.tokenizer.eos_token
    emb.embed_texts([f"a photo of a cat{eos}", "a dog"])  # what the precision probes do
    assert not [w for w in recwarn if "already has" in str(w.message)]


# -- HTTP: client errors are 4xx, never a traceback (item 20) --------------------------------------------
@pytest.mark.parametrize("url", [
    "/api/similar?id=99999999999999999999", "/api/thumbnail/99999999999999999999",
    "/api/image/99999999999999999999", "/api/search?q=x&folder=%00", "/api/similar?id=1&glob=a%00b",
    "/api/search?q=x&template=%7B:%3E99999999%7D", "/api/search?q=x&min_width=0",
    "/api/scores?id=99999999999999999999&q=x",
])
def test_20_client_errors_are_4xx_without_a_traceback(site, url, caplog):
    _, _, lib, _ = site
    client = TestClient(create_app(lib), base_url=BASE, raise_server_exceptions=False)
    caplog.set_level(logging.INFO)
    started = time.monotonic()
    response = client.get(url)
    assert 400 <= response.status_code < 500, response.text
    assert set(response.json()) == {"error"} and time.monotonic() - started < 10
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- item 19: dates keep their UTC offset; globs match names that are not UTF-8 -------------------------
def test_19_dates_with_a_utc_offset_are_instants(site):
    _, _, lib, ids = site
    a, b, c = ids["00.png"], ids["01.png"], ids["02.png"]
    with lib.catalog.engine.begin() as conn:  # hand-set capture times (wall clock + offset minutes)
        conn.exec_driver_sql("UPDATE images SET taken_at = '2020-01-01 00:00:00.000000', taken_offset = NULL")
        for image_id, when, offset in ((a, "2026-12-02 20:00:00.000000", 0), (b, "2026-12-02 23:30:00.000000", 300),
                                       (c, "2026-12-02 23:30:00.000000", None)):
            conn.exec_driver_sql("UPDATE images SET taken_at = ?, taken_offset = ? WHERE id = ?", (when, offset, image_id))
    try:
        def found(**filters) -> set[int]:
            return {r.image_id for r in lib.search("x", k=100, filters=Filters.from_json(filters))}

        # 19:00 UTC: a (20:00Z) after; b (23:30+05:00 = 18:30Z) before; c (no offset) by its wall clock
        assert found(after="2026-12-02T19:00+00:00") == {a, c}
        assert found(before="2026-12-02T19:00+00:00") == {b} | (set(ids.values()) - {a, b, c})
        assert found(after="2026-12-02T23:00+05:00") == {a, b, c}  # 18:00Z
        assert found(after="2026-12-02T23:00") == {b, c}  # no offset: wall-clock time, as before
    finally:
        with lib.catalog.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE images SET taken_offset = NULL")


def test_19_a_glob_with_a_byte_that_is_not_utf8_matches(site):
    _, _, lib, ids = site
    results = lib.search("x", k=100, filters=Filters(glob="*/bad\udcff.png"))
    assert [r.image_id for r in results] == [ids[BAD_NAME]]
    assert {r.image_id for r in lib.search("x", k=100, filters=Filters(glob="*/bad?.png"))} == {ids[BAD_NAME]}


# -- the read path never writes (design rule; item 6's catalog growth) ------------------------------------
def test_a_search_opens_no_write_transaction_and_writes_no_cache_row(site):
    from sqlalchemy import event

    _, _, lib, _ = site
    writes = []

    def begin(conn) -> None:
        if conn.get_execution_options().get("write"):
            writes.append(conn)

    event.listen(lib.catalog.engine, "begin", begin)
    try:
        for text in ("a fresh query", "a fresh query", "another one"):
            lib.search(text, k=3)
    finally:
        event.remove(lib.catalog.engine, "begin", begin)
    assert writes == []
    with sqlite3.connect(lib.path / "catalog.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM query_cache").fetchone()[0] == 0


def test_a_search_does_not_wait_for_a_writer(site):
    _, _, lib, _ = site
    holder = sqlite3.connect(lib.path / "catalog.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert len(lib.search("while someone writes", k=3)) == 3
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_the_query_cache_is_bounded_and_keyed_by_hash():
    from searchlite.query_cache import QueryCache

    cache = QueryCache(per_model=3)
    long_key = "x" * 10_000_000
    cache.put(1, {long_key: np.ones(2), "b": np.zeros(2)})
    assert all(len(k) == 16 for k in cache._models[1])  # hashed: a long template costs nothing here
    cache.put(1, {"c": np.zeros(2), "d": np.zeros(2)})
    assert len(cache) == 3 and long_key not in cache.get(1, [long_key])  # least recently used dropped
    assert set(cache.get(1, ["b", "c", "d"])) == {"b", "c", "d"}


# -- item 10: a read-only reader sees later writes ------------------------------------------------------------
def test_10_a_read_only_reader_sees_a_later_write(tmp_path):
    from searchlite.catalog import Catalog

    writer = Catalog(tmp_path / "lib")
    writer.engine.dispose()
    assert not (tmp_path / "lib" / "catalog.sqlite-wal").exists()  # a clean close: no -wal, as on a share
    reader = Catalog(tmp_path / "lib", read_only=True)
    assert reader.roots() == {}
    files = sorted(os.listdir(tmp_path / "lib"))
    writer = sqlite3.connect(tmp_path / "lib" / "catalog.sqlite")  # someone else indexes meanwhile
    writer.execute("INSERT INTO roots (path, added_at, default_excludes) VALUES ('/photos', '2026-01-01', 1)")
    writer.commit()
    assert list(reader.roots().values()) == ["/photos"]  # while the writer is open (its -wal)
    writer.execute("INSERT INTO roots (path, added_at, default_excludes) VALUES ('/more', '2026-01-01', 1)")
    writer.commit()
    writer.close()
    assert not (tmp_path / "lib" / "catalog.sqlite-wal").exists()
    assert sorted(reader.roots().values()) == ["/more", "/photos"]  # and after it closed
    assert sorted(os.listdir(tmp_path / "lib")) == files  # the reader created no file


def test_10_a_read_only_library_searches(site, tmp_path):
    import shutil

    _, _, lib, _ = site
    copy = tmp_path / "copy"
    shutil.copytree(lib.path, copy)
    ro = Library(copy, device="cpu", read_only=True)
    assert [r.image_id for r in ro.search("x", k=5)] == [r.image_id for r in lib.search("x", k=5)]


# -- item 11: the lock guards state, not work ---------------------------------------------------------------
def test_11_a_search_returns_while_a_thumbnail_decode_is_blocked(site, monkeypatch):
    import searchlite.imaging

    _, _, lib, ids = site
    release, entered = threading.Event(), threading.Event()
    original = searchlite.imaging.load_image

    def slow(*args, **kwargs):
        entered.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(searchlite.imaging, "load_image", slow)
    for folder in (lib.path / "thumbnails").glob("*"):
        for f in folder.glob("*.jpg"):
            f.unlink()
    client = TestClient(create_app(lib), base_url=BASE)
    replies: dict[str, object] = {}
    thumb = threading.Thread(target=lambda: replies.update(thumb=client.get(f"/api/thumbnail/{ids['03.png']}")))
    thumb.start()
    try:
        assert entered.wait(30)
        search = threading.Thread(target=lambda: replies.update(search=client.get("/api/search", params={"q": "x"})))
        search.start()
        search.join(15)
        assert not search.is_alive(), "the search waited for the thumbnail decode"
        assert replies["search"].status_code == 200
    finally:
        release.set()
        thumb.join(30)
    assert replies["thumb"].status_code == 200


# -- item 18: serve --http --idle-timeout; serve as one object ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_18_serve_http_exits_when_idle(site, tmp_path):
    import shutil

    _, _, lib, _ = site
    copy = tmp_path / "lib"
    shutil.copytree(lib.path, copy)
    port = _free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(copy), "--device", "cpu",
                             "--http", f"127.0.0.1:{port}", "--no-token", "--idle-timeout", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("serve --http did not exit when idle")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 3
    from searchlite.server import socket_path

    assert not socket_path(copy).exists()  # every part stopped and cleaned up


def test_18_service_owns_socket_http_and_idle_timer(site):
    from urllib.request import urlopen

    from searchlite.server import request
    from searchlite.service import Service

    _, _, lib, _ = site
    port = _free_port()
    ready = threading.Event()
    service = Service(lib, http=("127.0.0.1", port), idle_timeout=2)
    thread = threading.Thread(target=service.run, kwargs={"on_ready": lambda _s: ready.set()}, daemon=True)
    thread.start()
    assert ready.wait(60)
    for _ in range(100):
        try:
            body = urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5).read()
            break
        except OSError:
            time.sleep(0.1)
    assert b"images" in body
    assert request(lib.path, "ping", {}, timeout=5)["ok"]
    thread.join(30)
    assert not thread.is_alive(), "the service did not stop when idle"
    assert request(lib.path, "ping", {}, timeout=1) is None


def test_parse_when_keeps_the_offset():
    from searchlite import params

    when = params.parse_when("2026-12-02T23:00+05:00")
    assert when.utcoffset().total_seconds() == 5 * 3600 and when.hour == 23
    assert params.parse_when("2026-12-02", end=True) == datetime(2026, 12, 2, 23, 59, 59, 999999)
