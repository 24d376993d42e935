"""Tiny random SigLIP / CLIP / ALIGN / open_clip checkpoints, built offline from configs.

The same recipe as transformers' own test-suite: small configs, random weights, tokenizers made
here (a SentencePiece model trained on a few sentences, a BPE vocab, a BERT vocab). Each builder
saves a complete checkpoint folder that loads through the public ``hf:<folder>`` /
``openclip:<folder>`` specs, exactly like a downloaded one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ("a photo of the cat dog car tree red green blue big small two three on in with and is this "
         "beach sunset snow house person people sky water circle square triangle").split()
SENTENCES = [
    "this is a photo of a cat", "a photo of a dog", "a red car on the beach", "two dogs in the snow",
    "a big green tree", "the sunset over water", "people with a blue house", "three small circles",
    "a triangle and a square", "the sky is blue", "a person in the snow with a dog",
] * 20


def _seed(seed: int) -> None:
    torch.manual_seed(seed)


def make_sentencepiece(folder: Path, vocab_size: int = 96) -> Path:
    """Train a tiny SentencePiece unigram model (offline, < 1 s)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES + WORDS))
    prefix = folder / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2,
    )
    corpus.unlink()
    return prefix.with_suffix(".model")


def build_siglip(folder: Path, seed: int = 0, image_size: int = 30, attention_mask: bool = False) -> Path:
    """A tiny random SiglipModel + SiglipProcessor saved with save_pretrained. Like Google's
    checkpoints, its tokenizer emits no attention mask, unless ``attention_mask`` (a fine-tune
    saved with transformers' defaults)."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sp = make_sentencepiece(folder / "_sp")
    # as the official conversion script does: real SigLIP checkpoints return no attention mask
    names = {} if attention_mask else {"model_input_names": ["input_ids"]}
    tokenizer = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, **names)
    text = dict(vocab_size=128, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, projection_size=32,
                pad_token_id=0, eos_token_id=1, bos_token_id=None)
    vision = dict(image_size=image_size, patch_size=2, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4, num_channels=3)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.0)
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for f in (folder / "_sp").iterdir():
        f.unlink()
    (folder / "_sp").rmdir()
    return folder


def _clip_vocab() -> tuple[dict[str, int], list[str]]:
    from open_clip.tokenizer import bytes_to_unicode

    chars = sorted(set(bytes_to_unicode().values()))
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for word in sorted(set(WORDS)):
        # merge each whole word into one token, left to right
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in vocab_list:
                vocab_list.append(pieces[0])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    merges = list(dict.fromkeys(merges))
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_clip(folder: Path, seed: int = 0, image_size: int = 30) -> Path:
    """A tiny random CLIPModel with a real byte-level BPE tokenizer and the CLIP processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=24,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])
    vision = dict(image_size=image_size, patch_size=2, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_align(folder: Path, seed: int = 0) -> Path:
    """A tiny random AlignModel (EfficientNet with 3 small blocks + BERT) with a BERT vocab."""
    from transformers import AlignConfig, AlignModel, AlignProcessor, BertTokenizer, EfficientNetImageProcessor

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + sorted(set(WORDS))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5's BertTokenizer takes the vocabulary as ``vocab`` (``vocab_file`` is ignored)
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64)
    vision = dict(image_size=32, num_channels=3, kernel_sizes=[3, 3, 5], in_channels=[32, 16, 24],
                  out_channels=[16, 24, 64], strides=[1, 1, 2], hidden_dim=64, num_hidden_layers=3,
                  expand_ratios=[1, 6, 6], depth_coefficient=1.0, width_coefficient=1.0,
                  depthwise_padding=[], hidden_act="swish",
                  # the default 0.02 makes the pooled features ~1e-13: float noise then decides their direction
                  initializer_range=0.2)
    config = AlignConfig(text_config=text, vision_config=vision, projection_dim=64)
    model = AlignModel(config).eval()
    processor = AlignProcessor(
        image_processor=EfficientNetImageProcessor(size={"height": 40, "width": 40},
                                                   crop_size={"height": 32, "width": 32},
                                                   do_center_crop=True, rescale_factor=1 / 127.5,
                                                   rescale_offset=True, do_normalize=False,
                                                   include_top=False, resample=2),
        tokenizer=tokenizer,
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_openclip(folder: Path, family: str = "clip", seed: int = 0, image_size: int = 32) -> Path:
    """A tiny open_clip model as a ``local-dir`` folder: open_clip_config.json + safetensors weights.

    CLIP uses open_clip's bundled BPE tokenizer (offline); SigLIP uses the tiny SentencePiece
    tokenizer saved as a HF tokenizer in the same folder (``hf_tokenizer_name``).
    """
    import open_clip
    from safetensors.torch import save_file

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    siglip = family == "siglip"
    text_cfg: dict = dict(context_length=16 if siglip else 77, width=32, heads=4, layers=2)
    if siglip:
        from transformers import SiglipTokenizer

        sp = make_sentencepiece(folder / "_sp")
        tok = SiglipTokenizer(vocab_file=str(sp), model_max_length=16)
        tok.save_pretrained(folder)
        for f in (folder / "_sp").iterdir():
            f.unlink()
        (folder / "_sp").rmdir()
        text_cfg.update(vocab_size=128, hf_tokenizer_name="local", tokenizer_kwargs={"clean": "canonicalize"},
                        no_causal_mask=True, proj_bias=True, pool_type="last", norm_kwargs={"eps": 1e-6})
    model_cfg = dict(
        embed_dim=24,
        vision_cfg=dict(image_size=image_size, layers=2, width=32, patch_size=4, head_width=8),
        text_cfg=text_cfg,
    )
    preprocess_cfg = dict(mean=[0.48145466, 0.4578275, 0.40821073], std=[0.26862954, 0.26130258, 0.27577711],
                          interpolation="bicubic", resize_mode="shortest")
    if siglip:
        model_cfg.update(init_logit_bias=-10)
        model_cfg["vision_cfg"].update(no_ln_pre=True, final_ln_after_pool=True, pool_type="avg")
        preprocess_cfg = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], interpolation="bicubic",
                              resize_mode="squash")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg,
                                                              "preprocess_cfg": preprocess_cfg}))
    model = open_clip.create_model(f"local-dir:{folder}", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


# -- round 3: multilingual families (SigLIP 2 fixed-res and NaFlex, Chinese-CLIP, MetaCLIP 2) ---------
#: A few Chinese and Japanese captions, so every tokenizer built here holds CJK pieces.
CJK_SENTENCES = ["一只猫的照片", "海滩上的两只狗", "雪中的红色汽车", "日落时的大树", "猫の写真", "ビーチの犬",
                 "雪の中の赤い車", "夕日と海", "东京の夜景"] * 20


def _bpe_tables(vocab_size: int = 400) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-fallback BPE (Gemma style: spaces as '▁') trained on English + CJK captions."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(specials), special_tokens=specials,
                                  show_progress=False)
    tok.train_from_iterator([" " + s for s in SENTENCES + CJK_SENTENCES + WORDS], trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_siglip2_naflex(folder: Path, seed: int = 0) -> Path:
    """A tiny random Siglip2Model + Siglip2Processor (NaFlex), saved as hub checkpoints are. The
    processor's call defaults (patch 16, at most 256 patches, text padded to 64) are what the reference
    uses, so the tiny vision tower has patch 16 and 256 position embeddings (a 16 x 16 grid)."""
    from transformers import Siglip2Config, Siglip2ImageProcessorPil, Siglip2Model, Siglip2Processor
    from transformers.models.siglip2.tokenization_siglip2 import Siglip2Tokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe_tables()
    tokenizer = Siglip2Tokenizer(vocab=vocab, merges=merges, model_max_length=64)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, projection_size=32,
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = dict(num_patches=256, patch_size=16, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4, num_channels=3)
    model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.0)
    processor = Siglip2Processor(image_processor=Siglip2ImageProcessorPil(patch_size=16, max_num_patches=256),
                                 tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_siglip2_fixed(folder: Path, seed: int = 0, image_size: int = 30) -> Path:
    """SigLIP 2 at a fixed resolution as Google ships it: a ``siglip`` SiglipModel with a Gemma tokenizer."""
    from transformers import GemmaTokenizer, SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe_tables()
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=64)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, projection_size=32,
                pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = dict(image_size=image_size, patch_size=2, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4, num_channels=3)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
        model.logit_bias.fill_(-3.0)
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": image_size, "width": image_size}),
                                tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_chinese_clip(folder: Path, seed: int = 0, image_size: int = 30) -> Path:
    """A tiny ChineseCLIPModel with a BERT-Chinese vocabulary (every CJK character of the captions)."""
    from transformers import (
        BertTokenizer,
        ChineseCLIPConfig,
        ChineseCLIPImageProcessorPil,
        ChineseCLIPModel,
        ChineseCLIPProcessor,
    )

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted({c for s in CJK_SENTENCES for c in s if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "。"] + chars + sorted(set(WORDS))
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True, model_max_length=52)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64)
    vision = dict(image_size=image_size, patch_size=2, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4)
    model = ChineseCLIPModel(ChineseCLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).eval()
    processor = ChineseCLIPProcessor(
        image_processor=ChineseCLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                     crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_metaclip2(folder: Path, seed: int = 0, image_size: int = 30) -> Path:
    """A tiny MetaClip2Model (CLIP towers, pooled at the first EOS) with an XLM-R-style unigram
    tokenizer trained on English + CJK captions, and the CLIP image processor."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPImageProcessorPil, CLIPProcessor, MetaClip2Config, MetaClip2Model, XLMRobertaTokenizer

    _seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.NFKC()
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.train_from_iterator(SENTENCES + CJK_SENTENCES + WORDS,
                            trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token="<unk>",
                                                    show_progress=False))
    pieces = [(p, float(s)) for p, s in json.loads(uni.to_str())["model"]["vocab"]] + [("<mask>", 0.0)]
    tokenizer = XLMRobertaTokenizer(vocab=pieces, model_max_length=77)
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(pieces), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=ids("<s>"),
                eos_token_id=ids("</s>"), pad_token_id=ids("<pad>"))
    vision = dict(image_size=image_size, patch_size=2, hidden_size=32, intermediate_size=37,
                  num_hidden_layers=2, num_attention_heads=4)
    model = MetaClip2Model(MetaClip2Config(text_config=text, vision_config=vision, projection_dim=24)).eval()
    processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                                    crop_size={"height": image_size, "width": image_size}),
                              tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
