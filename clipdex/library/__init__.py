"""A library: one folder holding the SQLite database and the FAISS index.

The database is the truth; the index file is a cache of its vectors, valid only for
the database *generation* it was saved for (bumped by every commit that changes a
vector) and only while it holds exactly the database's ids. A stale, missing or
disagreeing index is rebuilt from SQLite without re-encoding.

A library on a read-only folder opens read-only (searchable, not changeable); a damaged
database is reported and never written to (see :mod:`clipdex.library.storage`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import and_, case, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from clipdex.errors import LibraryError, ModelMismatch, ModelUnavailable, NoLibrary
from clipdex.library import migrations, storage
from clipdex.library.paths import DB_NAME, default_library_path, demo_library_path, resolve_library
from clipdex.library.schema import ImageRow, Meta, RootRow, SkippedRow, TagRow
from clipdex.library.writes import delete_in_chunks
from clipdex.models import DEFAULT_MODEL, Encoder, ModelSpec, parse_model_spec
from clipdex.vectorindex import INDEX_TYPE, IdsChecksum, VectorIndex, index_files

LOCK_NAME = ".write.lock"
#: Larger than any CLIP embedding; a ``dim`` beyond it is damage, not a model.
MAX_DIM = 1 << 16
MAX_GENERATION = 1 << 62

__all__ = ["DB_NAME", "Library", "default_library_path", "demo_library_path", "resolve_library"]


def _refuse_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise LibraryError(f"library path {path} is a file, not a folder")


def _remove_library_files(folder: Path, created_folders: list[Path]) -> None:
    """Delete what clipdex writes in a library folder, then the folders made for it (deepest first, if empty)."""
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal", LOCK_NAME):
        (folder / name).unlink(missing_ok=True)
    for leftover in [*index_files(folder), *folder.glob(".index*.tmp")]:
        leftover.unlink(missing_ok=True)
    for made in created_folders:
        try:
            made.rmdir()
        except OSError:
            break  # it holds something else: keep it and its parents


class Library:
    """Open with :meth:`open` (existing) or :meth:`create` (for indexing)."""

    def __init__(self, path: Path):
        self.path = Path(path).expanduser().resolve()
        db = self.path / DB_NAME
        if db.exists():
            storage.check_file(db)
        self.read_only = not storage.folder_is_writable(self.path)
        if self.read_only and not db.exists():
            raise storage.ReadOnlyLibrary(f"cannot create a library in {self.path}: the folder is read-only")
        self.engine = storage.open_engine(db, self.read_only)
        self._created_db = False  # made by :meth:`create`, with these folders (deepest first)
        self._created_folders: list[Path] = []
        self._index: VectorIndex | None = None
        self._index_generation = -1
        self._index_lock = threading.Lock()
        #: Long-lived readers (a server) set this: large indexes then keep a fast scan copy (see
        #: :meth:`VectorIndex.prepare_fast_scan`); a one-shot search would spend more building it.
        self.fast_scan = False
        try:
            self._upgrade()
        except BaseException:
            self.engine.dispose()
            raise

    def _upgrade(self) -> None:
        if not self.read_only:
            migrations.upgrade(self.engine, str(self.path))
            return
        version, latest = migrations.pending(self.engine)
        if version is None:
            raise NoLibrary(str(self.path), empty=True)
        if version < latest:
            raise LibraryError(
                f"library at {self.path} was written by an older clipdex (schema version {version}) and must be "
                f"upgraded to version {latest} before use, which needs write access to its folder"
            )
        migrations.upgrade(self.engine, str(self.path))  # refuses a newer schema; writes nothing here

    # -- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Library:
        """Open an existing library; :class:`LibraryError` if there is none."""
        path = Path(path).expanduser()
        _refuse_file(path)
        if not (path / DB_NAME).is_file():
            raise NoLibrary(str(path))
        lib = cls(path)
        if lib.get_meta("model_identity") is None:
            lib.close()
            raise NoLibrary(str(path), empty=True)
        return lib

    @classmethod
    def create(cls, path: Path | str) -> Library:
        """Open a library for writing, creating the folder and database if needed.

        What this call created is remembered, so a run that fails before storing anything
        can take it away again (:meth:`discard_if_unused`).
        """
        path = Path(path).expanduser()
        _refuse_file(path)
        absolute = path.resolve()
        created = [p for p in (absolute, *absolute.parents) if not p.exists()]
        new_db = not (path / DB_NAME).exists()
        try:
            try:
                path.mkdir(parents=True, exist_ok=True)
                lib = cls(path)
            except BaseException:
                if new_db:  # e.g. the disk filled up while the schema was written
                    _remove_library_files(absolute, created)
                raise
        except OSError as exc:
            raise LibraryError(f"cannot create library at {path}: {exc.strerror}") from None
        except SQLAlchemyError as exc:
            raise LibraryError(f"cannot open the database in {path}: {exc.orig or exc}") from None
        lib._created_db, lib._created_folders = new_db, created
        return lib

    def discard_if_unused(self) -> bool:
        """Remove what :meth:`create` made (database, folders) if no picture was stored in it.

        For a run that failed on a library that did not exist before it: no empty library is
        left behind. Anything the library did not create, or holding pictures, stays.
        """
        if not self._created_db:
            return False
        try:
            with self.session() as s:
                if s.scalar(select(func.count(ImageRow.id))):
                    return False
        except LibraryError:
            pass  # a database that cannot even be read holds nothing worth keeping: it was made just now
        self.close()
        _remove_library_files(self.path, self._created_folders)
        self._created_db, self._created_folders = False, []
        return True

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Exclusive lock for writers (index, tag); readers never need it."""
        if self.read_only:
            raise storage.ReadOnlyLibrary(storage.read_only_message(self.path))
        try:
            fh = open(self.path / LOCK_NAME, "w")
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise storage.ReadOnlyLibrary(storage.read_only_message(self.path)) from None
            raise LibraryError(f"cannot lock the library at {self.path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LibraryError(
                    f"another clipdex process is writing to {self.path}; wait for it to finish"
                ) from None
            yield
        finally:
            fh.close()

    # -- meta -------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else default

    @staticmethod
    def set_meta(session: Session, key: str, value: str) -> None:
        session.merge(Meta(key=key, value=str(value)))

    @property
    def generation(self) -> int:
        value = self.get_meta("generation", "0")
        return storage.meta_number(self.path / DB_NAME, "generation", value, 0, MAX_GENERATION)

    @staticmethod
    def bump_generation(session: Session) -> None:
        """Mark the stored vectors as changed (call inside the transaction that changes them)."""
        row = session.get(Meta, "generation")
        db = Path(session.get_bind().url.database or DB_NAME)
        current = storage.meta_number(db, "generation", row.value, 0, MAX_GENERATION) if row else 0
        Library.set_meta(session, "generation", str(current + 1))

    @property
    def model_spec(self) -> ModelSpec | None:
        spec = self.get_meta("model_spec")
        try:
            return parse_model_spec(spec) if spec else None
        except ModelUnavailable as exc:  # a stored spec this clipdex wrote cannot be malformed: damage
            what = f"its 'model_spec' setting: {exc}"
            raise storage.DamagedLibrary(storage.damaged_message(self.path / DB_NAME, what)) from None

    @property
    def dim(self) -> int | None:
        dim = self.get_meta("dim")
        return storage.meta_number(self.path / DB_NAME, "dim", dim, 1, MAX_DIM) if dim else None

    def bind_model(self, session: Session, spec: ModelSpec, dim: int) -> None:
        """Record which model builds this library (first index, or ``--rebuild`` with a new model)."""
        self.set_meta(session, "model_spec", str(spec))
        self.set_meta(session, "model_identity", spec.identity)
        self.set_meta(session, "dim", str(dim))

    def encoder_for(
        self, requested: str | Encoder | None = None, device: str | None = None, *, switching: bool = False,
        backend: str | None = None, bulk: bool = False, quick_start: bool = False,
    ) -> Encoder:
        """The encoder for this library: the one that built it unless another is requested.

        Another model's vectors cannot be compared with the stored ones, so it is refused
        unless ``switching`` (``index --rebuild``, which re-encodes everything). ``backend``,
        ``bulk`` and ``quick_start``: see :class:`Encoder` (either backend's vectors will do).
        """
        stored = self.model_spec
        if isinstance(requested, Encoder):
            encoder = requested
        else:
            spec = parse_model_spec(requested) if requested is not None else stored or parse_model_spec(DEFAULT_MODEL)
            encoder = Encoder(spec, device=device, backend=backend, bulk=bulk, quick_start=quick_start)
        spec = encoder.spec
        if stored is not None and spec.identity != stored.identity and not switching:
            raise ModelMismatch(
                f"library {self.path} was built with model {stored}, not {spec}: their vectors cannot be compared",
                requested=str(spec),
            )
        return encoder

    # -- vectors ----------------------------------------------------------------
    def load_vectors(self, ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` from SQLite, all or the given ids.

        A vector that is not ``dim`` floats (NULL, truncated, another model's, huge) is damage:
        :class:`storage.DamagedLibrary` naming the picture. SQLite checks the length, so a
        damaged blob is never read into memory.
        """
        dim = self.dim or 0
        sound = and_(func.typeof(ImageRow.vector) == "blob", func.length(ImageRow.vector) == dim * 4)
        stmt = select(ImageRow.id, case((sound, ImageRow.vector), else_=None)).order_by(ImageRow.id)
        if ids is not None:
            stmt = stmt.where(ImageRow.id.in_(ids))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        bad = next((r[0] for r in rows if r[1] is None), None)
        if bad is not None:
            with self.engine.connect() as conn:
                path = conn.execute(select(ImageRow.path).where(ImageRow.id == bad)).scalar()
            raise storage.DamagedLibrary(storage.damaged_message(
                self.path / DB_NAME, f"damaged vector for picture {bad} ({path!s:.300}); index that picture "
                "again, or rebuild the library, to replace it"))
        out_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
        vectors = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)
        return out_ids, vectors

    def index(self) -> VectorIndex:
        """The FAISS index for the current generation: cached, loaded from disk, or rebuilt.

        A file on disk is used only when it holds exactly the ids the database holds (see
        :meth:`ids_checksum`): one saved wrongly, damaged or copied from elsewhere is rebuilt.
        Safe to call from several threads; a reader picks up what a writer committed. A
        rebuilt index is saved when no writer holds the library, so the next process
        loads it instead of rebuilding again.
        """
        generation = self.generation
        with self._index_lock:
            if self._index is not None and self._index_generation == generation:
                return self._index
            generation, expected = self._snapshot()  # only when loading: it reads every id
            dim = self.dim
            if dim is None:
                raise LibraryError(f"library at {self.path} is empty")
            index = VectorIndex.load(self.path, generation, dim, expected)
            if index is None:
                index = VectorIndex(dim)
                index.add(*self.load_vectors())
                self._save_if_unlocked(index, generation)
            if self.fast_scan:
                index.prepare_fast_scan()
            self._index, self._index_generation = index, generation
            return index

    def _snapshot(self) -> tuple[int, IdsChecksum]:
        """The generation and what an index file for it must hold (see :func:`clipdex.vectorindex.ids_checksum`).

        One statement, so both come from the same state of the database even while a
        writer commits. Read from a covering index: tens of milliseconds for 100,000 pictures.
        """
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT (SELECT value FROM meta WHERE key = 'generation'), count(*), coalesce(sum(id), 0), "
                "coalesce(sum((id * 2654435761) % 4294967296), 0) FROM images"
            )).one()
        generation = storage.meta_number(self.path / DB_NAME, "generation", row[0], 0, MAX_GENERATION) if row[0] else 0
        return generation, IdsChecksum(int(row[1]), int(row[2]), int(row[3]))

    def _save_if_unlocked(self, index: VectorIndex, generation: int) -> None:
        try:
            with self.write_lock():
                if self.generation == generation:
                    index.save(self.path, generation)
        except (LibraryError, OSError):
            pass  # a writer is busy (it saves its own) or the folder is read-only: keep it in memory

    def adopt_index(self, index: VectorIndex, generation: int) -> None:
        """Save an index kept up to date in memory (by the indexer) for ``generation``."""
        index.save(self.path, generation)
        self._index, self._index_generation = index, generation

    def reset_index(self) -> None:
        for path in index_files(self.path):
            path.unlink(missing_ok=True)
        self._index, self._index_generation = None, -1

    # -- facts ------------------------------------------------------------------
    def info(self) -> dict:
        """Counts, model and sizes, as ``clipdex info`` prints them."""
        with self.session() as s:
            images = s.scalar(select(func.count(ImageRow.id))) or 0
            skipped = s.scalar(select(func.count()).select_from(SkippedRow)) or 0
            tagged = s.scalar(select(func.count(func.distinct(TagRow.image_id)))) or 0
            labels = s.scalar(select(func.count(func.distinct(TagRow.label)))) or 0
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return {
            "library": str(self.path),
            "images": images,
            "skipped": skipped,
            "tagged_images": tagged,
            "tag_labels": labels,
            "model": str(self.model_spec) if self.model_spec else None,
            "embedding_dim": self.dim,
            "index_type": INDEX_TYPE,
            "generation": self.generation,
            "size_bytes": size,
        }

    def add_roots(self, roots: list[str]) -> None:
        """Remember folders given to ``index``: the only places pictures may be served from."""
        with self.session() as s:
            for root in roots:
                s.merge(RootRow(path=root))
            s.commit()

    def roots(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(RootRow.path)))

    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every skipped file, by path."""
        with self.session() as s:
            return [(r.path, r.reason) for r in s.scalars(select(SkippedRow).order_by(SkippedRow.path))]

    def forget(self, session: Session, ids: list[int]) -> None:
        """Delete image rows (their tags go with them)."""
        delete_in_chunks(session, ImageRow.id, ids)
