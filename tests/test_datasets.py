"""Dataset readers: formats, grouping of identical captions, bad rows reported not fatal."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from searchlite.errors import DatasetError
from searchlite.evaluation.datasets import read_captions, read_labelled


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4)).save(path)


def test_jsonl_groups_identical_captions_and_reports_bad_rows(tmp_path):
    for n in ("a.png", "b.png", "c.png"):
        _img(tmp_path / n)
    rows = [{"image": "a.png", "caption": "a red cat"}, {"image": "b.png", "caption": "a red cat"},
            {"image": "c.png", "caption": "a dog"}, {"image": "a.png", "caption": "a cat"},
            {"image": "missing.png", "caption": "x"}, {"image": "c.png", "caption": "  "}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    ds = read_captions(tmp_path)
    assert len(ds.images) == 3 and len(ds.captions) == 4
    assert len(ds.problems) == 3
    texts, relevant, per_image = ds.queries()
    assert texts == ["a red cat", "a dog", "a cat"]
    assert relevant == [[0, 1], [2], [0]]
    assert per_image == [[0, 2], [0], [1]]


def test_coco_karpathy_and_tsv(tmp_path):
    _img(tmp_path / "imgs" / "1.jpg")
    _img(tmp_path / "imgs" / "2.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "one"}, {"id": 11, "image_id": 2, "caption": "two"},
                            {"id": 12, "image_id": 3, "caption": "ghost"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    ds = read_captions(tmp_path / "coco.json", images=tmp_path / "imgs")
    assert ds.captions == ["one", "two"] and len(ds.problems) == 1
    karpathy = {"images": [{"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a"}, {"raw": "b"}]},
                           {"filename": "2.jpg", "split": "train", "sentences": [{"raw": "c"}]}]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    ds = read_captions(tmp_path / "k.json", images=tmp_path / "imgs", split="test")
    assert ds.captions == ["a", "b"] and ds.caption_image == [0, 0]
    (tmp_path / "f.tsv").write_text("image\tcaption\n1.jpg#0\tfirst\n1.jpg#1\tsecond\n2.jpg#0\tthird\n")
    ds = read_captions(tmp_path / "f.tsv", images=tmp_path / "imgs")
    assert ds.caption_image == [0, 0, 1]


def test_unusable_dataset_is_a_clear_error(tmp_path):
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "nope.png", "caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match="no usable caption"):
        read_captions(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        read_captions(tmp_path / "absent")


def test_class_folders(tmp_path):
    for cls, n in (("cat", 2), ("dog", 1)):
        for i in range(n):
            _img(tmp_path / cls / f"{i}.png")
    ds = read_labelled(tmp_path)
    assert len(ds.images) == 3
    assert ds.relevant == [[1], [0], []]
