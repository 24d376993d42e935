"""The indexer's text stage: names, folders, camera, XMP (embedded + sidecars), IPTC, GPS -> places,
kept consistent with the catalog through add / modify / move / delete / sidecar edits / reindex."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from sqlalchemy import text as sql

from searchlite.catalog import ImageRow, VectorRow
from searchlite.library import Library
from searchlite.textindex import fields_of, integrity
from searchlite.textnorm import fold

EIFFEL = (48.8584, 2.2945)
SHIBUYA = (35.6595, 139.7005)


def _dms(value: float) -> tuple[float, float, float]:
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    return float(d), float(m), round((value - d - m / 60) * 3600, 4)


def _xmp(title: str = "", description: str = "", subject: tuple[str, ...] = (), hierarchical: tuple[str, ...] = (),
         digikam: tuple[str, ...] = ()) -> bytes:
    def bag(ns: str, name: str, values: tuple[str, ...], kind: str = "Bag") -> str:
        if not values:
            return ""
        items = "".join(f"<rdf:li>{v}</rdf:li>" for v in values)
        return f"<{ns}:{name}><rdf:{kind}>{items}</rdf:{kind}></{ns}:{name}>"

    def alt(name: str, value: str) -> str:
        return f'<dc:{name}><rdf:Alt><rdf:li xml:lang="x-default">{value}</rdf:li></rdf:Alt></dc:{name}>' if value else ""

    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" xmlns:digiKam="http://www.digikam.org/ns/1.0/">'
            + alt("title", title) + alt("description", description) + bag("dc", "subject", subject)
            + bag("lr", "hierarchicalSubject", hierarchical) + bag("digiKam", "TagsList", digikam, "Seq")
            + '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def _iptc_app13(records: list[tuple[int, str]]) -> bytes:
    """A JPEG APP13 segment (Photoshop 8BIM 0x0404) holding IPTC-IIM dataset 2:nn records."""
    iim = b"\x1c\x01\x5a\x00\x03\x1b\x25\x47"  # 1:90 coded character set = UTF-8
    for number, value in records:
        data = value.encode()
        iim += b"\x1c\x02" + bytes([number]) + struct.pack(">H", len(data)) + data
    block = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim)) + iim
    if len(iim) % 2:
        block += b"\x00"
    payload = b"Photoshop 3.0\x00" + block
    return b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload


def photo(path: Path, seed: int, *, make: str = "", model: str = "", lens: str = "",
          gps: tuple[float, float] | None = None, xmp: bytes | None = None, iptc: list[tuple[int, str]] | None = None,
          size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG with random pixels and the given EXIF / XMP / IPTC metadata."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if lens:
        exif.get_ifd(0x8769)[0xA434] = lens
    if gps:
        exif.get_ifd(0x8825).update({1: "N" if gps[0] >= 0 else "S", 2: _dms(gps[0]),
                                     3: "E" if gps[1] >= 0 else "W", 4: _dms(gps[1])})
    buf = io.BytesIO()
    kwargs = {"xmp": xmp} if xmp else {}
    img.save(buf, "JPEG", exif=exif.tobytes(), quality=90, **kwargs)
    data = buf.getvalue()
    if iptc:
        data = data[:2] + _iptc_app13(iptc) + data[2:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _fts(lib: Library, table: str, query: str) -> set[str]:
    """Relative paths whose text matches an FTS5 query."""
    with lib.catalog.engine.connect() as conn:
        return {r[0] for r in conn.execute(sql(
            f"SELECT i.relpath FROM {table} f JOIN image_text t ON t.id = f.rowid JOIN images i ON i.id = t.image_id "
            f"WHERE {table} MATCH :q"), {"q": query})}


def _stored(lib: Library) -> dict[str, dict[str, str]]:
    """{relpath: {field: text}} of every image."""
    with lib.catalog.Session() as s:
        ids = dict(s.execute(select(ImageRow.id, ImageRow.relpath)).tuples().all())
        return {ids[i]: f for i, f in fields_of(s, ids).items()}


def _vectors(lib: Library) -> dict[int, int]:
    with lib.catalog.Session() as s:
        return dict(s.execute(select(VectorRow.image_id, VectorRow.store_row)).tuples().all())


def test_name_folder_camera_and_place_fields(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    photo(photos / "2024" / "wedding" / "IMG_4711_birthday.jpg", 1, make="FUJIFILM", model="X100V", lens="XF23mmF2",
          gps=EIFFEL)
    photo(photos / "DSC04711.jpg", 2, make="Canon", model="Canon EOS R5", gps=SHIBUYA)
    lib = Library(tmp_path / "lib")
    lib.index([photos], [f"hf:{hf_siglip}"])
    stored = _stored(lib)
    first, second = stored["2024/wedding/IMG_4711_birthday.jpg"], stored["DSC04711.jpg"]
    # hand-computed: the tokenisation rule (IMG_4711_birthday -> img 4711 birthday)
    assert first["name"] == "img 4711 birthday jpg"
    assert first["folder"] == "photos 2024 wedding"
    assert second["name"] == "dsc04711 dsc 04711 jpg"
    assert _fts(lib, "image_text_words", "x100v") == {"2024/wedding/IMG_4711_birthday.jpg"}
    assert _fts(lib, "image_text_words", "wedding") == {"2024/wedding/IMG_4711_birthday.jpg"}
    assert _fts(lib, "image_text_grams", "\"4711\"") == set(stored)  # "04711" holds it as a substring
    assert "xf23mmf2" in fold(first["camera"]) and "canon eos r5" in fold(second["camera"])
    # the Eiffel Tower is in Paris (its nearest town centre is Vanves); Japan in Japanese too
    assert _fts(lib, "image_text_words", "paris") == {"2024/wedding/IMG_4711_birthday.jpg"}
    assert _fts(lib, "image_text_words", "france") == {"2024/wedding/IMG_4711_birthday.jpg"}
    assert _fts(lib, "image_text_words", '"日本"') == {"DSC04711.jpg"}  # two characters: below trigrams
    assert "Tokyo" in second["place"]
    with lib.catalog.Session() as s:
        lat, lon = s.execute(select(ImageRow.lat, ImageRow.lon).where(
            ImageRow.relpath == "DSC04711.jpg")).one()
    assert lat == pytest.approx(SHIBUYA[0], abs=1e-4) and lon == pytest.approx(SHIBUYA[1], abs=1e-4)


def test_xmp_iptc_and_sidecars_and_sidecar_edit_without_reembedding(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    photo(photos / "embedded.jpg", 1, xmp=_xmp("Sunset at the pier", "golden hour", ("beach",),
                                               ("People|Family|Grandma",)))
    photo(photos / "iptc.jpg", 2, iptc=[(5, "Harbour"), (120, "boats in the morning"), (25, "sailing"), (25, "Kiel")])
    photo(photos / "lightroom.jpg", 3, xmp=_xmp(title="embedded title"))
    (photos / "lightroom.xmp").write_bytes(_xmp(title="Lightroom title", subject=("grandpa",)))
    photo(photos / "darktable.jpg", 4)
    (photos / "darktable.jpg.xmp").write_bytes(_xmp(digikam=("Places/Kyoto/Kinkaku-ji",),
                                                    hierarchical=("darktable|format|jpg",)))
    lib = Library(tmp_path / "lib")
    spec = f"hf:{hf_siglip}"
    lib.index([photos], [spec])
    stored = _stored(lib)
    assert stored["embedded.jpg"]["title"] == "Sunset at the pier"
    assert stored["embedded.jpg"]["description"] == "golden hour"
    assert set(stored["embedded.jpg"]["keywords"].split(", ")) == {"beach", "People", "Family", "Grandma"}
    assert stored["iptc.jpg"]["title"] == "Harbour" and stored["iptc.jpg"]["description"] == "boats in the morning"
    assert stored["iptc.jpg"]["keywords"] == "sailing, Kiel"
    assert stored["lightroom.jpg"]["title"] == "Lightroom title"  # the sidecar wins over the embedded packet
    assert stored["lightroom.jpg"]["keywords"] == "grandpa"
    assert stored["darktable.jpg"]["keywords"] == "Places, Kyoto, Kinkaku-ji"  # darktable's own tags left out
    assert _fts(lib, "image_text_words", "grandma") == {"embedded.jpg"}

    vectors = _vectors(lib)
    time.sleep(0.01)
    (photos / "lightroom.xmp").write_bytes(_xmp(title="Lightroom title", subject=("grandma", "picnic")))
    os.utime(photos / "lightroom.xmp", ns=(time.time_ns(), time.time_ns() + 10_000_000))
    stats = lib.index([photos], [spec])
    assert stats.updated == 0 and stats.added == 0
    assert _vectors(lib) == vectors  # same store rows: nothing re-embedded
    assert _fts(lib, "image_text_words", "grandma") == {"embedded.jpg", "lightroom.jpg"}
    assert _fts(lib, "image_text_words", "grandpa") == set()
    (photos / "darktable.jpg.xmp").unlink()
    lib.index([photos], [spec])
    assert "keywords" not in _stored(lib)["darktable.jpg"]


def _expected(photos: Path, meta: dict[str, dict]) -> dict[str, dict[str, str]]:
    """The brute-force reference: the fields each file on disk must have, from the test's own records."""
    out = {}
    for path in sorted(photos.rglob("*.jpg")):
        rel = path.relative_to(photos).as_posix()
        stem_words = {"a": "a jpg", "b": "b jpg", "c": "c jpg", "renamed": "renamed jpg", "d": "d jpg"}
        fields = {"name": stem_words[path.stem], "folder": " ".join(["photos", *path.relative_to(photos).parts[:-1]])}
        fields.update(meta[path.stem])
        out[rel] = fields
    return out


def test_text_rows_follow_add_modify_move_delete_and_reindex(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    spec = f"hf:{hf_siglip}"
    meta = {"a": {"camera": "FUJIFILM X100V x100v x 100 v"}, "b": {"keywords": "grandma"}, "c": {}, "d": {}}
    photo(photos / "a.jpg", 1, make="FUJIFILM", model="X100V")
    photo(photos / "x" / "b.jpg", 2, xmp=_xmp(subject=("grandma",)))
    photo(photos / "x" / "c.jpg", 3)
    lib = Library(tmp_path / "lib")
    lib.index([photos], [spec])
    assert _stored(lib) == _expected(photos, meta)
    # modify (new content and new keywords), move (rename into another folder), delete, add
    photo(photos / "x" / "c.jpg", 30, xmp=_xmp(subject=("picnic",)))
    meta["c"] = {"keywords": "picnic"}
    (photos / "y").mkdir()
    os.rename(photos / "a.jpg", photos / "y" / "renamed.jpg")
    meta["renamed"] = meta["a"]
    (photos / "x" / "b.jpg").unlink()
    photo(photos / "d.jpg", 4)
    stats = lib.index([photos], [spec])
    assert (stats.moved, stats.updated, stats.removed, stats.added) == (1, 1, 1, 1)
    assert _stored(lib) == _expected(photos, meta)
    assert _fts(lib, "image_text_words", "grandma") == set()
    assert _fts(lib, "image_text_words", "x100v") == {"y/renamed.jpg"}
    with lib.catalog.engine.begin() as conn:  # lose the word index: reindex must rebuild it from image_text
        conn.execute(sql("INSERT INTO image_text_words (image_text_words) VALUES ('delete-all')"))
    assert _fts(lib, "image_text_words", "picnic") == set()
    lib.reindex()
    with lib.catalog.engine.begin() as conn:
        integrity(conn)
        stale = conn.execute(sql("SELECT count(*) FROM image_text t LEFT JOIN images i ON i.id = t.image_id "
                                 "WHERE i.id IS NULL")).scalar()
    assert stale == 0
    assert _fts(lib, "image_text_words", "picnic") == {"x/c.jpg"}


def test_status_json_counts_text_fields(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    photo(photos / "a.jpg", 1, gps=EIFFEL, xmp=_xmp(subject=("grandma",)))
    photo(photos / "b.jpg", 2)
    lib_dir = tmp_path / "lib"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cli = [sys.executable, "-m", "searchlite.cli.main"]
    subprocess.run([*cli, "index", str(photos), "--model", f"hf:{hf_siglip}", "--library", str(lib_dir)],
                   check=True, env=env, capture_output=True)
    out = subprocess.run([*cli, "status", "--json", "--library", str(lib_dir)], check=True, env=env,
                         capture_output=True, text=True).stdout
    info = json.loads(out)
    assert info["ocr_enabled"] is False
    assert info["text"]["place"] == 1 and info["text"]["keywords"] == 1 and info["text"]["name"] == 2
    assert info["text"]["ocr"] == 0
    with Library(lib_dir).catalog.Session() as s:
        assert s.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.text_sig.is_(None))) == 0


@pytest.mark.slow
def test_kill_9_mid_run_keeps_text_rows_consistent(tmp_path, hf_siglip):
    photos, lib_dir = tmp_path / "photos", tmp_path / "lib"
    for i in range(12):
        photo(photos / f"p{i:02d}.jpg", i, xmp=_xmp(subject=(f"tag{i:02d}",)))
    expected = {f"p{i:02d}.jpg": {"name": f"p{i:02d} p {i:02d} jpg", "folder": "photos", "keywords": f"tag{i:02d}"}
                for i in range(12)}
    cmd = [sys.executable, "-m", "searchlite", "index", str(photos), "-m", f"hf:{hf_siglip}", "-L", str(lib_dir),
           "--device", "cpu", "--batch-size", "4", "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(cmd, env={**env, "SEARCHLITE_CRASH_AT": "store-synced:2"}, capture_output=True)
    assert proc.returncode == -9
    lib = Library(lib_dir)
    with lib.catalog.Session() as s:
        ok = set(s.execute(select(ImageRow.relpath).where(ImageRow.status == "ok")).scalars())
    assert 0 < len(ok) < 12
    assert _stored(lib) == {p: expected[p] for p in ok}  # committed images have all their text, others none
    with lib.catalog.engine.begin() as conn:
        integrity(conn)
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    assert _stored(Library(lib_dir)) == expected
    assert _fts(Library(lib_dir), "image_text_words", "tag07") == {"p07.jpg"}


def test_duplicates_move_to_rewrites_name_and_folder(tmp_path):
    root, target = tmp_path / "photos", tmp_path / "moved dups"
    photo(root / "IMG_1.jpg", 1, size=(96, 72))
    (root / "backup").mkdir()
    (root / "backup" / "IMG_1_copy.jpg").write_bytes((root / "IMG_1.jpg").read_bytes())
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"])
    _, report = lib.duplicates("demo", 0.9, move_to=target)
    assert len(report.moved) == 1
    moved = Path(report.moved[0][1])
    with lib.catalog.Session() as s:
        image_id = s.scalar(select(ImageRow.id).where(ImageRow.relpath.like(f"%{moved.name}")))
        fields = fields_of(s, [image_id])[image_id]
    rel = moved.relative_to(target)
    assert fields["folder"] == " ".join(["moved", "dups", *[p.lower() for p in rel.parts[:-1]]])
    assert fields["name"] == {"IMG_1.jpg": "img 1 jpg", "IMG_1_copy.jpg": "img 1 copy jpg"}[moved.name]


def test_photos_indexed_before_the_text_stage_get_text_without_reembedding(tmp_path, hf_siglip):
    photos, spec = tmp_path / "photos", f"hf:{hf_siglip}"
    photo(photos / "trip" / "IMG_0001.jpg", 1, make="FUJIFILM", model="X100V", gps=EIFFEL)
    photo(photos / "IMG_0002.jpg", 2, xmp=_xmp(subject=("grandma",)))
    lib = Library(tmp_path / "lib")
    lib.index([photos], [spec])
    expected = _stored(lib)
    with lib.catalog.engine.begin() as conn:  # what a library indexed by the previous release looks like
        conn.execute(sql("DELETE FROM image_text"))
        conn.execute(sql("UPDATE images SET text_sig = NULL, lat = NULL, lon = NULL"))
    vectors = _vectors(lib)
    stats = lib.index([photos], [spec])
    assert (stats.added, stats.updated) == (0, 0) and _vectors(lib) == vectors
    assert _stored(lib) == expected and set(expected["trip/IMG_0001.jpg"]) >= {"name", "folder", "camera", "place"}
    assert stats.stages.get("text_refreshed", 0) == 0  # a first read, not a refresh
    again = lib.index([photos], [spec])
    assert again.stages == {}  # nothing left to read


def test_a_file_name_that_is_not_utf8_gets_its_words(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    photo(photos / "ok.jpg", 1)
    odd = os.fsdecode(b"caf\xe9_paris.jpg")  # Latin-1 bytes: not UTF-8
    (photos / "ok.jpg").rename(photos / odd)
    lib = Library(tmp_path / "lib")
    stats = lib.index([photos], [f"hf:{hf_siglip}"])
    assert stats.added == 1 and stats.failed == 0
    (fields,) = _stored(lib).values()
    assert fields["name"] == "caf\\xe9 paris jpg"
    assert lib.index([photos], [f"hf:{hf_siglip}"]).stages == {}  # its signature matches on the next run


def test_watch_re_reads_an_edited_sidecar(tmp_path):
    from searchlite.watch import start_watching

    root = tmp_path / "photos"
    photo(root / "a.jpg", 1, size=(96, 72))
    lib = Library(tmp_path / "lib", device="cpu")
    lib.index([root], ["demo"])
    vectors = _vectors(lib)
    watcher = start_watching(lib, [root], ["demo"], debounce=0.4, max_delay=3.0, rescan_every=None,
                             initial_scan=False)
    try:
        (root / "a.xmp").write_bytes(_xmp(subject=("grandma",)))
        time.sleep(1.5)
        assert watcher.wait_idle(120), watcher.errors
    finally:
        watcher.stop()
    assert _fts(lib, "image_text_words", "grandma") == {"a.jpg"} and _vectors(lib) == vectors
