"""Embedding backends behind one protocol (see base.Embedder)."""

from searchlite.models.base import Embedder, ScoreParams
from searchlite.models.registry import ModelSpec, aliases, load_embedder, parse_spec

__all__ = ["aliases", "Embedder", "ModelSpec", "ScoreParams", "load_embedder", "parse_spec"]
