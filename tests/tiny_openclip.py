"""Tiny open_clip checkpoints of the round-3 families, built offline from the installed
architecture configs (``open_clip/model_configs/*.json``) with the widths and depths shrunk.

What each family's reference does differently is kept: the tokenizer type and its files, the
context length, the text cleaning, the pooling, the causal mask, the norm and activation
settings, the image mean/std, interpolation and resize mode of the pretrained tag. Where a config
names a timm image tower, a small real timm model of the same kind stands in (``test_vit`` with
SigLIP's MAP pooling, ``fastvit_t8`` for MobileCLIP2's FastViT-MCi, PE-Core-T's own
``vit_pe_core_tiny_patch16_384`` for PE-Core). Each folder is a ``local-dir`` checkpoint:
``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ the Hugging Face tokenizer files
when the family uses one), loadable as ``openclip:<folder>``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from tiny_models import SENTENCES, WORDS

#: CJK text for the tokenizers' vocabularies (Chinese, Japanese), so these queries get real pieces.
CJK = ["一只猫的照片", "海滩上的红色汽车", "雪中的两只狗", "日落时的大树", "猫の写真", "ビーチの赤い車",
       "雪の中の二匹の犬", "東京の夜景", "夕日と青い空", "人と家"]
CORPUS = SENTENCES + [w for w in WORDS] + CJK * 20 + ["naïve café zürich", "t-shirt jeans off", "numbers 2023"]

OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
#: The preprocess configs of the pretrained tags (open_clip pretrained.py: _slpcfg, _mccfg, _mc2cfg, _pecfg, _pcfg).
PREPROCESS = {
    "siglip2": dict(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", resize_mode="squash"),
    "mobileclip2": dict(mean=[0.0] * 3, std=[1.0] * 3, interpolation="bilinear", resize_mode="shortest"),
    "mobileclip2-openai": dict(mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bilinear", resize_mode="shortest"),
    "pe-core": dict(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear", resize_mode="squash"),
    "worldwide": dict(mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode="shortest"),
    "nllb-siglip": dict(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", resize_mode="squash"),
}
#: The real architecture each tiny one is shrunk from.
SOURCE = {"siglip2": "ViT-B-16-SigLIP2", "mobileclip2": "MobileCLIP2-S2", "mobileclip2-openai": "MobileCLIP2-S4",
          "pe-core": "PE-Core-T-16-384", "worldwide": "ViT-H-14-worldwide-quickgelu",
          "nllb-siglip": "nllb-clip-base-siglip"}
FAMILIES = tuple(SOURCE)


def installed_config(arch: str) -> dict:
    """The installed open_clip config of an architecture (a copy)."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    assert cfg is not None, arch
    return copy.deepcopy(cfg)


def _bpe_tables(vocab_size: int = 400) -> tuple[dict[str, int], list[str]]:
    """A small Metaspace BPE trained on the corpus (NLLB-style: <s> <pad> </s> <unk> first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    data = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["merges"]]
    return data["vocab"], merges


def _unigram_pieces(specials: list[str], vocab_size: int = 300) -> list[tuple[str, float]]:
    """A small Metaspace Unigram (SentencePiece-style) trained on the corpus: [(piece, score)]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]


def gemma_like_tokenizer(folder: Path) -> int:
    """SigLIP 2's kind of tokenizer (Gemma: SentencePiece, pad 0, EOS 1 appended, no BOS), saved as
    Hugging Face files; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces = _unigram_pieces(["<pad>", "</s>", "<unk>", "<s>"])
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>", padding_side="right")
    fast.save_pretrained(folder)
    return len(fast)


def xlm_like_tokenizer(folder: Path) -> int:
    """MetaCLIP 2's kind of tokenizer (XLM-V is an XLMRobertaTokenizer: <s> text </s>, pad 1, EOS 2)."""
    from transformers import XLMRobertaTokenizer

    pieces = _unigram_pieces(["<s>", "<pad>", "</s>", "<unk>"])
    tok = XLMRobertaTokenizer(vocab=pieces + [("<mask>", 0.0)])
    tok.save_pretrained(folder)
    return len(tok)


def nllb_tokenizer(folder: Path) -> int:
    """An NllbTokenizer (BPE, FLORES-200 language codes as special tokens, ``src_lang`` prefix)."""
    from transformers import NllbTokenizer

    vocab, merges = _bpe_tables()
    tok = NllbTokenizer(vocab=vocab, merges=merges)
    tok.save_pretrained(folder)
    return len(tok)


def _tiny_text(cfg: dict, vocab_size: int, width: int = 32) -> dict:
    cfg.update(width=width, heads=4, layers=2, vocab_size=vocab_size)
    return cfg


def build(folder: Path, family: str, seed: int = 0) -> Path:
    """A tiny local-dir checkpoint of ``family`` (one of :data:`FAMILIES`)."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = installed_config(SOURCE[family])
    text, vision = cfg["text_cfg"], cfg["vision_cfg"]
    if family == "siglip2":
        vocab = gemma_like_tokenizer(folder)
        _tiny_text(text, vocab)
        text["hf_tokenizer_name"] = "local"  # open_clip reads a local-dir's tokenizer from the folder itself
        vision.update(timm_model_name="test_vit", image_size=160)
        cfg["embed_dim"] = 64  # timm_proj "none": the MAP-pooled trunk width is the embedding
    elif family.startswith("mobileclip2"):
        _tiny_text(text, 49408)
        vision.update(timm_model_name="fastvit_t8", image_size=256)
        cfg["embed_dim"] = 32
    elif family == "pe-core":
        _tiny_text(text, 49408)
        cfg["embed_dim"] = 32
    elif family == "worldwide":
        vocab = xlm_like_tokenizer(folder)
        _tiny_text(text, vocab)
        text["hf_tokenizer_name"] = "local"
        cfg["vision_cfg"] = dict(image_size=32, layers=2, width=32, head_width=8, patch_size=4)
        cfg["embed_dim"] = 24
    elif family == "nllb-siglip":
        from transformers import M2M100Config

        vocab = nllb_tokenizer(folder)
        text_model = folder / "text-model"
        M2M100Config(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=128,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, scale_embedding=True).save_pretrained(text_model)
        text.update(hf_model_name=str(text_model), hf_tokenizer_name="local")
        vision.update(timm_model_name="test_vit", image_size=160)
        cfg["embed_dim"] = 64
    else:
        raise ValueError(family)
    config = {"model_cfg": cfg, "preprocess_cfg": PREPROCESS[family]}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1))
    model = open_clip.create_model(f"local-dir:{folder}", pretrained=None, pretrained_text=False)
    if getattr(model, "logit_bias", None) is not None:  # trained-looking score parameters
        with torch.no_grad():
            model.logit_scale.fill_(2.3)
            model.logit_bias.fill_(-2.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def reference(folder: Path, lang: str | None = None) -> tuple[Any, Any, Any]:
    """open_clip's own (model, preprocess, tokenizer) for a folder, as its documentation calls them."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    # nllb: the language goes to the HF tokenizer's constructor (open_clip passes kwargs through);
    # open_clip's tokenizer.set_language() is a no-op under transformers 5 (see searchlite.models.openclip)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}", **({"src_lang": lang} if lang else {}))
    return model, preprocess, tokenizer
