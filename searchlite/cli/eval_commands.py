"""Evaluation commands: bench, calibrate, demo, models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from searchlite.cli.common import DeviceOpt, JsonOpt, LangOpt, LibraryOpt, PrecisionOpt, Progress, app, open_library


def _bench_library(dataset: Path, library: Path | None, device: str, precision: str = "auto"):
    """The library that caches a dataset's embeddings (default: one per dataset and precision in the
    cache dir, so one precision's cached vectors never stand in for another's)."""
    import hashlib

    from searchlite.config import cache_dir

    if library is None:
        name = str(dataset.expanduser().resolve()) + ("" if precision == "auto" else f"\x1f{precision}")
        key = hashlib.sha256(name.encode()).hexdigest()[:16]
        library = cache_dir() / "bench" / key
    return open_library(library, device, create=True, precision=precision)


@app.command(rich_help_panel="Benchmarks, calibration and demo")
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
    lang: LangOpt = None,
    hybrid: Annotated[bool, typer.Option("--hybrid", help="Hybrid search benchmark (vector / text / hybrid) on a "
                                         "set from `python -m searchlite.sample_data.hybrid OUT`.")] = False,
    truth: Annotated[bool, typer.Option("--truth/--extracted", help="With --hybrid: text rows from the set's "
                                        "ground truth, or read by the index stage (OCR, GPS, XMP).")] = True,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    library: Annotated[Path | None, typer.Option("--library", "-L", help="Bench cache library.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrieval benchmark: recall@k and MRR per model and rerank pair, plus ANN recall.

    DATASET with captions: text->image and image->text. A folder of class subfolders (or --pairs):
    image->image (recall@k, MRR, mAP). With --hybrid: recall@1/5 and MRR@10 of search --mode
    vector, text and hybrid."""
    from searchlite.evaluation.bench import format_table, run_bench, run_image_bench
    from searchlite.evaluation.datasets import is_labelled_folder, read_captions, read_labelled

    if hybrid:  # round4-hybrid
        from searchlite.evaluation.hybrid_bench import format_hybrid_table, run_hybrid_bench

        source = "truth" if truth else "extracted"
        lib = _bench_library(Path(f"{dataset.expanduser().resolve()}\x1fhybrid-{source}"), library, device, precision)
        result = run_hybrid_bench(lib, dataset, model[0], source)
        print(json.dumps(result, indent=1) if as_json else format_hybrid_table(result))
        return

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
    lib = _bench_library(dataset, library, device, precision)
    progress = Progress("embedding")

    try:
        if image_task:
            result = run_image_bench(lib, labelled, model, k_values, index_type, progress)
        else:
            result = run_bench(lib, ds, model, rerank or (), k_values, template, candidates, index_type, progress,
                               lang=lang)
    finally:
        progress.close()
    if plot:
        from searchlite.evaluation.plot import plot_recall

        plot_recall(result, plot)
    print(json.dumps(result, indent=1) if as_json else format_table(result))


@app.command(rich_help_panel="Benchmarks, calibration and demo")
def calibrate(
    dataset: Annotated[Path, typer.Argument(help="Captioned dataset (as for bench).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model to calibrate (CLIP or ALIGN).")],
    negatives: Annotated[int, typer.Option("--negatives", min=1, help="Negative pairs per positive.")] = 10,
    template: Annotated[str | None, typer.Option("--template")] = None,
    images: Annotated[Path | None, typer.Option("--images")] = None,
    split: Annotated[str | None, typer.Option("--split")] = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Library that caches the dataset's embeddings "
                                                "(default: under $SEARCHLITE_CACHE or the user cache dir).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit Platt scaling (probability = sigmoid(a*cos + b)) for a model and store it in the library."""
    from searchlite.evaluation.datasets import read_captions

    ds = read_captions(dataset, images, split)
    target = open_library(library, device, create=True)
    report = target.calibrate(ds, model, _bench_library(dataset, cache, device), negatives=negatives,
                              template=template)
    if as_json:
        print(json.dumps(report, indent=1))
        return
    print(f"{model}: a={report['a']:.4f} b={report['b']:.4f} on {report['pairs']} pairs ({report['positives']} positive)")
    for when in ("before", "after"):
        print(f"  {when:6}  ECE {report[when]['ece']:.4f}  Brier {report[when]['brier']:.4f}")
    if "note" in report:
        print(f"  note: {report['note']}")


@app.command(rich_help_panel="Benchmarks, calibration and demo")
def demo(
    workdir: Annotated[Path | None, typer.Option("--dir", help="Where to put sample images and the demo library "
                                                    "(default: the user cache dir).")] = None,
    count: Annotated[int, typer.Option("--count", min=10)] = 300,
    device: DeviceOpt = "auto",
) -> None:
    """Offline end-to-end demo: sample images + bundled model -> index, search, similar, bench."""
    from searchlite.config import cache_dir
    from searchlite.demo import run_demo

    progress = Progress("indexing")
    try:
        run_demo(workdir or cache_dir() / "demo", count, device=device,
                 progress=progress, before_queries=progress.close)
    finally:
        progress.close()


models_app = typer.Typer(help="Model aliases and spec formats; `models export` prepares the light query path.",
                         invoke_without_command=True, no_args_is_help=False)
app.add_typer(models_app, name="models", rich_help_panel="Benchmarks, calibration and demo")


@models_app.callback()
def models(ctx: typer.Context, library: LibraryOpt = None, as_json: JsonOpt = False) -> None:
    """List the model zoo (alias, spec, family, languages, dim, licence, size); `*` marks the models
    that have indexed the library."""
    if ctx.invoked_subcommand is not None:
        return
    from searchlite.library import zoo_listing

    rows = zoo_listing(library)
    if as_json:
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return
    wide = max([14] + [len(r["family"]) for r in rows])  # zoo family names (openclip-siglip-multilingual)
    print(f"  {'alias':15} {'family':{wide}} {'languages':10} {'dim':>5} {'params':>7}  {'licence':13} spec")
    for r in rows:
        mark = "*" if r["indexed"] else " "
        size = f"{r['params']:g}M" if r["params"] else "?"
        default = "  (default)" if r["default"] else ""
        print(f"{mark} {r['alias'] or '-':15} {r['family']:{wide}} {','.join(r['languages']):10} {r['dim'] or '?':>5} "
              f"{size:>7}  {r['license']:13} {r['spec']}{default}")
    print("\n* = has indexed this library. specs: hf:<hub id or folder> | openclip:<arch>@<tag or checkpoint "
          "file> | openclip:<folder> | an alias")


@models_app.command("export")
def export_model(
    spec: Annotated[str, typer.Argument(help="A model that has indexed the library (or any spec with --to).")],
    force: Annotated[bool, typer.Option("--force", help="Export again even if an export exists.")] = False,
    to: Annotated[Path | None, typer.Option("--to", help="Write both towers in Immich's ONNX layout into this "
                                            "folder (open_clip models; validated against torch), load it back with "
                                            "--model immich:DIR.")] = None,
    device: DeviceOpt = "cpu",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a model's text tower to ONNX (validated against torch) so searches skip importing torch;
    with --to, both towers in Immich's layout."""
    if to is not None:
        from searchlite.models.immich_export import export_immich

        meta = export_immich(spec, to)
        print(json.dumps(meta, indent=1) if as_json else f"wrote {spec} in Immich's layout to {to} (image tower "
              f"max |d| {meta['image_check']['max_abs_diff']:.1e} to torch)")
        return
    lib = open_library(library, device)
    meta = lib.export_text(lib.model_row(spec), force=force)
    if as_json:
        print(json.dumps(meta, indent=1))
    elif meta["valid"]:
        print(f"exported {spec}: max |d| {meta['max_abs_diff']:.1e}, min cosine {meta['min_cosine']:.7f} on "
              f"{meta.get('probes', 14)} probe texts ({meta['seconds']:.1f} s); searches now run without torch")
    else:
        print(f"not exported: {meta['reason']}; searches keep using the torch model")
