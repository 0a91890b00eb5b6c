"""Read queries for finding duplicates: pictures sharing their bytes, and the facts keepers are chosen by.

Identical files are separate rows with the same ``content_hash`` (the indexer reuses the vector
of the first), so exact duplicates are a GROUP BY, and near duplicates need searching only one
picture per content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from clipdex.library.catalog import Picture, picture
from clipdex.library.schema import ImageRow

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library


def content_keys(lib: Library) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, keys)`` of every picture, by id: pictures with the same bytes share a key (a small number)."""
    with lib.engine.connect() as conn:
        rows = conn.execute(select(ImageRow.id, ImageRow.content_hash).order_by(ImageRow.id)).all()
    ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    numbering: dict[str, int] = {}
    keys = np.fromiter((numbering.setdefault(r[1], len(numbering)) for r in rows), np.int64, len(rows))
    return ids, keys


def pictures(lib: Library, ids: list[int]) -> dict[int, Picture]:
    """id -> :class:`Picture` for the given ids still in the library (a damaged row raises, naming it)."""
    found = (picture(lib, int(i)) for i in ids)
    return {p.id: p for p in found if p is not None}
