"""The search page in a real headless Chromium (Debian's, driven by Playwright): type a query, see
the grid fill with the API's results, scroll for more, open a photo, "similar", the back button,
an upload, and compare mode. Screenshots go to test-artifacts/ (or $SEARCHLITE_ARTIFACTS).

Skips with a message where Chromium or Playwright is missing, except in CI (CI=true), where it must run.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.request import Request, urlopen

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("SEARCHLITE_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if not CHROMIUM or sync_playwright is None:
    reason = "needs Debian's chromium (apt-get install chromium) and playwright (pip install playwright)"
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"the browser test must run in CI: it {reason}")
    pytestmark = pytest.mark.skip(reason=reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, hf_siglip):
    from searchlite.library import Library
    from searchlite.sample_data import generate

    root = tmp_path_factory.mktemp("browser")
    generate.generate(root / "photos", 45, 21, "test")
    lib = Library(root / "lib", device="cpu")
    lib.index([root / "photos"], ["demo", f"hf:{hf_siglip}"])
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(root / "lib"), "--device", "cpu",
                             "--http", f"127.0.0.1:{port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "SEARCHLITE_NO_SERVER": "1"})
    base = f"http://127.0.0.1:{port}"
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.time() + 90
    token = None
    while token is None:  # the token the server made, from the URL it prints
        line = lines.get(timeout=max(0.1, deadline - time.time()))
        found = re.search(rf"{re.escape(base)}/\?token=([A-Za-z0-9_-]+)", line)
        token = found.group(1) if found else None
    while True:
        try:
            urlopen(Request(base + "/api/status", headers={"Authorization": f"Bearer {token}"}), timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "the server did not start"
            time.sleep(0.3)
    yield base, root, token
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def _paths(page) -> list[str]:
    return page.eval_on_selector_all("#grid .card", "cards => cards.map(c => c.dataset.path)")


def test_search_similar_detail_back_upload_and_compare(server, browser, hf_siglip):
    base, root, token = server
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    bearer = {"Authorization": f"Bearer {token}"}
    page.goto(base + "/")
    assert "token" in page.inner_text("body")  # without the token: a 401 that says how to get in
    page.goto(f"{base}/?token={token}")  # the URL `serve` printed: sets the cookie, drops the token
    page.wait_for_selector("body[data-ready]")
    assert "token" not in page.url
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    import json

    captions = [json.loads(line) for line in (root / "photos" / "captions.jsonl").read_text().splitlines()]
    query = captions[3]["caption"]  # "two big orange squares on a white background"
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('#grid .card').length >= 30")
    expected = page.request.get(f"{base}/api/search", params={"q": query, "k": 30, "model": "demo"},
                                headers=bearer).json()
    assert _paths(page) == [r["path"] for r in expected["results"]]
    described = {str(root / "photos" / c["image"]) for c in captions if c["caption"] == query}
    assert _paths(page)[0] in described  # the demo model finds the photo the words describe
    assert "q=" + query.replace(" ", "+") in page.url
    page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "search.png"))

    page.mouse.wheel(0, 20000)  # infinite scroll: the second page arrives
    page.wait_for_function("document.querySelectorAll('#grid .card').length == 45")

    page.click("#grid .card img")
    page.wait_for_selector("#detail[open]")
    page.wait_for_function("document.querySelector('#detail-info').textContent.includes('score')")
    assert expected["results"][0]["path"] in page.inner_text("#detail-info")
    page.screenshot(path=str(ARTIFACTS / "detail.png"))
    page.click("#detail-close")

    first_id = expected["results"][0]["id"]
    page.click("#grid .card:first-child .similar")
    page.wait_for_url(f"**similar={first_id}**")
    page.wait_for_function(f"document.querySelector('#grid .card') && "
                           f"!document.querySelector('#grid .card[data-id=\"{first_id}\"]')")
    similar = page.request.get(f"{base}/api/similar", params={"id": first_id, "k": 30, "model": "demo"},
                               headers=bearer).json()
    page.wait_for_function(f"document.querySelectorAll('#grid .card').length >= {min(30, len(similar['results']))}")
    assert _paths(page)[:30] == [r["path"] for r in similar["results"]]
    page.screenshot(path=str(ARTIFACTS / "similar.png"))

    page.go_back()  # the URL holds the query: back shows the text results again
    page.wait_for_function("new URLSearchParams(location.search).get('q') !== null")
    page.wait_for_function("document.querySelectorAll('#grid .card').length >= 30")
    assert _paths(page)[:30] == [r["path"] for r in expected["results"]]

    upload = Path(expected["results"][2]["path"])
    page.set_input_files("#upload", str(upload))
    page.wait_for_function(f"document.querySelector('#grid .card') && "
                           f"document.querySelector('#grid .card').dataset.path === {str(upload)!r}")

    page.goto(base + "/")
    page.wait_for_selector("body[data-ready]")
    page.click("#filters summary")
    page.check("#compare")
    page.select_option("#compare-models", [f"hf:{hf_siglip}"])
    page.fill("#q", "three yellow triangles")
    page.press("#q", "Enter")
    page.wait_for_selector("#compare-view section:nth-child(2) .card")
    columns = page.eval_on_selector_all("#compare-view section h2", "hs => hs.map(h => h.textContent)")
    assert columns == ["demo", f"hf:{hf_siglip}"]
    api = page.request.get(f"{base}/api/compare", params={"q": "three yellow triangles",
                                                          "models": f"demo,hf:{hf_siglip}", "k": 30},
                           headers=bearer).json()
    agreed = page.eval_on_selector_all("#compare-view section:first-child .card.agreed", "cs => cs.map(c => +c.dataset.id)")
    assert agreed == [r["id"] for r in api["demo"] if r["also_in"]]
    page.screenshot(path=str(ARTIFACTS / "compare.png"))
    page.close()


def _no_sideways_scroll(page) -> None:
    assert page.evaluate("document.scrollingElement.scrollWidth <= innerWidth"), page.evaluate(
        "[document.scrollingElement.scrollWidth, innerWidth]")


def test_duplicates_view_and_the_phone_layout(server, browser):
    """At 390 x 844 the top bar wraps (the whole query box and the Search button on screen) and no
    page scrolls sideways; the Duplicates view (its own URL) shows the API's groups, keeper marked."""
    base, root, token = server
    ARTIFACTS.mkdir(exist_ok=True)
    bearer = {"Authorization": f"Bearer {token}"}
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    page.goto(f"{base}/?token={token}")
    page.wait_for_selector("body[data-ready]")
    page.fill("#q", "three yellow triangles")
    page.keyboard.press("Enter")
    page.wait_for_selector("#grid .card")
    for selector in ("#q", "#go", "#duplicates-link"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    _no_sideways_scroll(page)
    page.screenshot(path=str(ARTIFACTS / "phone-search.png"))
    # the Duplicates view: from the link, and by its own URL
    from urllib.error import HTTPError

    with pytest.raises(HTTPError) as refused:  # the same auth as the rest (no cookie, no token)
        urlopen(f"{base}/api/duplicates", timeout=30)
    assert refused.value.code == 401
    bad = page.request.get(f"{base}/api/duplicates", params={"threshold": "2"}, headers=bearer)
    assert bad.status == 400 and "threshold" in bad.json()["error"]
    api = page.request.get(f"{base}/api/duplicates", params={"threshold": "0.85"}, headers=bearer).json()
    assert api["groups"], "the sample photos should hold near copies at 0.85 with the demo model"
    page.click("#duplicates-link")
    page.wait_for_url(re.compile(r"view=duplicates"))
    page.goto(f"{base}/?view=duplicates&threshold=0.85")
    page.wait_for_selector("#duplicates-view .dup-group")
    shown = page.eval_on_selector_all("#duplicates-view .dup-group", """gs => gs.map(g => ({
        keep: g.querySelector('.dup.keep').dataset.path,
        members: [...g.querySelectorAll('.dup')].map(d => d.dataset.path)}))""")
    assert shown == [{"keep": g["keep"], "members": [m["path"] for m in g["members"]]} for g in api["groups"]]
    assert not page.locator("#duplicates-view button").count()  # nothing to move or delete here
    _no_sideways_scroll(page)
    page.screenshot(path=str(ARTIFACTS / "phone-duplicates.png"))
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "duplicates.png"))
    page.close()
