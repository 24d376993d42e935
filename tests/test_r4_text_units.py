"""Units of the text stage that need no model: XMP parsing (RDF forms, hostile XML), GPS, place names."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from searchlite.metatext import gps_of, parse_xmp, sidecar_paths

RDF_HEAD = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:lr="http://ns.adobe.com/lightroom/1.0/" ')


def test_xmp_attribute_and_element_forms_and_hostile_xml():
    element = parse_xmp(RDF_HEAD + '><dc:subject><rdf:Bag><rdf:li>Grandma</rdf:li><rdf:li>Zürich</rdf:li></rdf:Bag>'
                        '</dc:subject><lr:hierarchicalSubject><rdf:Bag><rdf:li>Places|Europe|Zürich</rdf:li>'
                        '</rdf:Bag></lr:hierarchicalSubject></rdf:Description></rdf:RDF></x:xmpmeta>')
    assert element.keywords == ["Grandma", "Zürich", "Places", "Europe", "Zürich"]
    attribute = parse_xmp((RDF_HEAD + 'dc:description="a plain attribute"/></rdf:RDF></x:xmpmeta>').encode()
                          + b"\x00\x00  ")  # padded packets end in NULs and spaces
    assert attribute.description == "a plain attribute"
    assert parse_xmp(b"<not xml").keywords == [] and parse_xmp(b"").title == ""
    bomb = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
            + RDF_HEAD + '><dc:subject><rdf:Bag><rdf:li>&lol2;</rdf:li></rdf:Bag></dc:subject>'
            '</rdf:Description></rdf:RDF></x:xmpmeta>')
    assert parse_xmp(bomb).keywords == []  # defusedxml refuses entity declarations


def test_gps_reference_signs_and_no_fix():
    exif = Image.Exif()
    exif.get_ifd(0x8825).update({1: "S", 2: (33.0, 51.0, 24.48), 3: "E", 4: (151.0, 12.0, 55.08)})
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=exif.tobytes())
    lat, lon = gps_of(Image.open(buf).getexif())
    assert lat == pytest.approx(-(33 + 51 / 60 + 24.48 / 3600)) and lon == pytest.approx(151 + 12 / 60 + 55.08 / 3600)
    zero = Image.Exif()
    zero.get_ifd(0x8825).update({1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)})
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", exif=zero.tobytes())
    assert gps_of(Image.open(buf).getexif()) is None


def test_sidecar_names_both_styles(tmp_path):
    image = tmp_path / "IMG_1.CR2"
    for name in ("IMG_1.CR2.xmp", "IMG_1.XMP", "IMG_10.xmp"):
        (tmp_path / name).write_text("x")
    listing = {p.name.lower(): p.name for p in tmp_path.iterdir()}
    assert [p.name for p in sidecar_paths(image, listing)] == ["IMG_1.CR2.xmp", "IMG_1.XMP"]


def test_place_names_of_landmarks():
    pytest.importorskip("reverse_geocode")
    from searchlite.places import place_text

    eiffel = place_text(48.8584, 2.2945).split(", ")
    assert "Paris" in eiffel and "France" in eiffel  # the nearest town centre is Vanves: Paris is the city
    assert {"Tokyo", "東京", "Japan", "日本"} <= set(place_text(35.6812, 139.7671).split(", "))
    assert "Москва" in place_text(55.7558, 37.6173).split(", ")  # the city in its country's script too
    assert "Deutschland" in place_text(52.5251, 13.3694)
    assert place_text(0.0, -30.0) == ""  # the open Atlantic: no town, region or country


def test_ocr_without_the_extra_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    import importlib.metadata

    from searchlite.catalog import Catalog
    from searchlite.indexer.textstage import resolve_ocr
    from searchlite.ocr import OcrUnavailable

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    catalog = Catalog(tmp_path / "lib")
    with pytest.raises(OcrUnavailable, match=r"searchlite\[ocr\]"):
        resolve_ocr(catalog, True)
    assert resolve_ocr(catalog, None) is False  # the failed --ocr was not stored
