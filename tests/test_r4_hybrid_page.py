"""The search page shows why a photo matched: the matched text with the query's words marked (as
text, never HTML), the place, and place/camera filters sent to the API; a phone-width page does not
scroll sideways. The API is answered by canned JSON (the page alone is under test)."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from urllib.parse import parse_qs, urlparse

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None
pytestmark = pytest.mark.skipif(not CHROMIUM or sync_playwright is None, reason="needs chromium and playwright")

XSS = '<img src=x onerror="window.pwned=1">'
RESULT = {"rank": 1, "path": "/photos/IMG_4711.jpg", "score": 0.2, "logit": 1.0, "probability": 0.31, "image_id": 1,
          "id": 1, "width": 10, "height": 10, "taken_at": None, "thumbnail": "/api/thumbnail/1", "image": "/api/image/1",
          "matches": [{"field": "ocr", "text": f"Boulangerie Zürich {XSS}"}], "place": "Zürich, Switzerland"}


def test_page_highlights_matches_and_sends_filters():
    static = resources.files("searchlite.web") / "static"
    asked: list[dict] = []

    def handle(route):
        url = urlparse(route.request.url)
        if url.path == "/":
            return route.fulfill(body=(static / "index.html").read_text(), content_type="text/html")
        if url.path.startswith("/static/"):
            name = url.path.rsplit("/", 1)[-1]
            kind = {"js": "text/javascript", "css": "text/css"}[name.rsplit(".", 1)[-1]]
            return route.fulfill(body=(static / name).read_text(), content_type=kind)
        if url.path == "/api/status":
            return route.fulfill(json={"models": [{"model": "demo", "indexed": True}]})
        if url.path == "/api/search":
            asked.append({k: v[0] for k, v in parse_qs(url.query).items()})
            return route.fulfill(body=json.dumps({"results": [RESULT], "next_offset": None}),
                                 content_type="application/json")
        return route.fulfill(status=404, body="{}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 390, "height": 800})
        page.route("http://page.test/**", handle)
        page.goto("http://page.test/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#filters summary")
        page.fill("#place", "Zurich")
        page.fill("#camera", "x100v")
        page.fill("#text-filter", "boulangerie")
        page.fill("#q", "zurich + boulangerie")
        page.click("#go")
        page.wait_for_selector(".card .why .match")
        assert asked[-1]["place"] == "Zurich" and asked[-1]["camera"] == "x100v" and asked[-1]["text"] == "boulangerie"
        marks = page.eval_on_selector_all(".card .why mark", "els => els.map(e => e.textContent)")
        assert marks == ["Boulangerie", "Zürich"]  # accent-folded match, original text shown
        text = page.text_content(".card .why .match")
        assert XSS in text  # shown as text
        assert page.text_content(".card .why .place") == "place: Zürich, Switzerland"
        assert page.evaluate("window.pwned") is None and page.query_selector(".card .why img") is None
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        browser.close()
