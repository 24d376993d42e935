"""A resident query process: `searchlite serve` keeps models and indexes loaded and answers
`search` / `similar` from the CLI over a Unix socket, so a query costs a round trip instead of
importing torch and loading a model.

The socket lives in the library folder, or (paths too long for a Unix socket) in a per-user
runtime folder with mode 0700; the client talks only to a socket owned by its own user. One JSON
line each way per connection; every field is validated by :mod:`searchlite.params` (as the CLI's
and HTTP's); a client that stalls is dropped after REQUEST_TIMEOUT seconds without holding up
others (connections are accepted on threads; requests on one model take turns, see
:mod:`searchlite.service`, which owns this server). The CLI silently falls back to in-process
search when no server answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import socketserver
import stat
import tempfile
from pathlib import Path
from typing import Any

from searchlite import Filters, LibraryError, QueryError, SearchliteError
from searchlite.paths import is_writable

log = logging.getLogger(__name__)

COMMANDS = ("search", "similar", "ping")
REQUEST_TIMEOUT = 10.0
MAX_REQUEST = 1 << 20


def runtime_dir() -> Path:
    """A private folder for sockets: $XDG_RUNTIME_DIR/searchlite or <tmp>/searchlite-<uid>, mode
    0700 and owned by this user (refused otherwise: another user could have planted it)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(base) / "searchlite" if base else Path(tempfile.gettempdir()) / f"searchlite-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(folder)
    except OSError as exc:
        raise LibraryError(f"cannot create the runtime folder {folder}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise LibraryError(f"refusing to use {folder} for the server socket: it must be a folder owned by you "
                           "with mode 0700")
    return folder


def socket_path(library: Path) -> Path:
    """The library's socket (Unix socket paths are limited to ~100 bytes: long ones go to the runtime dir)."""
    library = Path(library).expanduser().resolve()
    path = library / "searchlite.sock"
    # a read-only library cannot hold its socket: then it goes to the runtime dir, as a long path's does
    if len(str(path)) < 100 and (is_writable(library) or not library.exists()):
        return path
    digest = hashlib.sha256(os.fsencode(str(library))).hexdigest()[:16]
    return runtime_dir() / f"{digest}.sock"


def request(library: Path, command: str, args: dict[str, Any], timeout: float = 600.0) -> dict | None:
    """Send one request to the library's server; None when no server (of this user) answers."""
    try:
        path = socket_path(library)
        info = os.lstat(path)
    except (OSError, LibraryError):
        return None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        log.warning("ignoring %s: not a socket owned by this user", path)
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        return json.loads(data) if data else None
    except json.JSONDecodeError:
        return None


def _typed(args: dict, key: str, kind: type | tuple, default: Any = None) -> Any:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise QueryError(f"{key} has the wrong type")
    return value


def parse_request(message: Any) -> tuple[str, dict]:
    """Validate a request: (command, keyword arguments for the Library call), by the one
    validation of :mod:`searchlite.params`."""
    from searchlite import params
    from searchlite.query import SORTS

    if not isinstance(message, dict):
        raise QueryError("a request must be a JSON object")
    command, args = message.get("command"), message.get("args") or {}
    if command not in COMMANDS:
        raise QueryError(f"unknown command {command!r}")
    if not isinstance(args, dict):
        raise QueryError("args must be an object")
    allowed = {"search": {"text", "model", "k", "offset", "template", "ensemble", "min_prob", "sort", "filters", "cwd",
                          "lang", "mode", "fusion"},  # round4-hybrid: mode, fusion
               "similar": {"image", "model", "k", "offset", "min_prob", "sort", "filters"}, "ping": set()}[command]
    unknown = set(args) - allowed
    if unknown:
        raise QueryError(f"unknown argument {sorted(unknown)[0]!r} for {command}")
    if command == "ping":
        return command, {}
    for key in ("k", "offset"):  # JSON numbers only (the CLI sends ints); the range is params'
        if isinstance(args.get(key), str | float):
            raise QueryError(f"{key} has the wrong type")
    out: dict[str, Any] = {
        "model": params.check_text(_typed(args, "model", str), "model"),
        "k": params.check_k(args.get("k", 20)),
        "offset": params.check_offset(args.get("offset")),
        "min_prob": params.check_min_prob(args.get("min_prob")),
        "sort": _typed(args, "sort", str, "relevance"),
        "filters": Filters.from_json(args.get("filters")),
    }
    if out["sort"] not in SORTS:
        raise QueryError(f"sort must be one of {', '.join(SORTS)}")
    if command == "search":
        text = params.check_text(_typed(args, "text", str), "text", required=True)
        cwd = params.check_text(_typed(args, "cwd", str), "cwd", limit=4096)
        if cwd is not None and not (os.path.isabs(cwd) and os.path.isdir(cwd)):
            raise QueryError("cwd must be an absolute folder")
        out.update(text=text, template=params.check_template(_typed(args, "template", str)),
                   ensemble=_typed(args, "ensemble", bool, False), cwd=cwd,
                   lang=params.check_text(_typed(args, "lang", str), "lang", limit=16))
        # round4-hybrid: absent means the default (hybrid), so older clients keep working
        out.update({key: value for key in ("mode", "fusion") if (value := _typed(args, key, str)) is not None})
    else:
        image = params.check_text(_typed(args, "image", str), "image", limit=4096)
        if not image or not os.path.isabs(image):
            raise QueryError("image must be an absolute path")
        out["image"] = image
    return command, out


def _model_refs(lib, command: str, args: dict) -> list[int]:
    """The models a request reads (their locks serialise what is not thread-safe per model)."""
    return [lib.model_row(args.get("model")).id] if command in ("search", "similar") else []


def handle(lib, message: Any) -> dict:
    """Answer one request (a dict) with a JSON-able dict; never raises for bad input. Runs without
    the library lock: only the locks of the model it reads (see :mod:`searchlite.service`)."""
    from searchlite.modellocks import models_locked

    try:
        command, args = parse_request(message)
        if command == "ping":
            return {"ok": True, "library": str(lib.path), "pid": os.getpid()}
        with models_locked(lib, _model_refs(lib, command, args)):
            if command == "search":
                results = lib.search(args.pop("text"), **args)
            else:
                results = lib.similar(args.pop("image"), **args)
    except SearchliteError as exc:
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
    return {"ok": True, "results": [r.as_dict() for r in results]}


def preload(lib, models: list[str]) -> None:
    """Load the models (their query text towers) and their indexes before the first request."""
    for spec in models or [m.spec for m in lib.catalog.models(indexed_only=True)]:
        row = lib.model_row(spec)
        lib.text_encoder(row)  # the light ONNX tower when exported, else the torch model
        lib.model_index(row)
        log.info("loaded %s", row.spec)


def open_socket_server(lib, activity: Any = None) -> socketserver.ThreadingUnixStreamServer:
    """The library's socket server, bound (mode 0600) and not yet serving; ``activity.touch()``
    is called on every request but a ping. A LibraryError when another server answers there."""
    path = socket_path(lib.path)
    if request(lib.path, "ping", {}, timeout=2.0) is not None:
        raise LibraryError(f"a searchlite server already answers on {path}")
    path.unlink(missing_ok=True)

    class Handler(socketserver.StreamRequestHandler):
        timeout = REQUEST_TIMEOUT  # a stalled client is dropped; others are served meanwhile

        def handle(self) -> None:
            try:
                line = self.rfile.readline(MAX_REQUEST + 1)
                message = json.loads(line) if len(line) <= MAX_REQUEST else None
            except (OSError, ValueError):
                return
            if activity is not None and not (isinstance(message, dict) and message.get("command") == "ping"):
                activity.touch()  # a ping asks whether a server runs: it is not use
            try:
                reply = handle(lib, message)
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the server
                log.exception("request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            try:
                self.wfile.write(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    old_umask = os.umask(0o177)  # the socket is created 0600: only this user can connect
    try:
        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    finally:
        os.umask(old_umask)
    server.daemon_threads = True
    server.socket_file = path
    return server


def close_socket_server(server: socketserver.BaseServer) -> None:
    """Stop a serving socket server, close it and remove its socket file."""
    server.shutdown()  # returns at once when serve_forever has already stopped
    server.server_close()
    Path(server.socket_file).unlink(missing_ok=True)

