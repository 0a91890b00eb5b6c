"""Reading vectors out of a library: by id, in chunks, sampled; the active model's or a held one's.

The active model's vectors are ``images.vector``; a model the library holds beside it
(see :mod:`clipdex.library.held`) keeps its own in ``model_vectors``, readable here by
passing its identity as ``model``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from clipdex.library import dialect, storage
from clipdex.library.schema import ImageRow


class VectorReads:
    """The vector-reading half of :class:`clipdex.library.Library` (which provides ``engine``, ``path``, ``dim``)."""

    engine: Engine
    path: Path
    db_name: Path | str
    server: bool
    dim: int | None

    def get_meta(self, key: str, default: str | None = None) -> str | None:  # pragma: no cover - Library's
        raise NotImplementedError

    def _sound_vector(self, dim: int):  # noqa: ANN202 - a SQL expression
        """The vector column where it is ``dim`` floats, NULL where it is not (SQLite checks the length,
        so a damaged blob is never read into memory)."""
        return dialect.sound_vector(ImageRow.vector, dim * 4, self.server)

    def _vectors(self, rows: list, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        bad = next((r[0] for r in rows if r[1] is None), None)
        if bad is not None:
            with self.engine.connect() as conn:
                path = conn.execute(select(ImageRow.path).where(ImageRow.id == bad)).scalar()
            raise storage.DamagedLibrary(storage.damaged_message(
                self.db_name, f"damaged vector for picture {bad} ({path!s:.300}); index that picture "
                "again, or rebuild the library, to replace it"))
        ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vectors = np.empty((len(rows), dim), np.float32)
        for n, r in enumerate(rows):
            vectors[n] = np.frombuffer(r[1], np.float32)
        return ids, vectors

    def vectors_of(self, ids: Iterable[int], dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` of the given ids still in the library, by id.

        A vector that is not ``dim`` floats (NULL, truncated, another model's, huge) is damage:
        :class:`storage.DamagedLibrary` naming the picture. ``dim``: the library's, if the caller
        knows it (a search re-scoring candidates saves reading it).
        """
        dim = (self.dim or 0) if dim is None else dim
        wanted = sorted({int(i) for i in ids})
        rows: list = []
        with self.engine.connect() as conn:
            for start in range(0, len(wanted), 500):
                rows += conn.execute(select(ImageRow.id, self._sound_vector(dim))
                                     .where(ImageRow.id.in_(wanted[start:start + 500]))).all()
        rows.sort(key=lambda r: r[0])
        return self._vectors(rows, dim)

    def stream_vectors(self, chunk: int = 50_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every ``(ids, vectors)``, ``chunk`` rows at a time in id order: never the whole library at once."""
        last, dim = -1, self.dim or 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(select(ImageRow.id, self._sound_vector(dim)).where(ImageRow.id > last)
                                    .order_by(ImageRow.id).limit(chunk)).all()
            if not rows:
                return
            last = rows[-1][0]
            yield self._vectors(rows, dim)

    def sample_vectors(self, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``count`` vectors drawn at random (all of them if there are fewer), in random order."""
        with self.engine.connect() as conn:
            every = np.fromiter(conn.execute(select(ImageRow.id)).scalars(), np.int64)
        chosen = np.random.default_rng(seed).permutation(every)[:count]
        ids, vectors = self.vectors_of(chosen)
        order = {int(i): n for n, i in enumerate(ids)}
        rows = [order[int(i)] for i in chosen if int(i) in order]
        return ids[rows], vectors[rows]

    def load_vectors(self, ids: list[int] | None = None, model: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` from SQLite, all (in chunks, joined) or the given ids.

        ``model``: the identity of the model whose vectors are wanted; one the library holds
        but is not using gives its vectors where it has them (see :mod:`clipdex.library.held`).
        """
        if model is not None and model != self.get_meta("model_identity"):
            from clipdex.library.held import held_vectors

            return held_vectors(self, model, ids)  # type: ignore[arg-type]
        if ids is not None:
            return self.vectors_of(ids)
        parts = list(self.stream_vectors())
        if not parts:
            return self.vectors_of([])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

