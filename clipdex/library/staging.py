"""Staging for ``index --rebuild``: new vectors wait beside the old ones, then swap in at once.

While a rebuild runs, the library keeps its model and vectors and answers searches as
before; the new vectors go to ``staged_vectors`` (see :class:`~clipdex.library.schema.StagedRow`),
one transaction per batch. A rebuild killed half-way leaves the library as it was, and
the next rebuild with the same model continues from what was staged; staging made for
another model is discarded. A switch to a model the library holds (:mod:`clipdex.library.held`)
starts from the vectors it kept. Once every picture has a staged entry, :func:`swap` replaces
vectors and facts, removes what is gone, binds the new model and bumps the generation,
all in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import DateTime, bindparam, delete, func, select, text

from clipdex.errors import LibraryError
from clipdex.library import held
from clipdex.library.schema import ImageRow, Meta, StagedRow, utcnow
from clipdex.library.writes import Picture, delete_in_chunks
from clipdex.models import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

_IDENTITY, _SPEC, _DIM = "staging_model_identity", "staging_model_spec", "staging_dim"


@dataclass
class Unusable:
    """A picture whose file cannot be re-encoded: ``reason`` is recorded as a skip; None means just gone."""

    image_id: int
    reason: str | None
    size: int = -1
    mtime: float = -1.0


@dataclass
class Swapped:
    """What :func:`swap` changed."""

    ids: set[int] = field(default_factory=set)          # pictures now holding a new vector
    removed: list[str] = field(default_factory=list)    # paths of pictures whose file is gone
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason, now in the skip list


def begin(lib: Library, spec: ModelSpec, dim: int) -> dict[int, tuple[int, float]]:
    """Start staging for ``spec``, or continue it; returns image id -> (size, mtime) already staged.

    Staging left by a rebuild with another model is discarded first. On a server, the run
    then has the library to itself (:meth:`Library.need_exclusive`).
    """
    lib.need_exclusive()
    with lib.session() as s:
        meta = {r.key: r.value for r in s.scalars(select(Meta).where(Meta.key.in_([_IDENTITY, _DIM])))}
        if meta.get(_IDENTITY) != spec.identity or meta.get(_DIM) != str(dim):
            s.execute(delete(StagedRow))
            lib.set_meta(s, _IDENTITY, spec.identity)
            lib.set_meta(s, _SPEC, str(spec))
            lib.set_meta(s, _DIM, str(dim))
            s.commit()
        return {r.image_id: (r.size, r.mtime) for r in s.execute(select(StagedRow.image_id, StagedRow.size,
                                                                          StagedRow.mtime))}


def pending(lib: Library) -> tuple[str, int] | None:
    """``(model, pictures staged)`` of an unfinished rebuild, or None."""
    with lib.session() as s:
        model = s.get(Meta, _SPEC)
        if model is None:
            return None
        return model.value, s.scalar(select(func.count()).select_from(StagedRow)) or 0


def stage(lib: Library, pictures: list[Picture], unusable: list[Unusable]) -> None:
    """Keep one batch of new vectors (``Picture.image_id`` says whose), and files that cannot be used."""
    with lib.session() as s:
        for p in pictures:
            s.merge(StagedRow(image_id=p.image_id, size=p.size, mtime=p.mtime, content_hash=p.content_hash,
                              width=p.width, height=p.height, captured_at=p.captured_at,
                              vector=np.asarray(p.vector, dtype=np.float32).tobytes(), reason=None))
        for u in unusable:
            s.merge(StagedRow(image_id=u.image_id, size=u.size, mtime=u.mtime, vector=None, reason=u.reason))
        s.commit()


def staged_hashes(lib: Library) -> dict[str, int]:
    """content hash -> image id of a staged vector (an identical file reuses it)."""
    with lib.session() as s:
        return dict(s.execute(select(StagedRow.content_hash, StagedRow.image_id)
                              .where(StagedRow.vector.is_not(None))).all())


def staged_vectors(lib: Library, ids: list[int]) -> dict[int, np.ndarray]:
    """image id -> staged vector, for the given ids."""
    with lib.session() as s:
        rows = s.execute(select(StagedRow.image_id, StagedRow.vector).where(StagedRow.image_id.in_(ids))).all()
    return {i: np.frombuffer(v, dtype=np.float32) for i, v in rows}


def swap(lib: Library, spec: ModelSpec, dim: int) -> Swapped:
    """Replace every picture's vector with its staged one and switch the library to ``spec``, atomically.

    The outgoing model's vectors are held (:func:`clipdex.library.held.keep_active`). A picture
    whose content changed loses its tags (they described the old content);
    pictures staged as unusable are removed, with their reason in the skip list.
    """
    done = Swapped()
    now = bindparam("now", utcnow(), type_=DateTime)
    with lib.session() as s:
        total = s.scalar(select(func.count(ImageRow.id))) or 0
        staged = s.scalar(select(func.count()).select_from(StagedRow).join(ImageRow, ImageRow.id == StagedRow.image_id))
        if staged != total:
            raise LibraryError(f"the rebuild of {lib.location} is incomplete ({staged} of {total} pictures re-encoded)")
        done.ids = set(s.scalars(select(StagedRow.image_id).where(StagedRow.vector.is_not(None))))
        for path, reason in s.execute(select(ImageRow.path, StagedRow.reason).join(
                StagedRow, StagedRow.image_id == ImageRow.id).where(StagedRow.vector.is_(None))):
            if reason is None:
                done.removed.append(lib.places.local(path))
            else:
                done.skipped[lib.places.local(path)] = reason
        held.keep_active(s, lib, spec.identity)  # the outgoing model's vectors stay, for switching back
        s.execute(text(
            "DELETE FROM tags WHERE image_id IN (SELECT st.image_id FROM staged_vectors st JOIN images i "
            "ON i.id = st.image_id WHERE st.vector IS NOT NULL AND st.content_hash != i.content_hash)"))
        s.execute(text(
            "UPDATE images SET vector = st.vector, size = st.size, mtime = st.mtime, content_hash = st.content_hash, "
            "width = st.width, height = st.height, captured_at = st.captured_at, indexed_at = :now "
            "FROM staged_vectors st WHERE st.image_id = images.id AND st.vector IS NOT NULL").bindparams(now))
        s.execute(text(
            "INSERT INTO skipped (path, reason, size, mtime, recorded_at) "
            "SELECT i.path, st.reason, st.size, st.mtime, :now FROM staged_vectors st JOIN images i "
            "ON i.id = st.image_id WHERE st.vector IS NULL AND st.reason IS NOT NULL ON CONFLICT (path) DO UPDATE "
            "SET reason = excluded.reason, size = excluded.size, mtime = excluded.mtime, "
            "recorded_at = excluded.recorded_at").bindparams(now))
        gone = list(s.scalars(select(StagedRow.image_id).where(StagedRow.vector.is_(None))))
        delete_in_chunks(s, ImageRow.id, gone)
        s.execute(delete(StagedRow))
        s.execute(delete(Meta).where(Meta.key.in_([_IDENTITY, _SPEC, _DIM])))
        lib.bind_model(s, spec, dim)
        lib.bump_generation(s, None)  # every vector changed: readers load afresh
        s.commit()
    return done
