"""Per-model calibration data kept in the library's ``meta`` table (no schema change).

One JSON value per model, under ``calibration:<model identity>``, so a library holding
vectors of several models keeps one entry for each. What the value holds is decided by
:mod:`clipdex.search.calibration`; this module only reads and writes it, and never lets a
failed write (read-only folder, a busy writer) stop a search, nor keep it waiting: the write
gives up after :data:`WAIT_SECONDS` when a writer (``index``, ``tag``) holds the database.
"""

from __future__ import annotations

import base64
import json

import numpy as np
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from clipdex.errors import LibraryError
from clipdex.library import Library, dialect

PREFIX = "calibration:"
#: How long a search waits to store a calibration while another process writes (it is optional).
WAIT_SECONDS = 0.25


def meta_key(model_identity: str) -> str:
    """The ``meta`` key of one model's calibration."""
    return PREFIX + model_identity


def pack_matrix(matrix: np.ndarray) -> dict:
    """A float matrix as JSON-safe data (float16, base64: a 100 x 512 matrix is about 140 kB)."""
    m = np.ascontiguousarray(matrix, np.float16)
    return {"shape": list(m.shape), "float16": base64.b64encode(m.tobytes()).decode("ascii")}


def unpack_matrix(data: dict) -> np.ndarray | None:
    """The matrix :func:`pack_matrix` stored, as float32; None when the data is not one."""
    try:
        rows, cols = (int(n) for n in data["shape"])
        raw = base64.b64decode(data["float16"], validate=True)
    except (KeyError, TypeError, ValueError):
        return None
    if rows < 0 or cols <= 0 or len(raw) != rows * cols * 2:
        return None
    return np.frombuffer(raw, np.float16).reshape(rows, cols).astype(np.float32)


def load(lib: Library, model_identity: str) -> dict | None:
    """The stored calibration of ``model_identity``, or None (absent, or not JSON: it is then recomputed)."""
    raw = lib.get_meta(meta_key(model_identity))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def store(lib: Library, model_identity: str, value: dict) -> bool:
    """Keep ``value`` for ``model_identity``; False when the library cannot be written now (it is then
    simply computed again next time: read-only folder, locked or full disk)."""
    if lib.read_only:
        return False
    wait_ms = int(WAIT_SECONDS * 1000)
    try:
        with lib.engine.connect() as conn:
            before = None
            if not lib.server:  # SQLite: the connection's own busy timeout, put back for the pool
                before = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
                conn.exec_driver_sql(f"PRAGMA busy_timeout={wait_ms}")
                conn.commit()  # out of the autobegun transaction, so the session's commit is a real one
            try:
                with Session(bind=conn) as s:
                    dialect.limit_lock_waits(s, WAIT_SECONDS)  # PostgreSQL: for this transaction only
                    Library.set_meta(s, meta_key(model_identity), json.dumps(value, separators=(",", ":")))
                    s.commit()
            finally:
                if before is not None:
                    conn.exec_driver_sql(f"PRAGMA busy_timeout={int(before)}")
                    conn.commit()
    except (SQLAlchemyError, LibraryError, OSError):
        return False
    return True
