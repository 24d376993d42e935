"""`searchlite serve`: the CLI answers through the resident process, identically, and falls back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.library import Library
from searchlite.server import request, socket_path


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_cli_uses_the_server_and_falls_back_without_it(tmp_path, hf_siglip):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(15):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    lib_dir = tmp_path / "lib"
    Library(lib_dir, device="cpu").index([photos], [f"hf:{hf_siglip}"])
    direct = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json", env={"SEARCHLITE_NO_SERVER": "1"})
    assert direct.returncode == 0, direct.stderr

    proc = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(lib_dir), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while request(lib_dir, "ping", {}, timeout=1) is None:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.1)
        served = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json")
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout) == json.loads(direct.stdout)
        sim = _cli("similar", str(photos / "3.png"), "-k", "2", "-L", str(lib_dir), "--json")
        assert sim.returncode == 0 and str(photos / "3.png") not in sim.stdout
        bad = _cli("search", "x", "-m", "hf:/no/such/model", "-L", str(lib_dir))
        assert bad.returncode == 1 and bad.stderr.startswith("error:")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # a stale socket left by a killed server: the CLI searches in-process instead
    assert socket_path(lib_dir).exists()
    again = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == json.loads(direct.stdout)


def test_long_library_paths_get_a_short_socket(tmp_path):
    deep = tmp_path / ("x" * 120)
    assert len(str(socket_path(deep))) < 108
    assert socket_path(Path("/tmp/lib")) == Path("/tmp/lib/searchlite.sock")


@pytest.mark.parametrize("command", ["nope"])
def test_unknown_command_is_refused(command, tmp_path):
    from searchlite.server import _handle

    assert _handle(None, {"command": command})["ok"] is False
