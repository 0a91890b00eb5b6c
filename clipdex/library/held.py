"""Several models in one library: the active one answers, the others are held for switching back.

The active model is ``meta.model_spec``; its vectors are ``images.vector``, which is all
that searching, indexing and the index files read. When a switch (``index --model NEW``,
``models use``, ``index --rebuild --model NEW``) swaps another model's vectors in, the
outgoing model's vectors move to ``model_vectors`` in the same transaction
(:func:`keep_active`), each with the content hash of the picture it was made from.

A held model is *complete* while it has a vector for the current content of every
picture. Pictures indexed (new or changed) while it is not active leave it incomplete:
using it again encodes just those with it, and reuses every vector it still has
(:func:`prefill` hands them to the staging of :mod:`clipdex.library.staging`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session

from clipdex.errors import ModelUnavailable, UsageError
from clipdex.library import dialect
from clipdex.library.schema import HeldModelRow, ImageRow, Meta, ModelVectorRow, StagedRow, utcnow
from clipdex.models import ModelSpec, parse_model_spec

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

_STAGING_IDENTITY, _STAGING_SPEC = "staging_model_identity", "staging_model_spec"
_CURRENT = "mv.content_hash = i.content_hash"  # a held vector still describes its picture


@dataclass
class ModelEntry:
    """One model a library holds vectors of, as ``clipdex models`` lists it."""

    model: str  # what to pass to --model / models use
    identity: str
    dim: int | None
    pictures: int  # pictures it has a vector for (of their current content)
    total: int  # pictures in the library
    active: bool
    building: bool  # an unfinished switch to it holds some of its vectors in staging

    @property
    def complete(self) -> bool:
        return self.pictures == self.total

    def as_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete}


def listing(lib: Library) -> list[ModelEntry]:
    """The active model first, then the held ones by name, then one being built (if not held already)."""
    with lib.session() as s:
        total = s.scalar(select(func.count(ImageRow.id))) or 0
        meta = {r.key: r.value for r in s.scalars(select(Meta).where(Meta.key.in_(
            ["model_spec", "model_identity", "dim", _STAGING_IDENTITY, _STAGING_SPEC])))}
        covered = dict(s.execute(text(
            f"SELECT mv.model_identity, count(*) FROM model_vectors mv JOIN images i ON i.id = mv.image_id "
            f"AND {_CURRENT} GROUP BY mv.model_identity")).all())
        held = list(s.scalars(select(HeldModelRow).order_by(HeldModelRow.spec)))
        staged = s.scalar(select(func.count()).select_from(StagedRow)) or 0
    building = meta.get(_STAGING_IDENTITY)
    out: list[ModelEntry] = []
    if meta.get("model_identity"):
        dim = int(meta["dim"]) if meta.get("dim") else None
        out.append(ModelEntry(str(lib.model_spec), meta["model_identity"], dim, total, total, True,
                              building == meta["model_identity"]))
    for row in held:
        out.append(ModelEntry(row.spec, row.identity, row.dim, covered.get(row.identity, 0), total, False,
                              building == row.identity))
    if building and all(e.identity != building for e in out):
        out.append(ModelEntry(meta.get(_STAGING_SPEC, building), building, None, staged, total, False, True))
    return out


def find(lib: Library, name: str) -> ModelEntry | None:
    """The entry of model ``name`` (a ``--model`` value, or an identity as listed), or None."""
    try:
        identity = parse_model_spec(name).identity
    except ModelUnavailable:
        identity = name
    return next((e for e in listing(lib) if e.identity in (identity, name) or e.model == name), None)


def held_spec(lib: Library, identity: str) -> tuple[ModelSpec, int] | None:
    """The spec and vector length of a held (non-active) model, or None."""
    with lib.session() as s:
        row = s.get(HeldModelRow, identity)
        return (parse_model_spec(row.spec), row.dim) if row is not None else None


def keep_active(session: Session, lib: Library, incoming: str) -> None:
    """Inside a switch to model ``incoming``, before its vectors replace the active ones: hold the
    outgoing model's vectors (replacing any it held before), and release ``incoming``'s."""
    meta = {r.key: r.value for r in session.scalars(select(Meta).where(Meta.key.in_(
        ["model_spec", "model_identity", "dim"])))}
    outgoing = meta.get("model_identity")
    session.execute(delete(HeldModelRow).where(HeldModelRow.identity == incoming))  # its rows go with it
    if outgoing is None or outgoing == incoming or not meta.get("dim"):
        return
    session.execute(delete(HeldModelRow).where(HeldModelRow.identity == outgoing))
    session.add(HeldModelRow(identity=outgoing, spec=meta["model_spec"], dim=int(meta["dim"]), kept_at=utcnow()))
    session.flush()
    sound = dialect.sound_vector_sql("vector", "n", dialect.on_server(session))
    session.execute(text(
        "INSERT INTO model_vectors (model_identity, image_id, content_hash, vector) "
        f"SELECT :m, id, content_hash, vector FROM images WHERE {sound}"),
        {"m": outgoing, "n": int(meta["dim"]) * 4})


def prefill(lib: Library, identity: str) -> int:
    """Stage, for a switch to held model ``identity``, every vector it has for a picture's current
    content (what staging already holds is kept); returns how many were added."""
    with lib.session() as s:
        added = s.execute(text(
            "INSERT INTO staged_vectors (image_id, size, mtime, content_hash, width, height, "
            "captured_at, vector, reason) SELECT i.id, i.size, i.mtime, i.content_hash, i.width, i.height, "
            f"i.captured_at, mv.vector, NULL FROM model_vectors mv JOIN images i ON i.id = mv.image_id AND {_CURRENT} "
            "WHERE mv.model_identity = :m ON CONFLICT (image_id) DO NOTHING"), {"m": identity}).rowcount
        s.commit()
    return int(added or 0)


def drop(lib: Library, name: str) -> ModelEntry:
    """Forget a held model's vectors (and a switch to it left unfinished); never the active model."""
    entry = find(lib, name)
    if entry is None:
        known = ", ".join(e.model for e in listing(lib)) or "none"
        raise UsageError(f"this library holds no model {name!r} (it holds: {known})")
    if entry.active:
        raise UsageError(f"{entry.model} is the library's active model: switch to another first "
                         "(clipdex models use NAME, or clipdex index PATH --model NAME)")
    with lib.write_lock(exclusive=True), lib.session() as s:
        s.execute(delete(HeldModelRow).where(HeldModelRow.identity == entry.identity))
        s.execute(delete(ModelVectorRow).where(ModelVectorRow.model_identity == entry.identity))
        if entry.building:
            s.execute(delete(StagedRow))
            s.execute(delete(Meta).where(Meta.key.in_([_STAGING_IDENTITY, _STAGING_SPEC, "staging_dim"])))
        s.commit()
    return entry


def held_vectors(lib: Library, identity: str, ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of held model ``identity`` for pictures whose current content it encoded
    (all such, or those of ``ids``), by id; pictures it lacks are left out."""
    spec = held_spec(lib, identity)
    if spec is None:
        raise UsageError(f"this library holds no vectors of model {identity}")
    dim = spec[1]
    query = ("SELECT mv.image_id, mv.vector FROM model_vectors mv JOIN images i ON i.id = mv.image_id "
             f"AND {_CURRENT} WHERE mv.model_identity = :m AND length(mv.vector) = :n")
    rows: list = []
    with lib.engine.connect() as conn:
        if ids is None:
            rows = conn.execute(text(query + " ORDER BY mv.image_id"), {"m": identity, "n": dim * 4}).all()
        else:
            wanted = sorted({int(i) for i in ids})
            for start in range(0, len(wanted), 500):
                chunk = ",".join(str(i) for i in wanted[start:start + 500])
                rows += conn.execute(text(query + f" AND mv.image_id IN ({chunk})"),
                                     {"m": identity, "n": dim * 4}).all()
            rows.sort(key=lambda r: r[0])
    vectors = np.zeros((len(rows), dim), np.float32)
    for n, r in enumerate(rows):
        vectors[n] = np.frombuffer(r[1], np.float32)
    return np.fromiter((r[0] for r in rows), np.int64, len(rows)), vectors
