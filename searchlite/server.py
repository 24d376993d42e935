"""A resident query process: `searchlite serve` keeps models and indexes loaded and answers
`search` / `similar` from the CLI over a Unix socket in the library folder, so a query costs a
round trip instead of importing torch and transformers and loading a model (~5 s cold here).

The CLI uses the server when its socket answers and silently falls back to in-process search
otherwise (no server, a stale socket, another library). One request per connection, one JSON
line each way; requests are served one at a time (torch models are not shared across threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import socketserver
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMMANDS = ("search", "similar", "ping")


def socket_path(library: Path) -> Path:
    """The library's socket (Unix socket paths are limited to ~100 bytes: long ones go to tmp)."""
    library = Path(library).expanduser().resolve()
    path = library / "searchlite.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(library).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"searchlite-{digest}.sock"


def request(library: Path, command: str, args: dict[str, Any], timeout: float = 600.0) -> dict | None:
    """Send one request to the library's server; None when no server answers (use in-process)."""
    path = socket_path(library)
    if not path.exists():
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
    except (TimeoutError, ConnectionRefusedError, FileNotFoundError, OSError):
        return None
    return json.loads(data) if data else None


def _handle(lib, message: dict) -> dict:
    from searchlite.errors import SearchliteError
    from searchlite.query import Filters

    command, args = message.get("command"), dict(message.get("args") or {})
    if command not in COMMANDS:
        return {"ok": False, "error": f"unknown command {command!r}"}
    if command == "ping":
        return {"ok": True, "library": str(lib.path)}
    args["filters"] = Filters.from_json(args.get("filters"))
    cwd = args.pop("cwd", None)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # requests are served one at a time
    try:
        if command == "search":
            results = lib.search(args.pop("text"), **args)
        else:
            results = lib.similar(args.pop("image"), **args)
    except SearchliteError as exc:
        return {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
    return {"ok": True, "results": [r.as_dict() for r in results]}


def serve(lib, models: list[str]) -> None:
    """Load the models and their indexes, then answer requests until interrupted."""
    for spec in models or [m.spec for m in lib.catalog.models()]:
        row = lib.model_row(spec)
        lib.embedder(row.spec)
        lib.vector_index(row)
        log.info("loaded %s", row.spec)
    path = socket_path(lib.path)
    if request(lib.path, "ping", {}, timeout=2.0) is not None:
        from searchlite.errors import LibraryError

        raise LibraryError(f"a searchlite server already answers on {path}")
    path.unlink(missing_ok=True)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                reply = _handle(lib, json.loads(self.rfile.readline()))
            except Exception as exc:  # noqa: BLE001 - a bad request must not stop the server
                log.exception("request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            self.wfile.write(json.dumps(reply).encode() + b"\n")

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill` stops it as cleanly as Ctrl-C (the socket is removed)
    with socketserver.UnixStreamServer(str(path), Handler) as server:
        os.chmod(path, 0o600)
        try:
            server.serve_forever()
        finally:
            path.unlink(missing_ok=True)
