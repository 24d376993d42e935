"""Library commands: index, search, similar, compare, serve, status, errors, reindex."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from searchlite.cli.common import (
    AfterOpt,
    BeforeOpt,
    CameraOpt,
    DeviceOpt,
    FolderOpt,
    FormatOpt,
    GlobOpt,
    JsonOpt,
    LangOpt,
    LibraryOpt,
    MinHOpt,
    MinProbOpt,
    MinWOpt,
    ModelOpt,
    ModeOpt,
    NearOpt,
    PlaceOpt,
    PrecisionOpt,
    PreviewOpt,
    Print0Opt,
    Progress,
    RuntimeOpt,
    ServeOpt,
    TextFilterOpt,
    app,
    escape_path,
    open_library,
    parse_filters,
    print_results,
    remote,
)


@app.command()
def index(
    paths: Annotated[list[str], typer.Argument(help="Folders (or URIs: file://, s3://, gs://) to index.")],
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model spec or alias; repeat for several.")] = None,
    index_type: Annotated[str | None, typer.Option("--index", help="auto|flat|hnsw|ivf|ivfpq")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decode threads (local; default: cores) "
                                                "or model actors (ray; default: one per GPU, else 1).")] = None,
    device: DeviceOpt = "auto",
    no_draft: Annotated[bool, typer.Option("--no-draft", help="Full JPEG decode (exact parity).")] = False,
    hidden: Annotated[bool, typer.Option("--hidden", help="Also index hidden folders and files.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (threads + one model) or ray (Ray Data: CPU "
                                        "decode tasks, model actors per GPU); needs the ray extra")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (default: start a "
                                                    "local instance sized to the machine).")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0.0, help="GPUs per model actor "
                                                   "(ray).")] = 1.0,
    shards: Annotated[Path | None, typer.Option("--shards", help="Keep the Parquet shards here (ray; default: "
                                                "inside the library, deleted once committed).")] = None,
    raw_pairs: Annotated[str, typer.Option("--raw-pairs", help="prefer-jpeg: a RAW beside a JPEG/HEIC of the same "
                                           "name is one photo, shown as the JPEG; both: index each")] = "prefer-jpeg",
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out paths matching this gitignore-"
                                                      "style pattern, relative to the root (repeatable; kept with the "
                                                      "root for later runs; --exclude '' clears).")] = None,
    default_excludes: Annotated[bool | None, typer.Option("--default-excludes/--no-default-excludes", help="Leave out "
                                                          "@eaDir, #recycle, .Trash-*, $RECYCLE.BIN, *.lrdata, "
                                                          ".thumbnails (kept with the root; default: on).",
                                                          show_default=False)] = None,
    ocr: Annotated[bool | None, typer.Option("--ocr/--no-ocr", help="Read the text in photos (signs, receipts, "
                                             "screenshots) for text search; kept with the library for later runs "
                                             "(needs the ocr extra; default: the library's setting, off).",
                                             show_default=False)] = None,
    precision: PrecisionOpt = "auto",
    runtime: RuntimeOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Index (or update) folders of images: new, changed, moved and deleted files."""
    from searchlite.vectors import INDEX_TYPES

    if index_type and index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"--index must be one of {', '.join(INDEX_TYPES)}")
    lib = open_library(library, device, batch_size, create=True, precision=precision, runtime=runtime)
    progress = Progress("indexing", disable=as_json)

    try:
        stats = lib.index(paths, model or (), index_type=index_type, workers=workers, draft=not no_draft,
                          include_hidden=hidden, raw_pairs=raw_pairs, progress=progress, engine=engine,
                          ray_address=ray_address, gpus_per_worker=gpus_per_worker, shards=shards,
                          exclude=exclude, default_excludes=default_excludes, ocr=ocr)
    finally:
        progress.close()
    if as_json:
        print(json.dumps(stats.as_dict(), indent=1))
        return
    print(f"added {stats.added}, updated {stats.updated}, moved {stats.moved}, removed {stats.removed}, "
          f"failed {stats.failed}, unchanged {stats.unchanged}" + (f", {stats.skipped} videos skipped" if stats.skipped
                                                                     else "") + f" in {stats.seconds:.1f}s")
    for model_id, factory in stats.index.items():
        print(f"index for {model_id}: {factory}")
    if stats.stages:
        print("stages: " + ", ".join(f"{k} {v}" for k, v in stats.stages.items()))
    if stats.failed:
        print("see `searchlite errors` for the files that could not be read")


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", "--top", min=1)] = 20,
    model: ModelOpt = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template; '{}' = the query.")] = None,
    ensemble: Annotated[bool, typer.Option("--ensemble", help="Average the 80 OpenAI ImageNet templates.")] = False,
    min_prob: MinProbOpt = None,
    folder: FolderOpt = None, glob: GlobOpt = None, after: AfterOpt = None, before: BeforeOpt = None,
    min_width: MinWOpt = None, min_height: MinHOpt = None, fmt: FormatOpt = None,
    sort: Annotated[str, typer.Option("--sort", help="relevance|date")] = "relevance",
    paths: Annotated[bool, typer.Option("--paths", help="Print paths only.")] = False,
    print0: Print0Opt = False,
    rerank: Annotated[str | None, typer.Option("--rerank", help="Re-score the candidates with this model.")] = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="First-stage pool for --rerank.")] = 100,
    fusion: Annotated[str, typer.Option("--fusion", help="replace|rrf|prob (with --rerank).")] = "replace",
    lang: LangOpt = None,
    mode: ModeOpt = "hybrid",
    place: PlaceOpt = None, near: NearOpt = None, camera: CameraOpt = None, text_filter: TextFilterOpt = None,
    serve: ServeOpt = False,
    preview: PreviewOpt = False,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Text-to-image search: the embedding fused with the text the photos carry (OCR, place, names,
    camera, keywords), optionally re-ranked by a second model."""
    from searchlite import params
    from searchlite.hybrid import MODES

    template, min_prob = params.check_template(template, "--template"), params.check_min_prob(min_prob, "--min-prob")
    k = params.check_k(k, "--top")
    if mode not in MODES:  # round4-hybrid
        raise typer.BadParameter(f"--mode must be one of {', '.join(MODES)}")
    filters = parse_filters(folder, glob, after, before, min_width, min_height, fmt, place, near, camera, text_filter)
    if not rerank:
        served = remote(library, "search", {"text": text, "model": model, "k": k, "template": template,
                                            "ensemble": ensemble, "min_prob": min_prob, "sort": sort,
                                            "filters": filters.to_json(), "cwd": os.getcwd(),
                                            **({"lang": lang} if lang else {}),
                                            **({"mode": mode} if mode != "hybrid" else {})}, start=serve)
        if served is not None:
            print_results(served, as_json, paths, f'"{text}"', preview, print0)
            return
    lib = open_library(library, device)
    if rerank:
        results = lib.rerank(text, model, rerank, k, candidates=candidates, fusion=fusion, template=template,
                             filters=filters, min_prob=min_prob, ensemble=ensemble, sort=sort)
    else:
        results = lib.search(text, model, k, template=template, min_prob=min_prob, sort=sort, filters=filters,
                             ensemble=ensemble, lang=lang, mode=mode)
    print_results(results, as_json, paths, f'"{text}"', preview, print0)


@app.command()
def compare(
    text: Annotated[str, typer.Argument(help="What to look for.")],
    models: Annotated[str, typer.Option("--models", help="Comma-separated model specs or aliases.")],
    k: Annotated[int, typer.Option("-k", "--top", min=1)] = 10,
    candidates: Annotated[int, typer.Option("--candidates", min=1)] = 100,
    shared: Annotated[bool, typer.Option("--shared-pool", help="Every model re-scores the first model's pool.")] = False,
    template: Annotated[str | None, typer.Option("--template", help="Prompt template for every model.")] = None,
    folder: FolderOpt = None, glob: GlobOpt = None, after: AfterOpt = None, before: BeforeOpt = None,
    min_width: MinWOpt = None, min_height: MinHOpt = None, fmt: FormatOpt = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Side-by-side top-k of several models, with where they agree (filters as in `search`)."""
    from searchlite import params

    template, k = params.check_template(template, "--template"), params.check_k(k, "--top")
    specs = [m.strip() for m in models.split(",") if m.strip()]
    filters = parse_filters(folder, glob, after, before, min_width, min_height, fmt)
    out = open_library(library, device).compare(text, specs, k, candidates=candidates, shared_pool=shared,
                                                template=template, filters=filters)
    if as_json:
        print(json.dumps({spec: [r.as_dict() for r in res] for spec, res in out.items()}, indent=1))
        return
    for spec, res in out.items():
        print(f"== {spec}")
        for r in res:
            agree = f"  [also: {', '.join(r.extra['also_in'])}]" if r.extra.get("also_in") else ""
            print(f"{r.rank:>4}  {r.probability:6.3f}  {r.path}{agree}")


@app.command()
def similar(
    image: Annotated[Path, typer.Argument(help="Query image (in the library or not).")],
    k: Annotated[int, typer.Option("-k", "--top", min=1)] = 20,
    model: ModelOpt = None,
    min_prob: MinProbOpt = None,
    folder: FolderOpt = None, glob: GlobOpt = None, after: AfterOpt = None, before: BeforeOpt = None,
    min_width: MinWOpt = None, min_height: MinHOpt = None, fmt: FormatOpt = None,
    paths: Annotated[bool, typer.Option("--paths", help="Print paths only.")] = False,
    print0: Print0Opt = False,
    serve: ServeOpt = False,
    preview: PreviewOpt = False,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Image-to-image search."""
    from searchlite import params

    min_prob, k = params.check_min_prob(min_prob, "--min-prob"), params.check_k(k, "--top")
    filters = parse_filters(folder, glob, after, before, min_width, min_height, fmt)
    results = remote(library, "similar", {"image": os.path.abspath(image.expanduser()), "model": model, "k": k,
                                           "min_prob": min_prob, "filters": filters.to_json()}, start=serve)
    if results is None:
        results = open_library(library, device).similar(image, model, k, min_prob=min_prob, filters=filters)
    print_results(results, as_json, paths, str(image), preview, print0)


@app.command()
def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models to preload (default: all).")] = None,
    idle_timeout: Annotated[float | None, typer.Option("--idle-timeout", min=1,
                                                       help="Exit after this many seconds without a request.")] = None,
    http: Annotated[str | None, typer.Option("--http", help="Also serve the web page and HTTP API on [HOST:]PORT "
                                             "(default host 127.0.0.1).")] = None,
    token: Annotated[str | None, typer.Option("--token", help="The token every HTTP request needs (default: a "
                                              "random one, printed in the page's URL).")] = None,
    no_token: Annotated[bool, typer.Option("--no-token", help="No token on HTTP requests (loopback addresses "
                                           "only).")] = False,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="Also answer HTTP requests whose Host "
                                                         "header is this name (repeatable).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Also keep the library current with its folders (see "
                                        "`searchlite watch`): new photos are searchable seconds after they land.")] = False,
    rescan_every: Annotated[float, typer.Option("--rescan-every", min=0.0, help="With --watch: seconds between full "
                                                "scans, for events a platform drops (0: never).")] = 3600.0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    library: LibraryOpt = None,
) -> None:
    """Keep models loaded and answer `search` / `similar` instantly; with --http, also the web page (Ctrl-C stops)."""
    from searchlite.server import socket_path
    from searchlite.service import Service

    bind = None
    if http:
        from searchlite.web import is_loopback, parse_bind

        bind = parse_bind(http)
        if token is not None and (no_token or not token.strip()):
            raise typer.BadParameter("--token takes a non-empty token and cannot be combined with --no-token")
        if no_token and not is_loopback(bind[0]):
            from searchlite import SearchliteError

            raise SearchliteError(f"refusing to serve on {bind[0]} without a token (anyone on the network could see "
                                  "your photos); bind 127.0.0.1 or drop --no-token")
        if not no_token and token is None:
            import secrets

            token = secrets.token_urlsafe(32)
    lib = open_library(library, device, precision=precision, resident=True)
    if watch:
        lib.catalog.require_writable("serve --watch")
    service = Service(lib, model or [], http=bind, token=token, allow_hosts=allow_host or (),
                      idle_timeout=idle_timeout, watch=watch, rescan_every=rescan_every)

    def ready(svc: Service) -> None:
        print(f"serving {lib.path} on {socket_path(lib.path)} (Ctrl-C to stop)", flush=True)
        if svc.watcher is not None:
            print(f"watching {', '.join(svc.watcher.roots) or 'no folders'}", flush=True)
        if bind is not None:
            host = f"[{bind[0]}]" if ":" in bind[0] else bind[0]
            print(f"web page on http://{host}:{bind[1]}/" + (f"?token={token}" if token else ""), flush=True)

    try:
        service.run(ready)
    except KeyboardInterrupt:
        print("stopped")


@app.command()
def status(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of images (ok / pending / error) and vectors per model."""
    info = open_library(library).status()
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print(f"library: {info['library']}")
    for root in info["roots"]:
        print(f"  root: {escape_path(root)}")
    print("images: " + ", ".join(f"{k} {v}" for k, v in sorted(info["images"].items())) if info["images"]
          else "images: none")
    for m in info["models"]:
        count = info["vectors"].get(m["model_id"], 0)
        if not m["indexed"]:
            print(f"model {m['model']} ({m['family']}, d={m['dim']}): not indexed ({count} vectors cached for "
                  f"re-scoring){', calibrated' if m['calibrated'] else ''}")
            continue
        print(f"model {m['model']} ({m['family']}, d={m['dim']}): {count} vectors, index {m['index']} "
              f"({m['index_type']}, {m['stale']} deleted awaiting compaction){', calibrated' if m['calibrated'] else ''}")
        if m.get("precision"):
            print("  embedded in " + ", ".join(f"{p} {n}" for p, n in sorted(m["precision"].items()))
                  + f" (engine {m.get('runtime', 'torch')})")
    if "text" in info:  # round4-text
        print("text: " + (", ".join(f"{k} {v}" for k, v in info["text"].items() if v) or "none")
              + f" (OCR {'on' if info.get('ocr_enabled') else 'off'})")


@app.command()
def errors(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Files that could not be indexed, with the reason."""
    rows = open_library(library).errors()
    if as_json:
        print(json.dumps([{"path": p, "error": e} for p, e in rows], indent=1))
        return
    if not rows:
        print("no errors")
    for path, err in rows:
        print(f"{escape_path(path)}\t{err}")


@app.command()
def reindex(
    index_type: Annotated[str, typer.Option("--index", help="auto|flat|hnsw|ivf|ivfpq")] = "auto",
    model: ModelOpt = None,
    library: LibraryOpt = None,
) -> None:
    """Rebuild a model's FAISS index from the stored vectors (no re-embedding)."""
    from searchlite.vectors import INDEX_TYPES

    if index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"--index must be one of {', '.join(INDEX_TYPES)}")
    factory = open_library(library).reindex(model, index_type)
    print(f"rebuilt: {factory}")


@app.command()
def compact(model: ModelOpt = None, library: LibraryOpt = None) -> None:
    """Merge index segments and drop deleted images from them (index runs do this as they go)."""
    for spec, description in open_library(library).compact(model).items():
        print(f"{spec}: {description}")


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="A Parquet file or a folder of Parquet files.")],
    model: Annotated[str, typer.Option("--model", "-m", help="The model that computed the vectors.")],
    root: Annotated[str | None, typer.Option("--root", help="Root folder (or URI prefix) for paths outside "
                                             "every known root (default: each file's parent folder).")] = None,
    index_type: Annotated[str | None, typer.Option("--index", help="auto|flat|hnsw|ivf|ivfpq")] = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import vectors computed elsewhere (Parquet: path, vector [, sha256, size, mtime_ns, width, height, taken_at])."""
    lib = open_library(library, device, create=True)
    progress = Progress("importing", disable=as_json)
    try:
        summary = lib.import_vectors(source, model, root=root, index_type=index_type, progress=progress)
    finally:
        progress.close()
    if as_json:
        print(json.dumps(summary, indent=1))
        return
    print(f"imported {summary['imported']} (added {summary['added']}, replaced {summary['replaced']}), "
          f"skipped {summary['skipped']} bad rows in {summary['seconds']:.1f}s; index {summary['index']}")
    for problem in summary["problems"][:20]:
        print(f"  {problem}")


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="Parquet file to write (a folder of parts past 1M rows).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Whose vectors to export.")],
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model's vectors and image metadata as Parquet (the import schema)."""
    summary = open_library(library).export_vectors(model, out)
    print(json.dumps(summary, indent=1) if as_json else f"exported {summary['rows']} vectors to {summary['path']}")
