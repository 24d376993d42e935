"""Round 4, issue 26 item 5 (perceptual-hash channel) and item 11 (duplicates computed once per
library state, pages of /api/duplicates read from the cache)."""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.library import Library
from searchlite.phash import hash_pairs, popcount
from searchlite.sample_data import generate


@pytest.fixture(scope="module")
def reencoded(tmp_path_factory):
    """12 photos and, for each, a half-size quality-70 JPEG re-encode (a messenger export)."""
    tmp = tmp_path_factory.mktemp("phash")
    photos = tmp / "photos"
    generate.generate(photos, 12, 11, "test")
    (photos / "captions.jsonl").unlink()
    originals = sorted(photos.iterdir())
    (photos / "export").mkdir()
    pairs = {}
    for p in originals:
        small = photos / "export" / (p.stem + "-small.jpg")
        with Image.open(p) as im:
            im.convert("RGB").resize((im.width // 2, im.height // 2)).save(small, quality=70)
        pairs[str(p)] = str(small)
    return tmp, photos, pairs


def _index(tmp: Path, photos: Path, name: str, monkeypatch=None) -> Library:
    folder = tmp / name
    shutil.rmtree(folder, ignore_errors=True)
    lib = Library(folder, device="cpu")
    lib.index([photos], ["demo"])
    return lib


def test_r4_hash_pairs_match_brute_force():
    rng = np.random.default_rng(26)
    h = rng.integers(0, 2**63, size=2000, dtype=np.int64).astype(np.uint64)
    for i in range(0, 2000, 25):  # plant near hashes 0-8 bits apart
        flip = sum(1 << int(b) for b in rng.choice(64, int(rng.integers(0, 9)), replace=False))
        h[i + 1] = h[i] ^ np.uint64(flip)
    for distance in (0, 3, 6):
        i, j, d = hash_pairs(h, distance)
        full = popcount(h[:, None] ^ h[None, :])
        bi, bj = np.nonzero(np.triu(full <= distance, 1))
        assert set(zip(i.tolist(), j.tolist())) == set(zip(bi.tolist(), bj.tolist()))
        assert np.array_equal(d, full[i, j])


def test_r4_reencoded_copies_are_grouped_by_the_hash(reencoded, monkeypatch):
    tmp, photos, pairs = reencoded
    import searchlite.indexer.pipeline as pipeline

    decodes = []
    load = pipeline.load_image
    monkeypatch.setattr(pipeline, "load_image", lambda *a, **kw: decodes.append(1) or load(*a, **kw))
    lib = _index(tmp, photos, "lib-a")
    assert len(decodes) == 24  # the hash comes from the model's decode: one decode a file
    con = sqlite3.connect(lib.path / "catalog.sqlite")
    hashes = [h for (h,) in con.execute("SELECT phash FROM images")]
    con.close()
    assert len(hashes) == 24 and all(h and len(h) == 16 for h in hashes)

    groups, _ = lib.duplicates("demo")  # the demo model's own threshold
    got = {frozenset(m.path for m in g.members) for g in groups}
    assert got == {frozenset(p) for p in pairs.items()}  # all 12 (the embedding alone missed 4)
    for g in groups:
        assert g.members[0].channel is None and g.members[1].channel in ("phash", "both")
        assert "channel" in g.members[1].as_dict()
    # the hash alone (embedding channel unreachable): the same 12 pairs, and never two different photos
    only_hash, _ = lib.duplicates("demo", 1.0)
    assert {frozenset(m.path for m in g.members) for g in only_hash} == got
    assert all(g.members[1].channel == "phash" for g in only_hash)
    originals = list(pairs)
    for a, b in itertools.combinations(originals, 2):
        assert not any({a, b} <= {m.path for m in g.members} for g in only_hash)
    # the hash channel off: the embedding alone (a smaller set on the demo model)
    no_hash, _ = lib.duplicates("demo", hash_distance=-1)
    assert all(m.channel == "embedding" for g in no_hash for m in g.members[1:])


def test_r4_duplicates_are_computed_once_per_library_state(reencoded):
    from fastapi.testclient import TestClient

    import searchlite.duplicates as duplicates
    from searchlite.web.app import create_app

    tmp, photos, pairs = reencoded
    lib = _index(tmp, photos, "lib-b")
    calls = []
    find = duplicates.find_duplicates

    def counted(*a, **kw):
        calls.append(1)
        return find(*a, **kw)

    duplicates.find_duplicates = counted
    try:
        client = TestClient(create_app(lib), base_url="http://127.0.0.1:8765")
        seen = []
        for offset in range(0, 12, 5):
            page = client.get("/api/duplicates", params={"k": 5, "offset": offset}).json()
            assert page["total"] == 12
            seen += [frozenset(m["path"] for m in g["members"]) for g in page["groups"]]
            assert all(m["channel"] in (None, "phash", "both", "embedding") for g in page["groups"]
                       for m in g["members"])
        assert len(set(seen)) == 12 and len(calls) == 1  # three pages, one computation
        lib.duplicates("demo")
        assert len(calls) == 1
        # a change of the library (a new photo copy indexed) is a new state: computed again, and found
        shutil.copyfile(next(iter(pairs)), photos / "export" / "zz-copy.jpg")
        try:
            lib.index([photos], ["demo"])
            groups, _ = lib.duplicates("demo")
            assert len(calls) == 2
            assert any(str(photos / "export" / "zz-copy.jpg") in {m.path for m in g.members} for g in groups)
        finally:
            (photos / "export" / "zz-copy.jpg").unlink()
    finally:
        duplicates.find_duplicates = find
