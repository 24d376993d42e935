"""CPU (or GPU) image-embedding throughput of the real architectures behind the aliases,
random-initialised (same compute as the trained weights; nothing is downloaded).

    python benchmarks/models.py [--batch 8] [--batches 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

ARCHS = [  # alias, how to build it, input size
    ("clip (ViT-B-32)", "openclip", "ViT-B-32-quickgelu", 224),
    ("siglip-base (ViT-B-16-SigLIP)", "openclip", "ViT-B-16-SigLIP", 224),
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=None, help="substring of the alias to run")
    args = parser.parse_args()
    rows = []
    for alias, kind, arch, size in ARCHS:
        if args.only and args.only not in alias:
            continue
        model, encode = build(kind, arch)
        model.eval().to(args.device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        x = torch.randn(args.batch, 3, size, size, device=args.device)
        with torch.inference_mode():
            out = encode(x)  # warm-up
            t = time.perf_counter()
            for _ in range(args.batches):
                encode(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
        rows.append({"model": alias, "dim": int(out.shape[-1]), "params_m": round(params, 1),
                     "img_per_s": round(args.batch * args.batches / dt, 2), "device": args.device,
                     "threads": torch.get_num_threads()})
        print(f"{alias:36} d={rows[-1]['dim']:5}  {params:7.1f} M params  {rows[-1]['img_per_s']:8.2f} img/s",
              flush=True)
        del model
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
