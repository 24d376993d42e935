"""``--precision int8``: the ONNX engine's image tower dynamically quantized, validated at load.

Quantization: onnxruntime's ``quantize_dynamic``, MatMul nodes only, per-channel S8 weights, with
``reduce_range`` (7-bit weights) unless the CPU has VNNI (AVX512-VNNI or AVX-VNNI): without VNNI the
u8 x s8 multiply-add saturates with full-range weights (measured cos 0.87 on a trained model). The text
tower stays fp32. The int8 graph is made once per export and kept in the cache dir.

Validation, once per load, on the model's probe set (the export probes plus seeded images): the least
cosine of an int8 image embedding to its fp32 one must be >= :data:`MIN_COSINE`, and text->image
retrieval among the probe images must keep its top-10 (mean overlap >= :data:`MIN_OVERLAP`).
Below either, the model stays fp32 and ``precision_note`` says why. int8 is never the default:
random-init cosines are not evidence, and on the trained demo model it changes some top-1 images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MIN_COSINE = 0.99
MIN_OVERLAP = 0.9
#: CPU flags (Linux /proc/cpuinfo) of the int8 dot-product instructions.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")


def cpu_vnni() -> str | None:
    """The VNNI flag this CPU has (avx512_vnni or avx_vnni), else None."""
    from searchlite.models.precision import _cpu_flags

    flags = _cpu_flags()
    return next((f for f in VNNI_FLAGS if f in flags), None)


def _int8_path(visual: Path, reduce_range: bool) -> Path:
    """In the cache dir (never inside an export: the demo's is package data), keyed by the export's
    location and its graph's size and mtime."""
    from searchlite.config import cache_dir

    stat = visual.stat()
    key = hashlib.sha256(f"{visual.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "int8" / key / f"visual.int8{'-rr' if reduce_range else ''}.onnx"


def quantize_visual(visual: Path, reduce_range: bool) -> Path:
    """The int8 copy of an fp32 image tower graph (made once): MatMul-only, per-channel, dynamic."""
    out = _int8_path(visual, reduce_range)
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    quantize_dynamic(str(visual), str(tmp), op_types_to_quantize=["MatMul"], per_channel=True,
                     reduce_range=reduce_range, weight_type=QuantType.QInt8)
    tmp.replace(out)
    return out


def probe_set(size: tuple[int, int], count: int = 24) -> list:
    """The export probes plus ``count`` seeded smooth-noise images (the retrieval check's gallery)."""
    from PIL import Image

    from searchlite.models.onnx_export import export_probe_images

    rng = np.random.default_rng(20261203)
    w, h = max(int(size[0]), 32), max(int(size[1]), 32)
    extra = []
    for i in range(count):
        cells = rng.random((h // (4 + i % 5) + 1, w // (4 + i % 5) + 1, 3))
        big = np.kron(cells, np.ones((4 + i % 5, 4 + i % 5, 1)))[:h, :w]
        extra.append(Image.fromarray((big * 255).astype(np.uint8)))
    return export_probe_images(size) + extra


def check_int8(fp32: np.ndarray, int8: np.ndarray, texts: np.ndarray, k: int = 10) -> dict[str, float]:
    """Min cosine of int8 to fp32 image embeddings, and the mean top-``k`` overlap of text->image
    retrieval among them (both L2-normalised)."""
    cos = float((fp32 * int8).sum(axis=1).min())
    k = min(k, len(fp32))
    top = lambda images: np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, :k]  # noqa: E731
    a, b = top(fp32), top(int8)
    overlap = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
    return {"min_cosine": cos, "top10_overlap": overlap}


def use_int8(emb: Any) -> Any:
    """Switch an :class:`~searchlite.models.onnx_model.OnnxEmbedder` to its int8 image tower when it
    passes validation, else leave it fp32 with the reason (``precision_note``, ``precision_check``)."""
    from searchlite.models.onnx_model import session
    from searchlite.models.precision import PROBES

    vnni = cpu_vnni()
    reduce_range = vnni is None
    check: dict[str, Any] = {"precision": "int8", "vnni": vnni, "reduce_range": reduce_range,
                             "threshold_cosine": MIN_COSINE, "threshold_overlap": MIN_OVERLAP}
    try:
        quantized = session(quantize_visual(emb.visual_path, reduce_range), optimised=False)
        images = probe_set(emb.image_size)
        pixels = np.stack([emb.preprocess(im) for im in images])
        fp32 = emb.embed_pixels(pixels)
        saved, emb.visual = emb.visual, quantized
        try:
            int8 = emb.embed_pixels(pixels)
        finally:
            emb.visual = saved
        check.update(check_int8(fp32, int8, emb.embed_texts(PROBES)))
    except Exception as exc:  # noqa: BLE001 - an int8 tower that cannot be made or run is not used
        emb.precision_check = check
        emb.precision_note = f"fp32 (int8 failed: {type(exc).__name__}: {exc})".splitlines()[0]
        log.warning("%s: %s", emb.model_id, emb.precision_note)
        return emb
    emb.precision_check = check
    how = f"reduce_range={reduce_range}, CPU {vnni or 'without VNNI'}"
    if check["min_cosine"] >= MIN_COSINE and check["top10_overlap"] >= MIN_OVERLAP:
        emb.visual, emb.precision = quantized, "int8"
        emb.precision_note = (f"int8 (validated: min cosine to fp32 {check['min_cosine']:.5f} on probe images, "
                              f"top-10 overlap {check['top10_overlap']:.3f}; {how})")
        log.info("%s runs in %s", emb.model_id, emb.precision_note)
    else:
        emb.precision_note = (f"fp32 (int8 failed validation: min cosine {check['min_cosine']:.5f}, top-10 overlap "
                              f"{check['top10_overlap']:.3f}, below {MIN_COSINE} / {MIN_OVERLAP}; {how})")
        log.warning("%s: %s", emb.model_id, emb.precision_note)
    return emb
