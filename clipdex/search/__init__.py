"""Query a library by text or example image, with filters, and explain empty answers."""

from clipdex.search.filters import EmptyReason, day_range, parse_day, why_empty
from clipdex.search.query import MAX_K, Hit, build_query, search

__all__ = ["MAX_K", "EmptyReason", "Hit", "build_query", "day_range", "parse_day", "search", "why_empty"]
