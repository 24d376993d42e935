"""The precision policy for torch models: which precision ``auto`` means on this machine, autocast,
and the one-time validation of a reduced precision against fp32.

``auto`` (the default) is:
  * CPU: bf16 where the CPU has native bf16 (AVX512-BF16 or AMX; :func:`cpu_has_native_bf16`)
    *and* a bf16 matrix product measures at least :data:`MIN_SPEEDUP` times faster than fp32 on it
    (:func:`cpu_bf16_speedup`, once per process), else fp32. Native is not enough: an Intel Xeon
    exposing AVX512-BF16 without AMX ran bf16 matmuls at ~0.56x fp32 (measured on this project's
    CI machine), while Zen 4 and AMX parts run them ~2-3x faster; emulated bf16 is slower still;
  * CUDA: bf16 where the GPU supports it, else fp16;
  * Apple MPS: fp32 (not measured: no Apple machine was at hand);
  * ``$SEARCHLITE_PRECISION`` (fp32, bf16 or fp16) overrides the machine's choice.

A model loaded in a reduced precision embeds a fixed probe batch (synthetic images of different
content and the export probe texts) both ways once; if any cosine to fp32 is below
:data:`MIN_COSINE`, it falls back to fp32 and says why (``emb.precision_note``, and a log warning).
``fp32`` is exactly the fp32 path: no autocast, no memory-format change.
"""

from __future__ import annotations

import contextlib
import logging
import os
from functools import lru_cache
from typing import Any

import numpy as np

from searchlite.errors import ModelLoadError

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # int8: the ONNX engine's image tower
#: The least cosine to fp32 a reduced precision must keep on every probe (images and texts).
MIN_COSINE = 0.999
#: CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
#: How much faster than fp32 a bf16 matmul must measure on this CPU for auto to pick bf16.
MIN_SPEEDUP = 1.25

#: Probe texts: case, punctuation, unicode, HTML entities, emoji, spacing, empty, and longer than any context.
PROBES = [
    "", "a photo of a cat", "This is a photo of two dogs in the snow.", "A RED car -- on the BEACH!!",
    "naïve café, Zürich, 東京の夜景", "t-shirt & jeans, 50% off", "emoji 🐶🏖️ and ☃", "   spaces    around   ",
    "punctuation: (a), [b]; {c}... 'quoted' \"double\"", "HTML &amp; entities &lt;b&gt;", "a photo of a " + "very " * 60 + "long dog",
    "1 2 3 numbers 2023-07-01", "UPPER lower MiXeD", "tab\tand\nnewline",
    # CJK, mixed scripts, full-width punctuation: multilingual models' queries
    "海滩上的两只狗", "雪の中の赤い車", "日本語と English の mixed テキスト", "全角！？（テスト）：ＡＢＣ１２３", "中文，标点。“引号”",
    "한국어 사진", "Привет, мир", "مرحبا بالعالم",
    # literal special-token strings in the text must be tokenized as the torch tokenizer does
    "dog</s>cat", "<unk> x", "[SEP]", "<pad> <eos> <bos>", "<|endoftext|> a", "[CLS] [MASK] b", "<s> c </s>",
]


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'mps' on Apple silicon, else 'cpu'."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from searchlite.errors import ModelLoadError

        raise ModelLoadError(f"--device {device} was asked for, but torch sees no CUDA GPU")
    return device


def check_precision(precision: str) -> str:
    """The precision name, or a one-line error naming the choices."""
    if precision not in PRECISIONS:
        raise ModelLoadError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from the CPU's flags, and
    torch agreeing that its CPU kernels can use them (AVX512 capability, oneDNN bf16).
    Tests monkeypatch this function."""
    if not (_cpu_flags() & BF16_FLAGS):
        return False
    import torch

    capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return ("AVX512" in capability or "AMX" in capability) and (mkldnn_bf16 is None or bool(mkldnn_bf16()))


@lru_cache(maxsize=1)
def cpu_bf16_speedup(repeats: int = 7) -> float:
    """fp32 time / bf16 time of a ViT-B-sized linear layer (128 tokens, 768 -> 3072) under
    autocast, best of ``repeats`` each, interleaved (~0.1-0.4 s; tests monkeypatch this)."""
    import time

    import torch

    layer = torch.nn.Linear(768, 3072)
    x = torch.randn(128, 768)
    best = {"fp32": float("inf"), "bf16": float("inf")}
    with torch.inference_mode():
        for i in range(repeats + 1):
            for name in best:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                    start = time.perf_counter()
                    layer(x)
                    if i:  # the first round warms up (oneDNN primitive creation)
                        best[name] = min(best[name], time.perf_counter() - start)
    return best["fp32"] / best["bf16"]


def cpu_bf16_pays() -> tuple[bool, str]:
    """Whether auto should run bf16 on this CPU, and why (native bf16, and measured faster)."""
    if not cpu_has_native_bf16():
        return False, "this CPU has no native bf16"
    speedup = cpu_bf16_speedup()
    if speedup < MIN_SPEEDUP:
        return False, f"native bf16, but a bf16 matmul measured {speedup:.2f}x fp32 on this CPU"
    return True, f"bf16 matmul {speedup:.2f}x fp32 on this CPU"


def resolve_precision(precision: str, device: str) -> str:
    """What ``precision`` means on ``device``: fp32, bf16 or fp16."""
    check_precision(precision)
    if precision == "auto":
        forced = os.environ.get("SEARCHLITE_PRECISION", "").strip().lower()
        if forced and forced != "auto":
            if forced not in PRECISIONS:
                raise ModelLoadError(f"$SEARCHLITE_PRECISION must be one of {', '.join(PRECISIONS)}, got {forced!r}")
            return resolve_precision(forced, device)
    if device.startswith("cuda"):
        import torch

        if precision == "auto" or (precision == "bf16" and not torch.cuda.is_bf16_supported()):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if device == "cpu" and cpu_bf16_pays()[0] else "fp32"
    return precision


def autocast(device: str, precision: str) -> Any:
    """The autocast context for a resolved precision (a no-op for fp32). An unresolved ``auto``
    (a model built without :func:`configure`) keeps the historical rule: CUDA autocast, CPU fp32."""
    import torch

    if precision == "auto":
        if not device.startswith("cuda"):
            return contextlib.nullcontext()
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return contextlib.nullcontext()
    kind = device.split(":")[0]
    return torch.autocast(kind, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def probe_images(size: tuple[int, int]) -> list:
    """A few synthetic RGB images of different content: a gradient, a checkerboard, seeded noise,
    and shapes on a flat colour (fixed, so the validation is reproducible)."""
    from PIL import Image, ImageDraw

    w, h = max(int(size[0]), 32), max(int(size[1]), 32)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    gradient = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                               np.broadcast_to(255 - x, (h, w, 1))], axis=2)
    cells = ((np.arange(h)[:, None] // 8 + np.arange(w)[None, :] // 8) % 2 * 255).astype(np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    shapes = Image.new("RGB", (w, h), (40, 120, 200))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse((w // 8, h // 8, w // 2, h // 2), fill=(250, 200, 30))
    draw.rectangle((w // 2, h // 2, w - w // 8, h - h // 8), fill=(200, 30, 40))
    return [Image.fromarray(gradient.astype(np.uint8)), Image.fromarray(np.stack([cells] * 3, axis=2)),
            Image.fromarray(noise), shapes]


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min()) if len(a) else 1.0


def is_convolutional(model: Any) -> bool:
    """Whether an image tower is mostly convolutions (ALIGN's EfficientNet, MobileCLIP), where
    ``channels_last`` can help; a ViT has one convolution (its patch embedding)."""
    import torch

    visual = getattr(model, "visual", None) or getattr(model, "vision_model", None) or model
    return sum(isinstance(m, torch.nn.Conv2d) for m in visual.modules()) > 4


def _set_memory_format(emb: Any, channels_last: bool) -> None:
    import torch

    emb.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def validate(emb: Any, precision: str) -> tuple[float, float]:
    """Min cosine between ``precision`` and fp32 on the probe images and texts (the embedder is
    left in fp32)."""
    pixels = np.stack([emb.preprocess(im) for im in probe_images(emb.image_size)])
    emb.precision = "fp32"
    ref_img, ref_txt = emb.embed_pixels(pixels), emb.embed_texts(PROBES)
    emb.precision = precision
    try:
        low_img, low_txt = emb.embed_pixels(pixels), emb.embed_texts(PROBES)
    finally:
        emb.precision = "fp32"
    return _min_cosine(ref_img, low_img), _min_cosine(ref_txt, low_txt)


def configure(emb: Any, requested: str = "auto", channels_last: bool = True) -> Any:
    """Give a torch embedder its precision: resolve ``requested`` for its device, validate a
    reduced one against fp32 on the probes, fall back to fp32 below :data:`MIN_COSINE`.
    Sets ``emb.precision`` (fp32|bf16|fp16), ``emb.precision_note`` and ``emb.precision_check``."""
    chosen = resolve_precision(requested, emb.device)
    emb.precision, emb.precision_check = "fp32", {}
    emb.precision_note = "fp32" + (" (asked for)" if requested == "fp32" else
                                   f" ({cpu_bf16_pays()[1]})" if emb.device == "cpu" and chosen == "fp32"
                                   and requested == "auto" and not os.environ.get("SEARCHLITE_PRECISION") else "")
    if chosen == "fp32":
        return emb
    conv = channels_last and is_convolutional(emb.model)
    try:
        if conv:
            _set_memory_format(emb, True)
        img_cos, txt_cos = validate(emb, chosen)
    except Exception as exc:  # noqa: BLE001 - a precision that cannot run is a precision not to use
        img_cos = txt_cos = float("nan")
        emb.precision_note = f"fp32 ({chosen} failed on the probes: {type(exc).__name__}: {exc})".splitlines()[0]
    emb.precision_check = {"precision": chosen, "min_cosine_images": img_cos, "min_cosine_texts": txt_cos,
                           "threshold": MIN_COSINE, "channels_last": conv}
    if min(img_cos, txt_cos) >= MIN_COSINE:  # NaN compares False: a failed run falls back
        emb.precision = chosen
        emb.precision_note = (f"{chosen} (validated: min cosine to fp32 {img_cos:.5f} on probe images, "
                              f"{txt_cos:.5f} on probe texts{', channels_last' if conv else ''})")
        log.info("%s runs in %s", emb.model_id, emb.precision_note)
        return emb
    if conv:
        _set_memory_format(emb, False)
    if not emb.precision_note.startswith(f"fp32 ({chosen} failed"):
        emb.precision_note = (f"fp32 ({chosen} failed validation: min cosine to fp32 {img_cos:.5f} on probe images, "
                              f"{txt_cos:.5f} on probe texts, below {MIN_COSINE})")
    log.warning("%s: %s", emb.model_id, emb.precision_note)
    return emb


@contextlib.contextmanager
def full_precision(emb: Any):
    """Run a torch embedder in fp32 inside the block (the reference of the ONNX export's check);
    not for concurrent use of the same embedder."""
    saved = getattr(emb, "precision", None)
    if saved is None or saved == "fp32":
        yield emb
        return
    emb.precision = "fp32"
    try:
        yield emb
    finally:
        emb.precision = saved


def one_query_ms(encoder: Any, text: str = "This is a photo of a dog on the beach.", repeats: int = 3) -> float:
    """Median milliseconds an encoder takes to embed one query text (after one warm-up call)."""
    import time

    encoder.embed_texts([text])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.embed_texts([text])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 2)


def faster_text_encoder(light: Any, load_torch: Any, precision: str, device: str,
                        prefer_torch: bool = False) -> tuple[Any, dict[str, Any]]:
    """For a long-lived process: the faster, for one query, of the validated ONNX fp32 text tower
    (``light``) and the torch model in its validated reduced precision (``load_torch()``), with
    what decided it. Where this machine would run the torch model in fp32, the ONNX tower is kept
    without loading torch's model."""
    if resolve_precision(precision, resolve_device(device)) == "fp32":
        return light, {"encoder": "onnx-fp32", "reason": "the torch model would run in fp32 here"}
    emb = load_torch()
    reduced = getattr(emb, "precision", "fp32")
    if reduced == "fp32":
        return light, {"encoder": "onnx-fp32", "reason": getattr(emb, "precision_note", "torch runs in fp32")}
    if prefer_torch:
        return emb, {"encoder": f"torch-{reduced}", "reason": f"--precision {reduced} asked for"}
    ms = {"onnx-fp32": one_query_ms(light), f"torch-{reduced}": one_query_ms(emb)}
    best = min(ms, key=ms.get)
    log.info("query text tower: %s (one query: %s ms)", best, ms)
    return (light if best == "onnx-fp32" else emb), {"encoder": best, "one_query_ms": ms}
