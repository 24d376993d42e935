"""The documentation cannot drift from the code: every claim a test can check is checked here.

- the ``--json`` keys documented in docs/searching.md exist in the real output (documented ⊆
  actual: keys other work adds never break this test, a documented key that disappears does);
- the query-grammar examples in docs/searching.md parse as documented (a small harness);
- the README's quick start is the command CI runs, and the README stays short;
- ``mkdocs build --strict`` passes (skipped only where mkdocs is not installed).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
runner = CliRunner()


def marked_table(page: Path, marker: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table right after ``<!-- marker -->``."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"<!-- {marker} -->")
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if all(set(c) <= set("-: ") for c in cells):
            continue
        rows.append(cells)
    return rows[1:]  # without the header row


def documented_keys(marker: str) -> set[str]:
    keys = {re.fullmatch(r"`([^`]+)`", row[0]).group(1) for row in marked_table(DOCS / "searching.md", marker)}
    assert keys, f"no keys documented under <!-- {marker} -->"
    return keys


@pytest.fixture(scope="module")
def library(tmp_path_factory, monkeypatch_module):
    """A small library indexed with the bundled demo model through the CLI."""
    from searchlite.cli.main import app

    monkeypatch_module.setenv("SEARCHLITE_NO_SERVER", "1")
    root = tmp_path_factory.mktemp("docs")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((30 + i, 40, 3)) * 255).astype(np.uint8)).save(photos / f"p{i}.jpg")
    lib = root / "lib"
    out = runner.invoke(app, ["index", str(photos), "-m", "demo", "-L", str(lib), "--device", "cpu", "--json"])
    assert out.exit_code == 0, out.output
    return lib, photos, json.loads(out.output)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _json(*args: str) -> object:
    from searchlite.cli.main import app

    out = runner.invoke(app, list(args))
    assert out.exit_code == 0, out.output
    return json.loads(out.output)


def test_documented_index_json_keys_exist(library):
    _, _, summary = library
    assert documented_keys("json-keys: index") <= set(summary)


def test_documented_search_and_similar_json_keys_exist(library):
    lib, photos, _ = library
    keys = documented_keys("json-keys: search")
    for results in (_json("search", "a red car", "-k", "3", "-L", str(lib), "--json"),
                    _json("similar", str(photos / "p0.jpg"), "-k", "3", "-L", str(lib), "--json")):
        assert results, "no results to check"
        for result in results:
            assert keys <= set(result), keys - set(result)


def test_documented_status_json_keys_exist(library):
    lib, _, _ = library
    status = _json("status", "-L", str(lib), "--json")
    assert documented_keys("json-keys: status") <= set(status)


def test_documented_models_json_keys_exist(library):
    lib, _, _ = library
    rows = _json("models", "-L", str(lib), "--json")
    keys = documented_keys("json-keys: models")
    assert rows and all(keys <= set(row) for row in rows)


def _expected_terms(cell: str) -> list[tuple[float, str, str]]:
    out = []
    for term in re.findall(r"`([^`]+)`", cell):
        weight, kind, text = term.split(" ", 2)
        out.append((float(weight), kind, text))
    return out


def test_query_grammar_examples_parse_as_documented(tmp_path, monkeypatch):
    from searchlite.combined import parse_query

    rows = marked_table(DOCS / "searching.md", "query-examples")
    assert len(rows) >= 5
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.jpg")  # the image term the examples name
    for query_cell, terms_cell in rows:
        query = re.fullmatch(r"`(.+)`", query_cell).group(1)
        got = [(t.weight, t.kind, Path(t.value).name if t.kind == "image" else t.value) for t in parse_query(query)]
        assert got == _expected_terms(terms_cell), query


def test_the_readme_quick_start_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    assert len(block) == 2
    install, test = block
    assert test == ".venv/bin/python -m pytest" and "\n" + test + "\n" in ci
    assert "-e '.[dev,all]'" in install and "-e '.[dev,all]'" in ci
    assert "torch==2.14.1 torchvision==0.29.1" in install and "torch==2.14.1 torchvision==0.29.1" in ci
    assert "mkdocs build --strict" in ci


def test_readme_links_point_at_pages_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert targets and all((ROOT / t).is_file() for t in targets), [t for t in targets if not (ROOT / t).is_file()]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    models = (tmp_path / "site" / "models" / "index.html").read_text(encoding="utf-8")
    from searchlite.models.zoo import parse_zoo

    zoo = parse_zoo(json.loads((ROOT / "searchlite" / "models" / "zoo.json").read_text(encoding="utf-8")))
    assert all(f"<code>{alias}</code>" in models for alias in zoo)  # the table is the zoo's data
    web = (tmp_path / "site" / "web-and-http" / "index.html").read_text(encoding="utf-8")
    assert "/api/search" in web and "/api/thumbnail/{image_id}" in web


def test_documented_reasons_are_the_decoders_vocabulary():
    """docs/troubleshooting.md's reason table lists the decode entry point's vocabulary. The decode
    work of this round defines it (``REASONS`` in searchlite.decode_reasons)."""
    from searchlite.decode_reasons import REASONS as vocabulary

    documented = {re.fullmatch(r"`([^`]+)`", row[0]).group(1)
                  for row in marked_table(DOCS / "troubleshooting.md", "reasons")}
    normalise = {re.sub(r"<[^>]+>|\bX\b", "", str(r)).strip() for r in vocabulary}
    assert {re.sub(r"<[^>]+>|\bX\b", "", d).strip() for d in documented} == normalise
