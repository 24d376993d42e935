"""`searchlite serve --http`: the HTTP API and the search page (needs the `web` extra)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
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
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header: port dropped, IPv6 brackets removed, lower case (as Jupyter Server)."""
    match = re.match(r"^(.*?)(:\d+)?$", header.strip())
    name = (match.group(1) if match else header).lower()
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


class HostCheck:
    """Which Host headers a server answers (DNS rebinding): loopback addresses, ``localhost``, the
    address or name it is bound to (any IP address when bound to all interfaces), and the names
    given with ``--allow-host``. Any other name -- a rebinding attacker's domain -- is refused."""

    def __init__(self, bound: str | None = None, allow: Iterable[str] = ()) -> None:
        self.names = {"localhost"} | {host_name(a) for a in allow if a.strip()}
        self.any_address = False
        self.address: Any = None
        if bound:
            try:
                self.address = ipaddress.ip_address(bound.strip("[]"))
                self.any_address = self.address.is_unspecified
            except ValueError:
                self.names.add(host_name(bound))

    def __call__(self, header: str | None) -> bool:
        if not header:
            return False
        name = host_name(header)
        if name in self.names:
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_address or address == self.address


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
