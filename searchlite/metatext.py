"""The words a photo's metadata carries: EXIF camera and GPS, XMP (embedded and sidecar files) and IPTC.

XMP is parsed as XML with ``defusedxml`` (never regexes): ``dc:title``, ``dc:description``, ``dc:subject``,
``lr:hierarchicalSubject`` (Lightroom) and ``digiKam:TagsList``, in either RDF form (element or attribute).
Sidecars are ``photo.xmp`` (Lightroom style) and ``photo.jpg.xmp`` (darktable style); their values win over
the embedded ones for title/description, keywords are the union. IPTC-IIM (``2:05`` object name, ``2:120``
caption, ``2:25`` keywords) fills what XMP left empty.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from searchlite.textnorm import name_words

log = logging.getLogger(__name__)

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
LR = "http://ns.adobe.com/lightroom/1.0/"
DIGIKAM = "http://www.digikam.org/ns/1.0/"

_MAKE, _MODEL, _EXIF_IFD, _GPS_IFD = 0x010F, 0x0110, 0x8769, 0x8825
_LENS_MAKE, _LENS_MODEL = 0xA433, 0xA434
#: tags a raw processor writes about itself, not the user's keywords
_TOOL_TAGS = ("darktable|",)


@dataclass
class MetaText:
    """Text fields (``title``, ``description``, ``keywords``, ``camera``) and the GPS position of a photo."""

    fields: dict[str, str] = field(default_factory=dict)
    lat: float | None = None
    lon: float | None = None


@dataclass
class _Xmp:
    title: str = ""
    description: str = ""
    keywords: list[str] = field(default_factory=list)


def _items(element) -> list[str]:
    """The values of one XMP property element: an rdf:Alt/Bag/Seq of rdf:li, or plain text."""
    lis = element.findall(f".//{{{RDF}}}li")
    if lis:
        return [(li.text or "").strip() for li in lis if (li.text or "").strip()]
    value = (element.text or "").strip()
    return [value] if value else []


def _values(root, ns: str, name: str) -> list[str]:
    out: list[str] = []
    for desc in root.iter(f"{{{RDF}}}Description"):
        attr = desc.get(f"{{{ns}}}{name}")
        if attr and attr.strip():
            out.append(attr.strip())
        for element in desc.findall(f"{{{ns}}}{name}"):
            out.extend(_items(element))
    return out


def _hierarchy(paths: Iterable[str], sep: str) -> list[str]:
    """Every level of hierarchical tags (``People|Family|Grandma`` -> People, Family, Grandma)."""
    out: list[str] = []
    for path in paths:
        if path.startswith(_TOOL_TAGS):
            continue
        out.extend(part.strip() for part in path.split(sep) if part.strip())
    return out


def parse_xmp(packet: bytes | str) -> _Xmp:
    """Title, description and keywords of one XMP packet or sidecar file (empty when it cannot be parsed)."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import fromstring

    if isinstance(packet, bytes):
        packet = packet.strip(b"\x00 \t\r\n")
    else:
        packet = packet.strip("\x00 \t\r\n")
    if not packet:
        return _Xmp()
    try:
        root = fromstring(packet)
    except (ParseError, DefusedXmlException, ValueError) as exc:
        log.debug("unreadable XMP: %s", exc)
        return _Xmp()
    titles = _values(root, DC, "title")
    descriptions = _values(root, DC, "description")
    keywords = [k for k in _values(root, DC, "subject") if not k.startswith(_TOOL_TAGS)]
    keywords += _hierarchy(_values(root, LR, "hierarchicalSubject"), "|")
    keywords += _hierarchy(_values(root, DIGIKAM, "TagsList"), "/")
    return _Xmp(titles[0] if titles else "", descriptions[0] if descriptions else "", keywords)


def _embedded_xmp(im: Image.Image) -> bytes | str | None:
    for key in ("xmp", "XML:com.adobe.xmp"):
        if im.info.get(key):
            return im.info[key]
    tags = getattr(im, "tag_v2", None)  # TIFF: tag 700
    return tags.get(700) if tags is not None else None


def _iptc_text(value: bytes | list[bytes] | None) -> list[str]:
    if value is None:
        return []
    out = []
    for raw in value if isinstance(value, list) else [value]:
        try:
            out.append(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            out.append(raw.decode("latin-1").strip())
    return [v for v in out if v]


def _iptc(im: Image.Image) -> _Xmp:
    from PIL import IptcImagePlugin

    try:
        info = IptcImagePlugin.getiptcinfo(im) or {}
    except Exception:  # noqa: BLE001 - broken IPTC blocks are common and never fatal
        return _Xmp()
    title = _iptc_text(info.get((2, 5)))
    caption = _iptc_text(info.get((2, 120)))
    return _Xmp(title[0] if title else "", caption[0] if caption else "", _iptc_text(info.get((2, 25))))


def _rational(value) -> float:
    return float(value[0]) / float(value[1]) if isinstance(value, tuple) and len(value) == 2 else float(value)


def gps_of(exif: Image.Exif) -> tuple[float, float] | None:
    """(lat, lon) in degrees from the EXIF GPS IFD, or None (missing, malformed or the 0,0 'no fix')."""
    try:
        gps = exif.get_ifd(_GPS_IFD)
        lat_ref, lat, lon_ref, lon = gps.get(1), gps.get(2), gps.get(3), gps.get(4)
        if not lat or not lon:
            return None
        values = []
        for dms, ref, negative in ((lat, lat_ref, "S"), (lon, lon_ref, "W")):
            d, m, s = (_rational(v) for v in dms)
            degrees = d + m / 60 + s / 3600
            ref = ref.decode() if isinstance(ref, bytes) else (ref or "")
            values.append(-degrees if ref.strip("\x00 ").upper() == negative else degrees)
    except (TypeError, ValueError, ZeroDivisionError, KeyError, AttributeError):
        return None
    lat_deg, lon_deg = values
    if not (-90 <= lat_deg <= 90 and -180 <= lon_deg <= 180) or (lat_deg == 0 and lon_deg == 0):
        return None
    return lat_deg, lon_deg


def camera_text(exif: Image.Exif) -> str:
    """Make, model and lens, plus the model's split words so ``x100v`` and ``x 100 v`` both match."""
    try:
        exif_ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - corrupt EXIF must not fail the image
        exif_ifd = {}
    make, model = (str(exif.get(t) or "").strip("\x00 ") for t in (_MAKE, _MODEL))
    lens = " ".join(str(exif_ifd.get(t) or "").strip("\x00 ") for t in (_LENS_MAKE, _LENS_MODEL)).strip()
    parts = [make] if make and not model.lower().startswith(make.lower()) else []
    parts += [p for p in (model, lens) if p]
    words = name_words(model) if model else ""
    if words and words != model.lower():
        parts.append(words)
    return " ".join(parts)


def sidecar_paths(image: Path, listing: Mapping[str, str] | None = None) -> list[Path]:
    """The XMP sidecars of an image that exist: ``photo.jpg.xmp`` (darktable) then ``photo.xmp`` (Lightroom).

    ``listing`` maps lower-cased names of the image's folder to their real names (saves a stat per
    candidate and finds ``PHOTO.XMP`` too); without it the candidates are checked on disk.
    """
    candidates = [image.name + ".xmp", image.stem + ".xmp"]
    out = []
    for name in candidates:
        if listing is not None:
            real = listing.get(name.lower())
            if real is not None:
                out.append(image.parent / real)
        elif (image.parent / name).is_file():
            out.append(image.parent / name)
    return list(dict.fromkeys(out))


def _merge(parts: list[_Xmp]) -> dict[str, str]:
    """Earlier parts win title and description; keywords are the union in order."""
    title = next((p.title for p in parts if p.title), "")
    description = next((p.description for p in parts if p.description), "")
    keywords = list(dict.fromkeys(k for p in parts for k in p.keywords))
    return {"title": title, "description": description, "keywords": ", ".join(keywords)}


def read_meta(path: Path, sidecars: Iterable[Path] = ()) -> MetaText:
    """Camera, GPS, title, description and keywords of an image file and its sidecars (never raises)."""
    from searchlite.decoders import open_image  # the one entry point (plugins, searchlite's pixel limit)

    parts: list[_Xmp] = []
    for sidecar in sidecars:
        try:
            parts.append(parse_xmp(sidecar.read_bytes()))
        except OSError as exc:
            log.debug("cannot read sidecar %s: %s", sidecar, exc)
    out = MetaText()
    camera = ""
    try:
        with open_image(os.fspath(path)) as im:
            exif = im.getexif()
            camera = camera_text(exif)
            position = gps_of(exif)
            if position:
                out.lat, out.lon = position
            packet = _embedded_xmp(im)
            if packet:
                parts.append(parse_xmp(packet))
            parts.append(_iptc(im))
    except Exception as exc:  # noqa: BLE001 - a RAW or odd file: its metadata text is simply empty
        log.debug("no embedded metadata from %s: %s", path, exc)
    out.fields = _merge(parts)
    out.fields["camera"] = camera
    return out


__all__ = ["MetaText", "camera_text", "gps_of", "parse_xmp", "read_meta", "sidecar_paths"]
