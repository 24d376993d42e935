"""One vocabulary for why a file could not be decoded, with the library's own message kept as detail.

Reasons: ``empty``, ``truncated``, ``corrupt header``, ``corrupt data``, ``unsupported compression X``,
``too large``, ``not an image``, ``missing``, ``permission denied``, ``needs <package>``. The error
stored for a file is ``"reason: detail"`` (``str()`` of :class:`DecodeFailure`).
"""

from __future__ import annotations

from searchlite.errors import ImageDecodeError

EMPTY, TRUNCATED, CORRUPT_HEADER, CORRUPT_DATA = "empty", "truncated", "corrupt header", "corrupt data"
TOO_LARGE, NOT_AN_IMAGE, MISSING, PERMISSION = "too large", "not an image", "missing", "permission denied"
#: every reason, in the order docs/troubleshooting.md lists them (X and <package> name the specific one)
REASONS = (EMPTY, TRUNCATED, CORRUPT_HEADER, CORRUPT_DATA, "unsupported compression X", TOO_LARGE, NOT_AN_IMAGE,
           MISSING, PERMISSION, "needs <package>")

#: (magic prefix, offset, format): a file that starts like an image but will not open has a corrupt header
_SIGNATURES = (
    (b"\xff\xd8\xff", 0, "JPEG"), (b"\x89PNG\r\n\x1a\n", 0, "PNG"), (b"GIF8", 0, "GIF"), (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"), (b"MM\x00*", 0, "TIFF"), (b"II+\x00", 0, "BigTIFF"), (b"MM\x00+", 0, "BigTIFF"),
    (b"WEBP", 8, "WebP"), (b"ftyp", 4, "HEIF/AVIF"), (b"8BPS", 0, "PSD"), (b"qoif", 0, "QOI"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"), (b"\xff\x4f\xff\x51", 0, "JPEG 2000"), (b"\x00\x00\x01\x00", 0, "ICO"),
)
#: substrings of decoder messages -> reason (first match wins; compared lower-case)
_MESSAGES = (
    ("truncated", TRUNCATED), ("unexpected end", TRUNCATED), ("end of file", TRUNCATED), ("end of data", TRUNCATED),
    ("not enough data", TRUNCATED), ("input/output error", TRUNCATED), ("premature end", TRUNCATED),
    ("insufficient input", TRUNCATED), ("cannot read full", TRUNCATED),  # libheif
    ("too large", TOO_LARGE), ("too big", TOO_LARGE), ("decompression bomb", TOO_LARGE),
    ("security limit", TOO_LARGE), ("exceeds", TOO_LARGE), ("insufficient memory", TOO_LARGE),
    ("unsupported", "unsupported"), ("not supported", "unsupported"), ("unknown compression", "unsupported"),
    ("negative seek", CORRUPT_HEADER), ("invalid header", CORRUPT_HEADER), ("not a ", CORRUPT_HEADER),
    ("cannot identify", NOT_AN_IMAGE), ("no 'ftyp' box", NOT_AN_IMAGE), ("invalid input", CORRUPT_HEADER),
)
#: TIFF compressions every libtiff build decodes
_BASIC_TIFF = {"raw", "tiff_ccitt", "group3", "group4", "tiff_lzw", "packbits", "tiff_adobe_deflate", "tiff_deflate",
               "tiff_raw_16", "jpeg", "tiff_jpeg"}


class DecodeFailure(ImageDecodeError):
    """A file that could not be decoded: a reason from the vocabulary and the decoder's message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, " ".join(str(detail).split())
        super().__init__(f"{reason}: {self.detail}" if self.detail else reason)


def signature_format(head: bytes) -> str | None:
    """The format a file's first bytes announce, if it starts like a known image."""
    for magic, offset, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    return None


def classify(exc: BaseException, head: bytes = b"", image_format: str | None = None,
             compression: str | None = None) -> DecodeFailure:
    """The :class:`DecodeFailure` for an exception a decoder raised (Pillow, libtiff, libheif,
    rawpy). ``head``: the file's first bytes; ``image_format``/``compression``: what the header said,
    when it was read."""
    from PIL import Image

    if isinstance(exc, DecodeFailure):
        return exc
    detail = f"{exc}" or type(exc).__name__
    if isinstance(exc, FileNotFoundError):
        return DecodeFailure(MISSING, exc.strerror or detail)
    if isinstance(exc, PermissionError):
        return DecodeFailure(PERMISSION, exc.strerror or detail)
    if isinstance(exc, (Image.DecompressionBombError, MemoryError)):
        return DecodeFailure(TOO_LARGE, detail)
    if isinstance(exc, Image.UnidentifiedImageError):
        if not head:
            return DecodeFailure(EMPTY, "the file has 0 bytes")
        announced = signature_format(head)
        if announced:
            return DecodeFailure(CORRUPT_HEADER, f"starts like {announced} but its header cannot be read")
        return DecodeFailure(NOT_AN_IMAGE, "unrecognised format")
    lowered = detail.lower()
    if image_format == "TIFF" and compression and compression not in _BASIC_TIFF and (
            "decoder error" in lowered or "not configured" in lowered):
        return DecodeFailure(f"unsupported compression {compression}", f"this libtiff cannot decode it ({detail})")
    for needle, reason in _MESSAGES:
        if needle in lowered:
            if reason == "unsupported":
                reason = f"unsupported compression {compression}" if compression else "unsupported compression"
            return DecodeFailure(reason, detail)
    if isinstance(exc, EOFError):
        return DecodeFailure(TRUNCATED, detail)
    if isinstance(exc, SyntaxError):
        return DecodeFailure(CORRUPT_HEADER, detail)
    return DecodeFailure(CORRUPT_DATA, f"{type(exc).__name__}: {detail}" if not str(exc) else detail)
