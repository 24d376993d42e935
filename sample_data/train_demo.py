"""Train the bundled demo model: a small SigLIP (transformers SiglipModel) with a real
SentencePiece tokenizer, trained with the sigmoid loss of the SigLIP paper on the ``train`` split
of searchlite/sample_data/generate.py. Seeded and CPU-only: about 13 minutes on 2 cores.

    python sample_data/train_demo.py searchlite/sample_data/demo-model
"""

from __future__ import annotations

import argparse
import io
import itertools
import random
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from searchlite.sample_data import generate as gen

IMAGE_SIZE = 64
#: SigLIP's default prompt template; half the training captions are wrapped in it, so the model
#: answers raw captions (bench) and templated queries (search) alike.
TEMPLATE = "This is a photo of {}."


def all_captions() -> list[str]:
    scenes = itertools.product(gen.COLOURS, gen.SHAPES, gen.COUNTS, gen.SIZES, gen.BACKGROUNDS)
    return sorted({gen.Scene(*s).caption for s in scenes})


def _render_one(args: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Render, encode like the generator (JPEG for 2 of 3), decode through searchlite's decoder."""
    from searchlite.imaging import load_image

    seed, i = args
    rng = random.Random(f"train:{seed}:{i}")
    scene = gen.sample_scene(rng, "train")
    img = gen.render(scene, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if i % 3 else "PNG", quality=rng.randint(80, 95))
    rgb = load_image(buf.getvalue(), target_size=(IMAGE_SIZE, IMAGE_SIZE)).image
    small = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), resample=3)  # bicubic, as SiglipImageProcessor
    arr = (np.asarray(small, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return arr.transpose(2, 0, 1), scene.caption


def build(out: Path, seed: int):
    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "_corpus.txt"
    corpus.write_text("\n".join(all_captions() + [TEMPLATE.format(c) for c in all_captions()]))
    # BPE with 128 pieces: every caption word is one piece, so captions fit in 16 tokens
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(out / "_sp"), vocab_size=128,
                                   model_type="bpe", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    corpus.unlink()
    tokenizer = SiglipTokenizer(vocab_file=str(out / "_sp.model"), model_max_length=16,
                                model_input_names=["input_ids"])
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer=tokenizer)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, projection_size=128, pad_token_id=1,
                eos_token_id=1, bos_token_id=None)
    vision = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=4, num_attention_heads=4)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    with torch.no_grad():  # SigLIP paper init: t' = log 10, b = -10
        model.logit_scale.fill_(float(np.log(10.0)))
        model.logit_bias.fill_(-10.0)
    return model, processor, tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--pool", type=int, default=24000, help="pre-rendered training images")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    model, processor, tokenizer = build(args.out, args.seed)
    with Pool(2) as pool:
        rendered = pool.map(_render_one, [(args.seed, i) for i in range(args.pool)], chunksize=256)
    pixels = torch.from_numpy(np.stack([r[0] for r in rendered]))
    captions = all_captions()
    cap_index = {c: i for i, c in enumerate(captions)}
    labels = torch.tensor([cap_index[r[1]] for r in rendered])
    texts = captions + [TEMPLATE.format(c) for c in captions]
    tokens = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    if max(lengths) > 16:
        raise SystemExit(f"captions need {max(lengths)} tokens; the text tower has 16 positions")
    print(f"rendered {len(rendered)} images in {time.time() - t0:.0f}s; {len(captions)} captions", flush=True)

    scalars = [model.logit_scale, model.logit_bias]
    others = [p for n, p in model.named_parameters() if n not in ("logit_scale", "logit_bias")]
    # temperature and bias learn faster and without weight decay, so probabilities sharpen in time
    opt = torch.optim.AdamW([{"params": others, "weight_decay": 0.05},
                             {"params": scalars, "weight_decay": 0.0, "lr": args.lr * 10}], lr=args.lr)
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / args.steps))))
    gen_rng = torch.Generator().manual_seed(args.seed)
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(pixels), (args.batch,), generator=gen_rng)
        x = pixels[idx]
        flip = torch.rand(args.batch, generator=gen_rng) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = labels[idx]
        uniq, inverse = torch.unique(y, return_inverse=True)
        img = F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)
        templated = torch.rand(len(uniq), generator=gen_rng) < 0.5
        txt = F.normalize(model.get_text_features(input_ids=tokens[uniq + templated * len(captions)]).pooler_output,
                          dim=-1)
        logits = img @ txt.T * model.logit_scale.exp() + model.logit_bias
        target = 2.0 * (inverse[:, None] == torch.arange(len(uniq))[None, :]).float() - 1.0
        # sigmoid loss (Zhai et al. 2023): every image-text pair is an independent binary problem
        loss = -F.logsigmoid(target * logits).sum() / args.batch
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} t={model.logit_scale.exp().item():.1f} "
                  f"b={model.logit_bias.item():.2f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    for f in args.out.glob("_sp.*"):
        f.unlink()
    print(f"saved to {args.out} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
