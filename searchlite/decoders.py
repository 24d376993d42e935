"""The one decode entry point's set-up: which decoders exist and how an image file is opened.

Every decode in searchlite (index, thumbnails, rerank, ``similar`` by upload, the web upload) opens
files through :func:`open_image`, which first runs :func:`init_decoders` once per process:

- Pillow's whole plugin registry is loaded (``Image.init()``). Pillow imports plugins lazily by the
  extensions it meets, so without this the plugin order depended on what the process opened before
  (after a ``.tga``, an ``.ico`` read from bytes was taken for a TGA and failed).
- HEIC/HEIF through pillow-heif when installed; AVIF is Pillow's own.
- The decompression-bomb rule: Pillow's ``MAX_IMAGE_PIXELS`` is set to searchlite's
  :data:`MAX_PIXELS` (256 MP: admits 200 MP phone photos and stitched panoramas). searchlite refuses
  anything above it with the reason "too large"; Pillow itself still refuses an image above twice
  the limit before allocating (e.g. an ICO or PNG whose header claims 40,000 x 40,000).

The photo extensions the scanner picks up are derived from what these decoders register, minus
:data:`NOT_PHOTOS`, plus camera RAW (rawpy) and a few JPEG aliases Pillow does not register.
"""

from __future__ import annotations

import logging
import threading
import warnings
from functools import lru_cache
from typing import IO

from PIL import Image

from searchlite.rawphoto import RAW_EXTENSIONS

log = logging.getLogger(__name__)

#: searchlite's one pixel limit (decompression bombs), see the module docstring.
MAX_PIXELS = 256_000_000
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".heics", ".heifs"})
#: Extensions Pillow reads by content but does not register: stereo JPEG, BigTIFF.
EXTRA_EXTENSIONS = {".jps": "JPEG", ".btf": "TIFF", ".tf8": "TIFF"}
#: Extensions a decoder registers that are not photos, and why they are not indexed.
NOT_PHOTOS: dict[str, str] = {
    ".pdf": "document", ".eps": "vector document", ".ps": "vector document",
    ".wmf": "vector drawing", ".emf": "vector drawing",
    ".mpeg": "video", ".mpg": "video",
    ".h5": "scientific data", ".hdf": "scientific data", ".bufr": "weather data", ".grib": "weather data",
    ".fit": "astronomy data", ".fits": "astronomy data",
    ".iim": "IPTC metadata", ".gbr": "GIMP brush", ".cur": "mouse cursor",
}
#: Videos (Live Photo companions, clips) are out of scope: skipped, and counted in the run summary.
VIDEO_EXTENSIONS = frozenset({".mov", ".mp4", ".m4v", ".avi", ".mkv", ".3gp", ".mts", ".m2ts", ".webm", ".wmv",
                              ".mpeg", ".mpg"})

_INIT_LOCK = threading.Lock()
_READY: list[bool] = []
_HEIF: list[bool] = []  # [True] when pillow-heif registered its opener
_NOTES = threading.local()


def init_decoders() -> None:
    """Load every decoder once per process (idempotent, thread-safe); see the module docstring."""
    if _READY:
        return
    with _INIT_LOCK:
        if _READY:
            return
        Image.init()  # all plugins, in Pillow's fixed order, before the first open
        try:
            from pillow_heif import register_heif_opener

            register_heif_opener()
            _HEIF.append(True)
        except ImportError:
            log.debug("pillow-heif is not installed: HEIC/HEIF files fail with a reason naming it")
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        # decoder warnings are recorded per file (see capture_notes), not printed once per process
        for module in (r"PIL\..*", r"pillow_heif\..*"):
            warnings.filterwarnings("always", module=module)
        _route_warnings()
        _READY.append(True)


def heif_available() -> bool:
    """Whether pillow-heif is installed (after :func:`init_decoders`)."""
    init_decoders()
    return bool(_HEIF)


def open_image(fp: str | IO[bytes]) -> Image.Image:
    """``Image.open`` after :func:`init_decoders`: the only way searchlite opens an image file."""
    init_decoders()
    return Image.open(fp)


@lru_cache(maxsize=1)
def image_extensions() -> frozenset[str]:
    """The file extensions the scanner indexes (lower case, with the dot): every extension the
    installed decoders register, minus :data:`NOT_PHOTOS`, plus camera RAW and :data:`EXTRA_EXTENSIONS`."""
    init_decoders()
    registered = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN or fmt == "MPO"}  # MPO opens through the JPEG plugin
    return frozenset((registered | HEIF_EXTENSIONS | set(EXTRA_EXTENSIONS) | RAW_EXTENSIONS) - set(NOT_PHOTOS)
                     - VIDEO_EXTENSIONS)


def registered_format(ext: str) -> str | None:
    """Pillow's format name for an extension (``.psd`` -> ``PSD``), None if no decoder registers it."""
    init_decoders()
    ext = ext.lower()
    return EXTRA_EXTENSIONS.get(ext) or Image.registered_extensions().get(ext)


# -- decoder warnings, per file ----------------------------------------------------------------------
class capture_notes:  # noqa: N801 - used as a context manager, like warnings.catch_warnings
    """Collect the Python warnings decoders raise in this thread while decoding one file (Pillow,
    pillow-heif); outside any capture they go to this module's debug log. Thread-safe: one global
    ``showwarning`` hook routes each warning to the capturing thread's list.

    libtiff/libheif messages written straight to file descriptor 2 are not captured: redirecting
    fd 2 is process-wide and would swallow other threads' output."""

    def __enter__(self) -> list[str]:
        init_decoders()
        _route_warnings()
        self.notes: list[str] = []
        self.previous = getattr(_NOTES, "notes", None)
        _NOTES.notes = self.notes
        return self.notes

    def __exit__(self, *exc: object) -> None:
        _NOTES.notes = self.previous


def _route_warnings() -> None:
    """Install the routing ``showwarning`` hook unless it is already the active one (a test runner
    or the application may have replaced it since)."""
    current = warnings.showwarning
    if getattr(current, "_searchlite", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        from_decoder = "PIL" in filename or "pillow_heif" in filename
        notes = getattr(_NOTES, "notes", None)
        if from_decoder and notes is not None:
            notes.append(f"{category.__name__}: {message}")
        elif from_decoder:
            log.debug("decoder warning: %s: %s", category.__name__, message)
        else:
            current(message, category, filename, lineno, file, line)

    showwarning._searchlite = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
