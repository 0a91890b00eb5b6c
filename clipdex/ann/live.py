"""What a reader searches: a base index plus the changes made since, as one immutable snapshot.

The base (:class:`clipdex.ann.base.Base`) is never modified; vectors changed after its
generation live in a small exact *overlay* held in memory, and their ids are hidden in the
base. Catching up with a commit (:meth:`LiveIndex.with_delta`) makes a new snapshot in time
proportional to the overlay, never to the library, while searches keep using the one they
hold: no search waits for a refresh and none sees half of one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np

from clipdex.ann.base import IVF, Base

#: Vectors by id, exactly as stored: what approximate candidates are re-scored with.
Fetch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: How far below a range search's threshold an IVF base is searched: its 8-bit codes misjudge a cosine
#: by less than this, so no pair above the threshold is lost to quantisation (they are re-scored exactly).
_IVF_MARGIN = 0.02


@dataclass(frozen=True)
class LiveIndex:
    """``base`` (may be None while the library is empty) + ``overlay`` − ``hidden``, at ``generation``."""

    dim: int
    generation: int
    base: Base | None
    fetch: Fetch
    over_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    over_vectors: np.ndarray | None = None
    hidden: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted ids hidden in the base
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def kind(self) -> str:
        return self.base.kind if self.base is not None else "flat"

    @property
    def ntotal(self) -> int:
        if "ntotal" not in self._cache:
            in_base = 0 if self.base is None else self.base.count - self.base.holding(self.hidden)
            self._cache["ntotal"] = in_base + len(self.over_ids)
        return self._cache["ntotal"]

    @property
    def pending(self) -> int:
        """How many ids changed since the base (the overlay and the hidden, counted once)."""
        return len(np.union1d(self.hidden, self.over_ids))

    def ids(self) -> np.ndarray:
        """Every id searchable, sorted."""
        base = self.base.ids[~np.isin(self.base.ids, self.hidden)] if self.base is not None else self.over_ids[:0]
        return np.union1d(base, self.over_ids)

    def vector(self, image_id: int) -> np.ndarray:
        """One picture's vector as stored (``KeyError`` if it is not in the library)."""
        ids, vectors = self.fetch(np.array([image_id], np.int64))
        if not len(ids):
            raise KeyError(image_id)
        return vectors[0]

    def with_delta(self, generation: int, touched: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> LiveIndex:
        """A new snapshot at ``generation``: ``touched`` ids changed; ``ids``/``vectors`` are those still present."""
        keep = ~np.isin(self.over_ids, touched)
        old = self.over_vectors if self.over_vectors is not None else np.zeros((0, self.dim), np.float32)
        over_ids = np.concatenate([self.over_ids[keep], np.asarray(ids, np.int64)])
        over_vectors = np.concatenate([old[keep], np.asarray(vectors, np.float32).reshape(-1, self.dim)])
        return LiveIndex(self.dim, generation, self.base, self.fetch, over_ids, over_vectors,
                         np.union1d(self.hidden, np.asarray(touched, np.int64)))

    # -- search ---------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top ``k`` ``(id, score)`` for one unit query vector, optionally only among ``allowed`` ids.

        Scores are exact cosine similarities: IVF candidates are re-scored with the stored vectors.
        """
        if k <= 0 or (allowed is not None and len(allowed) == 0):
            return []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(self.dim)
        allowed = None if allowed is None else np.asarray(allowed, np.int64)
        found = [self._search_overlay(q, k, allowed), self._search_base(q, k, allowed)]
        ids = np.concatenate([f[0] for f in found])
        scores = np.concatenate([f[1] for f in found])
        order = np.lexsort((ids, -scores))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]

    def _search_overlay(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ids, vectors = self.over_ids, self.over_vectors
        if vectors is None or not len(ids):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if allowed is not None:
            mask = np.isin(ids, allowed)
            ids, vectors = ids[mask], vectors[mask]
        scores = vectors @ q
        top = np.argpartition(-scores, k - 1)[:k] if len(scores) > k else np.arange(len(scores))
        return ids[top], scores[top]

    def _search_base(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        base = self.base
        if base is None or not base.count:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        keep: list = []  # what the selector points into must outlive the search
        selector, fraction = self._selector(allowed, keep)
        if allowed is not None and fraction == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if base.kind != IVF:
            return base.search(q, k, selector)
        candidates, _ = base.search(q, max(2 * k, k + 32), selector, fraction)
        ids, vectors = self.fetch(candidates)  # a picture removed meanwhile is simply not returned
        return ids, vectors @ q

    def range_search(self, queries: np.ndarray, threshold: float, limit: int | None = None,
                     nprobe: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each unit query, ``(ids, scores)`` of every picture whose exact cosine is at least ``threshold``,
        best first (at most ``limit``): the base (its hidden ids left out) and the overlay.

        An IVF base is searched a little below ``threshold`` (its 8-bit scores are approximate) and
        its candidates re-scored with the stored vectors; ``nprobe``: lists visited (default: tuned).
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        found: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(q))]
        if self.over_vectors is not None and len(self.over_ids):
            rows, cols = np.nonzero(q @ self.over_vectors.T >= threshold)
            scores = np.einsum("ij,ij->i", q[rows], self.over_vectors[cols])
            for i in np.unique(rows):
                at = rows == i
                found[i].append((self.over_ids[cols[at]], scores[at]))
        if self.base is not None and self.base.count:
            selector, _ = self._selector(None, [])
            approximate = self.base.kind == IVF
            lims, ids, scores = self.base.range_search(q, threshold - (_IVF_MARGIN if approximate else 0.0),
                                                       selector, nprobe)
            if approximate and len(ids):
                known, vectors = self.fetch(np.unique(ids))  # a picture removed meanwhile is not returned
                at = np.minimum(np.searchsorted(known, ids), max(0, len(known) - 1))
                present = known[at] == ids if len(known) else np.zeros(len(ids), bool)
                rows = np.repeat(np.arange(len(q)), np.diff(lims))
                exact = np.full(len(ids), -2.0, np.float32)
                exact[present] = np.einsum("ij,ij->i", q[rows[present]], vectors[at[present]])
                scores = exact
            for i in range(len(q)):
                part = slice(lims[i], lims[i + 1])
                keep = scores[part] >= threshold
                if keep.any():
                    found[i].append((ids[part][keep], scores[part][keep]))
        out = []
        for parts in found:
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            scores = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.float32)
            order = np.lexsort((ids, -scores))[:limit]
            out.append((ids[order], scores[order].astype(np.float32)))
        return out

    def _selector(self, allowed: np.ndarray | None, keep: list) -> tuple[faiss.IDSelector | None, float]:
        """The FAISS selector for the base (hidden ids out, only ``allowed`` in) and the share it lets through."""
        base = self.base
        if allowed is None:
            if not len(self.hidden):
                return None, 1.0
            if "hidden" not in self._cache:
                batch = faiss.IDSelectorBatch(self.hidden)
                self._cache["hidden"] = (faiss.IDSelectorNot(batch), batch)
            return self._cache["hidden"][0], 1.0
        allowed = allowed[(allowed >= 0) & (allowed <= base.ids[-1])]  # no other id is in the base
        size = int(base.ids[-1]) + 1
        if size > max(1 << 20, 64 * base.count):  # ids far sparser than a library makes them: no bitmap
            allowed = np.setdiff1d(allowed, self.hidden)
            share = base.holding(np.unique(allowed)) / base.count
            if share == 0:
                return None, 0.0
            batch = faiss.IDSelectorBatch(allowed)
            keep.append(batch)
            return batch, share
        bits = np.zeros(size, dtype=bool)
        bits[allowed] = True
        bits[self.hidden[self.hidden < size]] = False
        share = int(bits.sum()) / base.count  # ids the base does not hold (in the overlay) count too: generous
        if share == 0:
            return None, 0.0
        packed = np.packbits(bits, bitorder="little")
        keep.append(packed)
        return faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed)), min(1.0, share)
