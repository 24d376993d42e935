"""`searchlite serve`: the CLI answers through the resident process, identically, and falls back;
the socket is private; every request field is validated; a stalled client blocks nobody."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchlite.library import Library
from searchlite.server import REQUEST_TIMEOUT, handle, parse_request, request, runtime_dir, socket_path


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "searchlite", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def small_library(tmp_path_factory, hf_siglip):
    root = tmp_path_factory.mktemp("serve")
    model = root / "model"
    shutil.copytree(hf_siglip, model)  # a private copy: the test moves it away
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(15):
        Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    Library(root / "lib", device="cpu").index([photos], [f"hf:{model}"])
    return root, photos, root / "lib", model


def test_cli_uses_the_server_and_falls_back_without_it(small_library):
    root, photos, lib_dir, model = small_library
    direct = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json", env={"SEARCHLITE_NO_SERVER": "1"})
    assert direct.returncode == 0, direct.stderr
    # in-process answers need the model once its light export and the query cache are gone
    shutil.rmtree(lib_dir / "models", ignore_errors=True)
    with sqlite3.connect(lib_dir / "catalog.sqlite") as conn:
        conn.execute("DELETE FROM query_cache")

    proc = subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(lib_dir), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hidden = root / "model-elsewhere"
    try:
        deadline = time.time() + 60
        while request(lib_dir, "ping", {}, timeout=1) is None:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
            time.sleep(0.1)
        # with the model folder gone, only the server (which has it loaded) can answer
        model.rename(hidden)
        served = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json")
        assert served.returncode == 0, served.stderr
        _same(json.loads(served.stdout), json.loads(direct.stdout))  # torch there, the ONNX tower here
        sim = _cli("similar", str(photos / "3.png"), "-k", "2", "-L", str(lib_dir), "--json")
        assert sim.returncode == 0 and str(photos / "3.png") not in sim.stdout
        bad = _cli("search", "x", "-m", "hf:/no/such/model", "-L", str(lib_dir))
        assert bad.returncode == 1 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr
        no_server = _cli("search", "a blue car", "-L", str(lib_dir), env={"SEARCHLITE_NO_SERVER": "1"})
        assert no_server.returncode == 1 and "pass --model with its new location" in no_server.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if hidden.exists():
            hidden.rename(model)
    # a stale socket left by a killed server: the CLI searches in-process instead
    assert socket_path(lib_dir).exists()
    again = _cli("search", "a red car", "-k", "5", "-L", str(lib_dir), "--json")
    assert again.returncode == 0
    _same(json.loads(again.stdout), json.loads(direct.stdout))


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)


def test_long_library_paths_get_a_private_socket_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    deep = tmp_path / ("x" * 120)
    path = socket_path(deep)
    assert len(str(path)) < 108 and path.parent == tmp_path / "run" / "searchlite"
    info = os.stat(path.parent)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert socket_path(Path("/tmp/lib")) == Path("/tmp/lib/searchlite.sock")
    # a folder someone else could write into is refused, not used
    os.chmod(path.parent, 0o777)
    from searchlite.errors import LibraryError

    with pytest.raises(LibraryError, match="mode 0700"):
        runtime_dir()
    os.chmod(path.parent, 0o700)


def test_default_runtime_folder_is_per_user(monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime_dir().name == f"searchlite-{os.getuid()}"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to plant a socket owned by another user")
def test_client_ignores_a_socket_of_another_user(tmp_path):
    path = socket_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as planted:
        planted.bind(str(path))
        planted.listen(1)
        os.chown(path, 65534, 65534)
        assert request(tmp_path, "ping", {}, timeout=1) is None


@pytest.mark.parametrize("message, error", [
    ({"command": "nope"}, "unknown command"),
    ([1, 2], "JSON object"),
    ({"command": "search", "args": {"text": "x", "k": "5"}}, "k has the wrong type"),
    ({"command": "search", "args": {"text": "x", "k": 0}}, "k must be between"),
    ({"command": "search", "args": {"text": "x", "k": True}}, "k must be"),
    ({"command": "search", "args": {"text": ""}}, "non-empty"),
    ({"command": "search", "args": {"text": "x", "template": "no placeholder"}}, "exactly one '{}'"),
    ({"command": "search", "args": {"text": "x", "template": "a {x} b"}}, "exactly one '{}'"),
    ({"command": "search", "args": {"text": "x", "template": "a {} {}"}}, "exactly one '{}'"),
    ({"command": "search", "args": {"text": "x", "min_prob": 1.5}}, "min_prob must be between"),
    ({"command": "search", "args": {"text": "x", "sort": "random"}}, "sort must be one of"),
    ({"command": "search", "args": {"text": "x", "cwd": "relative/dir"}}, "cwd must be an absolute folder"),
    ({"command": "search", "args": {"text": "x", "filters": {"after": "yesterday"}}}, "must be a date"),
    ({"command": "search", "args": {"text": "x", "filters": {"min_width": -3}}}, "positive integer"),
    ({"command": "search", "args": {"text": "x", "filters": {"evil": 1}}}, "unknown filter"),
    ({"command": "search", "args": {"text": "x", "surprise": 1}}, "unknown argument"),
    ({"command": "similar", "args": {"image": "relative.png"}}, "absolute path"),
])
def test_every_request_field_is_validated(message, error):
    reply = handle(None, message)
    assert reply["ok"] is False and error in reply["error"] and "\n" not in reply["error"]


def test_requests_resolve_relative_image_terms_without_chdir(small_library):
    root, photos, lib_dir, model = small_library
    lib = Library(lib_dir, device="cpu")
    before = os.getcwd()
    reply = handle(lib, {"command": "search", "args": {"text": "3.png + sky", "k": 20, "cwd": str(photos)}})
    assert reply["ok"], reply
    assert os.getcwd() == before
    paths = {r["path"] for r in reply["results"]}
    assert len(paths) == 14 and str(photos / "3.png") not in paths  # the image term was found (and left out)
    _, args = parse_request({"command": "search", "args": {"text": "x"}})
    assert args["k"] == 20 and args["offset"] == 0


def test_a_stalled_client_does_not_block_others(small_library):
    import searchlite.service as server  # serve() runs a Service (socket only)

    _, _, lib_dir, _ = small_library
    lib = Library(lib_dir, device="cpu")
    ready = threading.Event()
    running = []
    thread = threading.Thread(target=server.serve, args=(lib, [], lambda s: (running.append(s), ready.set())),
                              daemon=True)
    thread.start()
    assert ready.wait(60)
    path = socket_path(lib_dir)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stalled:
            stalled.connect(str(path))
            stalled.sendall(b'{"command": "se')  # and then nothing
            start = time.monotonic()
            reply = request(lib_dir, "search", {"text": "a red car", "k": 3}, timeout=REQUEST_TIMEOUT)
            assert reply is not None and reply["ok"] and len(reply["results"]) == 3
            assert time.monotonic() - start < REQUEST_TIMEOUT / 2
    finally:
        running[0].shutdown()
        thread.join(10)
    assert not path.exists()
