"""Shared pieces of the CLI: the typer app, common options, output and progress helpers.

Heavy modules (torch, transformers, faiss) are imported inside commands so `--help` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from searchlite import SearchliteError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Semantic image search with SigLIP, CLIP and ALIGN.")

LibraryOpt = Annotated[Path | None, typer.Option("--library", "-L", help="Library folder "
                       "(default: $SEARCHLITE_LIBRARY or the user data dir).", show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Model spec or alias (default: the "
                     "library's first model).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|mps")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
def _precision(value: str) -> str:
    """A usage error (exit 2) for a --precision that is not one of the five."""
    if value not in ("auto", "fp32", "bf16", "fp16", "int8"):
        raise typer.BadParameter(f"must be one of auto, fp32, bf16, fp16, int8, got {value!r}")
    return value


def _runtime(value: str) -> str:
    """A usage error (exit 2) for a --runtime that is not one of the three."""
    if value not in ("auto", "torch", "onnx"):
        raise typer.BadParameter(f"must be one of auto, torch, onnx, got {value!r}")
    return value


RuntimeOpt = Annotated[str, typer.Option("--runtime", callback=_runtime, help="auto|torch|onnx: the engine of the "
                                         "model's towers; onnx exports the model once into the library (validated "
                                         "against torch) and runs it on onnxruntime; auto: the model's recorded "
                                         "engine, else torch where installed, else its bundled ONNX export.")]


PrecisionOpt = Annotated[str, typer.Option("--precision", callback=_precision, help="auto|fp32|bf16|fp16 for the model's forward; auto: "
                                           "bf16 on CPUs with native bf16 and on CUDA GPUs (fp16 where bf16 is "
                                           "not supported), else fp32; a reduced precision is validated against "
                                           "fp32 once and falls back to it below cosine 0.999; int8: the ONNX engine's "
                                           "dynamically quantized image tower, validated on probes (not the default).")]


def open_library(library: Path | None, device: str = "auto", batch_size: int = 32, create: bool = False,
                 precision: str = "auto", resident: bool = False, runtime: str = "auto"):
    """The Library of a command: one-shot (light ONNX query path) unless ``resident`` (serve)."""
    from searchlite import Library

    return Library(library, device=device, batch_size=batch_size, create=create, precision=precision,
                   resident=resident, runtime=runtime)


#: Idle seconds after which a server started by `--serve` exits ($SEARCHLITE_SERVE_IDLE overrides).
AUTO_SERVE_IDLE = 900.0

PreviewOpt = Annotated[bool, typer.Option("--preview", "-p", help="Show thumbnails inline (kitty or iTerm2 "
                                          "terminals; plain output elsewhere).")]
LangOpt = Annotated[str | None, typer.Option("--lang", help="Language code of the query for models that take one "
                                           "(nllb-clip: FLORES-200, e.g. zho_Hans, jpn_Jpan); default: the model's.")]
ServeOpt = Annotated[bool, typer.Option("--serve", help="Start `searchlite serve` in the background if none runs "
                                        f"(it exits after {AUTO_SERVE_IDLE:.0f} s idle); also $SEARCHLITE_AUTO_SERVE=1.")]


def remote(library: Path | None, command: str, args: dict, start: bool = False):
    """Results from a running `searchlite serve` for this library, or None (then search in-process).
    With ``start`` (or $SEARCHLITE_AUTO_SERVE=1), a server is started in the background when none
    answers, for the next queries; this one is answered in-process."""
    if os.environ.get("SEARCHLITE_NO_SERVER"):
        return None
    from searchlite import server
    from searchlite.config import default_library
    from searchlite.paths import is_writable

    folder = library.expanduser() if library else default_library()
    reply = server.request(folder, command, args)
    if reply is None:
        if (start or os.environ.get("SEARCHLITE_AUTO_SERVE") == "1") and (folder / "catalog.sqlite").is_file() \
                and is_writable(folder):  # its serve.log lives in the library (not on read-only media)
            start_server(folder)
        return None
    if not reply.get("ok"):
        raise SearchliteError(reply.get("error", "the searchlite server failed"))
    from searchlite import SearchResult

    return [SearchResult.from_dict(d) for d in reply["results"]]


def start_server(folder: Path) -> None:
    """`searchlite serve` for a library, detached, exiting when idle; its output goes to serve.log."""
    import subprocess
    import sys

    with open(folder / "serve.log", "ab") as log:
        idle = os.environ.get("SEARCHLITE_SERVE_IDLE", str(AUTO_SERVE_IDLE))
        subprocess.Popen([sys.executable, "-m", "searchlite", "serve", "-L", str(folder), "--idle-timeout", idle],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def terminal_images() -> str | None:
    """The inline-image protocol this terminal speaks: 'kitty', 'iterm', or None (plain output)."""
    if not sys.stdout.isatty():
        return None
    if os.environ.get("KITTY_WINDOW_ID") or os.environ.get("TERM") == "xterm-kitty":
        return "kitty"
    if os.environ.get("TERM_PROGRAM") in ("iTerm.app", "WezTerm") or os.environ.get("LC_TERMINAL") == "iTerm2":
        return "iterm"
    return None


def inline_image(path: str, protocol: str, size: int = 160) -> str:
    """An escape sequence that shows a small thumbnail of an image inline ('' if it cannot be read)."""
    import base64
    import io

    from searchlite import ImageDecodeError
    from searchlite.imaging import load_image

    try:
        image = load_image(path, target_size=(size, size)).image
    except (ImageDecodeError, OSError):
        return ""
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = base64.standard_b64encode(buffer.getvalue()).decode()
    if protocol == "iterm":
        return f"\x1b]1337;File=inline=1;preserveAspectRatio=1:{data}\x07"
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    return "".join(f"\x1b_G{'f=100,a=T,' if n == 0 else ''}m={int(n < len(chunks) - 1)};{chunk}\x1b\\"
                   for n, chunk in enumerate(chunks))


_SHELL_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "'": "\\'"}


def escape_path(path: str) -> str:
    """A path as one printable line: unchanged when it is, else quoted as the shell reads it back
    (``$'a\\nb.jpg'``, bash/zsh ANSI-C quoting, as GNU ls prints such names): control characters
    as ``\\n``/``\\t``/``\\xHH``, bytes that are not UTF-8 (surrogate escapes) as ``\\xHH``."""
    if path.isprintable() and not any("\udc80" <= c <= "\udcff" for c in path):
        return path
    out = []
    for c in path:
        if "\udc80" <= c <= "\udcff":
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c in _SHELL_ESCAPES:
            out.append(_SHELL_ESCAPES[c])
        elif not c.isprintable():
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(c)
    return "$'" + "".join(out) + "'"


def print_results(results, as_json: bool, paths_only: bool, what: str, preview: bool = False,
                  print0: bool = False) -> None:
    """Results as JSON, paths only (one a line, odd names escaped; NUL-terminated and exact with
    ``print0``, for ``xargs -0``), or a table."""
    if print0:
        out = sys.stdout.buffer
        for r in results:
            out.write(os.fsencode(r.path) + b"\0")  # surrogate escapes give back the name's bytes
        out.flush()
        return
    if as_json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
        return
    if not results:
        print(f"no image matches {what}")
        return
    if paths_only:
        for r in results:
            print(escape_path(r.path))
        return
    width = max(len(str(len(results))), 4)
    protocol = terminal_images() if preview else None
    print(f"{'rank':>{width}}  {'prob':>6}  {'score':>7}  path")
    for r in results:
        print(f"{r.rank:>{width}}  {r.probability:6.3f}  {r.score:7.4f}  {escape_path(r.path)}")
        for m in r.extra.get("matches") or ():  # round4-hybrid: why the photo matched, one line each
            line = " ".join(m["text"].split())
            print(f"{'':>{width + 18}}  {m['field']}: {line if line.isprintable() else escape_path(line)}")
        if protocol:
            print(inline_image(r.path, protocol))


class Progress:
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


def parse_filters(folder: Path | None, glob: str | None, after: str | None, before: str | None,
                  min_width: int | None, min_height: int | None, fmt: list[str] | None, place: str | None = None,
                  near: str | None = None, camera: str | None = None, text: str | None = None):
    """The filter options as Filters, checked by :mod:`searchlite.params` (as the socket server and
    HTTP check theirs): a bad value is a one-line usage error (exit 2). A date without a time is
    the whole day (``--before 2026-12-01`` includes Dec 1); a UTC offset given is kept."""
    from searchlite import Filters, params

    # round4-hybrid: the text filters, validated as the HTTP API's
    extra = params.check_text_filters({"place": place, "near": near, "camera": camera, "text": text}, prefix="--")
    return Filters(glob=params.check_text(glob, "--glob", limit=4096),
                   folder=Path(os.path.abspath(folder.expanduser())) if folder else None,
                   after=params.parse_when(after, name="--after"),
                   before=params.parse_when(before, end=True, name="--before"),
                   min_width=params.check_size(min_width, "--min-width"),
                   min_height=params.check_size(min_height, "--min-height"), formats=params.check_formats(fmt, "--format"),
                   **extra)


FolderOpt = Annotated[Path | None, typer.Option("--folder", help="Only images under this folder.")]
GlobOpt = Annotated[str | None, typer.Option("--glob", help="Only paths matching this glob, e.g. '*/2023/*'.")]
AfterOpt = Annotated[str | None, typer.Option("--after", help="Taken on/after (EXIF, else mtime): an ISO date "
                     "(the day's start) or date-time.")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Taken on/before: an ISO date (the whole day "
                      "included) or date-time.")]
MinWOpt = Annotated[int | None, typer.Option("--min-width", help="Minimum width in pixels.")]
MinHOpt = Annotated[int | None, typer.Option("--min-height", help="Minimum height in pixels.")]
FormatOpt = Annotated[list[str] | None, typer.Option("--format", help="Only these formats (JPEG, PNG...).")]
Print0Opt = Annotated[bool, typer.Option("--print0", "-0", help="Print paths only, each followed by a NUL "
                                          "byte (exact names, for `xargs -0`).")]
MinProbOpt = Annotated[float | None, typer.Option("--min-prob", help="Drop results below this probability.")]
# round4-hybrid: the text filters and the search mode
PlaceOpt = Annotated[str | None, typer.Option("--place", help="Only photos taken at this place (city, region or "
                     "country; case and accents ignored).")]
NearOpt = Annotated[str | None, typer.Option("--near", help="Only photos taken within KM of LAT,LON: 'LAT,LON,KM'.")]
CameraOpt = Annotated[str | None, typer.Option("--camera", help="Only photos from this camera (make/model words).")]
TextFilterOpt = Annotated[str | None, typer.Option("--text", help="Only photos that carry this text (OCR or "
                          "metadata: name, folder, keywords, title, description).")]
ModeOpt = Annotated[str, typer.Option("--mode", help="hybrid (the embedding fused with the photos' text), vector "
                                      "(the embedding alone) or text.")]
