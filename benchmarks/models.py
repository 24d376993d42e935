"""CPU (or GPU) image-embedding throughput of the real architectures behind the aliases,
random-initialised (same compute as the trained weights; nothing is downloaded), in each
precision of ``--precision`` (default: fp32 and auto, side by side for each model).

    python benchmarks/models.py [--batch 8] [--batches 2] [--device cpu] [--precision fp32,auto]
        [--channels-last auto|on|off|both] [--only SUBSTRING]

``auto`` is what searchlite runs by default on this machine (searchlite.models.precision): bf16
on CPUs with native bf16 and on CUDA, else fp32. ``--channels-last auto`` does what searchlite
does: channels_last for convolutional towers (ALIGN's EfficientNet, MobileCLIP) in a reduced
precision only; ``both`` measures each convolutional tower with and without it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

ARCHS = [  # alias, how to build it, architecture, input size
    ("clip (ViT-B-32)", "openclip", "ViT-B-32-quickgelu", 224),
    ("siglip-base (ViT-B-16-SigLIP)", "openclip", "ViT-B-16-SigLIP", 224),
    ("siglip2-base (ViT-B-16-SigLIP2)", "openclip", "ViT-B-16-SigLIP2", 224),
    ("mobileclip2-s0 (MobileCLIP2-S0)", "openclip", "MobileCLIP2-S0", 256),
    ("mobileclip2 (MobileCLIP2-S2)", "openclip", "MobileCLIP2-S2", 256),
    ("mobileclip2-b (MobileCLIP2-B)", "openclip", "MobileCLIP2-B", 224),
    ("pe-core (PE-Core-B-16)", "openclip", "PE-Core-B-16", 224),
    ("pe-core-s (PE-Core-S-16-384)", "openclip", "PE-Core-S-16-384", 384),
    ("siglip2-openclip (ViT-B-16-SigLIP2)", "openclip", "ViT-B-16-SigLIP2", 224),
    ("metaclip2-openclip (ViT-H-14-worldwide)", "openclip", "ViT-H-14-worldwide-quickgelu", 224),
    ("nllb-siglip (nllb-clip-base-siglip)", "openclip", "nllb-clip-base-siglip", 384),
    ("clip-large (ViT-L-14)", "openclip", "ViT-L-14-quickgelu", 224),
    ("siglip (ViT-SO400M-14-SigLIP-384)", "openclip", "ViT-SO400M-14-SigLIP-384", 384),
    ("align (EfficientNet-B7 + BERT)", "hf-align", None, 289),
]


def build(kind: str, arch: str | None):
    if kind == "openclip":
        import open_clip

        model = open_clip.create_model(arch, pretrained=None)
        return model, lambda x: model.encode_image(x)
    from transformers import AlignConfig, AlignModel

    model = AlignModel(AlignConfig())
    return model, lambda x: model.get_image_features(pixel_values=x).pooler_output


def rate(encode, x: torch.Tensor, batches: int, device: str) -> tuple[float, torch.Tensor]:
    """img/s of ``batches`` forward passes after one warm-up, and the last output."""
    out = encode(x)  # warm-up (oneDNN primitives, autocast weight casts)
    t = time.perf_counter()
    for _ in range(batches):
        out = encode(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(x) * batches / (time.perf_counter() - t), out


def text_ms(model, device: str, runs: int = 5) -> float | None:
    """ms for one query (batch 1, the architecture's context length) through an open_clip text tower."""
    if not hasattr(model, "encode_text"):
        return None
    ctx = int(getattr(model, "context_length", 0) or 77)
    vocab = int(getattr(model, "vocab_size", 0) or 1000)
    ids = torch.randint(3, max(4, min(vocab, 1000)), (1, ctx), device=device)
    with torch.inference_mode():
        model.encode_text(ids)  # warm-up
        t = time.perf_counter()
        for _ in range(runs):
            model.encode_text(ids)
    return (time.perf_counter() - t) / runs * 1000


def main() -> None:
    from searchlite.models.precision import autocast, resolve_precision

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32,auto", help="comma-separated: auto, fp32, bf16, fp16")
    parser.add_argument("--channels-last", default="auto", choices=("auto", "on", "off", "both"))
    parser.add_argument("--only", default=None, help="substring of the alias to run")
    args = parser.parse_args()
    rows = []
    for alias, kind, arch, size in ARCHS:
        if args.only and args.only not in alias:
            continue
        try:
            model, encode = build(kind, arch)
        except Exception as exc:  # noqa: BLE001 - e.g. an architecture this open_clip/timm lacks
            print(f"{alias:36} skipped: {type(exc).__name__}: {exc}", flush=True)
            continue
        model.eval().to(args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        conv = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 4
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        ms_query = text_ms(model, args.device) if kind == "openclip" else None  # fp32
        if ms_query is not None:
            print(f"{alias:36} text tower fp32 {ms_query:8.1f} ms/query", flush=True)
        reference = None
        for requested in args.precision.split(","):
            chosen = resolve_precision(requested.strip(), args.device)
            if args.channels_last == "both" and conv:
                layouts = [False, True]
            elif args.channels_last == "auto":
                layouts = [conv and chosen != "fp32"]
            else:
                layouts = [args.channels_last == "on"]
            for channels_last in layouts:
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model.to(memory_format=fmt)
                with torch.inference_mode(), autocast(args.device, chosen):
                    img_s, out = rate(encode, x.contiguous(memory_format=fmt), args.batches, args.device)
                out = torch.nn.functional.normalize(out.float(), dim=-1)
                if reference is None and chosen == "fp32":
                    reference = out
                cos = float((out * reference).sum(-1).min()) if reference is not None else None
                rows.append({"model": alias, "precision": requested.strip(), "ran_in": chosen,
                             "channels_last": channels_last, "dim": int(out.shape[-1]), "params_m": round(params, 1),
                             "img_per_s": round(img_s, 2), "min_cos_to_fp32": None if cos is None else round(cos, 6),
                             "device": args.device, "threads": torch.get_num_threads(), "batch": args.batch,
                             "text_ms_per_query_fp32": None if ms_query is None else round(ms_query, 1)})
                print(f"{alias:36} {requested.strip():5}={chosen:4} {'channels_last' if channels_last else '':13} "
                      f"d={rows[-1]['dim']:5} {params:7.1f} M params {img_s:8.2f} img/s"
                      + (f"  min cos to fp32 {cos:.5f}" if cos is not None else ""), flush=True)
        del model
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
