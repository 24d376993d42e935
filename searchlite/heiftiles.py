"""Tile-by-tile HEIF decoding through libheif's tile API (ctypes), for bounded memory.

Phones store large HEICs as a grid of 512 px tiles. libheif (>= 1.19, bundled with pillow-heif)
decodes one tile at a time (``heif_image_handle_decode_image_tile``); each tile row is placed in a
strip the width of the photo and box-reduced at once, so a 200 MP photo needs a few tens of MB
instead of the ~1.2 GB of a full decode. Orientation (irot/imir) is applied by libheif per tile.

:func:`decode_tiled` returns None whenever this path does not apply (no libheif symbol, a photo
that is one tile, a tile of an unexpected size, any libheif error): the caller then decodes in full.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)
_RGB, _INTERLEAVED_RGB, _CHANNEL_INTERLEAVED = 1, 10, 10  # heif_colorspace / heif_chroma / heif_channel
_LIB: list = []


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("subcode", ctypes.c_int), ("message", ctypes.c_char_p)]


class _Tiling(ctypes.Structure):
    _fields_ = [("version", ctypes.c_int), ("num_columns", ctypes.c_uint32), ("num_rows", ctypes.c_uint32),
                ("tile_width", ctypes.c_uint32), ("tile_height", ctypes.c_uint32),
                ("image_width", ctypes.c_uint32), ("image_height", ctypes.c_uint32),
                ("top_offset", ctypes.c_uint32), ("left_offset", ctypes.c_uint32),
                ("number_of_extra_dimensions", ctypes.c_uint8), ("extra_dimensions", ctypes.c_uint32 * 8)]


def _libheif():
    """pillow-heif's own libheif (the one its extension module already loaded), or None."""
    if _LIB:
        return _LIB[0]
    lib = None
    try:
        import pillow_heif

        folder = Path(pillow_heif.__file__).resolve().parent.parent / "pillow_heif.libs"
        found = sorted(glob.glob(os.fspath(folder / "libheif*.so*"))) or sorted(glob.glob(os.fspath(folder /
                                                                                                 "libheif*.dylib")))
        lib = ctypes.CDLL(found[0]) if found else ctypes.CDLL("libheif.so.1")
        p = ctypes.c_void_p
        lib.heif_context_alloc.restype = p
        lib.heif_context_free.argtypes = [p]
        lib.heif_context_read_from_memory_without_copy.argtypes = [p, p, ctypes.c_size_t, p]
        lib.heif_context_read_from_memory_without_copy.restype = _Error
        lib.heif_context_get_primary_image_handle.argtypes = [p, ctypes.POINTER(p)]
        lib.heif_context_get_primary_image_handle.restype = _Error
        lib.heif_image_handle_release.argtypes = [p]
        lib.heif_image_handle_get_image_tiling.argtypes = [p, ctypes.c_int, ctypes.POINTER(_Tiling)]
        lib.heif_image_handle_get_image_tiling.restype = _Error
        lib.heif_image_handle_decode_image_tile.argtypes = [p, ctypes.POINTER(p), ctypes.c_int, ctypes.c_int, p,
                                                            ctypes.c_uint32, ctypes.c_uint32]
        lib.heif_image_handle_decode_image_tile.restype = _Error
        lib.heif_image_get_plane_readonly.argtypes = [p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.heif_image_get_plane_readonly.restype = ctypes.POINTER(ctypes.c_uint8)
        lib.heif_image_get_width.argtypes = [p, ctypes.c_int]
        lib.heif_image_get_height.argtypes = [p, ctypes.c_int]
        lib.heif_image_release.argtypes = [p]
    except (ImportError, OSError, AttributeError, IndexError) as exc:
        log.debug("libheif tile API unavailable (%s): large HEICs are decoded in full", exc)
        lib = None
    _LIB.append(lib)
    return lib


def _check(err: _Error) -> None:
    if err.code:
        raise OSError(f"libheif: {(err.message or b'').decode(errors='replace')}")


def decode_tiled(source: str | Path | bytes, factor: int) -> Image.Image | None:
    """The primary image box-reduced by ``factor``, decoded tile row by tile row; None when the
    tile path does not apply (see the module docstring)."""
    lib = _libheif()
    if lib is None or factor < 2:
        return None
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    ctx = lib.heif_context_alloc()
    handle = ctypes.c_void_p()
    try:
        _check(lib.heif_context_read_from_memory_without_copy(ctx, ctypes.c_char_p(data), len(data), None))
        _check(lib.heif_context_get_primary_image_handle(ctx, ctypes.byref(handle)))
        tiling = _Tiling(version=1)
        _check(lib.heif_image_handle_get_image_tiling(handle, 1, ctypes.byref(tiling)))
        if tiling.num_columns * tiling.num_rows <= 1 or tiling.number_of_extra_dimensions:
            return None
        return _reduce_rows(lib, handle, tiling, factor)
    except OSError as exc:
        log.debug("tile decode failed (%s): decoding in full", exc)
        return None
    finally:
        if handle:
            lib.heif_image_handle_release(handle)
        lib.heif_context_free(ctx)


def _tile(lib, handle, tx: int, ty: int) -> np.ndarray:
    image = ctypes.c_void_p()
    _check(lib.heif_image_handle_decode_image_tile(handle, ctypes.byref(image), _RGB, _INTERLEAVED_RGB, None, tx, ty))
    try:
        width = lib.heif_image_get_width(image, _CHANNEL_INTERLEAVED)
        height = lib.heif_image_get_height(image, _CHANNEL_INTERLEAVED)
        stride = ctypes.c_int()
        plane = lib.heif_image_get_plane_readonly(image, _CHANNEL_INTERLEAVED, ctypes.byref(stride))
        if not plane or width <= 0 or height <= 0:
            raise OSError("libheif: a tile without pixels")
        raw = np.ctypeslib.as_array(plane, shape=(height * stride.value,))
        return raw.reshape(height, stride.value)[:, : width * 3].reshape(height, width, 3).copy()
    finally:
        lib.heif_image_release(image)


def _start(index: int, size: int, offset: int) -> int:
    """Where tile ``index`` starts in the shown image. A rotated or mirrored grid whose coded size
    is not a multiple of the tile size has a partial first tile; libheif's offset is the part of it
    that is shown (checked against full decodes in all eight orientations by the tests)."""
    return index * size - (size - offset) if offset else index * size


def _reduce_rows(lib, handle, tiling: _Tiling, factor: int) -> Image.Image:
    width, height = tiling.image_width, tiling.image_height
    out_w, out_h = width // factor, height // factor
    if not out_w or not out_h:
        raise OSError("libheif: image smaller than the reduction")
    rows: list[np.ndarray] = []
    carry = np.empty((0, width, 3), np.uint8)
    for ty in range(tiling.num_rows):
        top = _start(ty, tiling.tile_height, tiling.top_offset)
        y0, y1 = max(top, 0), min(top + tiling.tile_height, height)
        if y1 <= y0:
            continue
        strip = np.empty((y1 - y0, width, 3), np.uint8)
        for tx in range(tiling.num_columns):
            left = _start(tx, tiling.tile_width, tiling.left_offset)
            x0, x1 = max(left, 0), min(left + tiling.tile_width, width)
            if x1 <= x0:
                continue
            tile = _tile(lib, handle, tx, ty)
            part = tile[y0 - top: y1 - top, x0 - left: x1 - left]
            if part.shape[:2] != (y1 - y0, x1 - x0):
                raise OSError(f"libheif: tile {tx},{ty} is {tile.shape[1]}x{tile.shape[0]}, not the grid's size")
            strip[:, x0:x1] = part
        strip = np.concatenate([carry, strip]) if len(carry) else strip
        usable = min(len(strip) // factor, out_h - sum(len(r) for r in rows)) * factor
        if usable:
            band = Image.fromarray(np.ascontiguousarray(strip[:usable, : out_w * factor]), "RGB")
            rows.append(np.asarray(band.reduce(factor)))
        carry = strip[usable:].copy() if usable < len(strip) else np.empty((0, width, 3), np.uint8)
    log.debug("HEIF %dx%d decoded tile by tile (%dx%d tiles), reduced by %d", width, height, tiling.num_columns,
              tiling.num_rows, factor)
    return Image.fromarray(np.concatenate(rows), "RGB")

