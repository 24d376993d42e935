"""`serve --http` as an attacker would try it (issue 19, items 10-16): a rebinding Host name, a
cross-site page, a request that names a checkpoint, no token, an oversized or chunked body, a
decompression bomb, a Parquet row that points at a key file, and filters on every endpoint.
Each rule through FastAPI's TestClient, and those where headers matter through a real
`searchlite serve --http 127.0.0.1:PORT` process on loopback."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.library import Library

pytest.importorskip("fastapi", reason="the web extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from searchlite.web import HostCheck  # noqa: E402
from searchlite.web.app import MAX_BODY, create_app  # noqa: E402

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo model over 36 sample images in two folders with different capture dates."""
    from searchlite.sample_data import generate

    root = tmp_path_factory.mktemp("websec")
    photos = root / "photos"
    generate.generate(photos, 24, 5, "test")
    generate.generate(photos / "sub", 12, 6, "test")
    for path in photos.rglob("*.*"):
        when = datetime(2020, 6, 15, 12) if "sub" in path.parts else datetime(2024, 1, 10, 12)
        os.utime(path, (when.timestamp(), when.timestamp()))
    lib = Library(root / "lib", device="cpu")
    lib.index([photos], ["demo"])
    info = {}
    for path in photos.rglob("*.*"):
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as img:
                info[str(path)] = {"width": img.width, "height": img.height, "format": img.format,
                                   "folder": path.parent, "taken": datetime.fromtimestamp(path.stat().st_mtime)}
    return root, photos, lib, info


@pytest.fixture()
def client(site):
    return TestClient(create_app(site[2]), base_url=BASE)


def _ids(client, url: str, **params) -> list[int]:
    response = client.get(url, params={"k": 200, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    return [r["id"] for r in (body["results"] if "results" in body else body["demo"])]


# -- 10: DNS rebinding ------------------------------------------------------------------------------
@pytest.mark.parametrize("host, ok", [
    ("127.0.0.1:8765", True), ("localhost:8765", True), ("LOCALHOST", True), ("[::1]:8765", True),
    ("127.0.0.2:99", True), ("attacker.example:8765", False), ("attacker.example", False),
    ("localhost.attacker.example:8765", False), ("127.0.0.1.nip.io:8765", False), ("", False),
    ("192.168.1.5:8765", False),
])
def test_host_header_must_be_a_name_of_this_server(client, site, host, ok):
    _, _, lib, _ = site
    some_id = _ids(client, "/api/search", q="a red circle")[0]
    for url in (f"/api/image/{some_id}", "/api/status", "/"):
        response = client.get(url, headers={"Host": host})
        if ok:
            assert response.status_code == 200, (url, response.text)
        else:
            assert response.status_code == 403 and "Host" in response.json()["error"]
            assert str(lib.path) not in response.text


def test_allow_host_and_the_bound_address():
    names = HostCheck("192.168.1.5", ["Photos.LAN"])
    assert names("photos.lan:8765") and names("PHOTOS.lan") and names("192.168.1.5:1") and names("[::1]:80")
    assert not names("192.168.1.6:8765") and not names("evil.lan") and not names(None)
    everywhere = HostCheck("0.0.0.0")  # all interfaces: any address literal, names only when allowed
    assert everywhere("10.1.2.3:8765") and everywhere("[fe80::1]:8765") and not everywhere("nas.local:8765")
    assert HostCheck("nas.local")("NAS.local:8765") and not HostCheck("nas.local")("other.local")


# -- 11: cross-site requests ------------------------------------------------------------------------
@pytest.mark.parametrize("headers, ok", [
    ({"Sec-Fetch-Site": "same-origin"}, True), ({"Sec-Fetch-Site": "none"}, True), ({}, True),
    ({"Origin": "http://127.0.0.1:8765"}, True), ({"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}, True),
    ({"Sec-Fetch-Site": "cross-site"}, False), ({"Sec-Fetch-Site": "same-site"}, False),
    ({"Origin": "https://attacker.example"}, False), ({"Origin": "null"}, False),
    ({"Origin": "http://localhost:8765"}, False), ({"Origin": "http://127.0.0.1:9999"}, False),
    ({"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "cross-site"}, False),
])
def test_cross_site_requests_are_refused(client, site, headers, ok):
    _, photos, _, _ = site
    some_id = _ids(client, "/api/search", q="a red circle")[0]
    image = client.get(f"/api/image/{some_id}", headers=headers)
    name = sorted(p for p in photos.glob("*.jpg"))[0]
    upload = client.post("/api/similar", files={"file": ("x.jpg", name.read_bytes())}, headers=headers)
    for response in (image, upload):
        assert response.status_code == (200 if ok else 403), response.text
        assert not any(h.lower().startswith("access-control-") for h in response.headers)


def test_no_cors_headers_even_for_a_preflight(client):
    response = client.options("/api/similar", headers={"Origin": "https://attacker.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert response.status_code == 403
    assert not any(h.lower().startswith("access-control-") for h in response.headers)
    ok = client.get("/api/status")
    assert ok.headers["x-content-type-options"] == "nosniff"
    assert not any(h.lower().startswith("access-control-") for h in ok.headers)


# -- 12: only the library's models, or the server's --model ones ---------------------------------------
def test_a_request_cannot_make_the_server_load_a_model(site, hf_siglip, monkeypatch):
    _, _, lib, _ = site
    before = [m.spec for m in lib.catalog.models()]
    loaded = []
    original = lib.embedder
    monkeypatch.setattr(lib, "embedder", lambda spec: loaded.append(spec) or original(spec))
    client = TestClient(create_app(lib), base_url=BASE)
    for url, params in [("/api/compare", {"q": "a cat", "models": f"demo,hf:{hf_siglip}"}),
                        ("/api/compare", {"q": "a cat", "models": "demo,hf:google/siglip-base-patch16-224"}),
                        ("/api/search", {"q": "a cat", "model": f"hf:{hf_siglip}"}),
                        ("/api/similar", {"id": 1, "model": "openclip:ViT-B-32@laion2b_s34b_b79k"})]:
        response = client.get(url, params=params)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert "not available over HTTP" in error and "demo" in error  # names the allowed ones
    assert loaded == [] and [m.spec for m in lib.catalog.models()] == before  # nothing loaded, nothing written
    # a model the server was started with (--model) is offered; once registered, the library knows it
    served = TestClient(create_app(lib, models=[f"hf:{hf_siglip}"]), base_url=BASE)
    out = served.get("/api/compare", params={"q": "a cat", "models": f"demo,hf:{hf_siglip}", "k": 3})
    assert out.status_code == 200 and set(out.json()) == {"demo", f"hf:{hf_siglip}"}
    assert client.get("/api/compare", params={"q": "a cat", "models": f"demo,hf:{hf_siglip}"}).status_code == 200


# -- 14: uploads --------------------------------------------------------------------------------------
def test_a_declared_oversized_body_is_refused_before_it_is_read(site, monkeypatch):
    _, photos, lib, _ = site
    import searchlite.imaging

    monkeypatch.setattr(searchlite.imaging, "load_image", lambda *a, **k: pytest.fail("the upload was decoded"))
    client = TestClient(create_app(lib, max_body=20_000), base_url=BASE)
    response = client.post("/api/similar", files={"file": ("big.png", b"\x89PNG" + bytes(50_000))})
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert client.post("/api/similar", content=b"x", headers={"Content-Length": "ten"}).status_code == 400


def test_a_chunked_body_is_read_only_up_to_the_limit(site):
    """No Content-Length: the middleware counts bytes as the form parser pulls them and stops at
    the limit (the old code let Starlette spool the whole body to disk first)."""
    _, _, lib, _ = site
    app = create_app(lib, max_body=100_000)
    pulled, sent = [], []
    head = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": head if len(pulled) == 1 else bytes(10_000), "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/similar", "raw_path": b"/api/similar", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8765"), (b"content-type", b"multipart/form-data; boundary=xx"),
                         (b"transfer-encoding", b"chunked")], "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8765)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"].startswith("the request body")
    assert len(pulled) <= 12  # 100 kB: the head and ten 10 kB chunks, then it stopped reading


def test_uploads_have_a_lower_pixel_limit_and_decode_outside_the_lock(site, monkeypatch):
    _, photos, lib, _ = site
    bomb = io.BytesIO()
    Image.new("P", (8000, 6000)).save(bomb, "PNG")  # 48 MP in a few kB: under the 256 MP index limit
    assert len(bomb.getvalue()) < 200_000
    client = TestClient(create_app(lib), base_url=BASE)
    start = time.perf_counter()
    response = client.post("/api/similar", files={"file": ("bomb.png", bomb.getvalue())})
    assert response.status_code == 400 and "40,000,000" in response.json()["error"]
    assert time.perf_counter() - start < 2.0  # refused from the header, never decoded
    import searchlite.imaging

    held = []
    original = searchlite.imaging.load_image

    def spy(*args, **kwargs):
        held.append(lib.lock._is_owned())
        return original(*args, **kwargs)

    monkeypatch.setattr(searchlite.imaging, "load_image", spy)
    name = sorted(photos.glob("*.jpg"))[0]
    ok = client.post("/api/similar", files={"file": (name.name, name.read_bytes())}, data={"k": "2"})
    assert ok.status_code == 200 and ok.json()["results"][0]["path"] == str(name)
    assert held == [False]


# -- 15: only image files inside a root are served; import takes only image paths ----------------------
def test_import_skips_non_image_paths_and_the_server_serves_only_image_names(tmp_path, site):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlalchemy import update

    from searchlite.catalog import ImageRow
    from searchlite.models.registry import load_embedder

    _, photos, _, _ = site
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    (home / "notes.txt").write_text("secret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    good = elsewhere / "good.png"
    shutil.copy(sorted(photos.glob("*.png"))[0], good)
    paths = [str(home / ".ssh" / "id_rsa"), str(home / "notes.txt"), str(home / "clip.mp4"), str(good)]
    dim = load_embedder("demo", device="cpu").dim
    vec = np.ones(dim, np.float32) / np.sqrt(dim)
    vectors = pa.array([vec.tolist()] * len(paths), pa.list_(pa.float32()))
    pq.write_table(pa.table({"path": paths, "vector": vectors}), tmp_path / "v.parquet")
    lib = Library(tmp_path / "lib", device="cpu")
    summary = lib.import_vectors(tmp_path / "v.parquet", "demo")
    assert summary["imported"] == 1 and summary["skipped"] == 3
    assert sum("no image file extension" in p for p in summary["problems"]) == 3
    assert lib.catalog.find_image(home / ".ssh" / "id_rsa") is None
    assert str(home / ".ssh") not in lib.catalog.roots().values()
    client = TestClient(create_app(lib), base_url=BASE)
    (image_id,) = [r["id"] for r in client.get("/api/search", params={"q": "x"}).json()["results"]]
    # its root is the file's parent folder, made by the import: not served until the user indexes it
    refused = client.get(f"/api/image/{image_id}")
    assert refused.status_code == 404 and "imported from outside" in refused.json()["error"]
    lib.index([elsewhere])
    assert client.get(f"/api/image/{image_id}").content == good.read_bytes()
    # named with import --root, it is served at once
    named = Library(tmp_path / "named", device="cpu")
    named.import_vectors(tmp_path / "v.parquet", "demo", root=str(elsewhere))
    named_client = TestClient(create_app(named), base_url=BASE)
    (named_id,) = [r["id"] for r in named_client.get("/api/search", params={"q": "x"}).json()["results"]]
    assert named_client.get(f"/api/image/{named_id}").content == good.read_bytes()
    # a row that names a non-image file (an older import, a hand-edited catalog) is never served,
    # nor is an image name that is a symlink to one
    shutil.copy(home / "notes.txt", elsewhere / "notes.txt")
    os.symlink(elsewhere / "notes.txt", elsewhere / "notes-link.png")
    for relpath in ("notes.txt", "notes-link.png"):
        with lib.catalog.WriteSession.begin() as s:
            s.execute(update(ImageRow).where(ImageRow.id == image_id).values(relpath=relpath))
        for url in (f"/api/image/{image_id}", f"/api/thumbnail/{image_id}"):
            response = client.get(url)
            assert response.status_code == 404 and "secret" not in response.text


# -- 16: the same filters on every search endpoint ------------------------------------------------------
FILTERS = [
    ({"format": "PNG"}, lambda i, m: i["format"] == "PNG"),
    ({"format": ["JPEG", "PNG"]}, lambda i, m: True),
    ({"min_width": "MEDIAN_W"}, lambda i, m: i["width"] >= m["w"]),
    ({"min_height": "MEDIAN_H"}, lambda i, m: i["height"] >= m["h"]),
    ({"folder": "SUB"}, lambda i, m: i["folder"].name == "sub"),
    ({"glob": "*/sub/*.png"}, lambda i, m: i["folder"].name == "sub" and i["format"] == "PNG"),
    ({"after": "2022-01-01"}, lambda i, m: i["taken"] >= datetime(2022, 1, 1)),
    ({"before": "2021-01-01"}, lambda i, m: i["taken"] < datetime(2021, 1, 1)),
    ({"after": "2019-01-01", "before": "2021-01-01", "format": "JPEG"},
     lambda i, m: i["taken"] < datetime(2021, 1, 1) and i["format"] == "JPEG"),
]


@pytest.mark.parametrize("params, keep", FILTERS, ids=[json.dumps(p) for p, _ in FILTERS])
def test_every_search_endpoint_applies_the_filters(client, site, params, keep):
    """Each endpoint's filtered ranking is its unfiltered ranking with the images that fail the
    filter (checked in Python from the files themselves) taken out."""
    _, photos, lib, info = site
    medians = {"w": int(np.median([i["width"] for i in info.values()])),
               "h": int(np.median([i["height"] for i in info.values()]))}
    params = {k: {"MEDIAN_W": medians["w"], "MEDIAN_H": medians["h"], "SUB": str(photos / "sub")}.get(v, v)
              if isinstance(v, str) else v for k, v in params.items()}
    path_of = {r["id"]: r["path"] for r in client.get("/api/search", params={"q": "x", "k": 200}).json()["results"]}
    assert len(path_of) == len(info)
    query_id = min(path_of)
    name = Path(path_of[query_id])

    def expect(ids):
        return [i for i in ids if keep(info[path_of[i]], medians)]

    def upload(extra):
        data = {"k": "200", **{k: v for k, v in extra.items() if not isinstance(v, list)}}
        fields = [(k, (None, str(x))) for k, v in extra.items() if isinstance(v, list) for x in v]
        response = client.post("/api/similar", data=data, files=[("file", (name.name, name.read_bytes())), *fields])
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["results"]]

    endpoints = {
        "search": lambda extra: _ids(client, "/api/search", q="two big orange squares", **extra),
        "similar": lambda extra: _ids(client, "/api/similar", id=query_id, **extra),
        "upload": upload,
        "compare": lambda extra: _ids(client, "/api/compare", q="two big orange squares", models="demo", **extra),
    }
    for endpoint, run in endpoints.items():
        everything, filtered = run({}), run(params)
        assert filtered == expect(everything), endpoint
        assert filtered, f"{endpoint}: the filter should keep some images"
    assert len(expect(list(path_of))) < len(path_of) or params.get("format") == ["JPEG", "PNG"]


# -- 10, 11, 13, 14 through a real server on loopback ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(site, tmp_path_factory):
    """`searchlite serve --http 127.0.0.1:PORT --allow-host photos.lan` (its own TMPDIR, stopped
    after the module, and by `timeout` should the test run die)."""
    _, _, lib, _ = site
    port = _free_port()
    tmp = tmp_path_factory.mktemp("server-tmp")
    command = [sys.executable, "-m", "searchlite", "serve", "-L", str(lib.path), "--device", "cpu",
               "--http", f"127.0.0.1:{port}", "--allow-host", "photos.lan"]
    if shutil.which("timeout"):
        command = ["timeout", "600", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SEARCHLITE_NO_SERVER": "1", "TMPDIR": str(tmp)})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    token, deadline = None, time.time() + 90
    while token is None:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            proc.kill()
            pytest.fail("the server printed no URL")
        found = re.search(rf"http://127\.0\.0\.1:{port}/\?token=([A-Za-z0-9_-]+)", line)
        token = found.group(1) if found else None
    while True:
        try:
            if _request(port, "GET", "/api/status", token=token)[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, "the server did not start"
        time.sleep(0.3)
    yield port, token, tmp
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _request(port, method, url, token=None, headers=None, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, url, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_a_real_server_checks_host_origin_and_token(server):
    port, token, _ = server
    status, _, body = _request(port, "GET", "/api/status", token=token, headers={"Host": f"attacker.example:{port}"})
    assert status == 403 and b"library" not in body
    assert _request(port, "GET", "/api/status", token=token, headers={"Host": f"photos.lan:{port}"})[0] == 200
    assert _request(port, "GET", "/api/status", token=token, headers={"Host": f"localhost:{port}"})[0] == 200
    assert _request(port, "GET", "/api/status", token=token, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert _request(port, "GET", "/api/status", token=token, headers={"Origin": "http://evil.example"})[0] == 403
    status, headers, _ = _request(port, "OPTIONS", "/api/similar", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert status == 403 and not any(h.lower().startswith("access-control-") for h in headers)
    assert _request(port, "GET", "/api/status")[0] == 401  # the token is required by default
    assert _request(port, "GET", "/api/status", token=token + "x")[0] == 401
    assert _request(port, "GET", "/?token=%C3%A9")[0] == 401
    status, headers, _ = _request(port, "GET", f"/?token={token}&q=red+circles")
    assert status == 303 and headers["location"] == "/?q=red+circles"
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie == f"searchlite_token_{port}={token}"
    status, _, body = _request(port, "GET", "/api/status", headers={"Cookie": cookie})
    assert status == 200 and json.loads(body)["models"]


def test_a_real_server_stops_reading_an_oversized_body(server):
    port, token, tmp = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # declared: refused unread
        s.sendall(f"POST /api/similar HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 400000000\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    sent, biggest = [0], [0]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # chunked: read up to the limit only
        s.sendall(f"POST /api/similar HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Type: multipart/form-data; boundary=xx\r\nTransfer-Encoding: chunked\r\n\r\n".encode())

        def pump():
            chunk = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            try:
                while sent[0] < 4 * MAX_BODY:
                    s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent[0] += len(chunk)
                    chunk = bytes(1 << 20)
                    biggest[0] = max(biggest[0], sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()))
            except OSError:
                pass

        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = s.recv(4096)
            if not data:
                break
            reply += data
        sender.join(60)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent[0] < 2 * MAX_BODY  # it stopped reading: the client could not push the rest
    assert biggest[0] <= MAX_BODY + (4 << 20)  # and never spooled more than the limit to disk
