"""The change log: which pictures' vectors each commit added, replaced or removed.

Every commit that changes vectors bumps the library's generation and, in the same
transaction, records the ids it touched under that generation. A reader holding
generation g then catches up by re-reading only those ids (:func:`read_delta`) instead of
every vector. ``meta.changes_from`` is the generation after which the log is complete: a
commit that may have changed everything (a model switch) restarts the log, and writers
prune entries that no index file needs any more (:func:`prune`). A reader older than
``changes_from`` loads afresh.

Applying a delta is idempotent: an id is removed from the reader's index and added back
with the vector the database holds now (or left out if its row is gone), so reading a
vector newer than the generation read is harmless; the next catch-up applies it again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from clipdex.library.schema import ChangeRow, Meta

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

CHANGES_FROM = "changes_from"
VECTORS_FROM = "vectors_from"
#: Rows per INSERT (SQLite's bound-parameter limit is 32766; two per row).
_INSERT_ROWS = 5000


@dataclass
class Delta:
    """What changed after a reader's generation, up to ``generation``.

    ``touched``: every id whose vector changed (sorted, unique); ``ids``/``vectors``: those of
    them still in the library, with their vectors as stored now.
    """

    generation: int
    touched: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray


def record(session: Session, generation: int, ids: Iterable[int]) -> None:
    """Log that the commit making ``generation`` changed the vectors of ``ids`` (inside that commit)."""
    rows = [{"generation": generation, "image_id": int(i)} for i in sorted(set(ids))]
    for start in range(0, len(rows), _INSERT_ROWS):
        session.execute(insert(ChangeRow), rows[start:start + _INSERT_ROWS])


def restart(session: Session, generation: int) -> None:
    """Everything may have changed at ``generation`` (a model switch): readers before it load afresh, and
    ``meta.vectors_from`` says that no vector older than it may be compared with one from after."""
    session.execute(delete(ChangeRow))
    session.merge(Meta(key=CHANGES_FROM, value=str(generation)))
    session.merge(Meta(key=VECTORS_FROM, value=str(generation)))


def vectors_model(lib: Library) -> tuple[str | None, int]:
    """``(model identity, vectors_from)`` read in one statement: which model made the vectors now, and
    from which generation on (a search holding an index snapshot older than that mixes two models)."""
    with lib.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT (SELECT value FROM meta WHERE key = 'model_identity'), "
            "(SELECT value FROM meta WHERE key = 'vectors_from')")).one()
    return row[0], (_number(row[1]) if row[1] else 0)


def prune(session: Session, upto: int) -> None:
    """Forget the changes of generations ``<= upto`` (no index file still needs them)."""
    current = session.get(Meta, CHANGES_FROM)
    if current is not None and _number(current.value) >= upto and not _damaged(session, current.value):
        return
    session.execute(delete(ChangeRow).where(ChangeRow.generation <= upto))
    session.merge(Meta(key=CHANGES_FROM, value=str(upto)))


def distrust(session: Session, generation: int) -> None:
    """The log before ``generation`` is known to miss changes (a base built from every vector found the
    database and base + log disagreeing): nobody may catch up across it any more."""
    current = session.get(Meta, CHANGES_FROM)
    if current is None or _damaged(session, current.value) or _number(current.value) < generation:
        session.execute(delete(ChangeRow).where(ChangeRow.generation <= generation))
        session.merge(Meta(key=CHANGES_FROM, value=str(generation)))


def heal(session: Session, generation: int) -> None:
    """A damaged ``changes_from`` (see :func:`_damaged`) is set to ``generation``, that of a base built from
    every vector, cutting the log there: readers then follow by delta again instead of rebuilding forever."""
    current = session.get(Meta, CHANGES_FROM)
    if current is not None and _damaged(session, current.value):
        distrust(session, generation)


def _damaged(session: Session, value: object) -> bool:
    """A ``changes_from`` no commit can have written: not a number, or past the library's generation."""
    generation = session.get(Meta, "generation")
    return _number(value) > _number(generation.value if generation is not None else 0)


def _number(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return 1 << 62  # damaged: the log cannot be trusted, so nobody catches up from it (a writer heals it)


def _state(lib: Library) -> tuple[int, int]:
    """``(generation, changes_from)`` read in one statement."""
    with lib.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT (SELECT value FROM meta WHERE key = 'generation'), "
            "(SELECT value FROM meta WHERE key = 'changes_from')")).one()
    return (lib.parse_generation(row[0]) if row[0] is not None else 0), (_number(row[1]) if row[1] else 0)


def count_since(lib: Library, generation: int) -> int | None:
    """How many ids changed after ``generation``; None when the log no longer reaches back that far."""
    now, start = _state(lib)
    if generation < start:
        return None
    with lib.engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(DISTINCT image_id) FROM vector_changes WHERE generation > :g"), {"g": generation}).scalar())


def read_delta(lib: Library, generation: int, limit: int) -> Delta | None:
    """The changes after ``generation``; None when the log does not reach back that far or more than
    ``limit`` ids changed (loading afresh is then cheaper or the only way)."""
    now, start = _state(lib)
    if generation < start:
        return None
    if now == generation:
        return Delta(now, *_empty(lib.dim or 0))
    span = {"g": generation, "now": now}
    with lib.engine.connect() as conn:
        touched = np.fromiter(conn.execute(text(
            "SELECT DISTINCT image_id FROM vector_changes WHERE generation > :g AND generation <= :now "
            "ORDER BY image_id"), span).scalars(), np.int64)
    if len(touched) > limit:
        return None
    ids, vectors = lib.vectors_of(touched)
    if _state(lib)[1] > generation:  # pruned while we read: what we read may be incomplete
        return None
    return Delta(now, touched, ids, vectors)


def _empty(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dim), np.float32)


def latest_ids(session: Session, generation: int) -> list[int]:
    """Ids logged for exactly ``generation`` (tests and diagnostics)."""
    return list(session.scalars(select(ChangeRow.image_id).where(ChangeRow.generation == generation)))
