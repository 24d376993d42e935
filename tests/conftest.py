"""Shared fixtures: tiny offline checkpoints (built once per session) and awkward test images."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

_ISOLATED = ("SEARCHLITE_CACHE", "SEARCHLITE_LIBRARY", "SEARCHLITE_CONFIG", "XDG_CACHE_HOME", "XDG_DATA_HOME",
             "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "HF_HOME", "TORCH_HOME")
_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point every per-user location (caches, default library, runtime dir, model caches) into a
    temporary folder, for this process and the subprocesses tests start: no test writes outside tmp."""
    import os
    import tempfile

    global _HOME
    _HOME = Path(tempfile.mkdtemp(prefix="searchlite-tests-"))
    for name in _ISOLATED:
        folder = _HOME / name.lower()
        folder.mkdir(mode=0o700)
        os.environ[name] = str(folder)
    os.environ.pop("SEARCHLITE_MODEL", None)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # any Ray a test starts binds loopback only
    # the suite compares against fp32 references: `auto` means fp32 here on every CPU, with or without
    # native bf16 (tests/test_precision.py unsets this and exercises auto, bf16 and the fallback)
    os.environ["SEARCHLITE_PRECISION"] = "fp32"


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def isolated_home() -> Path:
    """The temporary folder that stands in for the user's caches and data dirs during tests."""
    assert _HOME is not None
    return _HOME


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def hf_siglip(tiny_dir: Path) -> Path:
    return tiny_models.build_siglip(tiny_dir / "siglip")


@pytest.fixture(scope="session")
def hf_siglip_mask(tiny_dir: Path) -> Path:
    """A SigLIP whose tokenizer emits an attention mask (transformers 5 defaults)."""
    return tiny_models.build_siglip(tiny_dir / "siglip-mask", seed=1, attention_mask=True)


@pytest.fixture(scope="session")
def hf_clip(tiny_dir: Path) -> Path:
    return tiny_models.build_clip(tiny_dir / "clip")


@pytest.fixture(scope="session")
def hf_align(tiny_dir: Path) -> Path:
    return tiny_models.build_align(tiny_dir / "align")


@pytest.fixture(scope="session")
def oc_clip(tiny_dir: Path) -> Path:
    return tiny_models.build_openclip(tiny_dir / "oc-clip", "clip")


@pytest.fixture(scope="session")
def oc_siglip(tiny_dir: Path) -> Path:
    return tiny_models.build_openclip(tiny_dir / "oc-siglip", "siglip")


def _pattern(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (3 + seed)) % 256, (yy * 5) % 256, ((xx + yy) * 2) % 256], -1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Images of different sizes, aspect ratios, modes and formats, written to disk."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    rgb = Image.fromarray(_pattern(120, 80, 1))
    rgb.save(folder / "landscape.jpg", quality=92)
    Image.fromarray(_pattern(37, 200, 2)).save(folder / "tall.png")
    Image.fromarray(_pattern(300, 41, 3)).convert("L").save(folder / "wide-grey.png")
    rgba = Image.fromarray(_pattern(64, 64, 4)).convert("RGBA")
    alpha = Image.fromarray((np.indices((64, 64)).sum(0) * 2 % 256).astype(np.uint8))
    rgba.putalpha(alpha)
    rgba.save(folder / "alpha.png")
    pal = Image.fromarray(_pattern(90, 50, 5)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(folder / "palette-transparent.gif", transparency=3)
    Image.fromarray(_pattern(70, 90, 6)).convert("CMYK").save(folder / "cmyk.jpg")
    i16 = Image.fromarray((np.indices((48, 60))[1] * 1000).astype(np.uint16))
    i16.save(folder / "sixteen-bit.png")
    paths = sorted(folder.iterdir())
    return paths
