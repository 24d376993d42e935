"""Text in photos (``index --ocr``): RapidOCR's PP-OCR detection + recognition on onnxruntime (the ``ocr`` extra).

Most photos carry no text, so reading one is gated: text detection runs first on a reduced copy
(:data:`GATE_SIDE` px on the longest side, tens of milliseconds); only when it finds boxes does the full
read run (detection at :data:`DETECT_SIDE`, recognition on crops of a :data:`READ_SIDE` copy).
Lines scoring below :data:`MIN_SCORE` are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from searchlite.errors import SearchliteError

log = logging.getLogger(__name__)

GATE_SIDE = 640
DETECT_SIDE = 960
READ_SIDE = 1600
MIN_SCORE = 0.5
MAX_LINE_SHARE = 0.25  # a text line is at most this share of the gate image's longest side thick


class OcrUnavailable(SearchliteError):
    """The ``ocr`` extra (rapidocr) is not installed."""


@dataclass
class OcrResult:
    """Recognised lines (reading order) and where the time went."""

    lines: list[str] = field(default_factory=list)
    gate_s: float = 0.0  # detection on the reduced copy
    read_s: float = 0.0  # full detection + recognition (0 when the gate found nothing)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def _rapidocr():
    try:
        from rapidocr import RapidOCR
    except ImportError as exc:
        raise OcrUnavailable(f"--ocr needs the 'ocr' extra: pip install 'searchlite[ocr]' ({exc.name} is missing)") \
            from exc
    return RapidOCR


def version() -> str:
    """The OCR model this build reads with (stored as ``images.ocr_version``)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return f"rapidocr-{package_version('rapidocr')}-ppocrv6-small"
    except PackageNotFoundError as exc:
        raise OcrUnavailable("--ocr needs the 'ocr' extra: pip install 'searchlite[ocr]'") from exc


def _reduced(image: Image.Image, side: int) -> Image.Image:
    if max(image.size) <= side:
        return image
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def _plausible_lines(boxes, side: int) -> bool:
    """Whether detection found something shaped like a line of text: a box no thicker than
    :data:`MAX_LINE_SHARE` of the reduced image (grain and foliage can light up the whole frame)."""
    import numpy as np

    if boxes is None or len(boxes) == 0:
        return False
    quads = np.asarray(boxes, dtype=np.float64)
    first = np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1)
    second = np.linalg.norm(quads[:, 2] - quads[:, 1], axis=1)
    thickness = np.minimum(first, second)
    return bool(np.any((thickness >= 4) & (thickness <= MAX_LINE_SHARE * side)))


class OcrEngine:
    """One RapidOCR instance (load once; call from one thread at a time: it holds per-call state)."""

    def __init__(self, threads: int | None = None) -> None:
        rapid = _rapidocr()
        threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self._engine = rapid(params={
            "Global.log_level": "error", "Global.text_score": MIN_SCORE, "Global.use_cls": False,
            "Det.limit_type": "max", "Det.limit_side_len": DETECT_SIDE,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })
        self._lock = threading.Lock()
        self.version = version()

    def read(self, image: Image.Image, full: Callable[[], Image.Image] | None = None) -> OcrResult:
        """The text lines of an RGB image (empty when the gate finds no text line). ``full`` loads a
        larger copy for the read when ``image`` is only the small one the gate needs."""
        out = OcrResult()
        with self._lock:
            start = time.perf_counter()
            found = self._engine(_reduced(image, GATE_SIDE), use_det=True, use_cls=False, use_rec=False)
            out.gate_s = time.perf_counter() - start
            if not _plausible_lines(getattr(found, "boxes", None), GATE_SIDE):
                return out
            start = time.perf_counter()
            large = _reduced(full() if full is not None else image, READ_SIDE)
            result = self._engine(large, use_det=True, use_cls=False, use_rec=True)
            out.read_s = time.perf_counter() - start
        texts = getattr(result, "txts", None) or ()
        scores = getattr(result, "scores", None) or ()
        out.lines = [t.strip() for t, s in zip(texts, scores) if s >= MIN_SCORE and t.strip()]
        return out


_SHARED: list[OcrEngine] = []
_SHARED_LOCK = threading.Lock()


def shared_engine() -> OcrEngine:
    """The process's OCR engine (models load once, ~1 s)."""
    with _SHARED_LOCK:
        if not _SHARED:
            _SHARED.append(OcrEngine())
        return _SHARED[0]


def read_file(path: str) -> OcrResult:
    """OCR of an image file: the gate on a small draft decode, the full read on a larger one only when needed."""
    return shared_engine().read(load_for_ocr(path, GATE_SIDE), lambda: load_for_ocr(path, READ_SIDE))


def load_for_ocr(path: str, side: int = READ_SIDE) -> Image.Image:
    """An upright RGB copy of an image file at most ``side`` px long (JPEG draft decoding keeps it cheap)."""
    from searchlite.imaging import load_image

    return load_image(path, target_size=(side, side), draft=True).image


__all__ = ["OcrEngine", "OcrResult", "OcrUnavailable", "load_for_ocr", "read_file", "shared_engine", "version"]
