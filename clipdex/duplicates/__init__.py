"""Duplicates: pictures held more than once, exactly (same bytes) or nearly (a derived copy).

Exact duplicates share their content hash. Near ones are proposed by the vectors, by a range
search of the library's index (:meth:`clipdex.ann.live.LiveIndex.range_search`: it scales as
searches do, flat or IVF), one search per distinct content, and confirmed by the pixels
(:mod:`clipdex.duplicates.pixels`), so two photos of one subject are not called duplicates.
Pictures linked either way form a group, with the picture to keep chosen by a rule.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clipdex.duplicates.pixels import MAX_DIFFERENCE, difference, signature_of_file
from clipdex.errors import DecodeError, UsageError
from clipdex.library import Library
from clipdex.library.catalog import Picture
from clipdex.library.duplicates import content_keys, pictures

#: Cosine similarity from which two pictures' vectors make them candidates, for CLIP models (a copy
#: resized, recompressed or lightly cropped keeps ~0.9 and more); the pixels, not this, tell a second shot apart.
DEFAULT_THRESHOLD = 0.9
#: The same for the tiny demo model, trained on centred shapes only: a copy cropped 1-6 % a side falls
#: to a cosine of 0.36-0.99 under it (benchmarks/bench_duplicates.py), so it needs a far lower bar.
TINY_THRESHOLD = 0.3
KEEP_RULES = ("largest", "oldest", "newest", "shortest-path")
#: Neighbours kept per picture: enough for any real set of copies, bounded if vectors crowd together.
MAX_NEIGHBOURS = 64
_CHUNK = 2048
_SIGNATURES_HELD = 512  # ~85 MB of signatures; pairs come sorted, so the first picture's stays held

#: ``progress(stage, done, total)``: ``stage`` is "vectors" (pictures searched) or "pixels" (pairs checked).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Group:
    """Pictures that are one picture: ``kind`` "exact" (same bytes) or "near"; the keeper comes first."""

    kind: str
    pictures: list[Picture]

    @property
    def keeper(self) -> Picture:
        return self.pictures[0]

    def as_dict(self) -> dict:
        """The JSON shape of ``clipdex duplicates --json`` and ``/api/duplicates``."""
        return {"kind": self.kind, "keeper": self.keeper.id, "pictures": [picture_dict(p) for p in self.pictures]}


def picture_dict(p: Picture) -> dict:
    """A group member as JSON: id, path and the facts keepers are chosen by."""
    return {"id": p.id, "path": p.path, "width": p.width, "height": p.height, "size": p.size,
            "captured_at": p.captured_at.isoformat() if p.captured_at else None,
            "mtime": dt.datetime.fromtimestamp(p.mtime, dt.timezone.utc).isoformat(timespec="seconds"),
            "content_hash": p.content_hash}


def _taken(p: Picture) -> float:
    """When the picture was taken: its capture date, else its file's modification time (seconds)."""
    if p.captured_at is not None:
        return p.captured_at.replace(tzinfo=dt.timezone.utc).timestamp()
    return p.mtime


def keeper_order(keep: str) -> Callable[[Picture], tuple]:
    """The sort key putting the picture to keep first under rule ``keep`` (:data:`KEEP_RULES`)."""
    rules: dict[str, Callable[[Picture], tuple]] = {
        "largest": lambda p: (-p.width * p.height, -p.size, p.id),
        "oldest": lambda p: (_taken(p), p.mtime, p.id),
        "newest": lambda p: (-_taken(p), -p.mtime, p.id),
        "shortest-path": lambda p: (len(p.path), p.path, p.id),
    }
    if keep not in rules:
        raise UsageError(f"unknown keeper rule {keep!r} (choose from: {', '.join(KEEP_RULES)})")
    return rules[keep]


def default_threshold(lib: Library) -> float:
    """The candidate threshold for ``lib``'s model (:data:`DEFAULT_THRESHOLD`, or :data:`TINY_THRESHOLD`)."""
    spec = lib.model_spec
    return TINY_THRESHOLD if spec is not None and spec.kind == "tiny" else DEFAULT_THRESHOLD


def check_threshold(threshold: float) -> float:
    """``threshold`` if it is a usable cosine similarity (above 0, at most 1), else :class:`UsageError`."""
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"threshold must be above 0 and at most 1, got {threshold}")
    return threshold


def candidate_pairs(lib: Library, ids: np.ndarray, keys: np.ndarray, threshold: float,
                    progress: Progress | None = None) -> set[tuple[int, int]]:
    """Pairs of contents ``(key, key)`` whose vectors score at least ``threshold``: one range search per content."""
    if not len(ids):
        return set()
    live = lib.index()
    first = np.unique(keys, return_index=True)[1]
    representative = np.zeros(len(ids), bool)
    representative[first] = True
    pairs: set[tuple[int, int]] = set()
    done, total = 0, len(first)
    for chunk_ids, vectors in lib.stream_vectors(_CHUNK):
        at = np.minimum(np.searchsorted(ids, chunk_ids), len(ids) - 1)
        wanted = (ids[at] == chunk_ids) & representative[at]  # a picture added since ``ids`` was read waits
        for row, (hits, _) in zip(np.flatnonzero(wanted), live.range_search(vectors[wanted], threshold,
                                                                               MAX_NEIGHBOURS + 1)):
            mine = keys[at[row]]
            where = np.minimum(np.searchsorted(ids, hits), len(ids) - 1)
            for other in set(keys[where[ids[where] == hits]].tolist()) - {int(mine)}:
                pairs.add((min(int(mine), other), max(int(mine), other)))
        done += int(wanted.sum())
        if progress:
            progress("vectors", done, total)
    return pairs


class _Signatures:
    """Signatures of contents by key, decoded on first need from any file holding that content."""

    def __init__(self, paths: dict[int, list[str]]):
        self.paths, self.held = paths, OrderedDict()

    def __call__(self, key: int) -> np.ndarray | None:
        if key in self.held:
            self.held.move_to_end(key)
            return self.held[key]
        found = None
        for path in self.paths.get(key, []):
            try:
                found = signature_of_file(path)
                break
            except DecodeError:  # moved or unreadable since it was indexed: another copy may do
                continue
        self.held[key] = found
        if len(self.held) > _SIGNATURES_HELD:
            self.held.popitem(last=False)
        return found


def find_duplicates(lib: Library, threshold: float | None = None, keep: str = "largest",
                    max_difference: float = MAX_DIFFERENCE, progress: Progress | None = None) -> list[Group]:
    """Every group of duplicates in ``lib``, the keeper of each first (by rule ``keep``), largest groups first.

    ``threshold``: the cosine similarity making two pictures candidates (default: :func:`default_threshold`);
    ``max_difference``: the pixel
    difference (:func:`clipdex.duplicates.pixels.difference`) up to which a candidate pair is confirmed.
    A picture whose file cannot be read is only grouped by its bytes.
    """
    order = keeper_order(keep)
    threshold = default_threshold(lib) if threshold is None else check_threshold(threshold)
    ids, keys = content_keys(lib)
    parent = list(range(int(keys.max()) + 1 if len(keys) else 0))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    candidates = sorted(candidate_pairs(lib, ids, keys, threshold, progress))
    if candidates:
        involved = {k for pair in candidates for k in pair}
        facts = pictures(lib, [int(i) for i, k in zip(ids, keys) if int(k) in involved])
        paths: dict[int, list[str]] = {}
        for i, k in zip(ids.tolist(), keys.tolist()):
            if i in facts:
                paths.setdefault(k, []).append(facts[i].path)
        signature = _Signatures(paths)
        for n, (a, b) in enumerate(candidates, 1):
            sa, sb = signature(a), signature(b)
            if sa is not None and sb is not None and difference(sa, sb) <= max_difference:
                parent[root(a)] = root(b)
            if progress and (n % 64 == 0 or n == len(candidates)):
                progress("pixels", n, len(candidates))
    members: dict[int, list[int]] = {}
    for i, k in zip(ids.tolist(), keys.tolist()):
        members.setdefault(root(k), []).append(i)
    linked = [m for m in members.values() if len(m) > 1]
    facts = pictures(lib, [i for m in linked for i in m])
    groups = []
    for m in linked:
        found = sorted((facts[i] for i in m if i in facts), key=order)
        if len(found) > 1:
            kind = "exact" if len({p.content_hash for p in found}) == 1 else "near"
            groups.append(Group(kind, found))
    groups.sort(key=lambda g: (-len(g.pictures), g.keeper.path))
    return groups


__all__ = ["DEFAULT_THRESHOLD", "KEEP_RULES", "TINY_THRESHOLD", "Group", "default_threshold", "find_duplicates",
           "keeper_order"]
