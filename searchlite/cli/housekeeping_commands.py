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
            print(f"keep {g.keep}")
            for m in g.members:
                mark = "*" if m.path == g.keep else " "
                dims = f"{m.width}x{m.height}" if m.width else "?"
                print(f"  {mark} {m.similarity:6.4f}  {dims:>11}  {_size(m.size):>9}  {m.taken_at or '-':25}  {m.path}")
        extra = sum(len(g.members) - 1 for g in groups)
        print(f"{len(groups)} groups, {extra} photos that are copies of a kept one")
    if moved is not None:
        out = sys.stderr if as_json else sys.stdout
        print(f"moved {len(moved.moved)} photos under {move_to}" + (f", skipped {len(moved.skipped)}"
                                                                      if moved.skipped else ""), file=out)
        for path, why in moved.skipped:
            print(f"  skipped {path}: {why}", file=out)
