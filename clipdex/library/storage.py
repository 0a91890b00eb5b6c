"""Opening the library's SQLite file safely: damaged files, read-only folders, full disks.

Every SQLite error of a library's engine is turned into one :class:`LibraryError` that says
what is wrong in words (damaged, read-only, disk full, busy), so no front end ever shows a
traceback, and nothing here ever writes to a file it could not read: a damaged or emptied
database is reported and left exactly as it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, ExceptionContext

from clipdex.errors import LibraryBusy, LibraryError


class DamagedLibrary(LibraryError):
    """The database file is not a readable SQLite database (truncated, emptied, overwritten)."""


class ReadOnlyLibrary(LibraryError):
    """The library can be read but not written here (read-only folder or mount)."""


class DiskFull(LibraryError):
    """The disk holding the library filled up; what was committed before stays."""


def damaged_message(db: Path | str, what: str) -> str:
    return (f"the library database {db} is damaged ({what}); it was left as it is: restore it from a backup, "
            "or move it away and index again")


def meta_number(db: Path | str, key: str, value: object, low: int, high: int) -> int:
    """``meta.<key>`` as a whole number in ``[low, high]``; :class:`DamagedLibrary` naming the key if not."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        shown = str(value)[:40]
        raise DamagedLibrary(damaged_message(
            db, f"its {key!r} setting is {shown!r}, not a whole number from {low} to {high}")) from None
    return number


def read_only_message(folder: Path) -> str:
    return f"library at {folder} is read-only: it can be searched here but not changed"


def check_file(db: Path) -> None:
    """Refuse a database file that SQLite would silently treat as a new, empty database.

    A zero-byte file is one: opening it normally would write a fresh schema over it.
    (clipdex writes the SQLite header before anything else, so it never leaves one.)
    """
    if db.stat().st_size == 0:
        raise DamagedLibrary(damaged_message(db, "the file is empty, 0 bytes"))


def folder_is_writable(folder: Path) -> bool:
    """False on a read-only mount or a folder this user may not write to."""
    return os.access(folder, os.W_OK)


def _nearly_full(folder: Path) -> bool:
    """After an I/O error: is the disk (all but) full? SQLite reports some writes failing for want of
    space (growing its shared-memory file) as plain I/O errors."""
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


def _translate(db: Path, folder: Path):  # noqa: ANN202 - an event handler
    def handle_error(ctx: ExceptionContext) -> None:
        exc = ctx.original_exception
        if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
            exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
        ):
            return  # programming errors stay what they are
        text = str(exc)
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "database or disk is full" in text or (
                code is not None and code & 0xFF == sqlite3.SQLITE_IOERR and _nearly_full(folder)):
            raise DiskFull(f"the disk holding the library at {folder} is full") from None
        if code == sqlite3.SQLITE_READONLY or "readonly database" in text:
            raise ReadOnlyLibrary(read_only_message(folder)) from None
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
            raise DamagedLibrary(damaged_message(db, text)) from None
        if code == sqlite3.SQLITE_BUSY or "database is locked" in text:
            raise LibraryBusy(f"the library database {db} is busy: another program holds it locked") from None
        raise LibraryError(f"cannot use the library database {db}: {text}") from None

    return handle_error


def _pragmas(read_only: bool):  # noqa: ANN202 - an event handler
    def on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 - DBAPI types
        cur = dbapi_conn.cursor()
        if not read_only:
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the indexer
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    return on_connect


def open_engine(db: Path, read_only: bool = False) -> Engine:
    """An engine on ``db`` whose errors are :class:`LibraryError`; read-only when the folder is.

    Read-only, SQLite cannot create the ``-wal``/``-shm`` files a WAL database normally
    needs, so when there are no pending changes in a ``-wal`` file the database is opened
    ``immutable`` (nothing can change it anyway); otherwise plain ``mode=ro``.
    """
    if read_only:
        wal = db.with_name(db.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        uri = f"file:{quote(str(db))}?mode=ro" + ("" if pending else "&immutable=1")

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, check_same_thread=False)

        engine = create_engine(f"sqlite:///{db}", creator=connect)
    else:
        engine = create_engine(f"sqlite:///{db}")
    event.listen(engine, "connect", _pragmas(read_only))
    event.listen(engine, "handle_error", _translate(db, db.parent))
    return engine


@contextlib.contextmanager
def lock_file(folder: Path, name: str, location: object) -> Iterator[None]:
    """Hold the lock file ``folder/name`` without waiting (:class:`LibraryError` naming ``location`` when another
    process holds it): never follows a symlink planted under the name, never truncates (flock needs no content)."""
    try:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fh = os.fdopen(fd, "w")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LibraryError(f"cannot lock the library at {folder}: {folder / name} is a symlink; "
                               "remove it") from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise ReadOnlyLibrary(read_only_message(folder)) from None
        raise LibraryError(f"cannot lock the library at {folder}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LibraryBusy(f"another clipdex process is writing to {location}; wait for it to finish") from None
        yield
    finally:
        fh.close()


def cache_folder_for(folder: Path, location: str) -> Path:
    """Make (private to this user) and check the cache folder of the server library at ``location``.

    Its index files decide what searches return, so a folder that is a symlink or belongs to
    another user (planted where ours would go) is refused, never used.
    """
    try:
        folder.parent.parent.mkdir(parents=True, exist_ok=True)
        for made in (folder.parent, folder):  # "libraries", then this library's own
            with contextlib.suppress(FileExistsError):
                made.mkdir(mode=0o700)
    except OSError as exc:
        raise LibraryError(f"cannot make the cache folder {folder} of {location}: {exc.strerror}") from None
    for made in (folder.parent, folder):
        st = os.lstat(made)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise LibraryError(f"the cache folder {made} of {location} is a symlink or not a folder; remove it")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise LibraryError(f"the cache folder {made} of {location} belongs to another user; remove it, "
                               "or choose another with --cache-dir")
        if st.st_mode & 0o077:  # made open by hand (or by an older clipdex): private again
            os.chmod(made, 0o700)
    return folder.resolve()
