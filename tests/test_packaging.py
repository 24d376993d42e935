"""The built wheel carries everything `searchlite demo` needs (generator + demo model), so the demo
runs from an installed package in any directory, not only from a clone."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_from_the_installed_wheel_in_any_directory(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(ROOT)], check=True, capture_output=True)
    wheel = next(dist.glob("searchlite-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "searchlite/sample_data/generate.py" in names
    assert "searchlite/sample_data/demo-model/model.safetensors" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # -S: no site processing, so the checkout's editable install cannot shadow the wheel
    code = (f"import sys; sys.path[:0] = [{str(site)!r}, {sysconfig.get_paths()['purelib']!r}, "
            f"{sysconfig.get_paths()['platlib']!r}]\n"
            "import searchlite; print('module:', searchlite.__file__)\n"
            "from searchlite.cli.main import main\n"
            "sys.argv = ['searchlite', 'demo', '--dir', 'work', '--count', '30', '--device', 'cpu']\n"
            "main()")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=elsewhere, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"module: {site}" in out.stdout
    assert "generating 30 sample images" in out.stdout and "text_to_image" in out.stdout
    assert (elsewhere / "work" / "library" / "catalog.sqlite").is_file()
