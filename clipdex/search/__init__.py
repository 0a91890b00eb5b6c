"""Query a library by text or example image, and tag it zero-shot."""

from clipdex.search.query import Hit, build_query, search

__all__ = ["Hit", "build_query", "search"]
