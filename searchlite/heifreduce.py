"""HEIC/HEIF decoded to the size the model needs, with bounded extra memory.

Order of preference: an embedded thumbnail at least as large as needed (Pillow's ``draft`` on
pillow-heif's plugin picks it, see :func:`searchlite.imaging.load_image`); else this module:
libheif decodes the primary image once (tiles of a grid image straight into one buffer, orientation
applied) and the buffer is box-reduced band by band, so besides libheif's own buffer only one band
and the small result are ever allocated (Pillow's plugin would copy the whole decode once more).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
#: rows of the reduced image produced per band (band height = this x the reduction factor)
BAND_ROWS = 64


def reduction_factor(width: int, height: int, need: int) -> int:
    """The largest integer box reduction that keeps the short side at or above ``need``."""
    if need <= 0:
        return 1
    return max(1, min(width, height) // need)


def decode_reduced(source: str | Path | bytes, factor: int) -> Image.Image:
    """The primary image of a HEIF file, decoded by libheif and box-reduced by ``factor``."""
    import pillow_heif

    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    heif = pillow_heif.open_heif(fp, convert_hdr_to_8bit=True)
    primary = heif[heif.primary_index]
    width, height = primary.size
    full = np.asarray(primary)  # a view of libheif's buffer (rows may be padded to the stride)
    out_w, out_h = width // factor, height // factor
    bands = []
    step = BAND_ROWS * factor
    for top in range(0, out_h * factor, step):
        bottom = min(top + step, out_h * factor)
        band = Image.fromarray(np.ascontiguousarray(full[top:bottom, :out_w * factor]))
        bands.append(band.reduce(factor))
    del full
    heif = primary = None  # release libheif's full-size buffer before assembling
    out = Image.new(bands[0].mode, (out_w, out_h))
    y = 0
    for band in bands:
        out.paste(band, (0, y))
        y += band.size[1]
    log.debug("HEIF %dx%d decoded and reduced by %d to %dx%d", width, height, factor, out_w, out_h)
    return out
