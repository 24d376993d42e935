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
