"""Schema migrations: a library written by an earlier clipdex opens and upgrades in place.

``meta.schema_version`` records the version a library's database has. A new database is
created at :data:`LATEST` directly from the models in :mod:`clipdex.library.schema`; an
older one runs every step after its version, each in its own transaction together with
the new version number, so a crash between steps leaves a database that the next open
continues from. Steps never touch vectors, so no picture is re-encoded.

To change the schema: change the models in ``schema.py``, append a step here that brings
a database of the previous version to the new one (add tables, columns, indexes; move
data), and bump nothing else: :data:`LATEST` follows the list. New steps must run on both
SQLite and PostgreSQL (a library may live on either; see :data:`FIRST_PORTABLE`): write
them in SQL both accept, keeping what cannot be in :mod:`clipdex.library.dialect`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from clipdex.errors import LibraryError
from clipdex.library import dialect
from clipdex.library.schema import Base
from clipdex.library.storage import DamagedLibrary, damaged_message

Step = Callable[[Connection], None]


def _tag_passes(conn: Connection) -> None:
    """Tagging passes: every tag belongs to a pass (``tag_passes``), so passes add up.

    0.1.0 tags carry only a source: each source becomes a pass with the same key and name
    ("zero-shot", "probe:NAME"); its labels are the probe's classes, or for zero-shot the
    labels seen (the label set itself was not kept). The tags table is rebuilt with a
    ``pass_id`` in its key, since two passes may give a picture the same label.
    """
    conn.execute(text(
        "CREATE TABLE tag_passes (id INTEGER NOT NULL, \"key\" VARCHAR NOT NULL, name VARCHAR NOT NULL, "
        "kind VARCHAR NOT NULL, labels VARCHAR NOT NULL, prompts VARCHAR, templates VARCHAR, model_identity VARCHAR, "
        "multi_label BOOLEAN, threshold FLOAT, created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL, "
        "PRIMARY KEY (id), UNIQUE (\"key\"), UNIQUE (name))"))
    model = conn.execute(text("SELECT value FROM meta WHERE key = 'model_identity'")).scalar()
    probes = dict(conn.execute(text("SELECT name, classes FROM probes")).all())
    sources = conn.execute(text("SELECT source, MIN(tagged_at), MAX(tagged_at) FROM tags GROUP BY source")).all()
    for source, first, last in sources:
        labels = probes.get(source.removeprefix("probe:")) if source.startswith("probe:") else None
        if labels is None:
            seen = conn.execute(text("SELECT DISTINCT label FROM tags WHERE source = :s ORDER BY label"),
                                {"s": source}).scalars().all()
            labels = json.dumps(seen)
        conn.execute(text(
            "INSERT INTO tag_passes (\"key\", name, kind, labels, model_identity, created_at, updated_at) "
            "VALUES (:s, :s, :s, :labels, :model, :first, :last)"),
            {"s": source, "labels": labels, "model": model, "first": first, "last": last})
    conn.execute(text(
        "CREATE TABLE tags_new (image_id INTEGER NOT NULL, label VARCHAR NOT NULL, pass_id INTEGER NOT NULL, "
        "source VARCHAR NOT NULL, probability FLOAT NOT NULL, tagged_at DATETIME NOT NULL, "
        "PRIMARY KEY (image_id, label, pass_id), "
        "FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE, "
        "FOREIGN KEY(pass_id) REFERENCES tag_passes (id) ON DELETE CASCADE)"))
    conn.execute(text(
        "INSERT INTO tags_new (image_id, label, pass_id, source, probability, tagged_at) "
        "SELECT t.image_id, t.label, p.id, t.source, t.probability, t.tagged_at "
        "FROM tags t JOIN tag_passes p ON p.\"key\" = t.source"))
    conn.execute(text("DROP TABLE tags"))
    conn.execute(text("ALTER TABLE tags_new RENAME TO tags"))
    conn.execute(text("CREATE INDEX ix_tags_label ON tags (label)"))
    conn.execute(text("CREATE INDEX ix_tags_pass ON tags (pass_id)"))


def _staged_vectors(conn: Connection) -> None:
    """Staging for ``--rebuild``: new vectors wait here until all are made, then swap in at once."""
    conn.execute(text(
        "CREATE TABLE staged_vectors (image_id INTEGER NOT NULL, size INTEGER NOT NULL, mtime FLOAT NOT NULL, "
        "content_hash VARCHAR(64), width INTEGER, height INTEGER, captured_at DATETIME, vector BLOB, "
        "reason VARCHAR, PRIMARY KEY (image_id), "
        "FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE)"))


def _vector_changes(conn: Connection) -> None:
    """The change log readers catch up from (:mod:`clipdex.library.changes`); complete from the current generation on.

    Index files written before it hold the vectors of their own generation and stay usable;
    readers holding anything older rebuild once.
    """
    conn.execute(text(
        "CREATE TABLE vector_changes (generation INTEGER NOT NULL, image_id INTEGER NOT NULL, "
        "PRIMARY KEY (generation, image_id))"))
    generation = conn.execute(text("SELECT value FROM meta WHERE key = 'generation'")).scalar()
    conn.execute(text("INSERT INTO meta (key, value) VALUES ('changes_from', :g)"), {"g": str(generation or 0)})


def _tag_rejections(conn: Connection) -> None:
    """Labels a person took off pictures (``tag_rejections``), which no tagging pass gives back."""
    conn.execute(text(
        "CREATE TABLE tag_rejections (image_id INTEGER NOT NULL, label VARCHAR NOT NULL, "
        "rejected_at DATETIME NOT NULL, PRIMARY KEY (image_id, label), "
        "FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE)"))


def _held_models(conn: Connection) -> None:
    """Several models' vectors in one library: ``held_models`` and ``model_vectors`` start empty.

    The active model stays in ``meta`` and its vectors in ``images.vector``: nothing is moved.
    """
    conn.execute(text(
        "CREATE TABLE held_models (identity VARCHAR NOT NULL, spec VARCHAR NOT NULL, dim INTEGER NOT NULL, "
        "kept_at DATETIME NOT NULL, PRIMARY KEY (identity))"))
    conn.execute(text(
        "CREATE TABLE model_vectors (model_identity VARCHAR NOT NULL, image_id INTEGER NOT NULL, "
        "content_hash VARCHAR(64) NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (model_identity, image_id), "
        "FOREIGN KEY(model_identity) REFERENCES held_models (identity) ON DELETE CASCADE, "
        "FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE)"))
    conn.execute(text("CREATE INDEX ix_model_vectors_image ON model_vectors (image_id)"))


def _root_places(conn: Connection) -> None:
    """Roots across machines: each root records its machine (where each machine mounts a shared root
    name is kept in ``meta``; see :mod:`clipdex.library.places`). Roots stored before say no machine:
    they count as this machine's. Portable: SQLite and PostgreSQL."""
    conn.execute(text("ALTER TABLE roots ADD COLUMN machine VARCHAR"))


def _library_id(conn: Connection) -> None:
    """A library id (``meta.library_id``): a server library's cache folder and lock keys are its own,
    whatever URL reaches it and whichever schema of a database holds it. Portable."""
    if conn.execute(text("SELECT value FROM meta WHERE key = 'library_id'")).scalar() is None:
        conn.execute(text("INSERT INTO meta (key, value) VALUES ('library_id', :v)"), {"v": uuid.uuid4().hex})


#: Version 1 is clipdex 0.1.0's schema (images, skipped, tags, roots, probes, meta).
#: ``STEPS[i]`` upgrades a database from version ``i + 1`` to ``i + 2``.
STEPS: list[Step] = [_tag_passes, _staged_vectors, _vector_changes, _tag_rejections, _held_models, _root_places,
                     _library_id]

LATEST = 1 + len(STEPS)

#: Steps from this index on are written for both SQLite and PostgreSQL (plain DDL and SQL both
#: accept, or SQLAlchemy constructs); earlier ones are SQLite's own, since a server library is
#: created at the version of the clipdex that first supported servers.
FIRST_PORTABLE = 5


def stored_version(conn: Connection) -> int | None:
    """The database's schema version; None for a database with no tables yet."""
    if not inspect(conn).has_table("meta"):
        return None
    value = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    if value is None:
        return 1  # 0.1.0 wrote it only once a model was bound
    try:
        version = int(str(value).strip())
    except ValueError:
        version = 0
    if version < 1:
        db = Path(conn.engine.url.database or "clipdex.db")
        raise DamagedLibrary(damaged_message(db, f"its 'schema_version' setting is {str(value)[:40]!r}, "
                                                 "not a version number"))
    return version


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
        dialect.lock_schema(conn)  # two processes opening a new server database: one creates it
        version = stored_version(conn)
        if version is None:
            Base.metadata.create_all(conn)
            _library_id(conn)
            _set_version(conn, LATEST)
            return LATEST
    if version > LATEST:
        raise LibraryError(
            f"library at {where} was written by a newer clipdex (schema version {version}; this one knows "
            f"up to {LATEST}): upgrade clipdex to use it"
        )
    for target in range(version + 1, LATEST + 1):
        with engine.begin() as conn:
            dialect.lock_schema(conn)
            if stored_version(conn) >= target:  # another process took this step meanwhile
                continue
            if dialect.on_server(conn) and target - 2 < FIRST_PORTABLE:
                raise LibraryError(f"library at {where} has schema version {target - 1}, older than any "
                                   "server library: it cannot be upgraded")
            STEPS[target - 2](conn)
            _set_version(conn, target)
    return version
