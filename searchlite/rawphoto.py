"""Camera RAW files through rawpy (LibRaw; the `raw` extra).

What is embedded: the camera's preview (JPEG or bitmap) when its short side reaches the model's
input size (fast, and what the camera showed), else a half-size demosaic. Orientation comes from
the RAW's own flip flag (previews are stored unrotated), the capture date from LibRaw's EXIF
timestamp or the file's EXIF (TIFF-based raws), and the pixel guard applies to the sensor size.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

from PIL import Image

from searchlite.errors import ImageDecodeError

RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
                            ".rw2", ".rwl", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".dcr", ".mrw",
                            ".mos", ".raw"})
#: LibRaw flip -> the transpose that shows the image upright
_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def _rawpy():
    try:
        import rawpy
    except ImportError as exc:
        raise ImageDecodeError("camera RAW files need rawpy: pip install 'searchlite[raw]'") from exc
    return rawpy


def decode_raw(data: bytes, target_size: Any, max_pixels: int,
               ) -> tuple[Image.Image, int, int, datetime | None]:
    """(upright RGB image, width, height of the full photo as shown, LibRaw's capture time)."""
    rawpy = _rawpy()
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except (rawpy.LibRawError, ValueError, OSError) as exc:
        raise ImageDecodeError(f"cannot decode RAW: {type(exc).__name__}: {exc}") from exc
    with raw:
        sizes = raw.sizes
        if sizes.raw_width * sizes.raw_height > max_pixels:
            raise ImageDecodeError(f"image too large: {sizes.raw_width}x{sizes.raw_height} is over searchlite's "
                                   f"limit of {max_pixels:,} pixels (decompression bomb guard)")
        width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
        if callable(target_size):  # a target that depends on the photo's size (NaFlex)
            target_size = target_size(width, height)
        stamp = raw.other.timestamp if hasattr(raw, "other") else None
        taken = stamp if isinstance(stamp, datetime) and stamp.year > 1970 else None
        image = _preview(raw, rawpy, target_size, max_pixels)
        if image is not None:
            image = image.transpose(_FLIPS[sizes.flip]) if sizes.flip in _FLIPS else image
        else:
            try:  # LibRaw applies the flip itself here
                image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8))
            except (rawpy.LibRawError, ValueError) as exc:
                raise ImageDecodeError(f"cannot demosaic RAW: {type(exc).__name__}: {exc}") from exc
    return image.convert("RGB"), width, height, taken


def _preview(raw, rawpy, target_size: tuple[int, int] | None, max_pixels: int) -> Image.Image | None:
    """The embedded preview, unrotated, if it is large enough for the model; else None."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawError):
        return None
    need = min(target_size) if target_size else 0
    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(thumb.data))
        if image.size[0] * image.size[1] > max_pixels or min(image.size) < need:
            return None
        if target_size:
            image.draft("RGB", (max(target_size), max(target_size)))
    else:
        image = Image.fromarray(thumb.data)
        if min(image.size) < need:
            return None
    image.load()
    return image
