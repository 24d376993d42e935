"""The HTTP API and the page of `searchlite serve --http` (FastAPI; the `web` extra).

Every front end goes through :class:`searchlite.library.Library`. Files are served only by
catalog id (never by a path from the request) and only from inside their indexed folder; the
server never fetches URLs; every parameter is validated and every error is ``{"error": "..."}``
with a 4xx status (a 500 says "internal error", never a traceback). With a token, every request
needs ``Authorization: Bearer TOKEN`` or the ``token`` cookie that ``/?token=TOKEN`` sets once.
"""

from __future__ import annotations

import hmac
import logging
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from searchlite import Filters, QueryError, SearchliteError, SearchResult
from searchlite.thumbnails import NotServable, servable_path, thumbnail

log = logging.getLogger(__name__)

MAX_K = 200
MAX_UPLOAD = 50 << 20
STATIC = resources.files("searchlite.web") / "static"

K = Annotated[int, Query(ge=1, le=MAX_K)]
Offset = Annotated[int, Query(ge=0, le=100_000)]
Prob = Annotated[float | None, Query(ge=0.0, le=1.0)]
Text = Annotated[str | None, Query(max_length=2000)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message.strip().splitlines()[0] if message.strip() else "error"}, status_code=status)


def _date(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError as exc:
        raise QueryError(f"{name} must be a date like 2023-07-01, got {value!r}") from exc


def _filters(folder: str | None, after: str | None, before: str | None) -> Filters:
    return Filters(folder=Path(folder) if folder else None, after=_date(after, "after"), before=_date(before, "before"))


def _page(results: list[SearchResult], k: int, offset: int) -> dict:
    return {"results": [_result(r) for r in results], "next_offset": offset + k if len(results) == k else None}


def _result(r: SearchResult) -> dict:
    d = r.as_dict()
    d.update(id=r.image_id, thumbnail=f"/api/thumbnail/{r.image_id}", image=f"/api/image/{r.image_id}")
    d.pop("raw", None)  # a RAW companion's path is shown, not served
    if r.extra.get("raw"):
        d["raw_path"] = r.extra["raw"]
    return d


def create_app(lib: Any, token: str | None = None) -> FastAPI:
    """The ASGI app over a Library (shared with the Unix-socket service through ``lib.lock``)."""
    app = FastAPI(title="searchlite", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Response:
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") if request.url.path == "/" else None
        if given is not None and hmac.compare_digest(given, token):
            response = RedirectResponse("/", status_code=303)  # the token leaves the URL (and history)
            response.set_cookie("token", token, httponly=True, samesite="strict")
            return response
        header = request.headers.get("authorization", "")
        offered = header[7:] if header.lower().startswith("bearer ") else request.cookies.get("token", "")
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return _error(401, "missing or wrong token (Authorization: Bearer TOKEN, or open /?token=TOKEN once)")
        return await call_next(request)

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
    def search(q: Annotated[str, Query(min_length=1, max_length=2000)], k: K = 20, offset: Offset = 0,
               model: Text = None, template: Text = None, min_prob: Prob = None, folder: Text = None,
               after: Text = None, before: Text = None,
               sort: Annotated[str, Query(pattern="^(relevance|date)$")] = "relevance") -> dict:
        with lib.lock:
            results = lib.search(q, model, k, offset=offset, template=template, min_prob=min_prob, sort=sort,
                                 filters=_filters(folder, after, before), files=False)
        return _page(results, k, offset)

    @app.get("/api/similar")
    def similar(id: int, k: K = 20, offset: Offset = 0, model: Text = None, min_prob: Prob = None,  # noqa: A002
                folder: Text = None, after: Text = None, before: Text = None) -> dict:
        with lib.lock:
            results = lib.similar(id, model, k, offset=offset, min_prob=min_prob, filters=_filters(folder, after, before))
        return _page(results, k, offset)

    @app.post("/api/similar")
    def similar_upload(file: Annotated[UploadFile, File()], k: Annotated[int, Form(ge=1, le=MAX_K)] = 20,
                       offset: Annotated[int, Form(ge=0, le=100_000)] = 0,
                       model: Annotated[str | None, Form(max_length=2000)] = None) -> dict:
        data = file.file.read(MAX_UPLOAD + 1)
        if len(data) > MAX_UPLOAD:
            raise QueryError(f"the upload is larger than {MAX_UPLOAD >> 20} MB")
        with lib.lock:
            results = lib.similar(data, model, k, offset=offset)
        return _page(results, k, offset)

    @app.get("/api/compare")
    def compare(q: Annotated[str, Query(min_length=1, max_length=2000)],
                models: Annotated[str, Query(min_length=1, max_length=4000)], k: K = 10) -> dict:
        specs = [m.strip() for m in models.split(",") if m.strip()]
        if not 1 <= len(specs) <= 4:
            raise QueryError("models takes one to four comma-separated models")
        with lib.lock:
            out = lib.compare(q, specs, k, files=False)
        return {spec: [_result(r) for r in res] for spec, res in out.items()}

    @app.get("/api/scores")
    def scores(id: int, q: Annotated[str, Query(min_length=1, max_length=2000)]) -> dict:  # noqa: A002
        """Each indexed model's score of one image for a query (the page's detail view)."""
        with lib.lock:
            return lib.scores(q, id)

    @app.get("/api/thumbnail/{image_id}")
    def get_thumbnail(image_id: int, size: Annotated[int, Query(ge=16, le=1024)] = 256) -> FileResponse:
        with lib.lock:
            path = thumbnail(lib, image_id, size)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/image/{image_id}")
    def get_image(image_id: int) -> FileResponse:
        with lib.lock:
            _, real = servable_path(lib, image_id)
        return FileResponse(real, headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/status")
    def status() -> dict:
        with lib.lock:
            return lib.status()

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app
