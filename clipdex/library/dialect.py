"""What differs between a library on SQLite and one on a database server (PostgreSQL): the one place.

Everything else in :mod:`clipdex.library` is written once, in SQLAlchemy Core/ORM or in SQL
both databases accept. Here live the bits that cannot be: opening a server's engine and
putting its errors into words, the writers' locks (PostgreSQL advisory locks; a SQLite
library uses a lock file, see :meth:`clipdex.library.Library.write_lock`), upserts, the
"is this blob a sound vector" test, and the database's size.

The writers' protocol on a server (see the README, "Shared library on PostgreSQL"):

Each library has its own lock keys (:class:`LockKeys`, from its ``meta.library_id``), so libraries in
two schemas of one database never wait for each other.

* every writer holds the *writers* lock in *shared* mode for its whole run, so incremental
  runs over different folders (from any machine) write at the same time;
* a run that replaces every vector (rebuild, model switch), a tagging pass and dropping a
  model hold it *exclusively*: no other writer runs meanwhile, and they wait for none;
* each commit that bumps the generation takes the *generation* lock for its transaction
  (``pg_advisory_xact_lock``), so generations are strictly ordered, each one's change log
  rows commit with it, and readers see a batch whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, create_engine, event, func, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session

from clipdex.errors import LibraryBusy, LibraryError

#: Advisory lock key held while a schema is created or upgraded (one for the database: the library's
#: own keys are in the schema being made).
SCHEMA = 0x636C_6970_6465_7803


@dataclass(frozen=True)
class LockKeys:
    """One library's advisory lock keys (64-bit numbers drawn from its id, unlikely to be anyone else's)."""

    writers: int  # held by writers for their whole run, shared or exclusive
    generation: int  # held by a commit's transaction while it bumps the generation
    person_tags: int  # held by a transaction that adds or takes off people's tags

    @classmethod
    def of(cls, library_id: str) -> LockKeys:
        def key(purpose: str) -> int:
            return int.from_bytes(hashlib.sha256(f"clipdex:{library_id}:{purpose}".encode()).digest()[:8], "big")

        return cls(key("writers"), key("generation"), key("person-tags"))


#: ``Session.info`` key of the :class:`LockKeys` of the library a session belongs to.
KEYS_INFO = "clipdex_lock_keys"

#: How long a commit waits for another's commit lock before giving up (a frozen writer never hangs the rest).
LOCK_TIMEOUT_S = 60
#: TCP keepalives: a vanished machine's connection (and its locks) goes in minutes, not after 2 hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 6}

_URL_RE = re.compile(r"^[a-z][a-z0-9+]*://", re.IGNORECASE)


def is_url(where: object) -> bool:
    """Whether ``where`` (a ``--library`` value) names a database server rather than a folder."""
    return isinstance(where, str) and _URL_RE.match(where) is not None and not where.startswith("file://")


#: Query parameters libpq reads secrets from: never shown.
_SECRET_PARAMS = ("password", "sslpassword", "passfile")


def _masked(where: str) -> str:
    """A URL SQLAlchemy cannot parse, as messages show it: the scheme and what follows the last ``@``,
    without the query (all a password could be in)."""
    scheme, _, rest = where.partition("://")
    rest = rest.split("?", 1)[0]
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}" if "@" in rest else f"{scheme}://{rest}"


def shown(url: URL | str) -> str:
    """The URL as messages show it: no password, in its userinfo or as a query parameter (``?password=``)."""
    try:
        url = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return _masked(str(url))
    secret = [k for k in url.query if k.lower() in _SECRET_PARAMS]
    if secret:
        url = url.update_query_dict({k: "***" for k in secret})
    if url.host and "@" in url.host:  # an unescaped "@" in the password: the rest of it would be the host
        return _masked(str(url.render_as_string(hide_password=False)))
    return url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")


def server_url(where: str) -> URL:
    """The SQLAlchemy URL of ``where``; ``postgresql://`` means psycopg 3 (``clipdex[postgres]``)."""
    try:
        url = make_url(where)
        url.port  # noqa: B018 - parsed lazily by some versions
    except (ArgumentError, ValueError):
        raise LibraryError(f"{shown(where)} is neither a library folder nor a database URL") from None
    url = url.set(drivername=url.drivername.lower())
    if url.host and "@" in url.host:
        raise LibraryError(f"the library URL {shown(url)} has an '@' in its user name or password: "
                           "write it as %40") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.get_backend_name() == "postgresql" and url.drivername != "postgresql+psycopg":
        raise LibraryError(f"clipdex talks to PostgreSQL through psycopg 3: write the library URL as "
                           f"postgresql://..., not {url.drivername}:// ({shown(url)})")
    if url.get_backend_name() == "sqlite":
        raise LibraryError(f"give a SQLite library as its folder, not as {shown(url)}")
    if url.get_backend_name() != "postgresql":  # the writers' locks are PostgreSQL's advisory locks
        raise LibraryError(f"a library's database server must be PostgreSQL, not {url.get_backend_name()} "
                           f"({shown(url)})")
    if not url.database:
        raise LibraryError(f"the library URL {shown(url)} names no database")
    return url


def _one_line(exc: BaseException) -> str:
    said = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return said[:400]


def _raced(exc: BaseException, where: str = "") -> LibraryBusy:
    """Another run stored some of the same pictures (or skips) at the same moment, in words."""
    return LibraryBusy(f"another clipdex process stored some of the same pictures{where} at the same time "
                       f"({_one_line(exc).split(' DETAIL:', 1)[0]}); run again")


def _denied(exc: BaseException, statement: str | None, url: URL, where: str) -> LibraryError:
    """Permission denied, in words: what the role may not do, and what to grant."""
    from clipdex.library.storage import ReadOnlyLibrary

    role, database = url.username or "this role", url.database
    said = _one_line(exc).split(" LINE ", 1)[0]
    schema = re.search(r"permission denied for schema (\S+)", said)
    if schema or (statement or "").lstrip().upper().startswith(("CREATE", "ALTER", "DROP")):
        name = schema.group(1) if schema else "public"
        return LibraryError(
            f"the role {role} may not create tables in database {database} (schema {name}) for the library "
            f"{where}: make it the database's owner (createdb -O {role} {database}, or ALTER DATABASE "
            f"{database} OWNER TO {role}), or GRANT CREATE ON SCHEMA {name} TO {role}")
    return ReadOnlyLibrary(f"the role {role} may only read the library {where} ({said}): it can be searched "
                           "here but not changed")


def _translate(where: str, url: URL):  # noqa: ANN202 - an event handler
    def handle_error(ctx: ExceptionContext) -> None:
        import psycopg
        from psycopg import errors

        exc = ctx.original_exception
        if isinstance(exc, (errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
            raise _denied(exc, ctx.statement, url, where) from None
        if isinstance(exc, errors.UniqueViolation):  # two runs stored the same pictures at once
            raise _raced(exc, f" in {where}") from None
        if isinstance(exc, errors.InvalidSchemaName):  # a search_path (?options=-csearch_path=...) naming none
            raise LibraryError(f"cannot make the library {where}: the schema its search_path names does not exist in "
                               f"database {url.database} ({_one_line(exc).split(' LINE ', 1)[0]}); create it "
                               "(CREATE SCHEMA name) or fix the URL") from None
        if isinstance(exc, errors.LockNotAvailable):
            raise LibraryBusy(f"another clipdex process has held a lock of {where} for "
                               f"{LOCK_TIMEOUT_S} s (frozen or cut off?); try again, or end it") from None
        if isinstance(exc, psycopg.OperationalError) or (
                isinstance(exc, psycopg.Error) and ctx.statement is None):  # unreachable, bad option, no database...
            raise LibraryError(f"cannot use the library database {where}: {_one_line(exc)}") from None

    return handle_error


def server_engine(url: URL, where: str) -> Engine:
    """An engine on a database server whose connection failures are :class:`LibraryError` in words
    (naming the library as ``where``)."""
    try:
        engine = create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8,
                               connect_args={k: v for k, v in KEEPALIVES.items() if k not in url.query})
    except NoSuchModuleError:
        raise LibraryError(f"clipdex cannot talk to {url.get_backend_name()} databases ({where})") from None
    except ModuleNotFoundError as exc:
        raise LibraryError(f"the library {where} needs the {exc.name} module: pip install 'clipdex[postgres]'") \
            from None
    event.listen(engine, "handle_error", _translate(where, url))
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


def _xact_lock(session: Session, key: int) -> None:
    """Take advisory lock ``key`` until the transaction ends, waiting :data:`LOCK_TIMEOUT_S` at most (as does
    any lock the rest of this transaction waits for: a writer's commit never hangs on another)."""
    limit_lock_waits(session, LOCK_TIMEOUT_S)
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _signed(key)})


def limit_lock_waits(session: Session, seconds: float) -> None:
    """On a server, no lock this transaction waits for is awaited longer than ``seconds`` (then
    :class:`LibraryBusy`); SQLite's connections have their own busy timeout."""
    if on_server(session):
        session.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": str(int(seconds * 1000))})


def lock_person_tags(session: Session) -> None:
    """Serialise edits of people's tags (they read, then insert: two at once would collide on a server,
    where incremental writers share the writer lock); the first statement of such a transaction."""
    if on_server(session):
        _xact_lock(session, _keys(session).person_tags)


def lock_generation(session: Session) -> None:
    """Serialise commits that bump the generation (held until this transaction ends); SQLite's writer
    lock already does. Waits :data:`LOCK_TIMEOUT_S` at most (a writer frozen inside its commit never hangs
    the others), and checks the run still holds its writer lock (:meth:`WriterLock.check`)."""
    if not on_server(session):
        return
    _xact_lock(session, _keys(session).generation)
    writer = session.info.get(WRITER_INFO)
    if writer is not None:
        writer.check(session)


def lock_schema(conn: Connection) -> None:
    """Serialise schema creation and upgrades between processes (held until this transaction ends)."""
    if on_server(conn):
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _signed(SCHEMA)})


def _keys(session: Session) -> LockKeys:
    keys = session.info.get(KEYS_INFO)
    if keys is None:  # a programming error: every session on a server comes from Library.session
        raise RuntimeError("a session on a server library without its lock keys")
    return keys


#: ``Session.info`` key of the :class:`WriterLock` a session's commits are made under.
WRITER_INFO = "clipdex_writer"


class WriterLock:
    """The writers' advisory lock on a server, held on a connection of its own for a whole run.

    That connection stays idle; it is kept from ``idle_session_timeout`` and has TCP keepalives, and
    every commit that bumps the generation checks that its lock is still held (:meth:`check`), so a
    run whose lock went with its connection (a server restart, ``pg_terminate_backend``, a pooler in
    transaction mode) stops before committing instead of writing beside a rebuild.
    """

    def __init__(self, engine: Engine, where: str, key: int):
        self.engine, self.where, self.key = engine, where, key
        self._mine = threading.local()  # each thread's own hold: a server's request threads share a library

    @property
    def conn(self) -> Connection | None:
        """The connection holding this thread's lock (None when this thread holds none)."""
        return getattr(self._mine, "conn", None)

    @property
    def exclusive(self) -> bool:
        return getattr(self._mine, "exclusive", False)

    @property
    def pid(self) -> int | None:
        return getattr(self._mine, "pid", None)

    def check(self, session: Session) -> None:
        """:class:`LibraryError` unless this run's lock connection still holds the writers' lock."""
        if self.pid is None:
            return
        held = session.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = :pid "
            "AND objsubid = 1 AND classid::bigint = :hi AND objid::bigint = :lo"),
            {"pid": self.pid, "hi": self.key >> 32, "lo": self.key & 0xFFFF_FFFF}).scalar()
        if not held:
            raise LibraryError(f"this run lost its writer lock on {self.where} (the server closed its connection: "
                               "a restart, idle_session_timeout, a connection pooler?); nothing more was stored: "
                               "run it again")

    def _try(self, function: str) -> bool:
        assert self.conn is not None
        got = self.conn.execute(text(f"SELECT {function}(:k)"), {"k": _signed(self.key)}).scalar()
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
        mine = self._mine
        mine.conn, mine.exclusive = self.engine.connect(), False
        try:
            mine.pid = self.conn.execute(text("SELECT pg_backend_pid()")).scalar()
            if (self.conn.dialect.server_version_info or (0,)) >= (14,):
                self.conn.execute(text("SET idle_session_timeout = 0"))  # it is idle the whole run, on purpose
            self.conn.commit()
            if not self._try("pg_try_advisory_lock_shared"):
                raise LibraryBusy(f"another clipdex process is rebuilding or tagging {self.where}; "
                                   "wait for it to finish")
            if exclusive:
                self.make_exclusive()
            yield
        finally:
            conn, mine.conn, mine.exclusive, mine.pid = mine.conn, None, False, None
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
                raise LibraryBusy(f"other clipdex processes are writing to {self.where}; this needs the library "
                                   "to itself: wait for them to finish")
            self._mine.exclusive = True


def copy_images(session: Session, rows: list[dict]) -> list[int]:
    """Insert new ``images`` rows on a server with ``COPY`` (5-10 times the rate of INSERTs for 2 KB
    vectors) inside ``session``'s transaction; their ids, in order, drawn from the table's sequence."""
    if not rows:
        return []
    session.flush()  # what the ORM holds goes first
    conn = session.connection().connection.driver_connection  # the psycopg connection, same transaction
    from psycopg import errors

    try:
        return _copy(conn, rows)
    except errors.UniqueViolation as exc:  # another run stored one of these pictures since we looked
        raise _raced(exc) from None


def _copy(conn: Any, rows: list[dict]) -> list[int]:
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
