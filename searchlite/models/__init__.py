"""Embedding backends behind one protocol (see base.Embedder)."""

from searchlite.models.base import DEFAULT_TEMPLATES, Embedder, ScoreParams
from searchlite.models.registry import ModelSpec, aliases, load_embedder, parse_spec

__all__ = ["aliases", "DEFAULT_TEMPLATES", "Embedder", "ModelSpec", "ScoreParams", "load_embedder", "parse_spec"]
