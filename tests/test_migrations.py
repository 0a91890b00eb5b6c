"""A library written by clipdex 0.1.0 opens with today's clipdex and upgrades in place, no re-encoding."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from clipdex.errors import LibraryError
from clipdex.indexer import Indexer
from clipdex.library import Library, migrations
from clipdex.synthetic import write_collection

V1 = Path(__file__).parent / "data" / "library-v1"
V1_PICTURES = "/tmp/v1fix/pics"


@pytest.fixture()
def v1_library(tmp_path) -> tuple[Path, Path]:
    """A copy of the 0.1.0 library whose pictures are regenerated, byte for byte, under ``tmp_path``."""
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=3)
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(V1 / "clipdex.db", lib / "clipdex.db")
    with sqlite3.connect(lib / "clipdex.db") as conn:
        conn.execute("UPDATE images SET path = replace(path, ?, ?)", (V1_PICTURES, str(pics)))
        conn.execute("UPDATE roots SET path = replace(path, ?, ?)", (V1_PICTURES, str(pics)))
        facts = conn.execute("SELECT path, size, mtime FROM images").fetchall()
    for path, size, mtime in facts:
        assert os.path.getsize(path) == size, "the generator no longer makes the 0.1.0 pictures"
        os.utime(path, (mtime, mtime))
    return lib, pics


def test_v1_library_upgrades_in_place_without_reencoding(v1_library):
    lib_dir, pics = v1_library
    with sqlite3.connect(lib_dir / "clipdex.db") as conn:
        before = dict(conn.execute("SELECT id, vector FROM images").fetchall())
        tags_before = sorted(conn.execute("SELECT image_id, label FROM tags").fetchall())
    lib = Library.open(lib_dir)
    assert lib.get_meta("schema_version") == str(migrations.LATEST)
    ids, vectors = lib.load_vectors()
    assert {int(i): v.tobytes() for i, v in zip(ids, vectors)} == before
    with sqlite3.connect(lib_dir / "clipdex.db") as conn:
        assert sorted(conn.execute("SELECT image_id, label FROM tags").fetchall()) == tags_before

    stats = Indexer(lib, None, workers=1, progress=False).run([str(pics)])
    assert (stats.encoded, stats.unchanged) == (0, 24)
    hits = lib.index().search(vectors[0], 1)
    assert hits[0][0] == int(ids[0]) and np.isclose(hits[0][1], 1.0, atol=1e-5)


def test_a_newer_schema_is_refused_not_guessed(v1_library):
    lib_dir, _ = v1_library
    with sqlite3.connect(lib_dir / "clipdex.db") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(migrations.LATEST + 1),))
    with pytest.raises(LibraryError, match=r"written by a newer clipdex \(schema version \d+; this one knows"):
        Library.open(lib_dir)
