"""The HTTP API of `searchlite serve --http`: every endpoint, every error path, the token rules,
and attempts to reach files outside the library (all 4xx, nothing served). The Host, cross-site,
model, upload and import rules are in test_web_security.py."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searchlite.cli.main import app as cli
from searchlite.library import Library

fastapi = pytest.importorskip("fastapi", reason="the web extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from searchlite.web.app import create_app  # noqa: E402

BASE = "http://127.0.0.1:8765"  # the Host every request carries (TestClient's default, "testserver", is refused)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo model over 40 sample images, an EXIF-rotated photo, and a symlink that leads out."""
    from searchlite.sample_data import generate

    root = tmp_path_factory.mktemp("web")
    photos = root / "photos"
    generate.generate(photos, 40, 11, "test")
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees
    Image.fromarray(np.tile(np.arange(300, dtype=np.uint8)[None, :, None] % 255, (100, 1, 3))).save(
        photos / "rotated.jpg", exif=exif.tobytes())
    outside = root / "private"
    outside.mkdir()
    Image.new("RGB", (50, 50), "red").save(outside / "secret.png")
    os.symlink(outside / "secret.png", photos / "link-out.png")
    lib = Library(root / "lib", device="cpu")
    lib.index([photos], ["demo"])
    ids = {Path(p).name: i for i, p in _all(lib)}
    return root, photos, lib, ids


def _all(lib: Library) -> list[tuple[int, str]]:
    return [(r.image_id, r.path) for r in lib.search("x", k=1000)]


@pytest.fixture()
def client(site):
    _, _, lib, _ = site
    return TestClient(create_app(lib), base_url=BASE)


def test_search_pages_have_the_cli_keys_and_stitch_together(client, site):
    root, _, lib, _ = site
    cli_rows = json.loads(CliRunner().invoke(cli, ["search", "two red circles", "-L", str(lib.path), "-k", "12",
                                                   "--json"]).stdout)
    first = client.get("/api/search", params={"q": "two red circles", "k": 6}).json()
    second = client.get("/api/search", params={"q": "two red circles", "k": 6, "offset": first["next_offset"]}).json()
    rows = first["results"] + second["results"]
    assert first["next_offset"] == 6 and second["next_offset"] == 12
    assert [r["image_id"] for r in rows] == [r["image_id"] for r in cli_rows]
    assert [r["rank"] for r in rows] == list(range(1, 13))
    for r in rows:
        assert set(cli_rows[0]) <= set(r)
        assert r["id"] == r["image_id"] and r["thumbnail"] == f"/api/thumbnail/{r['id']}"
        assert r["image"] == f"/api/image/{r['id']}"
    last = client.get("/api/search", params={"q": "two red circles", "k": 50, "offset": 10}).json()
    assert last["next_offset"] is None and len(last["results"]) == len(_all(lib)) - 10
    combined = client.get("/api/search", params={"q": "red circles - black background", "k": 3}).json()
    assert len(combined["results"]) == 3


def test_filters_and_min_prob(client, site):
    _, photos, lib, _ = site
    everything = client.get("/api/search", params={"q": "a blue square", "k": 100}).json()["results"]
    probs = sorted(r["probability"] for r in everything)
    cut = probs[len(probs) // 2]
    above = client.get("/api/search", params={"q": "a blue square", "k": 100, "min_prob": cut}).json()["results"]
    assert above and all(r["probability"] >= cut for r in above)
    none = client.get("/api/search", params={"q": "a blue square", "folder": str(photos / "nowhere")}).json()
    assert none == {"results": [], "next_offset": None}
    future = client.get("/api/search", params={"q": "a blue square", "after": "2999-01-01"}).json()
    assert future["results"] == []


def test_similar_by_id_and_by_upload(client, site):
    _, photos, _, ids = site
    name = sorted(n for n in ids if n.startswith("test-"))[3]
    by_id = client.get("/api/similar", params={"id": ids[name], "k": 5}).json()["results"]
    assert len(by_id) == 5 and ids[name] not in [r["id"] for r in by_id]
    upload = client.post("/api/similar", files={"file": (name, (photos / name).read_bytes())}, data={"k": "3"})
    assert upload.status_code == 200
    top = upload.json()["results"]
    assert top[0]["id"] == ids[name] and top[0]["score"] == pytest.approx(1.0, abs=1e-4)
    bad = client.post("/api/similar", files={"file": ("x.jpg", b"not an image")})
    assert bad.status_code == 400 and "cannot read the query image" in bad.json()["error"]


def test_compare_marks_agreement(site, hf_siglip):
    _, photos, lib, _ = site
    client = TestClient(create_app(lib, models=[f"hf:{hf_siglip}"]), base_url=BASE)  # as `serve --model hf:...`
    out = client.get("/api/compare", params={"q": "three yellow triangles", "models": f"demo,hf:{hf_siglip}",
                                              "k": 5}).json()
    assert set(out) == {"demo", f"hf:{hf_siglip}"}
    tops = {m: {r["id"] for r in rs} for m, rs in out.items()}
    for model, results in out.items():
        other = next(m for m in out if m != model)
        for r in results:
            assert r["also_in"] == ([other] if r["id"] in tops[other] else [])


def test_thumbnails_are_small_rotated_cached_and_refreshed(client, site):
    root, photos, lib, ids = site
    response = client.get(f"/api/thumbnail/{ids['rotated.jpg']}", params={"size": 64})
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content))
    assert thumb.size[1] == 64 and thumb.size[0] in (21, 22)  # 300 x 100 shown rotated: 100 x 300, long side 64
    cached = list((lib.path / "thumbnails" / "64").glob(f"{ids['rotated.jpg']}-*.jpg"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert client.get(f"/api/thumbnail/{ids['rotated.jpg']}", params={"size": 64}).content == response.content
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not regenerated
    changed = photos / "changed.png"
    Image.new("RGB", (80, 40), "blue").save(changed)
    lib.index([photos])
    image_id = next(i for i, p in _all(lib) if p.endswith("changed.png"))
    blue = client.get(f"/api/thumbnail/{image_id}", params={"size": 32}).content
    Image.new("RGB", (80, 40), "green").save(changed)
    lib.index([photos])
    green = Image.open(io.BytesIO(client.get(f"/api/thumbnail/{image_id}", params={"size": 32}).content))
    assert green.getpixel((5, 5))[1] > 100 and blue != green.tobytes()
    assert len(list((lib.path / "thumbnails" / "32").glob(f"{image_id}-*.jpg"))) == 1  # the stale one is gone


def test_originals_are_served_by_id_only(client, site):
    _, photos, _, ids = site
    name = sorted(n for n in ids if n.startswith("test-"))[0]
    response = client.get(f"/api/image/{ids[name]}")
    assert response.status_code == 200 and response.content == (photos / name).read_bytes()


@pytest.mark.parametrize("url", [
    "/api/image/..%2F..%2Fetc%2Fpasswd", "/api/image/%2Fetc%2Fpasswd", "/api/image/../../etc/passwd",
    "/api/thumbnail/-1", "/api/image/999999", "/api/image/1.5", "/api/thumbnail/abc",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/app.py", "/api/image/1/../../etc/passwd",
])
def test_path_tricks_serve_nothing(client, url):
    response = client.get(url)
    assert 400 <= response.status_code < 500
    assert "root:" not in response.text and "def create_app" not in response.text


def test_symlinks_out_of_the_root_and_deleted_images_are_not_served(client, site):
    root, photos, lib, ids = site
    assert "link-out.png" in ids  # the indexer followed the link ...
    for url in (f"/api/image/{ids['link-out.png']}", f"/api/thumbnail/{ids['link-out.png']}"):
        response = client.get(url)  # ... but nothing outside the indexed folder is ever served
        assert response.status_code == 404 and "outside" in response.json()["error"]
    gone = photos / "gone.png"
    Image.new("RGB", (30, 30), "white").save(gone)
    lib.index([photos])
    gone_id = next(i for i, p in _all(lib) if p.endswith("gone.png"))
    assert client.get(f"/api/image/{gone_id}").status_code == 200
    gone.unlink()
    lib.index([photos])
    assert client.get(f"/api/image/{gone_id}").status_code == 404
    assert client.get(f"/api/thumbnail/{gone_id}").status_code == 404


@pytest.mark.parametrize("params, message", [
    ({"q": ""}, "q"), ({"q": "x", "k": 0}, "k"), ({"q": "x", "k": 5000}, "k"), ({"q": "x", "k": "many"}, "k"),
    ({"q": "x", "offset": -1}, "offset"), ({"q": "x", "min_prob": 2}, "min_prob"), ({"q": "x", "sort": "random"}, "sort"),
    ({"q": "x", "after": "yesterday"}, "after"), ({"q": "x", "template": "no placeholder"}, "exactly one"),
    ({"q": "x", "model": "hf:/no/such/model"}, "not available over HTTP"), ({}, "q"),
])
def test_bad_parameters_are_one_line_json_errors(client, params, message):
    response = client.get("/api/search", params=params)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error"} and message in body["error"] and "\n" not in body["error"]
    assert "Traceback" not in response.text


def test_status_and_page(client, site):
    _, _, lib, _ = site
    status = client.get("/api/status").json()
    assert status["library"] == str(lib.path) and status["models"][0]["model"] == "demo"
    page = client.get("/")
    assert page.status_code == 200 and "<title>searchlite</title>" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything ships in the package
    assert client.get("/static/app.js").status_code == 200


def test_token_rules(site):
    _, _, lib, _ = site
    client = TestClient(create_app(lib, token="s3cret"), base_url=BASE)
    assert client.get("/api/status").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    opened = client.get("/?token=s3cret", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith("searchlite_token_8765=s3cret;") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/api/status").status_code == 200  # the cookie now carries it
    client.cookies.clear()
    assert client.get("/api/image/1").status_code == 401
    # the other query parameters survive the redirect (the page opens on that search)
    opened = client.get("/?q=two+red+circles&token=s3cret&model=demo", follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"] == "/?q=two+red+circles&model=demo"
    client.cookies.clear()
    # a non-ASCII token is simply wrong (compared as bytes), never a 500
    for url in ("/?token=%C3%A9t%C3%A9", "/?token=%FF%FE", "/api/status?token=\u00e9"):
        response = client.get(url)
        assert response.status_code == 401 and set(response.json()) == {"error"}
    response = client.get("/api/status", headers={"Authorization": "Bearer s3cr\u00e9t".encode("latin-1")})
    assert response.status_code == 401


def test_non_loopback_http_needs_a_token(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "searchlite", "serve", "--http", "0.0.0.0:8765", "--no-token",
                          "-L", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "without a token" in out.stderr
    from searchlite.web import is_loopback, parse_bind

    assert parse_bind("8080") == ("127.0.0.1", 8080) and parse_bind("[::1]:9000") == ("::1", 9000)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    shutil.rmtree(tmp_path, ignore_errors=True)
