"""Which files and folders a scan leaves out: ``index --exclude`` patterns, ``.searchliteignore``
files in any folder, and default exclusions for folders that never hold photos.

Every rule is gitignore syntax (through ``pathspec``): ``--exclude`` patterns are relative to the
root they are stored with (``roots.excludes``), a ``.searchliteignore`` file's patterns to the
folder holding it. Rules are read from the root down; as in git, the last rule that matches a
path decides (``!pattern`` re-includes), and nothing below an excluded folder is ever looked at.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

IGNORE_FILE = ".searchliteignore"
#: Folders that are never photos: Synology thumbnails and recycle bins, desktop trash folders,
#: the Windows recycle bin, Lightroom previews, freedesktop thumbnails ('#' escaped: a comment otherwise).
DEFAULT_EXCLUDES = ("@eaDir/", "\\#recycle/", ".Trash-*/", "$RECYCLE.BIN/", "*.lrdata/", ".thumbnails/")


def _spec(lines: list[str]) -> Any:
    from pathspec import GitIgnoreSpec

    return GitIgnoreSpec.from_lines(lines)


def parse_stored(value: str | None) -> list[str]:
    """The patterns of a root's ``excludes`` column (a JSON list; NULL: none)."""
    if not value:
        return []
    try:
        data = json.loads(value)
    except ValueError:
        return []
    return [str(p) for p in data] if isinstance(data, list) else []


class Excluder:
    """Answers "is this path excluded?" for the files and folders under one root."""

    def __init__(self, root: str | Path, patterns: list[str] | tuple[str, ...] = (), defaults: bool = True) -> None:
        self.root = Path(root)
        lines = (list(DEFAULT_EXCLUDES) if defaults else []) + [p for p in patterns if p.strip()]
        self._root_spec = _spec(lines) if lines else None
        self._files: dict[Path, Any] = {}  # folder -> spec of its ignore file (None: no file)
        self.patterns = list(patterns)
        self.defaults = defaults

    def _folder_spec(self, folder: Path) -> Any:
        if folder not in self._files:
            spec = None
            try:
                text = (folder / IGNORE_FILE).read_text(encoding="utf-8", errors="replace")
                spec = _spec(text.splitlines())
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot read %s: %s", folder / IGNORE_FILE, exc)
            self._files[folder] = spec
        return self._files[folder]

    def excluded(self, path: str | Path, is_dir: bool) -> bool:
        """Whether a file or folder (absolute, under the root) is left out by the rules of the
        root and of the ignore files in the folders above it."""
        path = Path(path)
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        if not rel.parts:
            return False
        suffix = "/" if is_dir else ""
        decision = None
        if self._root_spec is not None:
            found = self._root_spec.check_file(rel.as_posix() + suffix)
            decision = found.include if found.include is not None else decision
        folder = self.root
        for depth, part in enumerate(rel.parts):
            spec = self._folder_spec(folder)
            if spec is not None:
                found = spec.check_file(Path(*rel.parts[depth:]).as_posix() + suffix)
                decision = found.include if found.include is not None else decision
            folder = folder / part
        return bool(decision)

    def inside_excluded(self, path: str | Path) -> bool:
        """Whether a folder is, or lies inside, an excluded folder (a scan started below the root)."""
        path = Path(path)
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return False
        current = self.root
        for part in rel.parts:
            current = current / part
            if self.excluded(current, True):
                return True
        return False


def inside_library(path: str | Path, library: str | Path | None) -> bool:
    """Whether ``path`` is the library's own folder or lies inside it (a library kept inside an
    indexed or watched folder): the one rule the scan and the watcher both use. Compared as given
    and with symlinks resolved, so a library reached through a link is recognised too."""
    if library is None:
        return False
    lib, target = Path(library), Path(path)
    if target.is_relative_to(lib):
        return True
    try:
        return Path(os.path.realpath(target)).is_relative_to(os.path.realpath(lib))
    except (OSError, ValueError):
        return False


def _escape(text: str) -> str:
    """A literal path for a gitignore pattern (its glob characters escaped)."""
    for ch in "\\*?[":
        text = text.replace(ch, "\\" + ch)
    return text


def reanchor(patterns: list[str], prefix: str) -> list[str]:
    """Patterns relative to a folder, rewritten relative to a root ``prefix`` above it ('y2023/'),
    meaning the same paths: anchored ones ('/junk/', 'a/b') get the prefix; floating ones ('*.tmp',
    'junk/') match at any depth below the folder ('/y2023/**/junk/'); '!' re-includes stay so."""
    base = "/" + "/".join(_escape(part) for part in prefix.strip("/").split("/")) + "/"
    out = []
    for pattern in patterns:
        text = pattern.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        body = text[1:] if negate else text
        dir_only = body.endswith("/")
        core = body.rstrip("/")
        if not core:
            continue
        anchored = "/" in core
        new = base + (core.lstrip("/") if anchored else "**/" + core) + ("/" if dir_only else "")
        out.append(("!" if negate else "") + new)
    return out


def root_rules(stored_patterns: str | None, stored_defaults: bool | None, patterns: list[str] | None,
               defaults: bool | None) -> tuple[list[str], bool]:
    """The rules a run uses for a root: patterns and defaults given to this run replace the
    stored ones (``[""]`` clears the patterns); otherwise the stored ones apply."""
    use = [p for p in patterns if p.strip()] if patterns is not None else parse_stored(stored_patterns)
    use_defaults = defaults if defaults is not None else (True if stored_defaults is None else bool(stored_defaults))
    return use, use_defaults


def excluder_for(catalog: Any, root_id: int, root_path: str, patterns: list[str] | None = None,
                 defaults: bool | None = None) -> Excluder | None:
    """The Excluder of a catalog root for this run, storing the rules given to it with the root
    (so later runs and the watcher keep them). None for URIs (only local folders have rules)."""
    from searchlite.catalog import Root

    if "://" in root_path:
        return None
    with catalog.WriteSession.begin() as s:
        row = s.get(Root, root_id)
        use, use_defaults = root_rules(row.excludes, row.default_excludes, patterns, defaults)
        if patterns is not None or defaults is not None:
            row.excludes = json.dumps(use) if use else None
            row.default_excludes = use_defaults
    return Excluder(os.fsdecode(root_path), use, use_defaults)


__all__ = ["DEFAULT_EXCLUDES", "IGNORE_FILE", "Excluder", "excluder_for", "inside_library", "parse_stored", "reanchor", "root_rules"]
