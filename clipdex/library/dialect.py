"""What differs between a library on SQLite and one on a database server (PostgreSQL): the one place.

Everything else in :mod:`clipdex.library` is written once, in SQLAlchemy Core/ORM or in SQL
both databases accept. Here live the bits that cannot be: opening a server's engine and
putting its errors into words, the writers' locks (PostgreSQL advisory locks; a SQLite
library uses a lock file, see :meth:`clipdex.library.Library.write_lock`), upserts, the
"is this blob a sound vector" test, and the database's size.

The writers' protocol on a server (see the README, "Shared library on PostgreSQL"):

* every writer holds :data:`WRITERS` in *shared* mode for its whole run, so incremental
  runs over different folders (from any machine) write at the same time;
* a run that replaces every vector (rebuild, model switch), a tagging pass and dropping a
  model hold it *exclusively*: no other writer runs meanwhile, and they wait for none;
* each commit that bumps the generation takes :data:`GENERATION` for its transaction
  (``pg_advisory_xact_lock``), so generations are strictly ordered, each one's change log
  rows commit with it, and readers see a batch whole or not at all.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from sqlalchemy import and_, case, create_engine, event, func, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from clipdex.errors import LibraryError

#: Advisory lock keys (any 64-bit numbers no other program on the database is likely to use).
WRITERS = 0x636C_6970_6465_7801  # "clipdex" + 1: held by writers, shared or exclusive
GENERATION = 0x636C_6970_6465_7802  # held by a commit's transaction while it bumps the generation
SCHEMA = 0x636C_6970_6465_7803  # held while the schema is created or upgraded

_URL_RE = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)


def is_url(where: object) -> bool:
    """Whether ``where`` (a ``--library`` value) names a database server rather than a folder."""
    return isinstance(where, str) and _URL_RE.match(where) is not None and not where.startswith("file://")


def shown(url: URL | str) -> str:
    """The URL as messages show it (no password)."""
    return make_url(url).render_as_string(hide_password=True)


def server_url(where: str) -> URL:
    """The SQLAlchemy URL of ``where``; ``postgresql://`` means psycopg 3 (``clipdex[postgres]``)."""
    try:
        url = make_url(where)
    except ArgumentError:
        raise LibraryError(f"{where!r} is neither a library folder nor a database URL") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        raise LibraryError(f"give a SQLite library as its folder, not as {shown(url)}")
    if url.get_backend_name() != "postgresql":  # the writers' locks are PostgreSQL's advisory locks
        raise LibraryError(f"a library's database server must be PostgreSQL, not {url.get_backend_name()} "
                           f"({shown(url)})")
    if not url.database:
        raise LibraryError(f"the library URL {shown(url)} names no database")
    return url


def _translate(where: str):  # noqa: ANN202 - an event handler
    def handle_error(ctx: ExceptionContext) -> None:
        import psycopg

        exc = ctx.original_exception
        if isinstance(exc, psycopg.OperationalError):  # unreachable, refused, no such database, disk full...
            said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            raise LibraryError(f"cannot use the library database {where}: {said[:400]}") from None

    return handle_error


def server_engine(url: URL, where: str) -> Engine:
    """An engine on a database server whose connection failures are :class:`LibraryError` in words
    (naming the library as ``where``)."""
    try:
        engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
    except NoSuchModuleError:
        raise LibraryError(f"clipdex cannot talk to {url.get_backend_name()} databases ({where})") from None
    except ModuleNotFoundError as exc:
        raise LibraryError(f"the library {where} needs the {exc.name} module: pip install 'clipdex[postgres]'") \
            from None
    event.listen(engine, "handle_error", _translate(where))
    return engine


def on_server(bind: Engine | Connection | Session) -> bool:
    """True for a database server, False for SQLite."""
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name != "sqlite"


def sound_vector(column: Any, nbytes: int, server: bool) -> Any:
    """``column`` where it holds exactly ``nbytes`` bytes, else NULL (a damaged vector is never read).

    SQLite columns may hold any type, so there it must also be a blob; PostgreSQL's ``bytea`` always is.
    """
    sound = func.length(column) == nbytes
    if not server:
        sound = and_(func.typeof(column) == "blob", sound)
    return case((sound, column), else_=None)


def sound_vector_sql(column: str, nbytes_param: str, server: bool) -> str:
    """The test of :func:`sound_vector` as SQL text, for statements written as text."""
    length = f"length({column}) = :{nbytes_param}"
    return length if server else f"typeof({column}) = 'blob' AND {length}"


def upsert(session: Session, table: Any, values: dict, keys: list[str]) -> None:
    """Insert ``values`` into ``table``, or update the row with the same ``keys`` (one statement, no race)."""
    if on_server(session):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table).values(**values)
    rest = {k: stmt.excluded[k] for k in values if k not in keys}
    session.execute(stmt.on_conflict_do_update(index_elements=keys, set_=rest) if rest
                    else stmt.on_conflict_do_nothing(index_elements=keys))


def lock_generation(session: Session) -> None:
    """Serialise commits that bump the generation (held until this transaction ends); SQLite's writer
    lock already does."""
    if on_server(session):
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _signed(GENERATION)})


def lock_schema(conn: Connection) -> None:
    """Serialise schema creation and upgrades between processes (held until this transaction ends)."""
    if on_server(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _signed(SCHEMA)})


class WriterLock:
    """The writers' advisory lock on a server, held on a connection of its own for a whole run."""

    def __init__(self, engine: Engine, where: str):
        self.engine, self.where = engine, where
        self.conn: Connection | None = None
        self.exclusive = False

    def _try(self, function: str) -> bool:
        assert self.conn is not None
        got = self.conn.execute(text(f"SELECT {function}(:k)"), {"k": _signed(WRITERS)}).scalar()
        self.conn.commit()
        return bool(got)

    @contextlib.contextmanager
    def held(self, exclusive: bool) -> Iterator[None]:
        """Hold the lock (shared, or exclusive) until the block ends; :class:`LibraryError` when another
        writer's mode conflicts. Re-entered by the same run, a shared hold becomes exclusive if it can."""
        if self.conn is not None:  # nested: the run already holds it
            if exclusive and not self.exclusive:
                self.make_exclusive()
            yield
            return
        self.conn = self.engine.connect()
        try:
            if not self._try("pg_try_advisory_lock_shared"):
                raise LibraryError(f"another clipdex process is rebuilding or tagging {self.where}; "
                                   "wait for it to finish")
            if exclusive:
                self.make_exclusive()
            yield
        finally:
            conn, self.conn, self.exclusive = self.conn, None, False
            with contextlib.suppress(Exception):
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()
            conn.close()

    def make_exclusive(self) -> None:
        """Turn this run's shared hold into an exclusive one (a rebuild, a model switch)."""
        if self.conn is None:
            raise LibraryError(f"the library {self.where} is changed without its writer lock")
        if not self.exclusive:
            if not self._try("pg_try_advisory_lock"):
                raise LibraryError(f"other clipdex processes are writing to {self.where}; this needs the library "
                                   "to itself: wait for them to finish")
            self.exclusive = True


def copy_images(session: Session, rows: list[dict]) -> list[int]:
    """Insert new ``images`` rows on a server with ``COPY`` (5-10 times the rate of INSERTs for 2 KB
    vectors) inside ``session``'s transaction; their ids, in order, drawn from the table's sequence."""
    if not rows:
        return []
    session.flush()  # what the ORM holds goes first
    conn = session.connection().connection.driver_connection  # the psycopg connection, same transaction
    columns = list(rows[0])
    with conn.cursor() as cur:
        cur.execute("SELECT nextval(pg_get_serial_sequence('images', 'id')) FROM generate_series(1, %s)",
                    (len(rows),))
        ids = [int(r[0]) for r in cur.fetchall()]
        with cur.copy(f"COPY images (id, {', '.join(columns)}) FROM STDIN") as copy:
            for image_id, row in zip(ids, rows):
                copy.write_row((image_id, *(row[c] for c in columns)))
    return ids


def database_bytes(conn: Connection) -> int | None:
    """The size of a server's database in bytes (None for SQLite: its file is counted with the folder)."""
    if not on_server(conn):
        return None
    return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)


def _signed(key: int) -> int:
    """A 64-bit lock key as PostgreSQL's signed bigint."""
    return key - (1 << 64) if key >= 1 << 63 else key
