"""Walk, decode, encode and store pictures incrementally."""

from clipdex.indexer.run import Indexer, IndexStats

__all__ = ["Indexer", "IndexStats"]
