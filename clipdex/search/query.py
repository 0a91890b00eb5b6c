"""Search a library by text, by example image, or both, with optional filters."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import DecodeError, UsageError
from clipdex.imaging import load_for_model
from clipdex.library import Library, changes
from clipdex.library.catalog import allowed_ids, hit_rows
from clipdex.models import Encoder

MAX_K = 1000


@dataclass
class Hit:
    """One search result."""

    id: int
    path: str
    score: float
    width: int
    height: int
    captured_at: dt.datetime | None
    #: Calibrated 0..1 relevance (:mod:`clipdex.search.calibration`); None where not computed (picture queries).
    relevance: float | None = None

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "path": self.path,
            "score": round(self.score, 6),
            "relevance": None if self.relevance is None else round(self.relevance, 4),
            "width": self.width,
            "height": self.height,
            "captured_at": self.captured_at.isoformat() if self.captured_at else None,
        }


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def check_query_image(path: str | Path) -> None:
    """:class:`UsageError` when the example picture does not exist (checked before the model loads)."""
    if not os.path.exists(path):
        raise UsageError(f"query image not found: {path}")


def encode_image_file(encoder: Encoder, path: str | Path) -> np.ndarray:
    """Encode one picture the way the indexer does; :class:`UsageError` if missing or unreadable."""
    check_query_image(path)
    try:
        pixels, _ = load_for_model(path, encoder.image_size, encoder.resize_mode)
    except DecodeError as exc:
        raise UsageError(f"cannot use {path} as a query image: {exc}") from None
    return encoder.encode_pixels(pixels[None])[0]


def build_query(
    encoder: Encoder,
    text: str | None = None,
    image: str | Path | None = None,
    negative: str | None = None,
    image_vector: np.ndarray | None = None,
) -> np.ndarray:
    """One unit query vector: text and image add up, ``negative`` is subtracted."""
    if image is not None:
        check_query_image(image)
    parts = []
    if text is not None and text.strip():
        parts.append(encoder.encode_texts([text])[0])
    if image is not None:
        parts.append(encode_image_file(encoder, image))
    if image_vector is not None:
        parts.append(_unit(np.asarray(image_vector, np.float32)))
    if not parts:
        raise UsageError("nothing to search for: give a text, an example picture, or both")
    query = _unit(np.sum(parts, axis=0))
    if negative is not None and negative.strip():
        query = _unit(query - encoder.encode_texts([negative])[0])
    return query.astype(np.float32)


def search(
    lib: Library,
    query: np.ndarray,
    k: int = 20,
    *,
    offset: int = 0,
    tag: str | None = None,
    folder: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    exclude: set[int] | None = None,
) -> list[Hit]:
    """Top ``k`` pictures (after ``offset``) for a unit query vector, best first."""
    if not 1 <= k <= MAX_K:
        raise UsageError(f"k must be between 1 and {MAX_K}, got {k}")
    if offset < 0:
        raise UsageError(f"offset must not be negative, got {offset}")
    want = k + offset + len(exclude or ())
    ranked = lib.index().search(query, want, allowed_ids(lib, tag, folder, since, until))
    ranked = [(i, s) for i, s in ranked if not exclude or i not in exclude][offset:offset + k]
    if not ranked:
        return []
    rows = hit_rows(lib, [i for i, _ in ranked])
    return [
        Hit(i, rows[i].path, score, rows[i].width, rows[i].height, rows[i].captured_at)
        for i, score in ranked
        if i in rows
    ]


def one_model(lib: Library, encoder: Encoder, generation: int) -> bool:
    """Whether a search that began holding an index snapshot at ``generation`` and encoded its query with
    ``encoder`` compared vectors of one model only: no model switch (or rebuild) committed since, and the
    library's model is the encoder's. Checked after the search: a switch commits at any moment."""
    identity, since = changes.vectors_model(lib)
    return identity == encoder.spec.identity and since <= generation
