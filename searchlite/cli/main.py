"""The `searchlite` command: parse, call the library, print. No logic of its own.

Heavy modules (torch, transformers, faiss) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from searchlite.errors import SearchliteError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semantic image search with SigLIP, CLIP and ALIGN.")

LibraryOpt = Annotated[Path | None, typer.Option("--library", "-L", help="Library folder "
                       "(default: $SEARCHLITE_LIBRARY or the user data dir).", show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model spec or alias (default: the "
                     "library's first model).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|mps")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _library(library: Path | None, device: str = "auto", batch_size: int = 32, create: bool = False):
    from searchlite.library import Library

    return Library(library, device=device, batch_size=batch_size, create=create)


def _remote(library: Path | None, command: str, args: dict):
    """Results from a running `searchlite serve` for this library, or None (then search in-process)."""
    import os

    if os.environ.get("SEARCHLITE_NO_SERVER"):
        return None
    from searchlite import server
    from searchlite.config import default_library

    args = {**args, "cwd": os.getcwd()}  # relative image terms resolve as they would in-process
    reply = server.request(library.expanduser() if library else default_library(), command, args)
    if reply is None:
        return None
    if not reply.get("ok"):
        raise SearchliteError(reply.get("error", "the searchlite server failed"))
    from searchlite.query import SearchResult

    return [SearchResult.from_dict(d) for d in reply["results"]]


def _print_results(results, as_json: bool, paths_only: bool, what: str) -> None:
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
        return
    if not results:
        print(f"no image matches {what}")
        return
    if paths_only:
        for r in results:
            print(r.path)
        return
    width = max(len(str(len(results))), 4)
    print(f"{'rank':>{width}}  {'prob':>6}  {'score':>7}  path")
    for r in results:
        print(f"{r.rank:>{width}}  {r.probability:6.3f}  {r.score:7.4f}  {r.path}")


class _Progress:
    """A tqdm bar (images/s, ETA) created on the first update, so model loading does not count."""

    def __init__(self, desc: str, disable: bool = False) -> None:
        self.desc, self.disable, self.bar = desc, disable, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="img", desc=self.desc, disable=self.disable, dynamic_ncols=True)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _filters(folder: Path | None, glob: str | None, after: str | None, before: str | None,
             min_width: int | None, min_height: int | None, fmt: list[str] | None):
    from searchlite.query import Filters

    def date(s: str | None) -> datetime | None:
        if not s:
            return None
        try:
            return datetime.fromisoformat(s)
        except ValueError as exc:
            raise typer.BadParameter(f"not an ISO date: {s} (e.g. 2023-07-01)") from exc

    return Filters(glob=glob, folder=folder.expanduser().resolve() if folder else None, after=date(after),
                   before=date(before), min_width=min_width, min_height=min_height, formats=tuple(fmt or ()))


FolderOpt = Annotated[Path | None, typer.Option("--folder", help="Only images under this folder.")]
GlobOpt = Annotated[str | None, typer.Option("--glob", help="Only paths matching this glob, e.g. '*/2023/*'.")]
AfterOpt = Annotated[str | None, typer.Option("--after", help="Taken on/after (EXIF, else mtime), ISO date.")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Taken on/before, ISO date.")]
MinWOpt = Annotated[int | None, typer.Option("--min-width", help="Minimum width in pixels.")]
MinHOpt = Annotated[int | None, typer.Option("--min-height", help="Minimum height in pixels.")]
FormatOpt = Annotated[list[str] | None, typer.Option("--format", help="Only these formats (JPEG, PNG...).")]
MinProbOpt = Annotated[float | None, typer.Option("--min-prob", help="Drop results below this probability.")]


@app.command()
def index(
    paths: Annotated[list[Path], typer.Argument(help="Folders to index.")],
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model spec or alias; repeat for several.")] = None,
    index_type: Annotated[str | None, typer.Option("--index", help="auto|flat|hnsw|ivf|ivfpq")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Decode threads (default: cores).")] = None,
    device: DeviceOpt = "auto",
    no_draft: Annotated[bool, typer.Option("--no-draft", help="Full JPEG decode (exact parity).")] = False,
    hidden: Annotated[bool, typer.Option("--hidden", help="Also index hidden folders and files.")] = False,
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Index (or update) folders of images: new, changed, moved and deleted files."""
    from searchlite.vectors import INDEX_TYPES

    if index_type and index_type not in INDEX_TYPES:
        raise typer.BadParameter(f"--index must be one of {', '.join(INDEX_TYPES)}")
    lib = _library(library, device, batch_size, create=True)
    progress = _Progress("indexing", disable=as_json)

    try:
        stats = lib.index(paths, model or (), index_type=index_type, workers=workers, draft=not no_draft,
                          include_hidden=hidden, progress=progress)
    finally:
        progress.close()
    if as_json:
        print(json.dumps(stats.as_dict(), indent=1))
        return
    print(f"added {stats.added}, updated {stats.updated}, moved {stats.moved}, removed {stats.removed}, "
          f"failed {stats.failed}, unchanged {stats.unchanged} in {stats.seconds:.1f}s")
    for model_id, factory in stats.index.items():
        print(f"index for {model_id}: {factory}")
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
    rerank: Annotated[str | None, typer.Option("--rerank", help="Re-score the candidates with this model.")] = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1, help="First-stage pool for --rerank.")] = 100,
    fusion: Annotated[str, typer.Option("--fusion", help="replace|rrf|prob (with --rerank).")] = "replace",
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Text-to-image search (optionally re-ranked by a second model)."""
    filters = _filters(folder, glob, after, before, min_width, min_height, fmt)
    if not rerank:
        remote = _search_remote(library, text, model, k, template, ensemble, min_prob, sort, filters)
        if remote is not None:
            _print_results(remote, as_json, paths, f'"{text}"')
            return
    lib = _library(library, device)
    if rerank:
        from searchlite.rerank import rerank as run_rerank

        results = run_rerank(lib, text, model, rerank, k, candidates, fusion, template, filters, min_prob)
    else:
        results = lib.search(text, model, k, template=template, min_prob=min_prob, sort=sort, filters=filters,
                             ensemble=ensemble)
    _print_results(results, as_json, paths, f'"{text}"')


def _search_remote(library, text, model, k, template, ensemble, min_prob, sort, filters):
    return _remote(library, "search", {"text": text, "model": model, "k": k, "template": template,
                                       "ensemble": ensemble, "min_prob": min_prob, "sort": sort,
                                       "filters": filters.to_json()})


@app.command()
def compare(
    text: Annotated[str, typer.Argument(help="What to look for.")],
    models: Annotated[str, typer.Option("--models", help="Comma-separated model specs or aliases.")],
    k: Annotated[int, typer.Option("-k", "--top", min=1)] = 10,
    candidates: Annotated[int, typer.Option("--candidates", min=1)] = 100,
    shared: Annotated[bool, typer.Option("--shared-pool", help="Every model re-scores the first model's pool.")] = False,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Side-by-side top-k of several models, with where they agree."""
    from searchlite.rerank import compare as run_compare

    specs = [m.strip() for m in models.split(",") if m.strip()]
    out = run_compare(_library(library, device), text, specs, k, candidates, shared)
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
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Image-to-image search."""
    filters = _filters(folder, glob, after, before, min_width, min_height, fmt)
    results = _remote(library, "similar", {"image": str(image.expanduser().resolve()), "model": model, "k": k,
                                           "min_prob": min_prob, "filters": filters.to_json()})
    if results is None:
        results = _library(library, device).similar(image, model, k, min_prob=min_prob, filters=filters)
    _print_results(results, as_json, paths, str(image))


@app.command()
def serve(
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Models to preload (default: all).")] = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
) -> None:
    """Keep models loaded and answer `search` / `similar` instantly (Ctrl-C stops)."""
    from searchlite.server import serve as run_server
    from searchlite.server import socket_path

    lib = _library(library, device)
    print(f"serving {lib.path} on {socket_path(lib.path)} (Ctrl-C to stop)", flush=True)
    try:
        run_server(lib, model or [])
    except KeyboardInterrupt:
        print("stopped")


@app.command()
def status(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of images (ok / pending / error) and vectors per model."""
    info = _library(library).status()
    if as_json:
        print(json.dumps(info, indent=1))
        return
    print(f"library: {info['library']}")
    for root in info["roots"]:
        print(f"  root: {root}")
    print("images: " + ", ".join(f"{k} {v}" for k, v in sorted(info["images"].items())) if info["images"]
          else "images: none")
    for m in info["models"]:
        print(f"model {m['model']} ({m['family']}, d={m['dim']}): {info['vectors'].get(m['model_id'], 0)} vectors, "
              f"index {m['index']} ({m['index_type']}){', calibrated' if m['calibrated'] else ''}")


@app.command()
def errors(library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """Files that could not be indexed, with the reason."""
    rows = _library(library).errors()
    if as_json:
        print(json.dumps([{"path": p, "error": e} for p, e in rows], indent=1))
        return
    if not rows:
        print("no errors")
    for path, err in rows:
        print(f"{path}\t{err}")


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
    factory = _library(library).reindex(model, index_type)
    print(f"rebuilt: {factory}")


def _bench_library(dataset: Path, library: Path | None, device: str):
    import hashlib

    from platformdirs import user_cache_dir

    if library is None:
        key = hashlib.sha256(str(dataset.expanduser().resolve()).encode()).hexdigest()[:16]
        library = Path(user_cache_dir("searchlite", appauthor=False)) / "bench" / key
    return _library(library, device, create=True)


@app.command()
def bench(
    dataset: Annotated[Path, typer.Argument(help="captions.jsonl/.csv folder or file, COCO/Karpathy JSON, TSV.")],
    model: Annotated[list[str], typer.Option("--model", "-m", help="Model to benchmark; repeat for several.")],
    rerank: Annotated[list[str] | None, typer.Option("--rerank", help="A:B = B re-scores A's candidates.")] = None,
    index_type: Annotated[str | None, typer.Option("--index", help="auto|flat|hnsw|ivf|ivfpq")] = None,
    ks: Annotated[str, typer.Option("-k", help="Comma-separated k values.")] = "1,5,10",
    template: Annotated[str | None, typer.Option("--template", help="Wrap captions (default: as-is).")] = None,
    candidates: Annotated[int, typer.Option("--candidates", min=1)] = 100,
    images: Annotated[Path | None, typer.Option("--images", help="Image folder for JSON/TSV datasets.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Karpathy split (e.g. test).")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write recall@k curves to a PNG.")] = None,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Image->image: CSV of (query, relevant) pairs.")] = None,
    device: DeviceOpt = "auto",
    library: Annotated[Path | None, typer.Option("--library", "-L", help="Bench cache library.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieval benchmark: recall@k and MRR per model and rerank pair, plus ANN recall.

    DATASET with captions: text->image and image->text. A folder of class subfolders (or --pairs):
    image->image (recall@k, MRR, mAP)."""
    from searchlite.evaluation.bench import format_table, run_bench, run_image_bench
    from searchlite.evaluation.datasets import is_labelled_folder, read_captions, read_labelled

    try:
        k_values = sorted({int(k) for k in ks.split(",") if k.strip()})
    except ValueError as exc:
        raise typer.BadParameter("-k takes comma-separated integers, e.g. 1,5,10") from exc
    for pair in rerank or []:
        if ":" not in pair:
            raise typer.BadParameter(f"--rerank takes A:B, got {pair}")
    image_task = pairs is not None or is_labelled_folder(dataset)
    if image_task:
        labelled = read_labelled(pairs or dataset)
    else:
        ds = read_captions(dataset, images, split)
        for problem in ds.problems[:20]:
            print(f"warning: {problem}", file=sys.stderr)
        if len(ds.problems) > 20:
            print(f"warning: ... and {len(ds.problems) - 20} more problems", file=sys.stderr)
    lib = _bench_library(dataset, library, device)
    progress = _Progress("embedding")

    try:
        if image_task:
            result = run_image_bench(lib, labelled, model, k_values, index_type, progress)
        else:
            result = run_bench(lib, ds, model, rerank or (), k_values, template, candidates, index_type, progress)
    finally:
        progress.close()
    if plot:
        from searchlite.evaluation.plot import plot_recall

        plot_recall(result, plot)
    print(json.dumps(result, indent=1) if as_json else format_table(result))


@app.command()
def calibrate(
    dataset: Annotated[Path, typer.Argument(help="Captioned dataset (as for bench).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model to calibrate (CLIP or ALIGN).")],
    negatives: Annotated[int, typer.Option("--negatives", min=1, help="Negative pairs per positive.")] = 10,
    template: Annotated[str | None, typer.Option("--template")] = None,
    images: Annotated[Path | None, typer.Option("--images")] = None,
    split: Annotated[str | None, typer.Option("--split")] = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit Platt scaling (probability = sigmoid(a*cos + b)) for a model and store it in the library."""
    from searchlite.calibration import calibrate as run_calibrate
    from searchlite.evaluation.datasets import read_captions

    ds = read_captions(dataset, images, split)
    target = _library(library, device, create=True)
    report = run_calibrate(_bench_library(dataset, None, device), ds, model, target=target, negatives=negatives,
                           template=template)
    if as_json:
        print(json.dumps(report, indent=1))
        return
    print(f"{model}: a={report['a']:.4f} b={report['b']:.4f} on {report['pairs']} pairs ({report['positives']} positive)")
    for when in ("before", "after"):
        print(f"  {when:6}  ECE {report[when]['ece']:.4f}  Brier {report[when]['brier']:.4f}")
    if "note" in report:
        print(f"  note: {report['note']}")


@app.command()
def demo(
    workdir: Annotated[Path | None, typer.Option("--dir", help="Where to put sample images and the demo library "
                                                    "(default: the user cache dir).")] = None,
    count: Annotated[int, typer.Option("--count", min=10)] = 300,
    device: DeviceOpt = "auto",
) -> None:
    """Offline end-to-end demo: sample images + bundled model -> index, search, similar, bench."""
    from platformdirs import user_cache_dir

    from searchlite.demo import run_demo

    progress = _Progress("indexing")
    try:
        run_demo(workdir or Path(user_cache_dir("searchlite", appauthor=False)) / "demo", count, device=device,
                 progress=progress, before_queries=progress.close)
    finally:
        progress.close()


@app.command()
def models() -> None:
    """List the model aliases and spec formats."""
    from searchlite.models.registry import ALIASES, DEMO_ALIAS

    for alias, spec in ALIASES.items():
        print(f"{alias:12} {spec}")
    print(f"{DEMO_ALIAS:12} the bundled demo model (sample_data/demo-model)")
    print("\nspecs: hf:<hub id or folder> | openclip:<arch>@<tag or checkpoint file> | openclip:<folder>")


def main() -> None:
    """Entry point: domain errors become one-line messages and a non-zero exit status."""
    try:
        app(standalone_mode=False)
    except SearchliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except __import__("click").exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except __import__("click").exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
