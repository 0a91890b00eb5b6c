"""Every picture that matches a text query (not a fixed top k), with calibrated relevance.

The index ranks by raw cosine; relevance (:mod:`clipdex.search.calibration`) is computed for
candidates in that order, in growing batches, until a whole batch holds no match: relevance
follows the raw score closely (each picture's own background shifts it a little), so past a
batch of hundreds of non-matches no further match is expected.

Relevance is always that of the positive text: ``--not purple`` (``not=`` in the API) does not
shift it, it leaves out the pictures that match "purple" themselves (a combined ``star - purple``
vector would put every star below the cut-off).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from clipdex.errors import UsageError
from clipdex.library import Library
from clipdex.library.catalog import allowed_ids, count_pictures, hit_rows
from clipdex.models import Encoder
from clipdex.search.calibration import MATCH, background_for, relevance
from clipdex.search.query import Hit, search

#: The first batch of candidates; each next one is four times larger.
FIRST_BATCH = 256
#: At most this many matches are returned (a query everything matches, in a huge library).
MAX_MATCHES = 10_000
SORTS = ("score", "date")


def with_relevance(lib: Library, encoder: Encoder, query: np.ndarray, hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` (of a text query) with their calibrated relevance filled in, order unchanged."""
    if not hits:
        return list(hits)
    ids, vectors = lib.vectors_of([h.id for h in hits])
    scores = dict(zip(ids.tolist(), relevance(vectors, query, background_for(lib, encoder)).tolist()))
    return [Hit(h.id, h.path, h.score, h.width, h.height, h.captured_at, scores.get(h.id)) for h in hits]


def find_matches(
    lib: Library,
    encoder: Encoder,
    query: np.ndarray,
    *,
    tag: str | None = None,
    folder: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    exclude: set[int] | None = None,
    negative: np.ndarray | None = None,
) -> list[Hit]:
    """Every picture whose relevance for the unit text ``query`` is at least :data:`MATCH`, best first
    (at most :data:`MAX_MATCHES`); empty when nothing matches. ``negative``: the unit vector of a text
    whose own matches are left out (``--not``)."""
    background = background_for(lib, encoder)
    allowed = allowed_ids(lib, tag, folder, since, until)
    index = lib.index()
    found: dict[int, tuple[float, float]] = {}  # id -> (raw score, relevance)
    seen: set[int] = set(exclude or ())
    want = FIRST_BATCH
    while True:
        ranked = index.search(query, want + len(exclude or ()), allowed)
        fresh = [(i, s) for i, s in ranked if i not in seen]
        seen.update(i for i, _ in fresh)
        ids, vectors = lib.vectors_of([i for i, _ in fresh])
        raw = dict(fresh)
        batch = 0
        unwanted = (relevance(vectors, negative, background) >= MATCH if negative is not None
                    else np.zeros(len(ids), bool))
        for i, r, out in zip(ids.tolist(), relevance(vectors, query, background).tolist(), unwanted.tolist()):
            if r >= MATCH:
                batch += 1  # a match, kept or not: more may follow
                if not out:
                    found[i] = (raw[i], r)
        exhausted = len(ranked) < want + len(exclude or ())
        if exhausted or batch == 0 or len(found) >= MAX_MATCHES:
            break
        want *= 4
    best = sorted(found.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))[:MAX_MATCHES]
    rows = hit_rows(lib, [i for i, _ in best]) if best else {}
    return [Hit(i, rows[i].path, score, rows[i].width, rows[i].height, rows[i].captured_at, rel)
            for i, (score, rel) in best if i in rows]


def closest_miss(
    lib: Library,
    encoder: Encoder,
    query: np.ndarray,
    *,
    negative: np.ndarray | None = None,
    exclude: set[int] | None = None,
    **filters,
) -> dict:
    """Why :func:`find_matches` found nothing although pictures pass the filters, as JSON-ready data:
    ``{"kind": "no_match", "among": N, "closest": hit or None, "left_out": M}`` -- ``among`` the pictures
    the filters keep (the whole library without filters), ``closest`` the best of them that is not left
    out by ``negative``/``exclude``, ``left_out`` how many matches ``negative`` left out of those looked at."""
    allowed = allowed_ids(lib, **filters)
    among = count_pictures(lib) if allowed is None else len(allowed)
    near = with_relevance(lib, encoder, query, search(lib, query, 50, exclude=exclude, **filters))
    left_out = 0
    if negative is not None and near:
        ids, vectors = lib.vectors_of([h.id for h in near])
        out = dict(zip(ids.tolist(), (relevance(vectors, negative, background_for(lib, encoder)) >= MATCH).tolist()))
        left_out = sum(1 for h in near if out.get(h.id) and (h.relevance or 0) >= MATCH)
        near = [h for h in near if not out.get(h.id)]
    closest = near[0].as_dict() if near else None
    return {"kind": "no_match", "among": among, "closest": closest, "left_out": left_out}


def sort_hits(hits: list[Hit], sort: str) -> list[Hit]:
    """``hits`` as ranked (``score``) or by capture date, oldest first, undated last (``date``)."""
    if sort not in SORTS:
        raise UsageError(f"sort must be one of {', '.join(SORTS)}, got {sort[:20]!r}")
    if sort == "score":
        return list(hits)
    return sorted(hits, key=lambda h: (h.captured_at is None, h.captured_at or dt.datetime.min))
