"""Embedding backends behind one protocol (see base.Embedder)."""

from searchlite.models.base import DEFAULT_TEMPLATES, Embedder, ScoreParams
from searchlite.models.registry import ALIASES, ModelSpec, load_embedder, parse_spec

__all__ = ["ALIASES", "DEFAULT_TEMPLATES", "Embedder", "ModelSpec", "ScoreParams", "load_embedder", "parse_spec"]
