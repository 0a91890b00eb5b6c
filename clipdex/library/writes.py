"""What the indexer writes, and the reads it plans with: the SQL behind :mod:`clipdex.indexer`.

Each function is one transaction, so a run killed at any moment loses at most the batch
in flight. The indexer deals in :class:`KnownRow`, :class:`Picture` and :class:`Failure`,
never in schema classes, and in local paths: pictures under a root name are stored relative
to it (:mod:`clipdex.library.places`), and those whose root is not mounted here are left out.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from clipdex.library import dialect
from clipdex.library.schema import ImageRow, SkippedRow, TagRow, utcnow

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

#: Values per ``IN (...)`` clause: SQLite limits the number of bound parameters.
CHUNK = 500


def delete_in_chunks(session: Session, column: InstrumentedAttribute, values: Sequence[Any], *where: Any) -> int:
    """``DELETE ... WHERE column IN values [AND where...]``, ``CHUNK`` values at a time; rows deleted.

    The one place that knows SQLite's bound-parameter limit: any number of ids or paths
    may be passed. Runs inside the caller's transaction.
    """
    table = column.class_
    deleted = 0
    for start in range(0, len(values), CHUNK):
        result = session.execute(delete(table).where(column.in_(values[start:start + CHUNK]), *where))
        deleted += result.rowcount or 0
    return deleted


class KnownRow(NamedTuple):
    """What planning needs of an indexed picture."""

    id: int
    path: str
    size: int
    mtime: float
    content_hash: str


@dataclass
class Picture:
    """A decoded and encoded file, ready to store; ``image_id`` is the row it replaces, if any."""

    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int
    captured_at: dt.datetime | None
    vector: np.ndarray
    image_id: int | None = None


@dataclass
class Failure:
    """A file that could not be used, and why; recorded in the skip list."""

    path: str
    reason: str
    size: int = -1
    mtime: float = -1.0


def known_rows(lib: Library, covers: Callable[[str], bool], absent: Sequence[str] = ()) -> list[KnownRow]:
    """Indexed pictures whose path ``covers`` accepts (those under the folders being swept), but none under
    the ``absent`` folders (a share not mounted here: its pictures are neither gone nor moved)."""
    stmt = select(ImageRow.id, ImageRow.path, ImageRow.size, ImageRow.mtime, ImageRow.content_hash)
    local = lib.places.local
    away = tuple(a.rstrip(os.sep) + os.sep for a in absent)
    with lib.session() as s:
        rows = [KnownRow(r.id, local(r.path), r.size, r.mtime, r.content_hash) for r in s.execute(stmt)]
    return [r for r in rows if covers(r.path) and not (away and r.path.startswith(away))]


def skipped_facts(lib: Library, covers: Callable[[str], bool]) -> dict[str, tuple[int, float]]:
    """path -> (size, mtime) of skipped files under the swept folders, as they were when skipped."""
    local = lib.places.local
    with lib.session() as s:
        rows = {local(r.path): (r.size, r.mtime)
                for r in s.execute(select(SkippedRow.path, SkippedRow.size, SkippedRow.mtime))}
    return {path: facts for path, facts in rows.items() if covers(path)}


def content_hashes(lib: Library) -> dict[str, int]:
    """content hash -> id of a picture with that content (copies reuse its vector)."""
    with lib.session() as s:
        return dict(s.execute(select(ImageRow.content_hash, ImageRow.id)).all())


def apply_moves_and_removals(
    lib: Library, moves: Iterable[tuple[int, str, int, float]], removed_ids: list[int]
) -> None:
    """Give moved pictures (id, new path, size, mtime) their new place; forget removed ones."""
    moves = list(moves)
    if not moves and not removed_ids:
        return
    with lib.session() as s:
        for image_id, path, size, mtime in moves:
            row = s.get(ImageRow, image_id)
            row.path, row.size, row.mtime = lib.places.stored(path), size, mtime
        if removed_ids:
            lib.forget(s, removed_ids)
            lib.bump_generation(s, removed_ids)
        s.commit()


def record_scan_problems(lib: Library, covers: Callable[[str], bool], present: Callable[[str], bool],
                         problems: dict[str, str]) -> None:
    """Record what a scan could not look at; forget old skips under the swept folders of files now gone."""
    places = lib.places
    with lib.session() as s:
        stale = [p for p in s.scalars(select(SkippedRow.path))
                 if covers(local := places.local(p)) and not present(local) and local not in problems]
        delete_in_chunks(s, SkippedRow.path, stale)
        now = utcnow()
        for path, reason in problems.items():
            s.merge(SkippedRow(path=places.stored(path), reason=reason, recorded_at=now))
        s.commit()


def store_batch(lib: Library, pictures: list[Picture], failures: list[Failure], forget_ids: list[int]) -> list[int]:
    """Commit one batch in a single transaction; returns the ids of ``pictures``, in order.

    A picture with an ``image_id`` replaces that row (same id; its tags, which described the
    old content, go unless the content hash is unchanged); others get new rows. Stored
    pictures leave the skip list, failures join it, and ``forget_ids`` (changed files that now fail) are deleted.
    """
    now = utcnow()
    rows: list[ImageRow | int] = []
    stored = lib.places.stored
    copied: list[tuple[int, Picture]] = []  # on a server, new rows go by COPY (dialect.copy_images)
    with lib.session() as s:
        for p in pictures:
            row = s.get(ImageRow, p.image_id) if p.image_id is not None else None
            if row is None and lib.server:
                copied.append((len(rows), p))
                rows.append(-1)
                continue
            if row is None:
                row = ImageRow(path=stored(p.path))
                s.add(row)
            elif row.content_hash != p.content_hash:  # same bytes (a touched file): its tags still hold
                s.execute(delete(TagRow).where(TagRow.image_id == row.id))
            row.size, row.mtime, row.content_hash = p.size, p.mtime, p.content_hash
            row.width, row.height, row.captured_at = p.width, p.height, p.captured_at
            row.indexed_at, row.vector = now, np.asarray(p.vector, dtype=np.float32).tobytes()
            rows.append(row)
        delete_in_chunks(s, SkippedRow.path, [stored(p.path) for p in pictures])
        if forget_ids:
            lib.forget(s, forget_ids)
        for f in failures:
            s.merge(SkippedRow(path=stored(f.path), reason=f.reason, size=f.size, mtime=f.mtime, recorded_at=now))
        if copied:
            new_ids = dialect.copy_images(s, [
                {"path": stored(p.path), "size": p.size, "mtime": p.mtime, "content_hash": p.content_hash,
                 "width": p.width, "height": p.height, "captured_at": p.captured_at, "indexed_at": now,
                 "vector": np.asarray(p.vector, dtype=np.float32).tobytes()} for _, p in copied])
            for (at, _), image_id in zip(copied, new_ids):
                rows[at] = image_id
        s.flush()
        ids = [r if isinstance(r, int) else r.id for r in rows]
        lib.bump_generation(s, [*ids, *forget_ids])
        s.commit()
    return ids
