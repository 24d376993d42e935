"""The model zoo as data: ``zoo.json`` (package data, read without importing torch) maps each
alias to its spec, score family, prompt templates, text rules, languages, licence, size and
per-model defaults (e.g. the duplicate threshold).

A checkpoint's own config, tokenizer and processor files always win over the zoo: an entry only
adds what those files cannot say. Family defaults are merged under each entry (as open_clip's
``pretrained.py`` does with ``_slpcfg``); an unknown key is an error, so a typo never passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from searchlite.errors import ModelLoadError

#: Keys an entry (or a family default) may have.
KEYS = frozenset({"spec", "family", "templates", "text", "image", "languages", "dim", "license", "params",
                  "defaults", "description", "published", "lang", "backend", "probability", "center", "match"})
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
    backend: str = "hf"
    probability: str = "platt"  # "sigmoid": the model's own scale and bias; "platt": a fitted calibration
    center: float = 0.25  # uncalibrated Platt fallback: probability 0.5 at this cosine

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
                              probability=merged.get("probability", "platt"), center=float(merged.get("center", 0.25)))
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


@lru_cache(maxsize=1)
def _raw() -> dict:
    return json.loads((resources.files("searchlite.models") / "zoo.json").read_text(encoding="utf-8"))


def families() -> dict[str, Family]:
    """Every architecture family of the zoo by name."""
    out = {}
    for name, data in _raw()["families"].items():
        _check(name, data)
        out[name] = Family(name, data.get("backend", "hf"), data.get("probability", "platt"),
                           float(data.get("center", 0.25)), tuple(data.get("templates") or ["{}"]),
                           dict(data.get("text", {})), dict(data.get("defaults", {})), dict(data.get("match", {})))
    return out


def family(name: str) -> Family | None:
    """A family by name (e.g. a transformers ``model_type``), or None when the zoo has no such family."""
    return families().get(name)


@lru_cache(maxsize=1)
def entries() -> dict[str, ZooEntry]:
    """Every zoo entry by alias (read once per process)."""
    return parse_zoo(_raw())


def entry(alias: str) -> ZooEntry | None:
    """The entry of an alias, or None."""
    return entries().get(alias)


def for_spec(spec: str) -> ZooEntry | None:
    """The entry of an alias or of a full spec string that some alias names (first match)."""
    found = entries().get(spec)
    if found is not None:
        return found
    return next((e for e in entries().values() if e.spec == spec), None)
