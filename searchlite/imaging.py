"""The one decode entry point (:func:`load_image`): EXIF orientation, reduced-size decodes, any mode
to RGB, the bomb guard, a pixel budget and one vocabulary of failure reasons.

Set-up and the photo extensions live in :mod:`searchlite.decoders`, failure reasons in
:mod:`searchlite.decode_reasons`, the budget in :mod:`searchlite.pixelbudget`, large HEICs in
:mod:`searchlite.heiftiles` (tile by tile) and :mod:`searchlite.heifreduce` (fallback).

Draft mode lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale straight from the DCT
coefficients, never below the size the model resizes to; a HEIC is read from its embedded thumbnail
when one is large enough, else decoded tile by tile and box-reduced. It is 3-4x faster on 12 MP
JPEGs and changes the model input slightly (the benchmark reports cosine >= 0.99 to the full
decode); pass ``draft=False`` (CLI: ``--no-draft``) for bit-exact parity with a full decode.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from searchlite import decode_reasons
from searchlite.decode_reasons import DecodeFailure
from searchlite.decoders import (
    HEIF_EXTENSIONS,
    MAX_PIXELS,
    NOT_PHOTOS,
    VIDEO_EXTENSIONS,
    capture_notes,
    heif_available,
    image_extensions,
    init_decoders,
    open_image,
    registered_format,
)
from searchlite.errors import QueryError
from searchlite.pixelbudget import DECODE_BUDGET
from searchlite.rawphoto import RAW_EXTENSIONS, decode_raw

__all__ = ["HEIF_EXTENSIONS", "MAX_PIXELS", "NOT_PHOTOS", "VIDEO_EXTENSIONS", "image_extensions", "init_decoders",
           "load_image", "open_image"]
log = logging.getLogger(__name__)

#: File extensions the scanner picks up: ``IMAGE_EXTENSIONS`` (derived lazily from the installed
#: decoders, see :func:`searchlite.decoders.image_extensions`).


def __getattr__(name: str):  # PEP 562: the derived extension list is computed on first use
    if name == "IMAGE_EXTENSIONS":
        return image_extensions()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
#: (date tag, offset tag, ifd) in order of preference, and the source name recorded for each
_DATE_TAGS = (
    (0x9003, 0x9011, _EXIF_IFD, "exif"),  # DateTimeOriginal + OffsetTimeOriginal
    (0x9004, 0x9012, _EXIF_IFD, "exif-digitized"),  # DateTimeDigitized + OffsetTimeDigitized
    (0x0132, 0x9010, None, "exif-datetime"),  # DateTime (IFD0) + OffsetTime
)
_MAKE, _MODEL = 271, 272

#: Stored format name -> the names a filter accepts for it (case-insensitive). Pillow names most
#: formats; a multi-picture JPEG (camera MPF data, Pillow's "MPO") is stored as JPEG, and a camera
#: RAW is stored as its extension (upper case). ``raw`` selects every RAW format.
FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": ("jpeg", "jpg", "jpe", "jfif", "mpo"),
    "PNG": ("png", "apng"),
    "GIF": ("gif",),
    "BMP": ("bmp",),
    "DIB": ("dib",),
    "WEBP": ("webp",),
    "TIFF": ("tiff", "tif"),
    "PPM": ("ppm", "pgm", "pbm", "pnm"),
    "TGA": ("tga",),
    "ICO": ("ico",),
    "PCX": ("pcx",),
    "SGI": ("sgi",),
    "JPEG2000": ("jpeg2000", "jp2", "j2k"),
    "AVIF": ("avif",),
    "HEIF": ("heif", "heic", "hif"),
    **{ext.lstrip(".").upper(): (ext.lstrip("."),) for ext in sorted(RAW_EXTENSIONS)},
}
#: What a stored format name may also be in a catalog written before it was normalised.
_STORED_AS = {"JPEG": ("JPEG", "MPO"), "BMP": ("BMP", "DIB")}


def stored_format(pillow_format: str) -> str:
    """The catalog's name for a format Pillow reports (MPO, a JPEG with MPF data, is JPEG)."""
    return "JPEG" if pillow_format == "MPO" else pillow_format


def format_names(names: Iterable[str]) -> list[str]:
    """The catalog format values a ``--format`` list selects (aliases, any case; ``raw`` = every
    RAW format). An unknown name is a :class:`QueryError` listing the known ones."""
    lookup = {ext.lstrip("."): stored_format(fmt) for ext in image_extensions()
              if (fmt := registered_format(ext)) is not None}  # what the installed decoders read (PSD, QOI...)
    lookup.update({fmt.lower(): fmt for fmt in set(lookup.values())})
    lookup.update({alias: fmt for fmt, aliases in FORMATS.items() for alias in (fmt.lower(), *aliases)})
    raws = [ext.lstrip(".").upper() for ext in sorted(RAW_EXTENSIONS)]
    out: list[str] = []
    for name in names:
        key = str(name).strip().lower().lstrip(".")
        if key == "raw":  # every RAW format (a ".raw" file is stored as RAW too)
            chosen = raws
        elif key in lookup:
            chosen = [lookup[key]]
        else:
            known = ", ".join(f for f in FORMATS if f not in raws)
            raise QueryError(f"unknown image format {name!r}; known: {known}, RAW (or a RAW extension: "
                             f"{', '.join(r.lower() for r in raws[:6])}...)")
        for fmt in chosen:
            for stored in _STORED_AS.get(fmt, (fmt,)):
                if stored not in out:
                    out.append(stored)
    return out


@dataclass
class LoadedImage:
    """A decoded RGB image with the metadata the catalog stores."""

    image: Image.Image
    width: int  # original width after EXIF rotation, before any draft reduction
    height: int
    format: str
    taken_at: datetime | None  # wall-clock capture time, as the camera recorded it
    camera: str | None
    taken_source: str | None = None  # exif | exif-digitized | exif-datetime | raw | mtime
    taken_offset: int | None = None  # minutes east of UTC, when the file records it

    def metadata(self) -> dict:
        """The catalog fields of this image."""
        return dict(width=self.width, height=self.height, format=self.format, taken_at=self.taken_at,
                    taken_source=self.taken_source, taken_offset=self.taken_offset, camera=self.camera)


def local_time_of(mtime_ns: int) -> datetime:
    """A file's modification time as local wall-clock time (the fallback capture date)."""
    return datetime.fromtimestamp(mtime_ns / 1e9)


def format_taken(taken_at: datetime | None, offset_minutes: int | None) -> str | None:
    """ISO 8601, with the UTC offset when the file recorded one."""
    if taken_at is None:
        return None
    if offset_minutes is None:
        return taken_at.isoformat()
    return taken_at.replace(tzinfo=timezone(timedelta(minutes=offset_minutes))).isoformat()


def parse_offset(raw: object) -> int | None:
    """'+02:00' / '-05:30' (EXIF OffsetTime*) -> minutes east of UTC."""
    if not isinstance(raw, str):
        return None
    text = raw.strip("\x00 ")
    if len(text) != 6 or text[0] not in "+-" or text[3] != ":":
        return None
    try:
        minutes = int(text[1:3]) * 60 + int(text[4:6])
    except ValueError:
        return None
    return minutes if text[0] == "+" else -minutes


def parse_exif_date(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white (as transformers'
    ``convert_to_rgb``), 16/32-bit and float greyscale are scaled to 8 bits, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}:
        arr = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        elif image.mode.startswith("I;16") or arr.max() > 255:
            arr = arr / 257.0  # 0..65535 -> 0..255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def exif_meta(exif: Image.Exif) -> tuple[datetime | None, int | None, str | None, str | None]:
    """(taken_at, offset minutes, source, camera) from EXIF: DateTimeOriginal with
    OffsetTimeOriginal when present, else the digitized date, else IFD0 DateTime."""
    taken, offset, source = None, None, None
    try:
        exif_ifd = exif.get_ifd(_EXIF_IFD)
    except Exception:  # noqa: BLE001 - corrupt EXIF must not fail the image
        exif_ifd = {}
    for date_tag, offset_tag, ifd, name in _DATE_TAGS:
        where = exif_ifd if ifd else exif
        taken = parse_exif_date(where.get(date_tag) or (exif.get(date_tag) if ifd else None))
        if taken is not None:
            offset, source = parse_offset(exif_ifd.get(offset_tag)), name
            break
    make, model = exif.get(_MAKE), exif.get(_MODEL)
    parts = [str(p).strip("\x00 ") for p in (make, model) if p]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return taken, offset, source, (" ".join(parts) or None)


def _need_side(target_size, width: int, height: int) -> int:
    """The long side the model resizes to (0: no target): reduced decodes never go below it."""
    if not target_size:
        return 0
    wanted = target_size(width, height) if callable(target_size) else target_size
    return max(wanted)


def load_image(source: str | Path | bytes, target_size: tuple[int, int] | None = None,
               draft: bool = True, max_pixels: int = MAX_PIXELS, mtime_ns: int | None = None,
               suffix: str | None = None) -> LoadedImage:
    """Decode one image to RGB, upright, optionally reduced near ``target_size`` (the one decode
    entry point: plugin registry, reduced-size decode, pixel budget, error vocabulary).

    An animated image (or a motion photo) gives its first frame, a multi-image HEIC its primary
    image, a camera RAW its preview or a half-size demosaic. With ``draft``, a JPEG is decoded at
    1/2..1/8 scale (libjpeg DCT scaling) and a HEIC from its embedded thumbnail or box-reduced from
    libheif's buffer, never below the model's size. ``suffix`` (default: the path's) routes RAW
    files to rawpy; ``mtime_ns`` is the capture-date fallback.

    Raises :class:`~searchlite.decode_reasons.DecodeFailure` (an ``ImageDecodeError``) whose text
    is ``"reason: detail"``; decoder warnings are appended to that detail or logged at debug level.
    """
    suffix = (suffix or ("" if isinstance(source, bytes) else Path(source).suffix)).lower()
    init_decoders()
    with capture_notes() as notes:
        try:
            loaded = _load(source, target_size, draft, max_pixels, mtime_ns, suffix)
        except DecodeFailure as exc:
            raise _with_notes(exc, notes) from exc.__cause__
    for note in notes:
        log.debug("%s: %s", source if not isinstance(source, bytes) else "image", note)
    return loaded


def _with_notes(exc: DecodeFailure, notes: list[str]) -> DecodeFailure:
    if not notes:
        return exc
    return DecodeFailure(exc.reason, f"{exc.detail} [decoder warnings: {'; '.join(notes[:3])}]")


def _head(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:32]
    try:
        with open(source, "rb") as fh:
            return fh.read(32)
    except OSError:
        return b""


def _load(source: str | Path | bytes, target_size, draft: bool, max_pixels: int, mtime_ns: int | None,
          suffix: str) -> LoadedImage:
    if isinstance(source, bytes) and not source:
        raise DecodeFailure(decode_reasons.EMPTY, "the file has 0 bytes")
    if suffix in RAW_EXTENSIONS:
        return _load_raw(source, target_size, max_pixels, mtime_ns, suffix)
    fmt, compression = None, None
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with open_image(fp) as img:
            fmt = stored_format(img.format or "?")
            compression = img.info.get("compression") if fmt == "TIFF" else None
            width, height = img.size
            if width * height > max_pixels:
                raise DecodeFailure(decode_reasons.TOO_LARGE, f"{width}x{height} is over searchlite's limit of "
                                    f"{max_pixels:,} pixels (decompression bomb guard)")
            exif = img.getexif()
            taken, offset, source_name, camera = exif_meta(exif)
            orientation = exif.get(_ORIENTATION, 1)
            need = _need_side(target_size, width, height) if draft else 0
            if need and fmt in ("JPEG", "HEIF"):
                img.draft("RGB", (need, need))  # JPEG: DCT scaling; HEIF: an embedded thumbnail, if one fits
            factor = 1
            if need and fmt == "HEIF" and img.size == (width, height):
                from searchlite.heifreduce import reduction_factor

                factor = reduction_factor(width, height, need)
            rgb = _pixels(img, source, width, height, factor)
            if orientation in (5, 6, 7, 8) and fmt != "HEIF":
                width, height = height, width
    except DecodeFailure:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's check, at twice our limit (embedded frames too)
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "the image"
        raise DecodeFailure(decode_reasons.TOO_LARGE, f"{size} is over searchlite's limit of {max_pixels:,} "
                            "pixels (decompression bomb guard)") from exc
    except Exception as exc:  # noqa: BLE001 - every decoder failure becomes a reason
        if suffix in HEIF_EXTENSIONS and not heif_available():
            raise DecodeFailure("needs pillow-heif", "HEIC/HEIF photos need pillow-heif: pip install pillow-heif"
                                ) from exc
        head = _head(source)
        if isinstance(exc, Image.UnidentifiedImageError) and decode_reasons.signature_format(head) == "HEIF/AVIF":
            exc = _libheif_error(source) or exc  # Pillow drops libheif's own words; ask it directly
        raise decode_reasons.classify(exc, head, fmt, compression) from exc
    if taken is None and mtime_ns:
        taken, source_name = local_time_of(mtime_ns), "mtime"
    return LoadedImage(rgb, width, height, fmt, taken, camera, source_name, offset)


def _libheif_error(source: str | Path | bytes) -> Exception | None:
    """libheif's error for a HEIF/AVIF file Pillow could not identify (None if it opens)."""
    try:
        import pillow_heif

        pillow_heif.open_heif(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:  # noqa: BLE001 - this is the answer
        return exc
    return None


def _pixels(img: Image.Image, source: str | Path | bytes, width: int, height: int, factor: int) -> Image.Image:
    """Decode under the pixel budget. ``factor`` > 1: a HEIF with no thumbnail large enough, reduced
    tile by tile (heiftiles), else from one full decode (heifreduce); libheif applies the orientation."""
    if factor > 1:
        from searchlite.heiftiles import decode_tiled

        with DECODE_BUDGET.hold(width * 1024):  # about two tile rows in flight
            reduced = decode_tiled(source, factor)
        if reduced is None:
            from searchlite.heifreduce import decode_reduced

            with DECODE_BUDGET.hold(width * height):  # libheif's full-size buffer
                reduced = decode_reduced(source, factor)
        return to_rgb(reduced)
    with DECODE_BUDGET.hold(img.size[0] * img.size[1]):
        img.load()
        rgb = to_rgb(ImageOps.exif_transpose(img))
        rgb.load()
    return rgb


def _load_raw(source: str | Path | bytes, target_size: tuple[int, int] | None, max_pixels: int,
              mtime_ns: int | None, suffix: str) -> LoadedImage:
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        raise decode_reasons.classify(exc) from exc
    if not data:
        raise DecodeFailure(decode_reasons.EMPTY, "the file has 0 bytes")
    image, width, height, taken = decode_raw(data, target_size, max_pixels, opener=open_image,
                                            read_date=lambda im: exif_meta(im.getexif())[0])
    offset, source_name, camera = None, "raw" if taken else None, None
    try:  # TIFF-based RAWs (DNG, NEF, CR2, ARW, PEF...) carry EXIF Pillow can read (a header read)
        with open_image(io.BytesIO(data)) as header:
            exif_taken, offset, exif_source, camera = exif_meta(header.getexif())
        if exif_taken is not None:
            taken, source_name = exif_taken, exif_source
    except Exception:  # noqa: BLE001 - EXIF is optional; the pixels are already decoded
        pass
    if taken is None and mtime_ns:
        taken, source_name = local_time_of(mtime_ns), "mtime"
    return LoadedImage(image, width, height, suffix.lstrip(".").upper(), taken, camera, source_name, offset)


def is_image_name(path: str) -> bool:
    """Whether a path (or URI) ends in one of the image extensions the scanner indexes."""
    import os

    return os.path.splitext(path.rstrip("/"))[1].lower() in image_extensions()
