"""Housekeeping commands: duplicates, watch."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from searchlite.cli.common import (
    AfterOpt,
    BeforeOpt,
    DeviceOpt,
    FolderOpt,
    FormatOpt,
    GlobOpt,
    JsonOpt,
    LibraryOpt,
    MinHOpt,
    MinWOpt,
    ModelOpt,
    app,
    escape_path,
    open_library,
    parse_filters,
)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@app.command()
def duplicates(
    model: ModelOpt = None,
    threshold: Annotated[float | None, typer.Option("--threshold", min=-1.0, max=1.0, help="Cosine at or above "
                                                    "which two photos are copies (default: the model's zoo value, "
                                                    "else 0.95).")] = None,
    folder: FolderOpt = None, glob: GlobOpt = None, after: AfterOpt = None, before: BeforeOpt = None,
    min_width: MinWOpt = None, min_height: MinHOpt = None, fmt: FormatOpt = None,
    move_to: Annotated[Path | None, typer.Option("--move-to", help="Move every non-keeper under this folder "
                                                 "(keeping its path below its root) and record it in the library; "
                                                 "nothing is deleted.")] = None,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Exact and near-duplicate photos, grouped without chaining, with the one to keep marked.
    Read-only unless --move-to."""
    filters = parse_filters(folder, glob, after, before, min_width, min_height, fmt)
    lib = open_library(library, device)
    groups, moved = lib.duplicates(model, threshold, filters=filters, move_to=move_to)
    if as_json:
        print(json.dumps([g.as_dict() for g in groups], indent=1))
    elif not groups:
        print("no duplicates found")
    else:
        for g in groups:
            print(f"keep {escape_path(g.keep)}")
            for m in g.members:
                mark = "*" if m.path == g.keep else " "
                dims = f"{m.width}x{m.height}" if m.width else "?"
                print(f"  {mark} {m.similarity:6.4f}  {dims:>11}  {_size(m.size):>9}  {m.taken_at or '-':25}  {escape_path(m.path)}")
        extra = sum(len(g.members) - 1 for g in groups)
        print(f"{len(groups)} groups, {extra} photos that are copies of a kept one")
    if moved is not None:
        out = sys.stderr if as_json else sys.stdout
        print(f"moved {len(moved.moved)} photos under {move_to}" + (f", skipped {len(moved.skipped)}"
                                                                      if moved.skipped else ""), file=out)
        for path, why in moved.skipped:
            print(f"  skipped {path}: {why}", file=out)


@app.command()
def watch(
    paths: Annotated[list[Path] | None, typer.Argument(help="Folders to watch (default: the library's folders).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Model spec or alias; repeat for several "
                                                    "(default: the library's models).")] = None,
    rescan_every: Annotated[float, typer.Option("--rescan-every", min=0.0, help="Seconds between full scans, for "
                                                "events a platform drops (0: never).")] = 3600.0,
    debounce: Annotated[float, typer.Option("--debounce", min=0.0, help="Seconds of quiet before a batch of "
                                            "changes is indexed.")] = 2.0,
    hidden: Annotated[bool, typer.Option("--hidden", help="Also index hidden folders and files.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    device: DeviceOpt = "auto",
    library: LibraryOpt = None,
) -> None:
    """Keep the library current as files arrive, change, move and disappear (Ctrl-C stops)."""
    import time

    from searchlite import LibraryError

    lib = open_library(library, device, batch_size, create=True)
    roots = [str(p) for p in paths] if paths else [r for r in lib.catalog.roots().values() if "://" not in r]
    missing = [r for r in roots if not Path(r).is_dir()]
    for r in missing:  # an unplugged disk: watch the rest (as serve --watch does)
        print(f"not watching {r}: not a folder now", file=sys.stderr)
    roots = [r for r in roots if r not in missing]
    if not roots:
        raise LibraryError("nothing to watch: name the folders (`searchlite watch PATH...`)")

    def report(run) -> None:
        s = run.stats
        what = "full scan" if run.full else ", ".join(run.folders)
        print(f"{what}: added {s.added}, updated {s.updated}, moved {s.moved}, removed {s.removed}, "
              f"failed {s.failed} in {s.seconds:.1f}s", flush=True)

    from searchlite.watch import start_watching

    watcher = start_watching(lib, roots, model or (), rescan_every=rescan_every or None, debounce=debounce,
                             include_hidden=hidden, on_run=report)
    print(f"watching {', '.join(watcher.roots)} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping")
    finally:
        watcher.stop()
