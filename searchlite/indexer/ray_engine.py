"""`searchlite index --engine ray`: decoding and embedding on a Ray Data pipeline (the `ray` extra).

The scan, the incremental rules and the commit are the local engine's (``pipeline.Indexer``); only
the work in between runs on Ray: the files that need work -> CPU tasks that read, hash, decode
(searchlite's own decoder: identical pixels) and preprocess -> model actors (one per GPU, or CPU
actors) that embed -> batches streamed back to the driver, written as Parquet shards in the import
schema and committed into the library shard by shard. Ray retries failed tasks and restarts lost
actors; a driver killed mid-run leaves at most a shard written but not committed, which the next
run commits first (its images are not embedded again). Ray is imported only on this path.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from searchlite.catalog import ImageRow, VectorRow, chunked
from searchlite.errors import LibraryError
from searchlite.faults import crashpoint
from searchlite.indexer.pipeline import Done, Indexer, Work, decode
from searchlite.indexer.scan import ScanTable
from searchlite.models.base import InputSize, input_size_of
from searchlite.paths import as_bytes, printable
from searchlite.store import VectorWriter

log = logging.getLogger(__name__)

#: Rows per Parquet shard (a shard is the unit a killed driver resumes from); $SEARCHLITE_SHARD_ROWS overrides.
SHARD_ROWS = 256


#: What a cluster with token authentication needs from a client, in one line.
AUTH_HINT = ("a cluster with token authentication needs its token here: ~/.ray/auth_token (`ray get-auth-token` "
             "on the head node prints it), $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH")


def _token_auth_like_auto() -> None:
    """Ray (2.5x+) turns token authentication on for ``address="auto"`` when a token is available
    (~/.ray/auth_token, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH) and RAY_AUTH_MODE is unset, but not
    for an explicit HOST:PORT, whose handshake then fails with InvalidAuthToken. Do what the auto
    path does (Ray's own function; an explicit RAY_AUTH_MODE is respected)."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def start_ray(address: str | None) -> Any:
    """Connect to a cluster, or start a local Ray instance (bound to loopback) sized to the machine."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local instance binds 127.0.0.1
    try:
        import ray
    except ImportError as exc:
        raise LibraryError("--engine ray needs Ray: pip install 'searchlite[ray]'") from exc
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if address:
            kwargs["address"] = address
            if address != "auto":
                _token_auth_like_auto()
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError) as exc:
            if not address:
                raise
            raise LibraryError(f"cannot connect to the Ray cluster at {address}: {str(exc).strip().splitlines()[0]} "
                               f"({AUTH_HINT})") from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # searchlite shows one bar of its own
    if ray.cluster_resources().get("CPU", 0) < 8:
        # Ray Data reserves a share of the CPUs for each operator; on a few cores that leaves one decode
        # task running beside the model actors (measured: decode at half speed on 2 cores)
        context.op_resource_reservation_enabled = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


class DecodeTask:
    """Ray Data CPU stage: Work items -> decoded, preprocessed inputs (or an error, or a move)."""

    def __init__(self, preprocessors: Sequence[Callable], sizes: Sequence[Any], vanished: dict[str, int],
                 draft: bool) -> None:
        self.preprocessors, self.sizes, self.vanished, self.draft = list(preprocessors), list(sizes), vanished, draft

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import ray

        start = time.perf_counter()
        n = len(batch["image_id"])
        done = [decode(Work(int(batch["image_id"][j]), os.fsdecode(batch["path"][j]), str(batch["state"][j]),
                            batch["old_sha"][j] or None, int(batch["size"][j]), int(batch["mtime_ns"][j]),
                            [int(m) for m in batch["missing"][j]]), self.preprocessors, self.sizes, self.vanished,
                       self.draft) for j in range(n)]
        out: dict[str, Any] = {key: batch[key] for key in ("image_id", "path", "state", "old_sha", "size", "mtime_ns")}
        out.update(sha=[d.sha or "" for d in done], error=[d.error or "" for d in done],
                   moved_from=[d.moved_from or 0 for d in done], same_content=[d.same_content for d in done],
                   meta=[_meta(d.meta) for d in done])
        for i, size in enumerate(self.sizes):
            need = np.array([bool(d.pixels and i in d.pixels) for d in done])
            width, height = (size.width, size.height) if isinstance(size, InputSize) else size
            sample = next((d.pixels[i] for d in done if d.pixels and i in d.pixels), None)
            # one column per model input (NaFlex: pixels_i.pixel_values, pixels_i.pixel_attention_mask, ...)
            parts = sample if isinstance(sample, dict) else {
                "": sample if sample is not None else np.zeros((3, height, width), np.float32)}
            for key, value in parts.items():
                column = np.zeros((n, *value.shape), dtype=value.dtype)
                for j, d in enumerate(done):
                    if need[j]:
                        column[j] = d.pixels[i][key] if key else d.pixels[i]
                out[f"pixels_{i}" + (f".{key}" if key else "")] = column
            out[f"need_{i}"] = need
        out["decode_s"] = np.full(n, (time.perf_counter() - start) / max(n, 1))
        out["node"] = [ray.get_runtime_context().get_node_id()] * n
        return out


def _meta(meta: dict | None) -> str:
    import json

    if not meta:
        return ""
    return json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in meta.items()})


def _cpu_threads(ray: Any, workers: int) -> int:
    """Threads for each CPU model actor: a node's cores shared by the actors it will hold (the
    decode tasks share them too, as the local engine's decode threads share the model's cores)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    per_node = max((int(n["Resources"].get("CPU", 1)) for n in nodes), default=1)
    actors_per_node = max(1, -(-workers // max(len(nodes), 1)))
    return max(1, per_node // actors_per_node)


class EmbedActor:
    """Ray Data model stage: one actor holds the models (on its GPU, or the CPU) and embeds batches."""

    def __init__(self, specs: Sequence[str], device: str, batch_size: int, threads: int = 0,
                 precision: str = "auto") -> None:
        from searchlite.models.registry import load_embedder

        if device == "cpu" and threads:
            import torch

            torch.set_num_threads(threads)  # Ray pins a 1-CPU actor to one thread; a CPU model wants the node's cores
        self.embedders = [load_embedder(spec, device=device, batch_size=batch_size, precision=precision)
                          for spec in specs]
        import ray

        self.node = ray.get_runtime_context().get_node_id()  # an actor stays on its node

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        start = time.perf_counter()
        n = len(batch["image_id"])
        out = {key: value for key, value in batch.items() if not key.startswith("pixels_")}
        for i, emb in enumerate(self.embedders):
            need = np.asarray(batch[f"need_{i}"], dtype=bool)
            vectors = np.zeros((n, emb.dim), dtype=np.float32)
            if need.any():
                keyed = {k.split(".", 1)[1]: np.asarray(v)[need] for k, v in batch.items()
                         if k.startswith(f"pixels_{i}.")}
                vectors[need] = emb.embed_pixels(keyed or np.asarray(batch[f"pixels_{i}"])[need])
            out[f"vector_{i}"] = vectors
        out["embed_s"] = np.full(n, (time.perf_counter() - start) / max(n, 1))
        out["embed_node"] = [self.node] * n
        return out


class RayIndexer(Indexer):
    """The Indexer with decoding and embedding on Ray (see the module docstring)."""

    def __init__(self, *args: Any, specs: Sequence[str], address: str | None = None, gpus_per_worker: float = 1.0,
                 ray_workers: int | None = None, shards: Path | None = None, device: str = "auto", precision: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.specs = list(specs)
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.ray_workers = ray_workers
        self.keep_shards = shards is not None
        self.shards = Path(shards) if shards else self.catalog.folder / "shards" / "ray"
        self.device = device
        self.precision = precision

    # -- shards --------------------------------------------------------------------------------
    def _before_scan(self, writer: VectorWriter) -> None:
        """Commit the shards a killed run wrote but did not commit (their images are done)."""
        for shard in sorted(self.shards.glob("part-*.parquet")) if self.shards.is_dir() else []:
            log.info("committing %s, left by an interrupted run", shard.name)
            self._commit_shard(shard, writer)

    def _write_shard(self, batch: dict[str, np.ndarray], number: int) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from searchlite.store.vectorstore import fsync_dir

        self.shards.mkdir(parents=True, exist_ok=True)
        columns: dict[str, Any] = {}
        for key, value in batch.items():
            if key.startswith("vector_"):
                dim = value.shape[1]
                name = "vector" if key == "vector_0" else key  # vector: the import schema's column
                columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1), pa.float32()), dim)
            elif key not in ("node", "embed_node"):
                columns[key] = list(value) if value.dtype == object else value
        columns["sha256"] = columns.pop("sha")
        # the import schema: path as text (escaped when the name is not UTF-8), its exact bytes beside
        names = [os.fsdecode(p) for p in batch["path"]]
        columns["path"] = [printable(n) for n in names]
        columns["path_bytes"] = pa.array([as_bytes(n) if printable(n) != n else None for n in names], pa.binary())
        path = self.shards / f"part-{number:06d}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.table(columns), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(self.shards)
        return path

    def _commit_shard(self, path: Path, writer: VectorWriter) -> int:
        """Apply a shard to the library like a local batch; rows it already holds are skipped (a
        shard committed just before a crash is committed again without duplicates)."""
        import json

        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        exact = table.get("path_bytes") or [None] * len(table["path"])
        table["path"] = [os.fsdecode(b) if b is not None else p for p, b in zip(table["path"], exact)]
        done = []
        vector_keys = {i: ("vector" if i == 0 else f"vector_{i}") for i in range(len(self.models))}
        for j, image_id in enumerate(table["image_id"]):
            work = Work(int(image_id), table["path"][j], table["state"][j], table["old_sha"][j] or None,
                        int(table["size"][j]), int(table["mtime_ns"][j]), [])
            meta = json.loads(table["meta"][j]) if table["meta"][j] else None
            if meta and meta.get("taken_at"):
                from datetime import datetime

                meta["taken_at"] = datetime.fromisoformat(meta["taken_at"])
            vectors = {i: np.asarray(table[key][j], dtype=np.float32) for i, key in vector_keys.items()
                       if table[f"need_{i}"][j]}
            done.append(Done(work, sha=table["sha256"][j] or None, error=table["error"][j] or None,
                             moved_from=int(table["moved_from"][j]) or None, same_content=bool(table["same_content"][j]),
                             meta=meta, vectors=vectors or None))
        done = self._not_yet_applied(done)
        if done:
            self._commit(done, writer)
        crashpoint("ray-shard-committed")
        if self.keep_shards:
            path.rename(path.with_name(path.name + ".committed"))
        else:
            path.unlink()
        return len(done)

    def _not_yet_applied(self, done: list[Done]) -> list[Done]:
        from sqlalchemy import select

        ids = [d.work.image_id for d in done]
        rows: dict[int, Any] = {}
        have: dict[int, set[int]] = {}
        with self.catalog.Session() as s:
            for part in chunked(ids):  # $SEARCHLITE_SHARD_ROWS may exceed SQLite's 999 parameters
                rows.update({r.id: r for r in s.execute(select(ImageRow.id, ImageRow.sha256, ImageRow.status)
                                                        .where(ImageRow.id.in_(part)))})
                for image_id, model_ref in s.execute(select(VectorRow.image_id, VectorRow.model_ref)
                                                     .where(VectorRow.image_id.in_(part))):
                    have.setdefault(image_id, set()).add(model_ref)
        out = []
        for d in done:
            row = rows.get(d.work.image_id)
            if row is None:
                continue  # deleted (or a move already applied) since the shard was written
            applied = (row.status == "ok" and d.sha and row.sha256 == d.sha and d.vectors is not None
                       and all(self.models[i].id in have.get(row.id, set()) for i in d.vectors))
            if not applied:
                out.append(d)
        return out

    # -- the pipeline ---------------------------------------------------------------------------
    def _embed_all(self, scan: ScanTable, writer: VectorWriter, total: int,
                   progress: Callable[[int, int], None] | None) -> None:
        # paths travel as bytes: a file name that is not UTF-8 cannot be an Arrow string
        items = [dict(image_id=w.image_id, path=as_bytes(w.path), state=w.state, old_sha=w.old_sha or "", size=w.size,
                      mtime_ns=w.mtime_ns, missing=w.missing) for w in self._work_items(scan)]
        if not items:
            return
        ray = start_ray(self.address)
        gpus = ray.cluster_resources().get("GPU", 0)
        workers = self.ray_workers or (max(1, int(gpus // self.gpus_per_worker)) if gpus else 1)
        device = "cuda" if gpus and self.device in ("auto", "cuda") else "cpu"
        resources = {"num_gpus": self.gpus_per_worker} if device == "cuda" else {"num_cpus": 1}
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // 16))
        # decoding: stateless CPU tasks (retried if a worker dies); embedding: model actors (restarted)
        decode_fn = DecodeTask([e.preprocessor() for e in self.embedders], [input_size_of(e) for e in self.embedders],
                               self._vanished, self.draft)
        ds = ds.map_batches(decode_fn, batch_size=16, num_cpus=1, max_retries=3)
        threads = 0 if device == "cuda" else _cpu_threads(ray, workers)
        ds = ds.map_batches(EmbedActor, fn_constructor_args=(self.specs, device, self.batch_size, threads, self.precision),
                            batch_size=self.batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                            max_restarts=3, max_task_retries=3, **resources)
        done, start, decode_s, embed_s, nodes = 0, time.perf_counter(), 0.0, 0.0, set()
        number = int(time.time() * 1000) % 10**6 * 1000
        rows = int(os.environ.get("SEARCHLITE_SHARD_ROWS", SHARD_ROWS))
        for batch in ds.iter_batches(batch_size=rows, batch_format="numpy"):
            decode_s += float(np.sum(batch["decode_s"]))
            embed_s += float(np.sum(batch["embed_s"]))
            nodes.update(batch["node"].tolist() + batch["embed_node"].tolist())  # where decoding and embedding ran
            path = self._write_shard(batch, number)
            number += 1
            crashpoint("ray-shard-written")
            self._commit_shard(path, writer)
            done += len(batch["image_id"])
            if progress:
                progress(done, max(total, done))
        wall = time.perf_counter() - start
        self.stats.stages = {"images": done, "wall_img_s": round(done / wall, 2) if wall else 0.0,
                       "decode_img_s_per_task": round(done / decode_s, 2) if decode_s else 0.0,
                       "embed_img_s_per_actor": round(done / embed_s, 2) if embed_s else 0.0,
                       "model_actors": workers, "device": device, "nodes": len(nodes)}
