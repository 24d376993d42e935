"""Robust image decoding: EXIF orientation, JPEG draft mode, any mode to RGB, a bomb guard.

Draft mode lets libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale straight from the DCT
coefficients, never below the size the model resizes to. It is 3-4x faster on 12 MP photos and
changes the model input slightly (the benchmark reports cosine >= 0.99 to the full decode); pass
``draft=False`` (CLI: ``--no-draft``) for bit-exact parity with a full decode.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from searchlite.errors import ImageDecodeError, QueryError
from searchlite.rawphoto import RAW_EXTENSIONS, decode_raw

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
#: File extensions the scanner picks up (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
     ".pbm", ".pnm", ".tga", ".ico", ".dib", ".pcx", ".sgi", ".jp2", ".j2k", ".avif"} | HEIF_EXTENSIONS | RAW_EXTENSIONS
)
#: Videos (Live Photo companions, clips) are out of scope: skipped, and counted in the run summary.
VIDEO_EXTENSIONS = frozenset({".mov", ".mp4", ".m4v", ".avi", ".mkv", ".3gp", ".mts", ".m2ts", ".webm", ".wmv"})
_HEIF_READY: list[bool] = []

#: searchlite's one pixel limit (decompression bombs): images above it are refused with a reason.
#: 256 MP admits stitched panoramas and 200 MP phone sensors; Pillow's own, lower limit (179 MP)
#: is lifted for the header read, so this is the limit that applies.
MAX_PIXELS = 256_000_000

_EXIF_IFD = 0x8769
_ORIENTATION = 0x0112
#: (date tag, offset tag, ifd) in order of preference, and the source name recorded for each
_DATE_TAGS = (
    (0x9003, 0x9011, _EXIF_IFD, "exif"),  # DateTimeOriginal + OffsetTimeOriginal
    (0x9004, 0x9012, _EXIF_IFD, "exif-digitized"),  # DateTimeDigitized + OffsetTimeDigitized
    (0x0132, 0x9010, None, "exif-datetime"),  # DateTime (IFD0) + OffsetTime
)
_MAKE, _MODEL = 271, 272
_PIL_LIMIT = threading.Lock()

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
    lookup = {alias: fmt for fmt, aliases in FORMATS.items() for alias in (fmt.lower(), *aliases)}
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


def _register_heif() -> None:
    """Let Pillow open HEIC/HEIF (pillow-heif, once per process; AVIF is Pillow's own)."""
    if not _HEIF_READY:
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
        except ImportError:
            pass  # such a file then fails with a reason that names the package (see load_image)
        _HEIF_READY.append(True)


def _open(fp) -> Image.Image:
    """Image.open with Pillow's own bomb limit lifted for the header read: searchlite applies
    MAX_PIXELS itself right after, so one limit (ours) decides, with a reason in the error."""
    with _PIL_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def load_image(source: str | Path | bytes, target_size: tuple[int, int] | None = None,
               draft: bool = True, max_pixels: int = MAX_PIXELS, mtime_ns: int | None = None,
               suffix: str | None = None) -> LoadedImage:
    """Decode one image to RGB, upright, optionally draft-decoded near ``target_size``; an
    animated image (or a motion photo) gives its first frame, a multi-image HEIC its primary image,
    a camera RAW its preview or a half-size demosaic. ``suffix`` (default: the path's) routes RAW
    files to rawpy; ``mtime_ns`` is the capture-date fallback.

    Raises :class:`ImageDecodeError` with a one-line reason for anything that is not a readable image.
    """
    suffix = (suffix or ("" if isinstance(source, bytes) else Path(source).suffix)).lower()
    _register_heif()
    try:
        if suffix in RAW_EXTENSIONS:
            return _load_raw(source, target_size, max_pixels, mtime_ns, suffix)
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with _open(fp) as img:
            fmt = stored_format(img.format or "?")
            width, height = img.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"image too large: {width}x{height} is over searchlite's limit of "
                                       f"{max_pixels:,} pixels (decompression bomb guard)")
            exif = img.getexif()
            taken, offset, source_name, camera = exif_meta(exif)
            if draft and target_size and fmt == "JPEG":
                # a callable target (NaFlex keeps the aspect ratio) depends on the image's own size
                wanted = target_size(width, height) if callable(target_size) else target_size
                side = max(wanted)
                img.draft("RGB", (side, side))
            img.load()
            orientation = exif.get(_ORIENTATION, 1)
            oriented = ImageOps.exif_transpose(img)
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            rgb = to_rgb(oriented)
            rgb.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"decompression bomb: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageDecodeError(f"file not found: {exc.filename}") from exc
    except PermissionError as exc:
        raise ImageDecodeError("permission denied") from exc
    except Image.UnidentifiedImageError as exc:
        if suffix in HEIF_EXTENSIONS and not _heif_available():
            raise ImageDecodeError("HEIC/HEIF photos need pillow-heif: pip install pillow-heif") from exc
        raise ImageDecodeError("not an image (unrecognised format)") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageDecodeError(f"cannot decode: {exc}") from exc
    if taken is None and mtime_ns:
        taken, source_name = local_time_of(mtime_ns), "mtime"
    return LoadedImage(rgb, width, height, fmt, taken, camera, source_name, offset)


def _heif_available() -> bool:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return False
    return True


def _load_raw(source: str | Path | bytes, target_size: tuple[int, int] | None, max_pixels: int,
              mtime_ns: int | None, suffix: str) -> LoadedImage:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    image, width, height, taken = decode_raw(data, target_size, max_pixels)
    offset, source_name, camera = None, "raw" if taken else None, None
    try:  # TIFF-based RAWs (DNG, NEF, CR2, ARW, PEF...) carry EXIF Pillow can read
        with _open(io.BytesIO(data)) as header:
            exif_taken, offset, exif_source, camera = exif_meta(header.getexif())
        if exif_taken is not None:
            taken, source_name = exif_taken, exif_source
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        pass
    if taken is None and mtime_ns:
        taken, source_name = local_time_of(mtime_ns), "mtime"
    return LoadedImage(image, width, height, suffix.lstrip(".").upper(), taken, camera, source_name, offset)


def is_image_name(path: str) -> bool:
    """Whether a path (or URI) ends in one of the image extensions the scanner indexes."""
    import os

    return os.path.splitext(path.rstrip("/"))[1].lower() in IMAGE_EXTENSIONS
