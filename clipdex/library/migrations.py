"""Schema migrations: a library written by an earlier clipdex opens and upgrades in place.

``meta.schema_version`` records the version a library's database has. A new database is
created at :data:`LATEST` directly from the models in :mod:`clipdex.library.schema`; an
older one runs every step after its version, each in its own transaction together with
the new version number, so a crash between steps leaves a database that the next open
continues from. Steps never touch vectors, so no picture is re-encoded.

To change the schema: change the models in ``schema.py``, append a step here that brings
a database of the previous version to the new one (add tables, columns, indexes; move
data), and bump nothing else: :data:`LATEST` follows the list.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from clipdex.errors import LibraryError
from clipdex.library.schema import Base

Step = Callable[[Connection], None]

#: Version 1 is clipdex 0.1.0's schema (images, skipped, tags, roots, probes, meta).
#: ``STEPS[i]`` upgrades a database from version ``i + 1`` to ``i + 2``.
STEPS: list[Step] = []

LATEST = 1 + len(STEPS)


def stored_version(conn: Connection) -> int | None:
    """The database's schema version; None for a database with no tables yet."""
    if not inspect(conn).has_table("meta"):
        return None
    value = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    return int(value) if value is not None else 1  # 0.1.0 wrote it only once a model was bound


def _set_version(conn: Connection, version: int) -> None:
    conn.execute(text("DELETE FROM meta WHERE key = 'schema_version'"))
    conn.execute(text("INSERT INTO meta (key, value) VALUES ('schema_version', :v)"), {"v": str(version)})


def pending(engine: Engine) -> tuple[int | None, int]:
    """``(stored version, latest)``: whether :func:`upgrade` has anything to do."""
    with engine.connect() as conn:
        return stored_version(conn), LATEST


def upgrade(engine: Engine, where: str) -> int:
    """Create or upgrade the database behind ``engine`` to :data:`LATEST`; returns the version it had.

    ``where`` names the library in messages. A database newer than this clipdex is refused
    rather than guessed at.
    """
    with engine.begin() as conn:
        version = stored_version(conn)
        if version is None:
            Base.metadata.create_all(conn)
            _set_version(conn, LATEST)
            return LATEST
    if version > LATEST:
        raise LibraryError(
            f"library at {where} was written by a newer clipdex (schema version {version}; this one knows "
            f"up to {LATEST}): upgrade clipdex to use it"
        )
    for target in range(version + 1, LATEST + 1):
        with engine.begin() as conn:
            STEPS[target - 2](conn)
            _set_version(conn, target)
    return version
