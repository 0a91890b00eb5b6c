"""Near misses for messages: "did you mean …" for tags, architectures and other names."""

from __future__ import annotations

import difflib


def similar_names(wanted: str, known: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``known`` closest to ``wanted``, ignoring case, closest first."""
    by_lower = {name.lower(): name for name in known}
    return [by_lower[c] for c in difflib.get_close_matches(wanted.lower(), list(by_lower), n=n, cutoff=0.6)]
