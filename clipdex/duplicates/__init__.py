"""Duplicates: pictures held more than once, exactly (same bytes) or nearly (a derived copy).

Exact duplicates share their content hash. Near ones are proposed by the vectors, by a range
search of the library's index (:meth:`clipdex.ann.live.LiveIndex.range_search`: it scales as
searches do, flat or IVF), one search per distinct content, and confirmed by the pixels
(:mod:`clipdex.duplicates.pixels`), so two photos of one subject are not called duplicates.
The picture to keep is chosen by a rule, and every other member of a near group is confirmed
against that keeper itself: a group never grows through a chain of pictures each like the next.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from clipdex.decodepool import DecodePool
from clipdex.duplicates.pixels import MAX_DIFFERENCE, THUMB, same_picture, signature_file
from clipdex.errors import UsageError
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
#: IVF lists a near-duplicate range search visits: a copy's vector sits very close to its original's, in
#: the same or a neighbouring list, so far fewer lists than a search's tuned nprobe find the same pairs.
DUPLICATES_NPROBE = 8
#: Pictures (distinct contents) that may be linked together as candidates: their signatures are held at once
#: (~200 KB each). Only a far too low threshold links more (every picture a candidate of every other).
MAX_PART = 2048
#: CPU seconds one file may take to decode for the pixel check (then it counts as unreadable).
DECODE_SECONDS = 20.0
_CHUNK = 2048

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
        # most pixels; among equals the one holding a capture date (a camera original, not a conversion
        # that dropped its EXIF); only then bytes (a lossless re-encode is bigger, not better)
        "largest": lambda p: (-p.width * p.height, p.captured_at is None, -p.size, p.id),
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
                                                                               MAX_NEIGHBOURS + 1,
                                                                               DUPLICATES_NPROBE)):
            mine = keys[at[row]]
            where = np.minimum(np.searchsorted(ids, hits), len(ids) - 1)
            for other in set(keys[where[ids[where] == hits]].tolist()) - {int(mine)}:
                pairs.add((min(int(mine), other), max(int(mine), other)))
        done += int(wanted.sum())
        if progress:
            progress("vectors", done, total)
    return pairs


class _Parts:
    """Union-find over content keys."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def root(self, k: int) -> int:
        parent = self.parent
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def join(self, a: int, b: int) -> None:
        self.parent[self.root(a)] = self.root(b)

    def parts(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for k in list(self.parent):
            out.setdefault(self.root(k), []).append(k)
        return list(out.values())


def _readable(paths: list[str]) -> str:
    """The first of a content's paths that is still a regular file (else the first): the one decoded."""
    return next((p for p in paths if os.path.isfile(p)), paths[0])


def _signatures(paths: dict[int, str], parts: list[list[int]]) -> Iterator[tuple[list[int], dict]]:
    """For each part (a list of keys), ``(part, {key: signature or None})`` once all its keys are decoded.

    Decoding is done in :class:`DecodePool` worker processes, part after part, each file under
    :data:`DECODE_SECONDS` of CPU: a FIFO, a huge or hostile file costs that file only."""
    of_path = {paths[k]: k for part in parts for k in part}
    left = {id(part): len(part) for part in parts}
    part_of = {k: part for part in parts for k in part}
    held: dict[int, np.ndarray | None] = {}
    pool = DecodePool(workers=min(2, os.cpu_count() or 1), timeout=DECODE_SECONDS, decode_fn=signature_file,
                      niceness=0)  # the caller waits for them: no lower priority
    for done in pool.run([paths[k] for part in parts for k in part], THUMB, chunk=1):
        for d in done:
            k = of_path[d.path]
            held[k] = d.pixels if d.error is None else None
            part = part_of[k]
            left[id(part)] -= 1
            if not left[id(part)]:
                yield part, {m: held.pop(m) for m in part}


def _check_cost(what: str, count: int, limit: int | None, threshold: float) -> None:
    if limit is not None and count > limit:
        raise UsageError(f"{count:,} {what} at threshold {threshold:g} is more than this check takes "
                         f"(limit {limit:,}): raise the threshold")


def find_duplicates(lib: Library, threshold: float | None = None, keep: str = "largest",
                    max_difference: float = MAX_DIFFERENCE, progress: Progress | None = None,
                    max_pairs: int | None = None) -> list[Group]:
    """Every group of duplicates in ``lib``, the keeper of each first (by rule ``keep``), largest groups first.

    ``threshold``: the cosine similarity making two pictures candidates (default: :func:`default_threshold`);
    ``max_difference``: the pixel structure difference (:func:`clipdex.duplicates.pixels.difference`) up to
    which a candidate pair is confirmed (its colour must agree too). Every member of a near group is
    confirmed against the group's keeper itself: pictures are never grouped through a chain of others.
    A picture whose file cannot be read is only grouped by its bytes. ``max_pairs`` bounds the candidate
    pairs checked (:class:`UsageError` beyond it, as beyond :data:`MAX_PART` pictures linked as candidates).
    """
    order = keeper_order(keep)
    threshold = default_threshold(lib) if threshold is None else check_threshold(threshold)
    ids, keys = content_keys(lib)
    candidates = sorted(candidate_pairs(lib, ids, keys, threshold, progress))
    _check_cost("candidate pairs", len(candidates), max_pairs, threshold)
    linked = _Parts()
    for a, b in candidates:
        linked.join(a, b)
    parts = sorted(linked.parts(), key=min)
    _check_cost("pictures linked as candidates", max(map(len, parts), default=0), MAX_PART, threshold)
    by_key: dict[int, list[int]] = {}
    for i, k in zip(ids.tolist(), keys.tolist()):
        by_key.setdefault(k, []).append(i)
    wanted = [i for k, m in by_key.items() if len(m) > 1 or k in linked.parent for i in m]
    facts = pictures(lib, wanted)
    members = {k: sorted((facts[i] for i in m if i in facts), key=order) for k, m in by_key.items()}
    members = {k: m for k, m in members.items() if m}
    paths = {k: _readable([p.path for p in members[k]]) for part in parts for k in part if k in members}
    parts = [[k for k in part if k in paths] for part in parts]
    parts = [part for part in parts if len(part) > 1]
    pairs_of: dict[int, list[tuple[int, int]]] = {}
    for a, b in candidates:
        if a in paths and b in paths:
            pairs_of.setdefault(linked.root(a), []).append((a, b))
    near: list[list[int]] = []
    checked, total = 0, len(candidates)
    for part, signature in _signatures(paths, parts):
        same = _Parts()
        for a, b in pairs_of.get(linked.root(part[0]), []):
            sa, sb = signature[a], signature[b]
            if sa is not None and sb is not None and same_picture(sa, sb, max_difference):
                same.join(a, b)
            checked += 1
            if progress and (checked % 64 == 0 or checked == total):
                progress("pixels", checked, total)
        for confirmed in same.parts():  # each keeper takes the pictures confirmed against it, then the next
            left = sorted(confirmed, key=lambda k: order(members[k][0]))
            while left:
                keeper, rest = left[0], left[1:]
                taken = [k for k in rest if same_picture(signature[keeper], signature[k], max_difference)]
                if taken:
                    near.append([keeper, *taken])
                left = [k for k in rest if k not in taken]
    if progress and checked < total:
        progress("pixels", total, total)
    grouped = {k for g in near for k in g}
    groups = [Group("near", sorted((p for k in g for p in members[k]), key=order)) for g in near]
    groups += [Group("exact", m) for k, m in members.items() if len(m) > 1 and k not in grouped]
    groups.sort(key=lambda g: (-len(g.pictures), g.keeper.path))
    return groups


__all__ = ["DEFAULT_THRESHOLD", "KEEP_RULES", "TINY_THRESHOLD", "Group", "default_threshold", "find_duplicates",
           "keeper_order"]
