"""The batch indexer (scan, decode pool, embed, commit in checkpoints)."""

from searchlite.indexer.pipeline import Indexer, IndexStats

__all__ = ["IndexStats", "Indexer"]
