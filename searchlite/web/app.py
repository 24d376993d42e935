"""The HTTP API and the page of `searchlite serve --http` (FastAPI; the `web` extra).

Every front end goes through :class:`searchlite.library.Library`. Files are served only by
catalog id (never by a path from the request) and only from inside their indexed folder; the
server never fetches URLs; every parameter is validated and every error is ``{"error": "..."}``
with a 4xx status (a 500 says "internal error", never a traceback).

Before any endpoint runs, :class:`Guard` refuses (as Jupyter Server does):

* a ``Host`` header that is not one of the server's own names (DNS rebinding) -- 403;
* a request a browser marks as coming from another site (``Sec-Fetch-Site`` other than
  ``same-origin`` / ``none``, or an ``Origin`` that is not this server) -- 403; no CORS headers are
  ever sent, so other pages cannot read anything either;
* with a token, a request without it (``Authorization: Bearer TOKEN``, or the cookie that opening
  ``/?token=TOKEN`` sets) -- 401;
* a body over the upload limit, on its ``Content-Length`` before anything is read, or as soon as
  a chunked body passes the limit -- 413.

Over HTTP, ``model`` / ``models`` parameters name only models the library knows or the server
was started with: a request never makes the server load a checkpoint path or a hub id.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
from collections.abc import Callable
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from searchlite import Filters, QueryError, SearchliteError, SearchResult, params
from searchlite.modellocks import indexed_refs, models_locked
from searchlite.paths import printable
from searchlite.thumbnails import NotServable, servable_path, thumbnail
from searchlite.web import HostCheck

log = logging.getLogger(__name__)

MAX_K = params.MAX_K
MAX_UPLOAD = 50 << 20
#: the most a request body may be: one upload plus the multipart envelope and form fields
MAX_BODY = MAX_UPLOAD + (1 << 20)
#: uploads are decoded only up to this many pixels (checked from the header, before decoding)
UPLOAD_MAX_PIXELS = 40_000_000
STATIC = resources.files("searchlite.web") / "static"

# types only: ranges and forms are checked by searchlite.params, as for the CLI and the socket
K = Annotated[int, Query()]
Offset = Annotated[int, Query()]
Prob = Annotated[float | None, Query()]
Text = Annotated[str | None, Query()]
Size = Annotated[int | None, Query()]
FormText = Annotated[str | None, Form()]
FormSize = Annotated[int | None, Form()]


def _error(status: int, message: str) -> JSONResponse:
    # a refused body is not drained: the connection closes instead of reading the rest
    headers = {"Connection": "close"} if status == 413 else None
    return JSONResponse({"error": message.strip().splitlines()[0] if message.strip() else "error"}, status_code=status,
                        headers=headers)


class BodyTooLarge(StarletteHTTPException):
    """A request body past the limit (raised while it is read, so nothing more is read)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit ({limit:,} bytes)")


def _same(offered: str, token: str) -> bool:
    """Constant-time comparison of bytes (a non-ASCII string is simply wrong, not an error)."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


class Guard:
    """Pure ASGI middleware: Host, cross-site, token and body-size checks before the app runs."""

    def __init__(self, app: ASGIApp, hosts: HostCheck, token: str | None, max_body: int = MAX_BODY,
                 activity: Callable[[], None] | None = None) -> None:
        self.app, self.hosts, self.token, self.max_body = app, hosts, token, max_body
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.activity is not None:
            self.activity()  # any request is use (the idle timer of `serve --idle-timeout`)
        request = Request(scope)
        refusal = self.refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        started = False
        total = 0

        async def counted() -> Message:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def hardened(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff"),
                                      (b"cross-origin-resource-policy", b"same-origin")]
            await send(message)

        try:
            await self.app(scope, counted, hardened)
        except BodyTooLarge as exc:
            if started:
                raise
            await _error(413, exc.detail)(scope, receive, send)

    def refusal(self, request: Request) -> Response | None:
        """The error (or the token redirect) to answer instead of the app, if any."""
        host = request.headers.get("host")
        if not self.hosts(host):
            log.warning("refused a request with Host %r (DNS rebinding?)", host)
            return _error(403, "this server does not answer to that Host name (start it with --allow-host NAME "
                               "to use one)")
        site = request.headers.get("sec-fetch-site")
        if site is not None and site.lower() not in ("same-origin", "none"):
            return _error(403, f"cross-site request refused (Sec-Fetch-Site: {site})")
        origin = request.headers.get("origin")
        if origin is not None and urlsplit(origin.lower()).netloc != host.lower():
            return _error(403, "cross-origin request refused (its Origin is not this server)")
        return self.token_refusal(request, host) or self.length_refusal(request.headers.get("content-length"))

    def token_refusal(self, request: Request, host: str) -> Response | None:
        if self.token is None:
            return None
        port = re.match(r"^.*?(?::(\d+))?$", host).group(1) or "80"
        cookie = f"searchlite_token_{port}"  # cookies ignore ports: one per port keeps two servers apart
        if request.url.path == "/" and "token" in request.query_params:
            if not _same(request.query_params["token"], self.token):
                return _error(401, "wrong token (use the URL `searchlite serve` printed)")
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            response = RedirectResponse("/?" + urlencode(rest) if rest else "/", status_code=303)
            response.set_cookie(cookie, self.token, httponly=True, samesite="strict")
            return response  # the token leaves the URL (and history); the rest of the query stays
        header = request.headers.get("authorization", "")
        offered = header[7:] if header[:7].lower() == "bearer " else request.cookies.get(cookie, "")
        if not _same(offered, self.token):
            return _error(401, "missing or wrong token (open the URL with ?token= that `searchlite serve` "
                               "printed, or send Authorization: Bearer TOKEN)")
        return None

    def length_refusal(self, length: str | None) -> Response | None:
        """A declared body over the limit is refused before a byte of it is read."""
        if length is None:
            return None
        if not length.strip().isdigit():
            return _error(400, "bad Content-Length")
        if int(length) > self.max_body:
            return _error(413, f"the request body is larger than the limit ({self.max_body:,} bytes)")
        return None


def make_filters(folder: str | None = None, glob: str | None = None, after: str | None = None,
                 before: str | None = None, min_width: int | None = None, min_height: int | None = None,
                 formats: list[str] | None = None, place: str | None = None, near: str | None = None,
                 camera: str | None = None, text: str | None = None) -> Filters:
    """The filters of a request, validated exactly as the CLI's and the socket server's."""
    return Filters.from_json({"folder": folder or None, "glob": glob or None, "after": after or None,
                                 "before": before or None, "min_width": min_width, "min_height": min_height,
                                 "formats": formats, "place": place or None, "near": near or None,
                                 "camera": camera or None, "text": text or None})  # round4-hybrid: the last four


def query_filters(folder: Text = None, glob: Text = None, after: Text = None, before: Text = None,
                  min_width: Size = None, min_height: Size = None,
                  format: Annotated[list[str] | None, Query()] = None,  # noqa: A002
                  place: Text = None, near: Annotated[str | None, Query(max_length=100)] = None,
                  camera: Text = None, text: Text = None) -> Filters:
    return make_filters(folder, glob, after, before, min_width, min_height, format, place, near, camera, text)


def form_filters(folder: FormText = None, glob: FormText = None, after: FormText = None, before: FormText = None,
                 min_width: FormSize = None, min_height: FormSize = None,
                 format: Annotated[list[str] | None, Form()] = None,  # noqa: A002
                 place: FormText = None, near: Annotated[str | None, Form(max_length=100)] = None,
                 camera: FormText = None, text: FormText = None) -> Filters:
    return make_filters(folder, glob, after, before, min_width, min_height, format, place, near, camera, text)


QueryFilters = Annotated[Filters, Depends(query_filters)]
FormFilters = Annotated[Filters, Depends(form_filters)]


def allowed_models(lib: Any, preload: tuple[str, ...]) -> set[str]:
    """Model names a request may use: the library's models (indexed or registered for re-scoring),
    the aliases that name them, and the models the server was started with (``--model``)."""
    from searchlite.models.registry import aliases

    specs = {m.spec for m in lib.catalog.models()}
    specs |= {aliases().get(p, p) for p in preload}
    return specs | set(preload) | {alias for alias, spec in aliases().items() if spec in specs}


def _page(results: list[SearchResult], k: int, offset: int) -> dict:
    return {"results": [_result(r) for r in results], "next_offset": offset + k if len(results) == k else None}


def _result(r: SearchResult) -> dict:
    d = r.as_dict()
    d.update(id=r.image_id, thumbnail=f"/api/thumbnail/{r.image_id}", image=f"/api/image/{r.image_id}")
    d.pop("raw", None)  # a RAW companion's path is shown, not served
    if r.extra.get("raw"):
        d["raw_path"] = r.extra["raw"]
    for key in ("path", "raw_path"):  # a name that is not UTF-8 is shown escaped (\xff): JSON is UTF-8
        if isinstance(d.get(key), str):
            d[key] = printable(d[key])
    return d


def create_app(lib: Any, token: str | None = None, *, bound_host: str | None = None,
               allow_hosts: tuple[str, ...] | list[str] = (), models: tuple[str, ...] | list[str] = (),
               max_body: int = MAX_BODY, activity: Callable[[], None] | None = None) -> FastAPI:
    """The ASGI app over a Library (shared with the Unix-socket service through ``lib.lock``).

    ``bound_host`` and ``allow_hosts`` decide the Host names answered (loopback ones always);
    ``models`` are the server's ``--model`` models, accepted besides the library's own;
    ``activity`` is called on every request (the idle timer). Read endpoints hold no library-wide
    lock: only the locks of the models they read (:func:`searchlite.service.models_locked`);
    thumbnails and images hold none."""
    app = FastAPI(title="searchlite", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.add_middleware(Guard, hosts=HostCheck(bound_host, allow_hosts), token=token, max_body=max_body,
                       activity=activity)
    preload = tuple(m.strip() for m in models if m.strip())
    decodes = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))

    def known(spec: str | None) -> str | None:
        spec = params.check_text(spec, "model")
        if spec is None or not spec.strip():
            return None
        allowed = allowed_models(lib, preload)
        if spec.strip() not in allowed:
            raise QueryError(f"model {spec.strip()!r} is not available over HTTP; use one of: "
                             f"{', '.join(sorted(allowed)) or 'none (nothing is indexed yet)'} "
                             "(start the server with --model SPEC to offer another)")
        return spec.strip()

    @app.exception_handler(NotServable)
    async def not_servable(_request: Request, exc: NotServable) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(SearchliteError)
    async def domain_error(_request: Request, exc: SearchliteError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return _error(400, f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, "internal error")

    @app.get("/api/search")
    def search(q: Annotated[str, Query(min_length=1, max_length=2000)], filters: QueryFilters, k: K = 20,
               offset: Offset = 0, model: Text = None, template: Text = None, min_prob: Prob = None,
               sort: Annotated[str, Query(pattern="^(relevance|date)$")] = "relevance",
               lang: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Za-z_]+$")] = None,
               mode: Annotated[str, Query(pattern="^(hybrid|vector|text)$")] = "hybrid") -> dict:
        q = params.check_text(q, "q", required=True)
        k, offset, min_prob = params.check_k(k), params.check_offset(offset), params.check_min_prob(min_prob)
        template, spec = params.check_template(template), known(model)
        with models_locked(lib, [lib.model_row(spec).id]):
            results = lib.search(q, spec, k, offset=offset, template=template, min_prob=min_prob, sort=sort,
                                 filters=filters, files=False, lang=lang, mode=mode)
        return _page(results, k, offset)

    @app.get("/api/similar")
    def similar(id: int, filters: QueryFilters, k: K = 20, offset: Offset = 0, model: Text = None,  # noqa: A002
                min_prob: Prob = None) -> dict:
        image_id, spec = params.check_image_id(id), known(model)
        k, offset, min_prob = params.check_k(k), params.check_offset(offset), params.check_min_prob(min_prob)
        with models_locked(lib, [lib.model_row(spec).id]):
            results = lib.similar(image_id, spec, k, offset=offset, min_prob=min_prob, filters=filters)
        return _page(results, k, offset)

    @app.post("/api/similar")
    def similar_upload(file: Annotated[UploadFile, File()], filters: FormFilters,
                       k: Annotated[int, Form()] = 20, offset: Annotated[int, Form()] = 0,
                       model: FormText = None, min_prob: Annotated[float | None, Form()] = None) -> dict:
        from searchlite.imaging import load_image

        k, offset, min_prob = params.check_k(k), params.check_offset(offset), params.check_min_prob(min_prob)
        data = file.file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise StarletteHTTPException(413, f"the upload is larger than {MAX_UPLOAD >> 20} MB")
        spec = known(model)
        row = lib.model_row(spec)
        with models_locked(lib, [row.id]):
            emb = lib.embedder_for(row)
        try:  # decoded outside the library lock; the pixel limit is checked from the header first
            image = load_image(data, target_size=emb.image_size, max_pixels=UPLOAD_MAX_PIXELS).image
        except Exception as exc:
            raise QueryError(f"cannot read the query image: {exc}") from exc
        with models_locked(lib, [row.id]):
            vector = emb.embed_images([image])[0]
            results = lib.similar(vector, spec, k, offset=offset, min_prob=min_prob, filters=filters)
        return _page(results, k, offset)

    @app.get("/api/compare")
    def compare(q: Annotated[str, Query(min_length=1, max_length=2000)],
                models: Annotated[str, Query(min_length=1, max_length=4000)], filters: QueryFilters,
                k: K = 10) -> dict:
        specs = [m.strip() for m in models.split(",") if m.strip()]
        if not 1 <= len(specs) <= 4:
            raise QueryError("models takes one to four comma-separated models")
        specs = [known(s) for s in specs]
        q, k = params.check_text(q, "q", required=True), params.check_k(k)
        with models_locked(lib, indexed_refs(lib)):
            out = lib.compare(q, specs, k, files=False, filters=filters)
        return {spec: [_result(r) for r in res] for spec, res in out.items()}

    @app.get("/api/scores")
    def scores(id: int, q: Annotated[str, Query(min_length=1, max_length=2000)]) -> dict:  # noqa: A002
        """Each indexed model's score of one image for a query (the page's detail view)."""
        image_id, q = params.check_image_id(id), params.check_text(q, "q", required=True)
        with models_locked(lib, indexed_refs(lib)):
            return lib.scores(q, image_id)

    @app.get("/api/thumbnail/{image_id}")
    def get_thumbnail(image_id: int, size: Annotated[int, Query(ge=16, le=1024)] = 256) -> FileResponse:
        image_id = params.check_image_id(image_id, "image id")
        with decodes:  # no library lock: thumbnails decode in parallel, as many at once as there are cores
            path = thumbnail(lib, image_id, size)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/image/{image_id}")
    def get_image(image_id: int) -> FileResponse:
        _, real = servable_path(lib, params.check_image_id(image_id, "image id"))
        return FileResponse(real, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/status")
    def status() -> dict:
        with models_locked(lib, indexed_refs(lib)):  # each model's index view catches up
            info = lib.status()
        info["roots"] = [printable(root) for root in info.get("roots", [])]
        return info

    @app.get("/api/duplicates")
    def duplicates(filters: QueryFilters, model: Text = None,
                   threshold: Annotated[float | None, Query(ge=0.5, le=1.0)] = None,
                   k: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Offset = 0) -> dict:
        """Duplicate groups (read-only: nothing is moved or deleted from the page), largest first,
        ``k`` groups from ``offset``; members carry ids for their thumbnails, never a served path."""
        spec = known(model)
        with models_locked(lib, [lib.model_row(spec).id]):
            groups, _ = lib.duplicates(spec, threshold, filters=filters)
        page = groups[offset:offset + k]
        return {"groups": [{"keep": printable(g.keep), "members": [
                    {**m.as_dict(), "path": printable(m.path), "id": m.image_id, "keep": m.path == g.keep,
                     "thumbnail": f"/api/thumbnail/{m.image_id}"} for m in g.members]} for g in page],
                "total": len(groups), "next_offset": offset + k if offset + k < len(groups) else None}

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
