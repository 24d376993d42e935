"""The model zoo as data: ``zoo.json`` (package data, read without importing torch) maps each
alias to its spec, score family, prompt templates, text rules, languages, licence, size and
per-model defaults (e.g. the duplicate threshold).

A checkpoint's own config, tokenizer and processor files always win over the zoo: an entry only
adds what those files cannot say. Family defaults are merged under each entry (as open_clip's
``pretrained.py`` does with ``_slpcfg``); an unknown key is an error, so a typo never passes.

Users add entries (and families) without editing package data: a ``models.json`` of the same
schema in the user config dir (``$SEARCHLITE_CONFIG``, else platformdirs' ``user_config_dir``) and
in the library folder, read in that order over the package's ``zoo.json``, validated alike.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from searchlite.errors import ModelLoadError

#: Keys an entry (or a family default) may have.
KEYS = frozenset({"spec", "family", "templates", "text", "image", "languages", "dim", "license", "params",
                  "defaults", "description", "published", "lang", "backend", "probability", "center", "match",
                  "language_templates"})
#: Probability 0.5 at this cosine for an uncalibrated Platt model whose family sets no ``center``.
DEFAULT_CENTER = 0.25
#: Keys of an entry's "text" rules.
TEXT_KEYS = frozenset({"lower", "clean", "lang_prefix", "padding", "max_length", "tokenizer"})


@dataclass(frozen=True)
class ZooEntry:
    """One model of the zoo."""

    alias: str
    spec: str
    family: str  # the architecture family (a key of zoo.json "families")
    templates: tuple[str, ...]
    languages: tuple[str, ...]
    license: str
    dim: int | None = None
    params: float | None = None  # millions of parameters
    text: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    published: dict[str, Any] = field(default_factory=dict)
    lang: str | None = None  # default language code put before the text (nllb: FLORES-200)
    language_templates: dict[str, str] = field(default_factory=dict)  # script language -> template
    backend: str = "hf"
    probability: str = "platt"  # "sigmoid": the model's own scale and bias; "platt": a fitted calibration
    center: float = DEFAULT_CENTER  # uncalibrated Platt fallback: probability 0.5 at this cosine

    @property
    def template(self) -> str:
        return self.templates[0]

    def as_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "spec": self.spec, "family": self.family, "languages": list(self.languages),
                "dim": self.dim, "license": self.license, "params": self.params, "templates": list(self.templates),
                "text": dict(self.text), "defaults": dict(self.defaults), "description": self.description,
                "lang": self.lang}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check(name: str, data: dict) -> None:
    unknown = set(data) - KEYS
    if unknown:
        raise ModelLoadError(f"zoo entry {name!r}: unknown key {sorted(unknown)[0]!r}")
    unknown = set(data.get("text", {})) - TEXT_KEYS
    if unknown:
        raise ModelLoadError(f"zoo entry {name!r}: unknown text rule {sorted(unknown)[0]!r}")


def parse_zoo(raw: dict) -> dict[str, ZooEntry]:
    """Entries of a zoo document ({"families": {...}, "models": {alias: {...}}}), family defaults merged under."""
    families = raw.get("families", {})
    out: dict[str, ZooEntry] = {}
    for alias, data in raw["models"].items():
        _check(alias, data)
        family = data.get("family")
        if family not in families:
            raise ModelLoadError(f"zoo entry {alias!r}: unknown family {family!r}")
        merged = _merge(families[family], data)
        _check(alias, merged)
        if "spec" not in merged:
            raise ModelLoadError(f"zoo entry {alias!r} has no spec")
        out[alias] = ZooEntry(alias=alias, spec=merged["spec"], family=family,
                              templates=tuple(merged.get("templates") or ["{}"]),
                              languages=tuple(merged.get("languages") or ["en"]), license=merged.get("license", "?"),
                              dim=merged.get("dim"), params=merged.get("params"), text=dict(merged.get("text", {})),
                              image=dict(merged.get("image", {})), defaults=dict(merged.get("defaults", {})),
                              description=merged.get("description", ""), published=dict(merged.get("published", {})),
                              lang=merged.get("lang"), backend=merged.get("backend", "hf"),
                              language_templates=dict(merged.get("language_templates", {})),
                              probability=merged.get("probability", "platt"), center=float(merged.get("center", DEFAULT_CENTER)))
    return out


@dataclass(frozen=True)
class Family:
    """What every model of an architecture family shares (a zoo.json "families" item)."""

    name: str
    backend: str
    probability: str
    center: float
    templates: tuple[str, ...]
    text: dict[str, Any]
    defaults: dict[str, Any]
    #: when set, the family applies to checkpoints of this ``model_type`` whose tokenizer class is
    #: listed (e.g. SigLIP 2 fixed-res: a ``siglip`` checkpoint with a Gemma tokenizer)
    match: dict[str, Any] = field(default_factory=dict)
    languages: tuple[str, ...] = ("en",)
    language_templates: dict[str, str] = field(default_factory=dict)


#: A user zoo file's name (user config dir and library folder).
USER_FILE = "models.json"
#: Top-level keys of a zoo document.
DOCUMENT_KEYS = frozenset({"families", "models", "_comment"})
_library: Path | None = None


@lru_cache(maxsize=1)
def _package() -> dict:
    return json.loads((resources.files("searchlite.models") / "zoo.json").read_text(encoding="utf-8"))


def config_dir() -> Path:
    """$SEARCHLITE_CONFIG, else the platform's user config dir (e.g. ~/.config/searchlite)."""
    import os

    env = os.environ.get("SEARCHLITE_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("searchlite", appauthor=False))


def use_library(folder: str | Path | None) -> None:
    """Read the ``models.json`` of this library folder too (a Library calls this when it opens)."""
    global _library
    _library = Path(folder) if folder is not None else None


def user_files() -> list[Path]:
    """The user zoo files that exist, in the order they apply (config dir, then library folder)."""
    found = [config_dir() / USER_FILE] + ([_library / USER_FILE] if _library is not None else [])
    return [p for p in found if p.is_file()]


def _read_user(path: Path) -> dict:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read the model zoo file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("models", {}), dict) \
            or not isinstance(raw.get("families", {}), dict):
        raise ModelLoadError(f"{path}: a zoo file is an object with \"models\" (and \"families\") objects")
    unknown = set(raw) - DOCUMENT_KEYS
    if unknown:
        raise ModelLoadError(f"{path}: unknown key {sorted(unknown)[0]!r} (a zoo file has families and models)")
    return raw


@lru_cache(maxsize=8)
def _merged(stamps: tuple[tuple[str, int], ...]) -> dict:
    raw = {"families": dict(_package()["families"]), "models": dict(_package()["models"])}
    for name, _ in stamps:
        path = Path(name)
        user = _read_user(path)
        try:
            for fam_name, data in user.get("families", {}).items():
                _check(fam_name, data)
            parse_zoo({"families": {**raw["families"], **user.get("families", {})}, "models": user.get("models", {})})
        except ModelLoadError as exc:
            raise ModelLoadError(f"{path}: {exc}") from exc
        raw["families"].update(user.get("families", {}))
        raw["models"].update(user.get("models", {}))
    return raw


def _stamps() -> tuple[tuple[str, int], ...]:
    """The user zoo files in force with their modification times (the cache key)."""
    stamps = []
    for path in user_files():
        try:
            stamps.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            continue
    return tuple(stamps)


def _raw() -> dict:
    """The zoo document in force: the package's zoo.json with the user files merged over it."""
    return _merged(_stamps())


def families() -> dict[str, Family]:
    """Every architecture family of the zoo by name."""
    out = {}
    for name, data in _raw()["families"].items():
        _check(name, data)
        out[name] = Family(name, data.get("backend", "hf"), data.get("probability", "platt"),
                           float(data.get("center", DEFAULT_CENTER)), tuple(data.get("templates") or ["{}"]),
                           dict(data.get("text", {})), dict(data.get("defaults", {})), dict(data.get("match", {})),
                           tuple(data.get("languages") or ["en"]), dict(data.get("language_templates", {})))
    return out


def family(name: str) -> Family | None:
    """A family by name (e.g. a transformers ``model_type``), or None when the zoo has no such family."""
    return families().get(name)


def openclip_family(arch: str | None, sigmoid: bool, tokenizer: str | None = None) -> Family:
    """The zoo family of an open_clip model: the first ``openclip`` family whose ``match`` names the
    architecture (shell patterns, any case) or the tokenizer class, with the model's kind of score
    (``sigmoid``: it has a logit bias); else the family of that kind with no ``match``. ``arch`` is
    None for a local folder (its name says nothing)."""
    probability = "sigmoid" if sigmoid else "platt"
    candidates = [f for f in families().values() if f.backend == "openclip" and f.probability == probability]
    for fam in candidates:
        if not fam.match:
            continue
        by_arch = arch is not None and any(fnmatch.fnmatch(arch.lower(), pattern.lower())
                                           for pattern in fam.match.get("arch", ()))
        if by_arch or (tokenizer is not None and tokenizer in fam.match.get("tokenizer", ())):
            return fam
    plain = [f for f in candidates if not f.match]
    if not plain:
        raise ModelLoadError(f"the model zoo has no open_clip family with {probability} scores")
    return plain[0]


def entries() -> dict[str, ZooEntry]:
    """Every zoo entry by alias (parsed once per state of the zoo files)."""
    return _entries(_stamps())


@lru_cache(maxsize=8)
def _entries(stamps: tuple[tuple[str, int], ...]) -> dict[str, ZooEntry]:
    return parse_zoo(_merged(stamps))


def entry(alias: str) -> ZooEntry | None:
    """The entry of an alias, or None."""
    return entries().get(alias)


def for_spec(spec: str) -> ZooEntry | None:
    """The entry of an alias or of a full spec string that some alias names (first match)."""
    found = entries().get(spec)
    if found is not None:
        return found
    return next((e for e in entries().values() if e.spec == spec), None)


#: Scripts that say which language a query is in, for the prompt template (checked in this order:
#: kana means Japanese even beside kanji).
_SCRIPTS = (("ja", ((0x3040, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))),
            ("ko", ((0xAC00, 0xD7AF), (0x1100, 0x11FF), (0x3130, 0x318F))),
            ("zh", ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))))


def script_language(text: str) -> str | None:
    """'ja', 'ko' or 'zh' for a query written in that script, 'other' for any other non-Latin
    letters (Cyrillic, Arabic, Devanagari...), None for Latin script, digits and symbols."""
    codes = [ord(c) for c in text]
    for lang, ranges in _SCRIPTS:
        if any(lo <= c <= hi for c in codes for lo, hi in ranges):
            return lang
    if any(c.isalpha() and ord(c) > 0x24F for c in text):
        return "other"
    return None


def query_template(spec: str, family_name: str, default: str, text: str) -> str:
    """The prompt template for one query term when the user gave none: the model's own (English)
    template for Latin-script text; for text in another script, the zoo's template for that language,
    else the raw text (``{}``) for a multilingual model (an English frame around a Chinese query is
    not how such models were trained or evaluated), else the model's template."""
    lang = script_language(text)
    if lang is None:
        return default
    known = for_spec(spec)
    fam = family(family_name)
    templates = {**(fam.language_templates if fam else {}), **(known.language_templates if known else {})}
    if lang in templates:
        return templates[lang]
    languages = known.languages if known is not None else (fam.languages if fam else ("en",))
    if "multi" in languages or lang in languages:
        return "{}"
    return default
