"""Round 4, the ONNX engine: both towers exported per family and compared with the torch reference
(open_clip's / transformers' own forward, fp32) on images that are not the export's probes; a library
indexed on ONNX records it and searches like the torch one; without torch importable, the package,
its CLI and the demo (same figures) run on the shipped ONNX export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import tiny_openclip
from PIL import Image

from searchlite.library import Library
from searchlite.models import load_embedder
from searchlite.models.onnx_export import export_model
from searchlite.models.onnx_model import OnnxEmbedder, read_model_meta

ROOT = Path(__file__).resolve().parents[1]
#: Fresh images (not the export's probes): photos-like noise and shapes, odd sizes, non-RGB modes.
TOL_ABS, TOL_COS = 1e-5, 0.99999


def fresh_images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    out = []
    for w, h in ((83, 51), (40, 97), (64, 64), (123, 77)):
        smooth = np.kron(rng.random((h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w]
        out.append(Image.fromarray((smooth * 255).astype(np.uint8)))
    out.append(out[0].convert("L"))
    out.append(out[1].convert("P"))
    return out


def _compare(spec: str, tmp_path: Path) -> tuple[float, float]:
    emb = load_embedder(spec, device="cpu", precision="fp32", runtime="torch")
    meta = export_model(emb, tmp_path / "onnx")
    assert meta["valid"], meta.get("reason")
    onnx = OnnxEmbedder(tmp_path / "onnx")
    images = fresh_images()
    ours, ref = onnx.embed_images(images), emb.embed_images(images)
    texts = ["a red car on the beach", "Two DOGS, in the snow!", ""]
    t_ours, t_ref = onnx.embed_texts(texts), emb.embed_texts(texts)
    max_abs = float(max(np.abs(ours - ref).max(), np.abs(t_ours - t_ref).max()))
    min_cos = float(min((ours * ref).sum(1).min(), (t_ours * t_ref).sum(1).min()))
    assert max_abs <= TOL_ABS and min_cos >= TOL_COS, (max_abs, min_cos)
    assert onnx.dim == emb.dim and onnx.score == emb.score and onnx.family == emb.family
    return max_abs, min_cos


@pytest.mark.parametrize("fixture, backend", [("hf_siglip", "hf"), ("hf_clip", "hf"), ("oc_clip", "openclip"),
                                              ("oc_siglip", "openclip")])
def test_onnx_towers_match_torch(fixture, backend, request, tmp_path):
    _compare(f"{backend}:{request.getfixturevalue(fixture)}", tmp_path)


@pytest.mark.parametrize("builder", ["build_chinese_clip", "build_metaclip2", "build_siglip2_fixed"])
def test_onnx_towers_match_torch_more_hf_families(builder, tmp_path):
    folder = getattr(tiny_models, builder)(tmp_path / "model")
    _compare(f"hf:{folder}", tmp_path)


@pytest.mark.parametrize("family", ["siglip2", "worldwide",
                                    pytest.param("nllb-siglip", marks=pytest.mark.slow),
                                    pytest.param("mobileclip2", marks=pytest.mark.slow),
                                    pytest.param("pe-core", marks=pytest.mark.slow)])
def test_onnx_towers_match_open_clip_families(family, tmp_path):
    folder = tiny_openclip.build(tmp_path / "model", family)
    _compare(f"openclip:{folder}", tmp_path)


def test_unreproducible_preprocessing_is_refused_and_stays_on_torch(tmp_path):
    """NaFlex (patches + mask + shapes) is not exported: the export says why, and the library keeps torch."""
    folder = tiny_models.build_siglip2_naflex(tmp_path / "naflex")
    emb = load_embedder(f"hf:{folder}", device="cpu", precision="fp32")
    meta = export_model(emb, tmp_path / "onnx")
    assert not meta["valid"] and "max_num_patches" in meta["reason"]
    assert read_model_meta(tmp_path / "onnx") is None


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i in range(10):
        Image.fromarray((rng.random((36 + i, 50, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


def test_index_runtime_onnx_is_recorded_and_searches_like_torch(photos, hf_siglip, tmp_path):
    from typer.testing import CliRunner

    from searchlite.cli.main import app

    spec = f"hf:{hf_siglip}"
    out = CliRunner().invoke(app, ["index", str(photos), "-m", spec, "-L", str(tmp_path / "a"), "--runtime", "onnx",
                                   "--device", "cpu"])
    assert out.exit_code == 0, out.output
    torch_lib = Library(tmp_path / "b", device="cpu", runtime="torch")
    torch_lib.index([photos], [spec])
    onnx_lib = Library(tmp_path / "a", device="cpu")  # auto: the recorded engine
    assert [m["runtime"] for m in onnx_lib.status()["models"]] == ["onnx"]
    assert [m["runtime"] for m in torch_lib.status()["models"]] == ["torch"]
    row = onnx_lib.model_row(spec)
    assert isinstance(onnx_lib.embedder_for(row), OnnxEmbedder)
    assert read_model_meta(onnx_lib.onnx_folder(row))["valid"]
    a = onnx_lib.search("a photo of a cat", spec, k=10)
    b = torch_lib.search("a photo of a cat", spec, k=10)
    assert [Path(r.path).name for r in a] == [Path(r.path).name for r in b]
    assert np.allclose([r.score for r in a], [r.score for r in b], atol=1e-5)
    bad = CliRunner().invoke(app, ["index", str(photos), "-L", str(tmp_path / "c"), "--runtime", "tpu"])
    assert bad.exit_code == 2


BLOCKER = textwrap.dedent("""
    import sys
    BLOCKED = {"torch", "open_clip", "transformers", "torchvision"}
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked: " + name)
            return None
    sys.meta_path.insert(0, Blocker())
""")


def run_without_torch(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = tmp_path / "blocked.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)


def test_torch_free_package_cli_and_onnx_folder(photos, hf_siglip, tmp_path):
    export = tmp_path / "model-onnx"
    assert export_model(load_embedder(f"hf:{hf_siglip}", device="cpu", precision="fp32"), export)["valid"]
    proc = run_without_torch(f"""
        import json, sys
        import searchlite
        from typer.testing import CliRunner
        from searchlite.cli.main import app
        from searchlite.library import Library
        runner = CliRunner()
        assert runner.invoke(app, ["--help"]).exit_code == 0
        out = runner.invoke(app, ["index", {str(photos)!r}, "-m", "onnx:{export}", "-L", "lib", "--device", "cpu"])
        assert out.exit_code == 0, out.output
        hits = Library("lib", device="cpu").search("a photo of a cat", k=3)
        need = runner.invoke(app, ["index", {str(photos)!r}, "-m", "hf:{hf_siglip}", "-L", "lib2"])
        print(json.dumps({{"hits": len(hits), "need": str(need.exception),
                          "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["hits"] == 3 and result["loaded"] == []
    assert "install searchlite[torch]" in result["need"]


def test_torch_free_demo_gives_the_documented_figures(tmp_path):
    proc = run_without_torch("""
        import json
        from pathlib import Path
        from searchlite.demo import run_demo
        res = run_demo(Path("demo"), say=lambda s: None, device="cpu")
        print(json.dumps(res["models"]["demo"]["text_to_image"]))
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t2i = json.loads(proc.stdout.strip().splitlines()[-1])
    assert round(t2i["recall@1"], 4) == 0.9167 and round(t2i["mrr"], 4) == 0.9516  # the torch figures (README)


def test_the_demo_onnx_export_is_package_data_and_valid():
    """Every file of the shipped demo export is matched by pyproject's package-data globs, and it is a
    valid export of the demo model's own weights (same model id)."""
    import fnmatch
    tomllib = pytest.importorskip("tomllib")

    from searchlite.models.registry import onnx_export_of, parse_spec
    from searchlite.sample_data import DEMO_MODEL_DIR

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "searchlite.sample_data"]
    files = [p.relative_to(DEMO_MODEL_DIR.parent).as_posix() for p in (DEMO_MODEL_DIR / "onnx").rglob("*")
             if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs) for f in files)
    assert onnx_export_of(parse_spec("demo")) == DEMO_MODEL_DIR / "onnx"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(deps["dependencies"])
    assert not any(name in core for name in ("torch", "open_clip", "transformers", "torchvision"))
    assert "searchlite[torch" in " ".join(deps["optional-dependencies"]["all"])
