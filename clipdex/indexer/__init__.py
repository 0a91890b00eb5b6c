"""Walk, decode, encode and store pictures incrementally.

Exports are loaded on first use: decode worker processes import
``clipdex.decodepool`` and must not pay for SQLAlchemy, FAISS and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.indexer.run import Indexer, IndexStats

__all__ = ["Indexer", "IndexStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clipdex.indexer import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
