"""Query a library by text or example image, with filters, and explain empty answers."""

from clipdex.search.filters import EmptyReason, day_range, parse_day, why_empty
from clipdex.search.matches import SORTS, find_matches, sort_hits, with_relevance
from clipdex.search.query import MAX_K, Hit, build_query, search

__all__ = ["MAX_K", "SORTS", "EmptyReason", "Hit", "build_query", "day_range", "find_matches", "parse_day", "search",
           "sort_hits", "why_empty", "with_relevance"]
