"""`searchlite serve --http`: the HTTP API and the search page (needs the `web` extra)."""

from __future__ import annotations

import ipaddress
from typing import Any

from searchlite import SearchliteError


def parse_bind(value: str) -> tuple[str, int]:
    """'[HOST:]PORT' (IPv6 hosts in brackets) -> (host, port); the host defaults to 127.0.0.1."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    try:
        number = int(port)
    except ValueError as exc:
        raise SearchliteError(f"--http takes [HOST:]PORT, got {value!r}") from exc
    if not 0 <= number <= 65535:
        raise SearchliteError(f"port {number} is out of range")
    return host or "127.0.0.1", number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_http(lib: Any, host: str, port: int, token: str | None = None) -> None:
    """Run the HTTP API and page until interrupted. Refuses a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise SearchliteError(f"refusing to serve on {host} without --token: anyone on the network could see "
                              "your photos (bind 127.0.0.1, or pass --token SECRET)")
    try:
        import uvicorn

        from searchlite.web.app import create_app
    except ImportError as exc:
        raise SearchliteError(f"the web front end needs the web extra: pip install 'searchlite[web]' ({exc.name} "
                              "is missing)") from exc
    uvicorn.run(create_app(lib, token), host=host, port=port, log_level="warning", access_log=False)
