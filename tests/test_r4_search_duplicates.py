"""Round 4, issue 26 item 1: duplicates through the one search layer, on every index type.

An HNSW library at d=768 with > 600 vectors made FAISS abort the process (a range search on
HNSW: SIGABRT, exit 134). The groups of `duplicates` are compared with brute-force numpy pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from searchlite.library import Library

ROOT = Path(__file__).resolve().parents[1]
D768 = 768


def build_siglip768(folder: Path) -> Path:
    """A tiny random SigLIP whose image embedding is 768 wide (vision hidden size = embedding)."""
    import torch
    from tiny_models import make_sentencepiece
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    sp = make_sentencepiece(folder / "_sp")
    tokenizer = SiglipTokenizer(vocab_file=str(sp), model_max_length=64, model_input_names=["input_ids"])
    text = dict(vocab_size=128, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                max_position_embeddings=64, projection_size=D768, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    vision = dict(image_size=8, patch_size=4, hidden_size=D768, intermediate_size=16, num_hidden_layers=1,
                  num_attention_heads=4, num_channels=3)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 8, "width": 8}),
                                tokenizer=tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for f in (folder / "_sp").iterdir():
        f.unlink()
    (folder / "_sp").rmdir()
    return folder


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def planted(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors with near copies planted every 10 rows (cos ~0.97)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 16))
    latent = centres[rng.integers(0, 30, n)] + 0.8 * rng.normal(size=(n, 16))
    x = _unit(latent @ rng.normal(size=(16, dim)) + 0.3 * rng.normal(size=(n, dim)))
    for i in range(0, n - 1, 10):
        w = rng.normal(size=dim)
        w = _unit(w - (w @ x[i]) * x[i])
        x[i + 1] = 0.97 * x[i] + np.sqrt(1 - 0.97**2) * w
    return x.astype(np.float32)


def write(path: Path, vectors: np.ndarray) -> list[str]:
    paths = [f"/photos/{i:05d}.jpg" for i in range(len(vectors))]
    pq.write_table(pa.table({"path": paths, "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), vectors.shape[1]), "width": [100] * len(paths), "height": [100] * len(paths),
        "size": [1000 + i for i in range(len(paths))]}), path)
    return paths


def brute_groups(vectors: np.ndarray, paths: list[str], threshold: float) -> set[frozenset[str]]:
    """Reference: pairs at or above the threshold by brute force (planted pairs are isolated)."""
    sims = vectors @ vectors.T
    ai, bi = np.nonzero(np.triu(sims >= threshold, 1))
    return {frozenset({paths[a], paths[b]}) for a, b in zip(ai, bi)}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "searchlite.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def lib768(tmp_path_factory):
    folder = tmp_path_factory.mktemp("d768")
    model = build_siglip768(folder / "model")
    vectors = planted(800, D768, seed=26)
    paths = write(folder / "v.parquet", vectors)
    lib = Library(folder / "lib", device="cpu")
    lib.import_vectors(folder / "v.parquet", f"hf:{model}")
    return lib, f"hf:{model}", vectors, paths


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq", "flat"])
def test_r4_duplicates_on_every_index_type_match_brute_force(lib768, kind):
    lib, spec, vectors, paths = lib768
    lib.reindex(spec, kind)
    assert bool(lib.model_index(lib.model_row(spec)).refresh().segments) == (kind != "flat")
    done = run_cli("duplicates", "-m", spec, "--threshold", "0.95", "--json", "-L", str(lib.path))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # 134 = FAISS abort (SIGABRT)
    groups = {frozenset(m["path"] for m in g["members"]) for g in json.loads(done.stdout)}
    expected = brute_groups(vectors, paths, 0.95)
    assert len(expected) == 80
    assert groups == expected


def test_r4_duplicates_module_calls_no_faiss():
    text = (ROOT / "searchlite" / "duplicates.py").read_text()
    assert "faiss" not in text.lower()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq", "ivf", "flat"])
def test_r4_within_finds_every_neighbour_beyond_the_first_k(kind):
    """A crowd of 60 near copies (more than the first k-NN window of 16): every one is returned,
    compared with brute force over the same vectors."""
    from searchlite.vectors import VectorIndex

    rng = np.random.default_rng(11)
    base = planted(2000, 64, seed=11)
    centre = base[0]
    crowd = _unit(centre + 0.03 * rng.normal(size=(60, 64)))  # cosine ~0.97 to the centre
    x = np.vstack([base, crowd]).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    index = VectorIndex.build(kind, 64, ids, x)
    radius = 0.9
    pos, hit, _ = index.within(x[[0, 2000, 7]], radius, k_cap=1024, k_min=0)
    sims = x[[0, 2000, 7]] @ x.T
    for q in range(3):
        expected = set(np.flatnonzero(sims[q] >= radius + 0.02).tolist())  # clear of SQ8/PQ rounding
        got = set(hit[pos == q].tolist())
        if kind in ("flat", "ivf", "hnsw"):
            assert expected <= got, (q, len(expected), len(got))
    assert len(set(hit[pos == 0].tolist())) > 16 or kind == "ivfpq"
