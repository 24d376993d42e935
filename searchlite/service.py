"""`searchlite serve` as one object that owns its parts: the Unix-socket server, the optional HTTP
front end, the optional watcher and the idle timer. The CLI only parses options into it.

Concurrency: the library lock guards state, not work. Requests that only read run concurrently;
what is not thread-safe per model (its tokenizer and text tower, its index view catching up with
the catalog) is serialised by one lock per model (:func:`models_locked`), so a search waits at
most for another search on the same model, never for a thumbnail, an image or another model.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from searchlite.modellocks import indexed_refs, model_lock, models_locked  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


class Activity:
    """When the last request came (a ping is not use), for the idle timer."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last


class Service:
    """A resident server over one library: preloads models, answers the socket (and HTTP when
    ``http`` is (host, port)), keeps the library current when ``watch``, and stops after
    ``idle_timeout`` seconds without a request, on :meth:`stop`, or on Ctrl-C / SIGTERM."""

    def __init__(self, lib: Any, models: Sequence[str] = (), *, http: tuple[str, int] | None = None,
                 token: str | None = None, allow_hosts: Sequence[str] = (), idle_timeout: float | None = None,
                 watch: bool = False, rescan_every: float | None = None) -> None:
        self.lib, self.models = lib, list(models)
        self.http, self.token, self.allow_hosts = http, token, list(allow_hosts)
        self.idle_timeout = idle_timeout
        self.watch, self.rescan_every = watch, rescan_every
        self.activity = Activity()
        self.socket_server: Any = None
        self.http_server: Any = None
        self.watcher: Any = None
        self._stopped = threading.Event()

    # -- parts -------------------------------------------------------------------------------------
    def start_watcher(self) -> Any:
        from pathlib import Path

        from searchlite.watch import start_watching

        roots = [r for r in self.lib.catalog.roots().values() if "://" not in r and Path(r).is_dir()]
        self.watcher = start_watching(self.lib, roots, rescan_every=self.rescan_every or None)
        return self.watcher

    def _http_server(self) -> Any:
        from searchlite.web.run import http_server

        host, port = self.http
        return http_server(self.lib, host, port, self.token, allow_hosts=self.allow_hosts, models=self.models,
                           activity=self.activity.touch)

    def _idle_timer(self) -> None:
        while not self._stopped.wait(min(1.0, self.idle_timeout / 10)):
            if self.activity.idle_for() >= self.idle_timeout:
                log.info("no request for %.0f s: stopping", self.idle_timeout)
                self.stop()
                return

    # -- life ----------------------------------------------------------------------------------------
    def run(self, on_ready: Callable[[Service], None] | None = None) -> None:
        """Serve until stopped (blocks). The socket server runs on a thread; HTTP (uvicorn) on
        this one when asked for, else this thread waits."""
        from searchlite.server import open_socket_server, preload

        if threading.current_thread() is threading.main_thread():
            # `kill` stops it as cleanly as Ctrl-C (the socket is removed); uvicorn, which handles
            # SIGTERM itself while it serves, raises it again on exit, into this handler
            signal.signal(signal.SIGTERM, _interrupt)
        preload(self.lib, self.models)
        self.socket_server = open_socket_server(self.lib, self.activity)
        threading.Thread(target=self.socket_server.serve_forever, name="searchlite-socket", daemon=True).start()
        if self.watch:
            self.start_watcher()
        if self.http is not None:
            self.http_server = self._http_server()
        if self.idle_timeout:
            threading.Thread(target=self._idle_timer, name="searchlite-idle", daemon=True).start()
        try:
            if on_ready is not None:
                on_ready(self)
            if self.http_server is not None:
                self.http_server.run()
            else:
                self._stopped.wait()
        finally:
            self.stop()
            self.close()

    def stop(self) -> None:
        """Ask every part to stop (from any thread); :meth:`run` then returns."""
        self._stopped.set()
        if self.http_server is not None:
            self.http_server.should_exit = True

    def close(self) -> None:
        if self.socket_server is not None:
            from searchlite.server import close_socket_server

            close_socket_server(self.socket_server)
            self.socket_server = None
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None


def serve(lib, models: list[str], on_ready: Callable[[Any], None] | None = None,
          idle_timeout: float | None = None) -> None:
    """Load the models and their indexes, then answer socket requests until interrupted, until
    ``idle_timeout`` seconds pass without a request, or until ``server.shutdown()`` on the server
    passed to ``on_ready`` (see :class:`searchlite.service.Service`, which this runs)."""
    service = Service(lib, models, idle_timeout=idle_timeout)

    def ready(svc: Service) -> None:
        shutdown = svc.socket_server.shutdown
        svc.socket_server.shutdown = lambda: (svc.stop(), shutdown())  # stopping the socket stops the service
        if on_ready is not None:
            on_ready(svc.socket_server)

    service.run(ready)
