"""``index --rebuild`` and ``index --model NEW``: encode every picture with a model, then switch over in one step.

Nothing in the library changes until the new model has loaded. The new vectors are
staged beside the current ones (:mod:`clipdex.library.staging`), so a rebuild that fails
or is killed half-way leaves a library that searches exactly as before, and running it
again continues where it stopped. Every picture the library holds is re-encoded, not
only those under the folders given (their paths are known); the folders given are then
swept as by any run, for pictures new there. A switch to a model the library holds
(``index --model``, ``models use``) encodes only what that model lacks.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import numpy as np

from clipdex.decoding import Decoded
from clipdex.errors import LibraryError, ModelUnavailable
from clipdex.indexer.scan import Scan
from clipdex.library import held, places, staging, writes
from clipdex.library.staging import Unusable
from clipdex.library.writes import KnownRow, Picture
from clipdex.models import Encoder

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.indexer.run import Indexer, IndexStats

Facts = tuple[int, float]
GONE: Facts = (-1, -1.0)


def survey(rows: list[KnownRow], staged: dict[int, Facts], roots: Scan
           ) -> tuple[list[str], dict[str, tuple[int, int, float]], list[Unusable], list[int]]:
    """Which pictures still need re-encoding: ``(paths, path -> (id, size, mtime), unusable, done ids)``.

    A picture staged earlier with the size and mtime its file has now is done. A file gone
    from under the folders being indexed is simply removed at the switch, as any run would;
    one gone from elsewhere, or unreadable, is removed and listed as skipped with the reason.
    """
    todo: list[str] = []
    facts: dict[str, tuple[int, int, float]] = {}
    unusable: list[Unusable] = []
    done: list[int] = []
    for row in rows:
        reason: str | None = None
        try:
            st = os.stat(row.path)
        except FileNotFoundError:
            fact = GONE
            if not roots.covers(row.path):
                reason = "file not found when the library was rebuilt"
        except OSError as exc:
            fact, reason = GONE, f"cannot stat: {exc.strerror}"
        else:
            fact = (st.st_size, st.st_mtime)
            if not stat.S_ISREG(st.st_mode):
                reason = "not a regular file"
        if staged.get(row.id) == fact:
            done.append(row.id)
            continue
        if fact == GONE or reason is not None:
            unusable.append(Unusable(row.id, reason, *fact))
        else:
            todo.append(row.path)
            facts[row.path] = (row.id, *fact)
    return todo, facts, unusable, done


def rebuild_library(indexer: Indexer, encoder: Encoder, roots: Scan, stats: IndexStats,
                    reuse: bool = False) -> staging.Swapped:
    """Re-encode every picture with ``encoder`` and switch the library to it; returns what the switch did.

    ``reuse``: a model the library holds (:mod:`clipdex.library.held`) starts from the vectors it
    kept, and encodes only pictures new or changed since; when there are none, the model is not
    even loaded. Without it (``--rebuild``) every picture is encoded afresh.
    """
    lib = indexer.lib
    rows = writes.known_rows(lib, lambda _path: True)
    away = lib.places.unreachable([r.path for r in rows], absent_too=not indexer.prune_empty)
    if away:  # they would be taken for deleted, and leave the library (for every machine)
        where = "; ".join(f"{n} {w}" for (_, w), n in sorted(away.items(), key=lambda item: item[0][1]))
        fix = ("mount what is missing again (or, to drop its pictures, run with --prune-empty)"
               if any(kind == places.ABSENT for kind, _ in away) else
               "run it on a machine that reaches them all (a folder machines share needs the same root name "
               "declared on each)")
        raise LibraryError(f"a rebuild or a model switch reads every picture (to encode it, or to see it is "
                           f"unchanged), and {sum(away.values())} cannot be read on this machine "
                           f"({lib.places.machine}): {where}. Nothing was changed: {fix}")
    kept = held.held_spec(lib, encoder.spec.identity) if reuse else None
    pool = None
    try:
        if kept is None:
            indexer.load_model(encoder)  # first: a model that cannot load must cost the library nothing
        dim = kept[1] if kept is not None else encoder.dim
        staged = staging.begin(lib, encoder.spec, dim)
        if kept is not None:
            held.prefill(lib, encoder.spec.identity)
            staged = staging.begin(lib, encoder.spec, dim)
        todo, facts, unusable, done = survey(rows, staged, roots)
        staging.stage(lib, [], unusable)
        if todo:
            pool = indexer.decode_pool(encoder, len(todo))
            indexer.load_model(encoder)
            if encoder.dim != dim:
                raise ModelUnavailable(f"model {encoder.spec} now makes vectors of {encoder.dim} numbers, not the "
                                       f"{dim} this library holds of it: drop it (clipdex models drop) and index again")
        verb = "encoding" if reuse else "re-encoding"
        indexer.say(f"{verb} {len(todo)} pictures with model {encoder.spec}"
                    + (f" ({len(done)} vectors kept from before)" if kept is not None
                       else f" ({len(done)} were done by an interrupted rebuild)" if done else "") + " …")
        stats.reused += sum(1 for i in done if staged[i] != GONE)
        if todo:
            by_hash = staging.staged_hashes(lib)

            def store(ok: list[tuple[Decoded, np.ndarray]], failed: list[Decoded]) -> None:
                pictures = [Picture(d.path, facts[d.path][1], facts[d.path][2], d.content_hash, d.width, d.height,
                                    d.captured_at, v, facts[d.path][0]) for d, v in ok]
                staging.stage(lib, pictures, [Unusable(facts[d.path][0], d.error, *facts[d.path][1:])
                                              for d in failed])
                for p in pictures:
                    by_hash.setdefault(p.content_hash, p.image_id)

            indexer.encode_stream(encoder, pool, todo, verb, by_hash,
                                  lambda ids: staging.staged_vectors(lib, ids), store, stats)
    finally:
        if pool is not None:
            pool.close()
    swapped = staging.swap(lib, encoder.spec, dim)
    indexer.say(f"switched the library to model {encoder.spec}")
    stats.rebuilt = True
    stats.indexed += len(swapped.ids)
    stats.removed += len(swapped.removed)
    stats.skipped += len(swapped.skipped)
    stats.skipped_files.update(swapped.skipped)
    return swapped
