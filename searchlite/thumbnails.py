"""Thumbnails: JPEGs no larger than ``size`` px on the long side, EXIF-rotated, made lazily and
cached in the library (``thumbnails/<size>/<id>-<content key>.jpg``); a changed image gets a new
key, so its thumbnail is regenerated and the stale one removed.

Files are found only through the catalog (by image id), only inside their root (the rule of
:func:`searchlite.paths.real_file_inside`: a symlinked folder the scan followed is served, a
symlink that leads out of its folder never is; a read-only library's thumbnails are made in the
user cache), and only when the name, and the name of
the file a symlink leads to, has an image extension (a Parquet import cannot expose other files),
and not under a root an import made from a file's parent folder until that folder is indexed or
named with ``import --root``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from searchlite.errors import QueryError

MIN_SIZE, MAX_SIZE = 16, 1024


class NotServable(QueryError):
    """No such image, or one that cannot be served (outside its root, a URI, gone from disk)."""


def servable_path(lib, image_id: int) -> tuple[object, Path]:
    """The catalog row and real path of an indexed image that may be served, else NotServable."""
    found = lib.image(image_id)
    if found is None:
        raise NotServable(f"no image with id {image_id}")
    row, path = found
    if row.status != "ok" or "://" in path:
        raise NotServable(f"image {image_id} cannot be served")
    from searchlite.catalog import imported_roots

    if lib.catalog.roots().get(row.root_id) in imported_roots(lib.catalog):
        raise NotServable(f"image {image_id} was imported from outside every indexed folder (index its folder, "
                          "or import with --root, to serve it)")
    from searchlite.paths import real_file_inside

    real = real_file_inside(lib.catalog.roots().get(row.root_id), row.relpath)  # the one rule (paths.py)
    if real is None:
        raise NotServable(f"image {image_id} is not on disk" if not os.path.exists(path)
                          else f"image {image_id} lies outside its indexed folder")
    from searchlite.imaging import is_image_name

    if not (is_image_name(path) and is_image_name(str(real))):
        raise NotServable(f"image {image_id} is not an image file (by its name)")
    return row, real


def thumbnail(lib, image_id: int, size: int = 256) -> Path:
    """The cached thumbnail of an image (made now if missing or stale)."""
    from searchlite.imaging import load_image

    if not MIN_SIZE <= size <= MAX_SIZE:
        raise QueryError(f"size must be between {MIN_SIZE} and {MAX_SIZE}")
    row, real = servable_path(lib, image_id)
    key = (row.sha256 or f"{row.size}-{row.mtime_ns}")[:16]
    folder = lib.path / "thumbnails" / str(size)
    target = folder / f"{image_id}-{key}.jpg"
    if target.is_file():
        return target
    if getattr(lib.catalog, "read_only", False):  # never write into a read-only library
        import hashlib
        import logging

        from searchlite.config import cache_dir

        logging.getLogger(__name__).info("read-only library: thumbnail %s made in the user cache", image_id)
        private = cache_dir() / "read-only-thumbnails"
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder = private / hashlib.sha256(os.fsencode(str(lib.path))).hexdigest()[:16] / str(size)
        target = folder / f"{image_id}-{key}.jpg"
        if target.is_file():
            return target
    image = load_image(real, target_size=(size, size)).image
    image.thumbnail((size, size))
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        image.save(fh, "JPEG", quality=85)
    os.replace(tmp, target)
    for stale in folder.glob(f"{image_id}-*.jpg"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target
