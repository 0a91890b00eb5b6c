"""A library: one folder holding the SQLite database and the FAISS index, or a database on a
PostgreSQL server with the FAISS index in a local cache folder (see :mod:`clipdex.library.dialect`).

The database is the truth; the index file is a cache of its vectors, valid only for
the database *generation* it was saved for (bumped by every commit that changes a
vector) and only while it holds exactly the database's ids. A stale, missing or
disagreeing index is rebuilt from SQLite without re-encoding.

A library on a read-only folder opens read-only (searchable, not changeable); a damaged
database is reported and never written to (see :mod:`clipdex.library.storage`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from clipdex.ann.base import IdsChecksum, index_files
from clipdex.ann.live import LiveIndex
from clipdex.errors import LibraryError, ModelMismatch, ModelUnavailable, NoLibrary
from clipdex.library import changes, dialect, migrations, storage
from clipdex.library.indexkeeper import IndexKeeper
from clipdex.library.paths import DB_NAME, cache_folder, default_library_path, demo_library_path, resolve_library
from clipdex.library.places import Places
from clipdex.library.schema import ImageRow, Meta, SkippedRow, TagRow
from clipdex.library.vectors import VectorReads
from clipdex.library.writes import delete_in_chunks
from clipdex.models import DEFAULT_MODEL, Encoder, ModelSpec, parse_model_spec

LOCK_NAME = ".write.lock"
INDEX_LOCK_NAME = ".index.lock"
#: Larger than any CLIP embedding; a ``dim`` beyond it is damage, not a model.
MAX_DIM = 1 << 16
MAX_GENERATION = 1 << 62

#: ``(id * 2654435761) mod 2**32`` as :func:`clipdex.ann.base.ids_checksum` computes it, in 64-bit integer SQL
#: that never overflows whatever the id (2654435761 = 40503 * 65536 + 31153; ``low`` is the id mod 2**32).
_LOW = "((id % 4294967296) + 4294967296) % 4294967296"
_MIXED_SQL = f"(({_LOW}) * 40503 % 4294967296 * 65536 + ({_LOW}) * 31153) % 4294967296"

__all__ = ["DB_NAME", "Library", "default_library_path", "demo_library_path", "resolve_library"]


def _refuse_file(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise LibraryError(f"library path {path} is a file, not a folder")


def _remove_library_files(folder: Path, created_folders: list[Path]) -> None:
    """Delete what clipdex writes in a library folder, then the folders made for it (deepest first, if empty)."""
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal", LOCK_NAME, INDEX_LOCK_NAME):
        (folder / name).unlink(missing_ok=True)
    for leftover in [*index_files(folder), *folder.glob(".index*.tmp")]:
        leftover.unlink(missing_ok=True)
    for made in created_folders:
        try:
            made.rmdir()
        except OSError:
            break  # it holds something else: keep it and its parents


class Library(VectorReads):
    """Open with :meth:`open` (existing) or :meth:`create` (for indexing).

    ``where`` is a folder (SQLite) or a database URL (``postgresql://user@host/db``). ``path``
    is the library's local folder either way: the SQLite library's own, or a server library's
    cache folder (:func:`clipdex.library.paths.cache_folder`) holding this machine's index files;
    ``location`` is what messages call the library (the folder, or the URL without password).
    """

    def __init__(self, where: Path | str, create: bool = True):
        self.server = dialect.is_url(where)
        self._writer: dialect.WriterLock | None = None
        self._keys: dialect.LockKeys | None = None
        if self.server:
            url = dialect.server_url(str(where))
            self.location = dialect.shown(str(where))
            self.read_only = False
            self.engine = dialect.server_engine(url, self.location)
        else:
            self.path = Path(where).expanduser().resolve()
            self.location = str(self.path)
            db = self.path / DB_NAME
            if db.exists():
                storage.check_file(db)
            self.read_only = not storage.folder_is_writable(self.path)
            if self.read_only and not db.exists():
                raise storage.ReadOnlyLibrary(f"cannot create a library in {self.path}: the folder is read-only")
            self.engine = storage.open_engine(db, self.read_only)
        self._created_db = False  # made by :meth:`create`, with these folders (deepest first)
        self._created_folders: list[Path] = []
        try:
            if self.server and not create and migrations.pending(self.engine)[0] is None:
                raise NoLibrary(self.location)
            self._upgrade()
            if self.server:  # the database answered and holds a library: now its local folder
                library_id = self.get_meta("library_id") or ""
                self._keys = dialect.LockKeys.of(library_id)
                self._writer = dialect.WriterLock(self.engine, self.location, self._keys.writers)
                self.path = storage.cache_folder_for(cache_folder(str(url), library_id), self.location)
        except BaseException:
            self.engine.dispose()
            raise
        self.keeper = IndexKeeper(self)
        self.places = Places(self)

    def _upgrade(self) -> None:
        if not self.read_only:
            migrations.upgrade(self.engine, self.location)
            return
        version, latest = migrations.pending(self.engine)
        if version is None:
            raise NoLibrary(self.location, empty=True)
        if version < latest:
            raise LibraryError(
                f"library at {self.path} was written by an older clipdex (schema version {version}) and must be "
                f"upgraded to version {latest} before use, which needs write access to its folder"
            )
        migrations.upgrade(self.engine, self.location)  # refuses a newer schema; writes nothing here

    # -- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str) -> Library:
        """Open an existing library (a folder or a database URL); :class:`LibraryError` if there is none."""
        if dialect.is_url(path):
            return cls._open_server(str(path))
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
    def _open_server(cls, url: str) -> Library:
        lib = cls(url, create=False)
        if lib.get_meta("model_identity") is None:
            lib.close()
            raise NoLibrary(lib.location, empty=True)
        return lib

    @classmethod
    def create(cls, path: Path | str) -> Library:
        """Open a library for writing, creating the folder and database if needed.

        What this call created is remembered, so a run that fails before storing anything
        can take it away again (:meth:`discard_if_unused`). A database URL's database must exist
        (clipdex creates its tables, never the database itself).
        """
        if dialect.is_url(path):
            return cls(str(path))
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
        left behind. Anything the library did not create, or holding pictures, stays. A server's
        tables stay (another writer may have started using them meanwhile).
        """
        if not self._created_db or self.server:
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
        s = Session(self.engine, expire_on_commit=False)
        if self._keys is not None:
            s.info[dialect.KEYS_INFO] = self._keys
        if self._writer is not None and self._writer.conn is not None:  # its commits check the run's lock
            s.info[dialect.WRITER_INFO] = self._writer
        return s

    @contextlib.contextmanager
    def write_lock(self, exclusive: bool = False) -> Iterator[None]:
        """The lock writers (index, tag) hold for their whole run; readers never need it.

        A SQLite library allows one writer at a time (a lock file). On a server, incremental
        writers share it, and ``exclusive`` (a tagging pass, dropping a model) or
        :meth:`need_exclusive` (a rebuild, a model switch) has the library to itself; see
        :mod:`clipdex.library.dialect`. A conflicting writer is refused at once, never awaited.
        """
        if self._writer is not None:
            with self._writer.held(exclusive):
                yield
            return
        if self.read_only:
            raise storage.ReadOnlyLibrary(storage.read_only_message(self.path))
        with self._lock_file(LOCK_NAME):
            yield

    def need_exclusive(self) -> None:
        """Inside :meth:`write_lock`: this run replaces every vector, so no other writer may run beside it."""
        if self._writer is not None:
            self._writer.make_exclusive()

    @contextlib.contextmanager
    def index_lock(self) -> Iterator[None]:
        """Held while this machine's index file is replaced and recorded, without waiting (:class:`LibraryError`
        when busy): a lock file beside the index files, apart from the writers' lock, so a server saving the
        index it rebuilt never turns a writer (``index``, ``models use``) away."""
        with self._lock_file(INDEX_LOCK_NAME):
            yield

    def _lock_file(self, name: str) -> contextlib.AbstractContextManager[None]:
        return storage.lock_file(self.path, name, self.location)

    # -- meta -------------------------------------------------------------------
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else default

    @staticmethod
    def set_meta(session: Session, key: str, value: str) -> None:
        """Set ``meta.key`` inside ``session``'s transaction (an upsert: concurrent writers never collide)."""
        dialect.upsert(session, Meta, {"key": key, "value": str(value)}, ["key"])
        known = session.identity_map.get(session.identity_key(Meta, key))  # keep a loaded row in step
        if known is not None:
            session.expire(known)

    @property
    def generation(self) -> int:
        """The database's generation (read on every search: one plain statement, no ORM session)."""
        with self.engine.connect() as conn:
            value = conn.execute(text("SELECT value FROM meta WHERE key = 'generation'")).scalar()
        return self.parse_generation(value if value is not None else "0")

    def parse_generation(self, value: object) -> int:
        """A stored generation as a number (:class:`storage.DamagedLibrary` if it is not one)."""
        return storage.meta_number(self.db_name, "generation", value, 0, MAX_GENERATION)

    @property
    def db_name(self) -> Path | str:
        """What messages about a damaged database call it."""
        return self.location if self.server else self.path / DB_NAME

    @staticmethod
    def bump_generation(session: Session, changed: Iterable[int] | None = None) -> int:
        """Mark the vectors of ``changed`` ids as added, replaced or removed (call inside the transaction
        that changes them, as its last statement: on a server, commits that bump wait for each other
        from here on); None means any vector may have changed (readers then load afresh)."""
        dialect.lock_generation(session)
        value = session.execute(select(Meta.value).where(Meta.key == "generation")).scalar()
        bind = session.get_bind()
        db = dialect.shown(bind.url) if dialect.on_server(session) \
            else Path(bind.url.database or DB_NAME)
        generation = (storage.meta_number(db, "generation", value, 0, MAX_GENERATION) if value is not None else 0) + 1
        Library.set_meta(session, "generation", str(generation))
        if changed is None:
            changes.restart(session, generation)
        else:
            changes.record(session, generation, changed)
        return generation

    @property
    def model_spec(self) -> ModelSpec | None:
        spec = self.get_meta("model_spec")
        try:
            return parse_model_spec(spec) if spec else None
        except ModelUnavailable as exc:  # a stored spec this clipdex wrote cannot be malformed: damage
            what = f"its 'model_spec' setting: {exc}"
            raise storage.DamagedLibrary(storage.damaged_message(self.db_name, what)) from None

    @property
    def dim(self) -> int | None:
        dim = self.get_meta("dim")
        return storage.meta_number(self.db_name, "dim", dim, 1, MAX_DIM) if dim else None

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
                f"library {self.location} was built with model {stored}, not {spec}: their vectors cannot be compared",
                requested=str(spec),
            )
        return encoder

    # -- vectors: see VectorReads ---------------------------------------------
    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(ImageRow)).scalar() or 0)

    def index(self) -> LiveIndex:
        """The search index at the current generation (see :class:`IndexKeeper`): loaded and checked once,
        then caught up by delta after each commit. Safe to call from several threads."""
        return self.keeper.current()

    def ids_snapshot(self) -> tuple[int, IdsChecksum]:
        """The generation and the checksum of the ids the database holds (see :func:`clipdex.ann.base.ids_checksum`).

        One statement, so both come from the same state of the database even while a
        writer commits. Read from a covering index: tens of milliseconds for 100,000 pictures.
        """
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT (SELECT value FROM meta WHERE key = 'generation'), count(*), coalesce(sum(id >> 32), 0), "
                f"coalesce(sum(id & 4294967295), 0), coalesce(sum({_MIXED_SQL}), 0) FROM images"
            )).one()  # the sum of ids in two halves: exact, never an overflow, whatever the ids
        generation = self.parse_generation(row[0]) if row[0] else 0
        return generation, IdsChecksum(int(row[1]), (int(row[2]) << 32) + int(row[3]), int(row[4]))

    # -- facts ------------------------------------------------------------------
    def info(self) -> dict:
        """Counts, model and sizes, as ``clipdex info`` prints them."""
        with self.session() as s:
            images = s.scalar(select(func.count(ImageRow.id))) or 0
            skipped = s.scalar(select(func.count()).select_from(SkippedRow)) or 0
            tagged = s.scalar(select(func.count(func.distinct(TagRow.image_id)))) or 0
            labels = s.scalar(select(func.count(func.distinct(TagRow.label)))) or 0
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        with self.engine.connect() as conn:
            size += dialect.database_bytes(conn) or 0
        names = self.places.mounts()
        return {
            "library": self.location,
            **({"cache_folder": str(self.path), "machine": self.places.machine} if self.server else {}),
            **({"root_names": names} if names else {}),
            "images": images,
            "skipped": skipped,
            "tagged_images": tagged,
            "tag_labels": labels,
            "model": str(self.model_spec) if self.model_spec else None,
            "embedding_dim": self.dim,
            **self.keeper.describe(),
            "generation": self.generation,
            "size_bytes": size,
        }

    def add_roots(self, roots: list[str]) -> dict[str, tuple[int, int]]:
        """Remember folders given to ``index`` (with this machine, or under their root name): the only
        places pictures may be served from. What root names adopted (see :meth:`Places.record`)."""
        with self.session() as s:
            adopted = self.places.record(s, roots)
            s.commit()
        return adopted

    def roots(self) -> list[str]:
        """Local paths of the roots pictures may be served from on this machine (see :class:`Places`)."""
        return self.places.roots()

    def skipped(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of every skipped file, by path (local paths)."""
        with self.session() as s:
            rows = [(self.places.local(r.path), r.reason) for r in s.scalars(select(SkippedRow))]
        return sorted(rows)

    def forget(self, session: Session, ids: list[int]) -> None:
        """Delete image rows (their tags go with them)."""
        delete_in_chunks(session, ImageRow.id, ids)
