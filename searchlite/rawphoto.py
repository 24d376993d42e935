"""Camera RAW files through rawpy (LibRaw; the `raw` extra).

What is embedded: the camera's preview (JPEG or bitmap) when its short side reaches the model's
input size (fast, and what the camera showed), else a half-size demosaic. Orientation comes from
the RAW's own flip flag (previews are stored unrotated), the capture date from LibRaw's EXIF
timestamp or the file's EXIF (TIFF-based raws), and the pixel guard applies to the sensor size.

Metadata is read without decoding the sensor data: LibRaw's ``other`` block (its timestamp) unpacks
the whole sensor, so it is read only on the demosaic path, where the data is unpacked anyway; the
preview path takes the date from the preview's own EXIF (and imaging reads TIFF-based EXIF). Every
LibRaw call runs inside the error handling, so a truncated RAW is "truncated: ...", never bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

from PIL import Image

from searchlite.decode_reasons import CORRUPT_DATA, CORRUPT_HEADER, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED, DecodeFailure

RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                            ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".dcr", ".mrw",
                            ".mos", ".raw"})
#: LibRaw flip -> the transpose that shows the image upright
_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _rawpy():
    try:
        import rawpy
    except ImportError as exc:
        raise DecodeFailure("needs rawpy", "camera RAW files need rawpy: pip install 'searchlite[raw]'") from exc
    return rawpy


def raw_failure(exc: BaseException, rawpy, data: bytes = b"") -> DecodeFailure:
    """The vocabulary reason for a LibRaw error (its own message kept as detail)."""
    detail = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
    detail = f"LibRaw: {detail or type(exc).__name__}"
    if isinstance(exc, rawpy.LibRawIOError):  # a read past the end of the (in-memory) file
        return DecodeFailure(TRUNCATED, detail)
    if isinstance(exc, (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError,
                        rawpy.LibRawMemPoolOverflowError, MemoryError)):
        return DecodeFailure(TOO_LARGE, detail)
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        if not data:
            return DecodeFailure(NOT_AN_IMAGE, detail)
        from searchlite.decode_reasons import signature_format

        looks_raw = signature_format(data[:32]) in ("TIFF", "BigTIFF", "HEIF/AVIF") or data[4:8] == b"ftyp"
        return DecodeFailure(CORRUPT_HEADER if looks_raw else NOT_AN_IMAGE, detail)
    return DecodeFailure(CORRUPT_DATA, detail)


def decode_raw(data: bytes, target_size: Any, max_pixels: int, *, opener: Callable[[Any], Image.Image] = Image.open,
               read_date: Callable[[Image.Image], datetime | None] = lambda image: None,
               ) -> tuple[Image.Image, int, int, datetime | None]:
    """(upright RGB image, width, height of the full photo as shown, capture time if read cheaply).

    ``opener`` opens the embedded JPEG preview and ``read_date`` reads its EXIF capture date: the
    caller's decode entry point passes its own (this module sits below it, so it cannot import it)."""
    rawpy = _rawpy()
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except (rawpy.LibRawError, ValueError, OSError) as exc:
        raise raw_failure(exc, rawpy, data) from exc
    with raw:
        try:
            return _decode_open(raw, rawpy, target_size, max_pixels, opener, read_date)
        except DecodeFailure:
            raise
        except (rawpy.LibRawError, ValueError, OSError, MemoryError) as exc:
            raise raw_failure(exc, rawpy, data) from exc


def _decode_open(raw, rawpy, target_size: Any, max_pixels: int, opener, read_date) -> tuple[Image.Image, int, int, datetime | None]:
    sizes = raw.sizes
    if sizes.raw_width * sizes.raw_height > max_pixels:
        raise DecodeFailure(TOO_LARGE, f"{sizes.raw_width}x{sizes.raw_height} is over searchlite's limit of "
                            f"{max_pixels:,} pixels (decompression bomb guard)")
    width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
    if callable(target_size):  # a target that depends on the photo's size (NaFlex)
        target_size = target_size(width, height)
    taken = None
    image = _preview(raw, rawpy, target_size, max_pixels, opener)
    if image is not None:
        taken = _exif_date(image, read_date)
        image = image.transpose(_FLIPS[sizes.flip]) if sizes.flip in _FLIPS else image
    else:  # LibRaw applies the flip itself here; the sensor data is unpacked now, so `other` is free
        image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
        stamp = raw.other.timestamp
        taken = stamp if isinstance(stamp, datetime) and stamp.year > 1970 else None
    return image.convert("RGB"), width, height, taken


def _exif_date(image: Image.Image, read_date) -> datetime | None:
    """The capture date in an embedded JPEG preview's EXIF, if any."""
    try:
        return read_date(image)
    except Exception:  # noqa: BLE001 - the date is optional
        return None


def _preview(raw, rawpy, target_size: tuple[int, int] | None, max_pixels: int, opener) -> Image.Image | None:
    """The embedded preview, unrotated, if it is large enough for the model; else None."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawError):
        return None
    need = min(target_size) if target_size else 0
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            image = opener(io.BytesIO(thumb.data))
            if image.size[0] * image.size[1] > max_pixels or min(image.size) < need:
                return None
            if target_size:
                image.draft("RGB", (max(target_size), max(target_size)))
            image.load()
        except Exception:  # noqa: BLE001 - a broken preview: demosaic the sensor data instead
            return None
        return image
    image = Image.fromarray(thumb.data)
    return None if min(image.size) < need else image
