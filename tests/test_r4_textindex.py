"""The text index: FTS5 rows follow image_text through insert, update, cascade delete and rebuild."""

from __future__ import annotations

from sqlalchemy import text as sql

from searchlite.catalog import Catalog, ImageRow
from searchlite.textindex import counts, fields_of, integrity, rebuild, replace_fields
from searchlite.textnorm import fold, name_words


def _image(s, root_id: int, name: str) -> int:
    row = ImageRow(root_id=root_id, relpath=name, size=1, mtime_ns=1, status="ok")
    s.add(row)
    s.flush()
    return row.id


def _words(conn, query: str) -> set[int]:
    return {r[0] for r in conn.execute(sql(
        "SELECT t.image_id FROM image_text_words w JOIN image_text t ON t.id = w.rowid "
        "WHERE image_text_words MATCH :q"), {"q": query})}


def _grams(conn, query: str) -> set[int]:
    return {r[0] for r in conn.execute(sql(
        "SELECT t.image_id FROM image_text_grams g JOIN image_text t ON t.id = g.rowid "
        "WHERE image_text_grams MATCH :q"), {"q": f'"{query}"'})}


def test_fts_follows_rows_through_update_delete_and_rebuild(tmp_path):
    cat = Catalog(tmp_path / "lib")
    texts = {"a.jpg": "BOULANGERIE Pâtisserie", "b.jpg": "东京站出口", "c.jpg": "INVOICE 4711"}
    with cat.Session.begin() as s:
        root = cat.root_id(s, tmp_path / "photos")
        ids = {name: _image(s, root, name) for name in texts}
        for name, value in texts.items():
            replace_fields(s, ids[name], {"ocr": value, "name": name_words(name)})
    with cat.engine.connect() as conn:
        # the brute-force reference: which rows contain the query (folded) as a substring
        for query in ("boulangerie", "patisserie", "4711"):
            expect = {ids[n] for n, v in texts.items() if query in fold(v)}
            assert _words(conn, query) == expect
        assert _grams(conn, "东京站") == {ids["b.jpg"]}
    with cat.Session.begin() as s:
        replace_fields(s, ids["a.jpg"], {"ocr": "CAFE"})  # update
        s.delete(s.get(ImageRow, ids["c.jpg"]))  # cascade
    with cat.engine.begin() as conn:
        assert _words(conn, "boulangerie") == set() and _words(conn, "cafe") == {ids["a.jpg"]}
        assert _words(conn, "4711") == set()
        assert counts(conn) == {"ocr": 2, "name": 2}
        rebuild(conn)
        integrity(conn)
        assert _grams(conn, "东京站") == {ids["b.jpg"]}
    with cat.Session() as s:
        assert fields_of(s, [ids["b.jpg"]]) == {ids["b.jpg"]: {"ocr": "东京站出口", "name": "b jpg"}}


def test_name_words_and_fold():
    assert name_words("IMG_4711_birthday.jpg") == "img 4711 birthday jpg"  # the example
    assert name_words("DSC04711.JPG") == "dsc04711 dsc 04711 jpg"
    assert name_words("SummerHoliday 2024") == "summerholiday summer holiday 2024"
    assert fold("Zürich ÉCOLE ＡＢＣ") == "zurich ecole abc"
