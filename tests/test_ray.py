"""`index --engine ray` on a local Ray instance and a simulated 2-node cluster, on loopback only:
vectors equal the local engine's, the same errors, nothing embedded twice, a lost node survived,
and a driver killed mid-run resumed from its shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray loads: it binds 127.0.0.1, never eth0
ray = pytest.importorskip("ray", reason="the ray extra is not installed")

from searchlite.library import Library  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from searchlite.sample_data import generate

    folder = tmp_path_factory.mktemp("ray") / "photos"
    generate.generate(folder, 40, 9, "test")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture()
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    yield ray
    ray.shutdown()


def _vectors(lib: Library, spec: str) -> dict[str, np.ndarray]:
    row = lib.model_row(spec)
    results = lib.search("x", spec, k=1000)
    stored = lib.stored_vectors(row, [r.image_id for r in results])
    return {r.path: stored[r.image_id] for r in results}


def test_ray_engine_matches_the_local_engine(tmp_path, photos, hf_siglip, local_ray):
    spec = f"hf:{hf_siglip}"
    local = Library(tmp_path / "local", device="cpu")
    local.index([photos], [spec])
    distributed = Library(tmp_path / "ray", device="cpu")
    stats = distributed.index([photos], [spec], engine="ray")
    assert (stats.added, stats.failed) == (40, 1) and stats.stages["images"] == 41
    a, b = _vectors(local, spec), _vectors(distributed, spec)
    assert set(a) == set(b) and len(a) == 40
    assert min(float(a[p] @ b[p]) for p in a) >= 0.99999
    assert distributed.errors() == local.errors()
    again = distributed.index([photos], [spec], engine="ray")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 41) and again.stages == {}  # nothing embedded
    as_uri = distributed.index([photos.as_uri()], [spec], engine="ray")  # file:// is the same root
    assert (as_uri.added, as_uri.removed, as_uri.unchanged) == (0, 0, 41)
    assert list(distributed.catalog.roots().values()) == [str(photos)]


def test_a_two_node_cluster_survives_losing_a_node(tmp_path, photos, hf_siglip):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        lib = Library(tmp_path / "lib", device="cpu")
        seen = []

        def progress(done: int, total: int) -> None:
            seen.append(done)
            if len(seen) == 2:  # mid-run: one of the two nodes goes away
                threading.Thread(target=cluster.remove_node, args=(worker,)).start()

        os.environ["SEARCHLITE_SHARD_ROWS"] = "4"
        stats = lib.index([photos], [f"hf:{hf_siglip}"], engine="ray", progress=progress)
    finally:
        os.environ.pop("SEARCHLITE_SHARD_ROWS", None)
        ray.shutdown()
        cluster.shutdown()
    assert stats.stages["nodes"] == 2  # the work was spread over both
    assert (stats.added, stats.failed) == (40, 1)
    results = lib.search("x", f"hf:{hf_siglip}", k=1000)
    assert len(results) == 40 and len({r.image_id for r in results}) == 40  # every image exactly once
    assert lib.catalog.count_vectors(lib.model_row(f"hf:{hf_siglip}").id) == 40


def test_a_killed_driver_resumes_from_its_shards(tmp_path, photos, hf_siglip):
    lib_dir = tmp_path / "lib"
    shards = tmp_path / "shards"
    cmd = [sys.executable, "-m", "searchlite", "index", str(photos), "-m", f"hf:{hf_siglip}", "-L", str(lib_dir),
           "--engine", "ray", "--shards", str(shards), "--device", "cpu", "--json"]
    env = {**os.environ, "SEARCHLITE_SHARD_ROWS": "8", "SEARCHLITE_NO_SERVER": "1"}
    crashed = subprocess.run(cmd, env={**env, "SEARCHLITE_CRASH_AT": "ray-shard-written:2"}, capture_output=True,
                             text=True)
    assert crashed.returncode == -9
    assert len(list(shards.glob("part-*.parquet"))) == 1  # written, not committed
    assert len(list(shards.glob("part-*.committed"))) == 1
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["stages"]["images"] == 41 - 16  # the two shards of the killed run were not embedded again
    lib = Library(lib_dir, device="cpu")
    assert [Path(p).name for p, _ in lib.errors()] == ["broken.png"]
    results = lib.search("x", f"hf:{hf_siglip}", k=1000)
    assert len(results) == 40 and len({r.path for r in results}) == 40
    assert lib.catalog.count_vectors(lib.model_row(f"hf:{hf_siglip}").id) == 40
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(shards.glob("*.committed"))[0])  # shards are in the import schema
    assert {"path", "vector", "sha256", "size", "mtime_ns"} <= set(table.column_names)
    shutil.rmtree(shards)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes_under(marker: str) -> list[int]:
    """Pids of the processes whose command line names ``marker`` (our head node's temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_an_explicit_address_of_a_head_node_with_token_auth(tmp_path, photos, hf_siglip):
    """`ray start --head` on loopback with a token (as after any local `ray.init()`, which writes
    ~/.ray/auth_token), then `index --ray-address 127.0.0.1:PORT`: Ray loads the token only for
    address="auto", so the explicit address failed with InvalidAuthToken; now it connects the
    way the auto path does and gives the local engine's vectors."""
    import signal
    import tempfile
    import time

    home = tmp_path / "home"
    home.mkdir()
    temp = Path(tempfile.mkdtemp(prefix="slray-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SEARCHLITE_NO_SERVER": "1"}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_ADDRESS", None)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    token = subprocess.run([ray_cli, "get-auth-token", "--generate"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert (home / ".ray" / "auth_token").is_file(), token.stderr[-2000:]
    port = _free_port()
    head = subprocess.Popen([ray_cli, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--include-dashboard=false", f"--temp-dir={temp}", "--num-cpus=2", "--block",
                             "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        code = (f"import json; from searchlite.indexer.ray_engine import start_ray; ray = start_ray({address!r}); "
                "print(json.dumps(sorted({n['NodeManagerAddress'] for n in ray.nodes()})))")
        deadline = time.monotonic() + 120
        while True:  # the head node is up once a client connects
            nodes = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
            if nodes.returncode == 0 or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(2)
        assert nodes.returncode == 0, nodes.stderr[-3000:]
        assert json.loads(nodes.stdout.strip().splitlines()[-1]) == ["127.0.0.1"]  # loopback only
        spec = f"hf:{hf_siglip}"
        run = subprocess.run([sys.executable, "-m", "searchlite", "index", str(photos), "-m", spec, "-L",
                              str(tmp_path / "lib"), "--engine", "ray", "--ray-address", address, "--device", "cpu",
                              "--json"], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "InvalidAuthToken" not in run.stderr
        stats = json.loads(run.stdout)
        assert (stats["added"], stats["failed"]) == (40, 1)
    finally:
        try:  # the head node drains for up to 30 s on SIGTERM, then stops its processes
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + 30
        while _ray_processes_under(str(temp)) and time.monotonic() < deadline:
            time.sleep(1)
        for pid in _ray_processes_under(str(temp)):  # anything of this head node still alive
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
    local = Library(tmp_path / "local", device="cpu")
    local.index([photos], [spec])
    a, b = _vectors(local, spec), _vectors(Library(tmp_path / "lib", device="cpu"), spec)
    assert set(a) == set(b) and len(a) == 40
    assert min(float(a[p] @ b[p]) for p in a) >= 0.99999
    assert not _ray_processes_under(str(temp))


def test_ray_engine_indexes_file_names_that_are_not_utf8(tmp_path, hf_siglip, local_ray):
    """Paths travel as bytes through Ray Data and the shards (path escaped + path_bytes exact)."""
    from searchlite.sample_data import generate

    photos = tmp_path / "photos"
    generate.generate(photos, 4, 1, "test")
    first = sorted(photos.glob("*.png"))[0]
    odd = os.fsdecode(os.path.join(os.fsencode(photos), b"bad\xff\xfename.png"))
    os.rename(first, odd)
    spec = f"hf:{hf_siglip}"
    local = Library(tmp_path / "local", device="cpu")
    local.index([photos], [spec])
    distributed = Library(tmp_path / "ray", device="cpu")
    stats = distributed.index([photos], [spec], engine="ray")
    assert (stats.added, stats.failed) == (4, 0)
    a, b = _vectors(local, spec), _vectors(distributed, spec)
    assert odd in b and set(a) == set(b)
    assert min(float(a[p] @ b[p]) for p in a) >= 0.99999
