"""The text channel alone (no model): FTS5 queries built safely, whole words, phrases, prefixes, CJK."""

from __future__ import annotations

import pytest

from searchlite.catalog import Catalog, ImageRow
from searchlite.textindex import replace_fields
from searchlite.textnorm import fold, name_words
from searchlite.textquery import parse_terms, search_text

TEXTS = {
    "a.jpg": {"ocr": "INVOICE 4711 total 12.50"},
    "b.jpg": {"ocr": "4711 INVOICE copy"},  # both words, not the phrase
    "c.jpg": {"ocr": "Car park level 2"},
    "d.jpg": {"ocr": "Card payment only", "keywords": "cards"},
    "e.jpg": {"ocr": "東京駅 南口"},
    "f.jpg": {"ocr": "东京站出口"},
    "IMG_4711_birthday.jpg": {"name": name_words("IMG_4711_birthday.jpg"), "folder": "wedding 2024"},
    "g.jpg": {"place": "Paris, Île-de-France, France", "camera": "FUJIFILM X100V"},
    "h.jpg": {"keywords": "grandma|family", "description": "Grandma's garden in Zürich"},
    "i.jpg": {"ocr": "駅"},
    "k.jpg": {"ocr": "서울역광장"},
    "j.jpg": {"ocr": "ギョーザ定食"},
}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("textq")
    cat = Catalog(tmp / "lib")
    ids = {}
    with cat.Session.begin() as s:
        root = cat.root_id(s, tmp / "photos")
        for name, fields in TEXTS.items():
            row = ImageRow(root_id=root, relpath=name, size=1, mtime_ns=1, status="ok")
            s.add(row)
            s.flush()
            ids[name] = row.id
            replace_fields(s, row.id, fields)
    return cat, ids


def _found(catalog, query: str) -> set[str]:
    cat, ids = catalog
    names = {v: k for k, v in ids.items()}
    with cat.engine.connect() as conn:
        return {names[i] for i in search_text(conn, query)}


def _brute(word: str) -> set[str]:
    """Reference: photos with ``word`` as a whole word (folded) in some field."""
    import re

    return {n for n, f in TEXTS.items() if any(re.search(rf"(?<!\w){re.escape(fold(word))}(?!\w)", fold(v))
                                               for v in f.values())}


def test_whole_words_no_car_to_card(catalog):
    assert _found(catalog, "Car") == _brute("car") == {"c.jpg"}
    assert _found(catalog, "card") == {"d.jpg"}
    assert _found(catalog, "grandma") == _brute("grandma") == {"h.jpg"}
    assert _found(catalog, "zurich") == {"h.jpg"}  # accents folded


def test_quoted_phrase_is_exact(catalog):
    assert _found(catalog, "invoice 4711") == {"a.jpg", "b.jpg"}  # all words, any order
    assert _found(catalog, '"INVOICE 4711"') == {"a.jpg"}  # the phrase only
    assert _found(catalog, '"IMG 471"') == set()  # quoted: no implicit name prefix
    assert _found(catalog, '"IMG 471*"') == {"IMG_4711_birthday.jpg"}


def test_name_prefix_and_explicit_star(catalog):
    assert _found(catalog, "img_47") == {"IMG_4711_birthday.jpg"}  # name-like: prefix in names
    assert _found(catalog, "IMG_4711") == {"IMG_4711_birthday.jpg"}
    assert _found(catalog, "471") == {"IMG_4711_birthday.jpg"}  # a prefix in names, not in OCR "4711"
    assert _found(catalog, "4711") == {"a.jpg", "b.jpg", "IMG_4711_birthday.jpg"}
    assert _found(catalog, "wedd*") == {"IMG_4711_birthday.jpg"}
    assert _found(catalog, "wedd") == set()


def test_cjk_substrings_and_short_fallback(catalog):
    assert _found(catalog, "東京駅") == {"e.jpg"}
    assert _found(catalog, "东京站") == {"f.jpg"}  # substring of 东京站出口
    assert _found(catalog, "駅") == {"e.jpg", "i.jpg"}  # < 3 characters: LIKE
    assert _found(catalog, "南口") == {"e.jpg"}
    assert _found(catalog, "서울역") == {"k.jpg"}  # Hangul syllables stay composed
    assert _found(catalog, "ギョーザ") == {"j.jpg"}  # kana keep their voicing marks


def test_place_camera_and_matches(catalog):
    cat, ids = catalog
    with cat.engine.connect() as conn:
        hits = search_text(conn, "Paris")
        assert set(hits) == {ids["g.jpg"]}
        assert hits[ids["g.jpg"]].matches == [{"field": "place", "text": "Paris, Île-de-France, France"}]
        assert hits[ids["g.jpg"]].exact
        assert [m["field"] for m in search_text(conn, "x100v")[ids["g.jpg"]].matches] == ["camera"]


@pytest.mark.parametrize("query", ['"', 'a" OR "b', "NEAR(a b)", "text:foo", "^abc", "a AND", "*", "'", "(", '"""'])
def test_fts_syntax_never_reaches_sqlite(catalog, query):
    _found(catalog, query)  # no exception: every word is quoted


def test_combined_terms():
    terms = parse_terms('Paris + sunset - people')
    assert [t.raw for t in terms] == ["Paris", "sunset"]
    assert parse_terms('"INVOICE 4711"')[0].phrase


def test_fusion_rules_by_hand():
    from searchlite.fusion import fuse, noisy_or

    order = [10, 11, 12, 13]  # the embedding's order
    prob = {10: 0.9, 11: 0.5, 12: 0.2, 13: 0.01}
    assert noisy_or(0.2, 0.5) == pytest.approx(0.6)
    # prob: 13 (p 0.01, evidence 0.7) -> 0.703: above 11 and 12, below the confident visual match 10
    fused = fuse(order, prob, {13: 0.7}, [13], "prob")
    assert [i for i, _ in fused] == [10, 13, 11, 12]
    assert fused[1][1] == pytest.approx(1 - 0.99 * 0.3)
    # rrf: any text hit outranks the embedding's top photo: 1/64 + 1/61 > 1/61
    fused = fuse(order, prob, {13: 0.7}, [13], "rrf")
    assert [i for i, _ in fused] == [13, 10, 11, 12]
    assert fused[0][1] == pytest.approx(1 / 64 + 1 / 61)
    # no text evidence: the embedding's order exactly, under both rules
    for method in ("prob", "rrf"):
        assert [i for i, _ in fuse(order, prob, {}, [], method)] == order


def test_socket_server_passes_mode_and_text_filters():
    from searchlite.errors import QueryError
    from searchlite.query import Filters
    from searchlite.server import parse_request

    _, args = parse_request({"command": "search", "args": {"text": "x", "mode": "text", "filters": {
        "place": "Paris", "near": [48.8, 2.3, 5], "camera": "x100v", "text": "boulangerie"}}})
    assert args["mode"] == "text"
    assert args["filters"] == Filters(place="Paris", near=(48.8, 2.3, 5.0), camera="x100v", text="boulangerie")
    _, args = parse_request({"command": "search", "args": {"text": "x"}})
    assert "mode" not in args  # the library's default (hybrid)
    with pytest.raises(QueryError):
        parse_request({"command": "search", "args": {"text": "x", "mode": 3}})
