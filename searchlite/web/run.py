"""Running the HTTP front end (uvicorn): kept apart from the package's host rules so that the
app module, which imports those rules, is never imported by the package it belongs to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from searchlite import SearchliteError
from searchlite.web import is_loopback


def http_server(lib: Any, host: str, port: int, token: str | None = None, *, allow_hosts: Sequence[str] = (),
                models: Sequence[str] = (), activity: Callable[[], None] | None = None) -> Any:
    """The HTTP API and page as a uvicorn ``Server`` (``run()`` serves, ``should_exit = True``
    stops it). Refuses a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise SearchliteError(f"refusing to serve on {host} without a token: anyone on the network could see "
                              "your photos (bind 127.0.0.1, or drop --no-token)")
    try:
        import uvicorn

        from searchlite.web.app import create_app
    except ImportError as exc:
        raise SearchliteError(f"the web front end needs the web extra: pip install 'searchlite[web]' ({exc.name} "
                              "is missing)") from exc
    app = create_app(lib, token, bound_host=host, allow_hosts=allow_hosts, models=models, activity=activity)
    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def serve_http(lib: Any, host: str, port: int, token: str | None = None, *, allow_hosts: Sequence[str] = (),
               models: Sequence[str] = ()) -> None:
    """Run the HTTP API and page until interrupted. Refuses a non-loopback address without a token."""
    http_server(lib, host, port, token, allow_hosts=allow_hosts, models=models).run()
