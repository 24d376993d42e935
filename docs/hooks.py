"""MkDocs hooks: pages generated from the code's own data, so the docs cannot drift from it.

- ``<!-- zoo-table -->`` (models.md): the model table, from the package's ``zoo.json``;
- ``<!-- openapi -->`` (web-and-http.md): the HTTP endpoints, from the OpenAPI schema FastAPI
  builds for ``searchlite.web.app``;
- ``<!-- api-reference -->`` (python-api.md): a mkdocstrings block for every public name of
  ``searchlite`` (its lazy export table), so a new export is documented without editing the page.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.searchlite")
ZOO_MARKER = "<!-- zoo-table -->"
OPENAPI_MARKER = "<!-- openapi -->"
API_MARKER = "<!-- api-reference -->"
ZOO_FILE = Path(__file__).resolve().parents[1] / "searchlite" / "models" / "zoo.json"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def zoo_table() -> str:
    """The model zoo as a Markdown table (package data only: no user ``models.json``)."""
    from searchlite.config import DEFAULT_MODEL
    from searchlite.models.zoo import parse_zoo

    entries = parse_zoo(json.loads(ZOO_FILE.read_text(encoding="utf-8")))
    rows = ["| alias | spec | family | languages | dim | params | licence | what it is |",
            "|---|---|---|---|---|---|---|---|"]
    for alias, e in entries.items():
        name = f"`{alias}`" + (" (**default**)" if alias == DEFAULT_MODEL else "")
        params = f"{e.params:g} M" if e.params else "?"
        rows.append(f"| {name} | `{_cell(e.spec)}` | {e.family} | {', '.join(e.languages)} | {e.dim or '?'} | "
                    f"{params} | {e.license} | {_cell(e.description)} |")
    return "\n".join(rows)


def _schema_type(schema: dict) -> str:
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"] if s.get("type") != "null")
    return schema.get("type", "object")


def openapi_table() -> str:
    """The HTTP API's endpoints and parameters, from FastAPI's own OpenAPI schema."""
    from searchlite.web.app import create_app

    schema = create_app(None).openapi()
    rows = ["| method | path | parameters | what it does |", "|---|---|---|---|"]
    for path, methods in sorted(schema.get("paths", {}).items()):
        for method, op in methods.items():
            params = ", ".join(f"`{p['name']}`" + ("" if p.get("required") else "?") +
                               f" ({_schema_type(p.get('schema', {}))})"
                               for p in op.get("parameters", []) if p.get("in") != "header")
            if "requestBody" in op:
                params = (params + ", " if params else "") + "multipart body"
            doc = (op.get("description") or op.get("summary") or "").strip().splitlines()
            rows.append(f"| {method.upper()} | `{_cell(path)}` | {params or '—'} | {_cell(doc[0] if doc else '')} |")
    version = schema.get("openapi", "?")
    return "\n".join(rows) + f"\n\n(OpenAPI {version}; a running server serves the full schema at `/api/openapi.json`.)"


def api_reference() -> str:
    """mkdocstrings blocks (``::: module.Name``) for the names ``searchlite`` exports."""
    import searchlite

    blocks = []
    for name in sorted(searchlite._EXPORTS):
        blocks.append(f"::: {searchlite._EXPORTS[name]}.{name}\n    options:\n      show_root_heading: true\n"
                      "      show_root_full_path: false\n")
    return "\n".join(blocks)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the markers with the generated tables."""
    if ZOO_MARKER in markdown:
        markdown = markdown.replace(ZOO_MARKER, zoo_table())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    if OPENAPI_MARKER in markdown:
        try:
            table = openapi_table()
        except ImportError as exc:  # the web extra is not installed: say so on the page, not fail
            log.info("OpenAPI table skipped: %s", exc)
            table = "*(The endpoint table needs the `web` extra: `pip install 'searchlite[web]'`.)*"
        markdown = markdown.replace(OPENAPI_MARKER, table)
    return markdown
