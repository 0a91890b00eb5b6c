"""A library written by clipdex 0.1.0 opens with today's clipdex and upgrades in place, no re-encoding."""

from __future__ import annotations

import json
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


@pytest.fixture()
def v1_db(tmp_path) -> Path:
    """A library folder holding a copy of the 0.1.0 database (its pictures are not needed here)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(V1 / "clipdex.db", lib / "clipdex.db")
    return lib


def _tags(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT image_id, label, source, probability, tagged_at FROM tags").fetchall())


def test_v1_tags_become_passes_and_keep_working(v1_db, encoder):
    from clipdex.classify.probe import tag_with_probe
    from clipdex.classify.tagging import export_tags, tag_library
    from clipdex.synthetic import COLORS

    lib_dir = v1_db
    db = lib_dir / "clipdex.db"
    with sqlite3.connect(db) as conn:  # 0.1.0 could also hold a probe's tags: add some, as it wrote them
        ids = [i for (i,) in conn.execute("SELECT id FROM images ORDER BY id")]
        w = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
        conn.execute("INSERT INTO probes VALUES ('codes', 'clipdex:tiny-shapes', '[\"zorblat\", \"quixotl\"]', ?, ?, "
                     "'{\"probe_accuracy\": 1.0}', '2024-05-01 10:00:00')",
                     (w.tobytes(), np.zeros(2, np.float32).tobytes()))
        conn.executemany("INSERT INTO tags VALUES (?, 'zorblat', 'probe:codes', 0.9, '2024-05-01 10:00:00')",
                         [(i,) for i in ids[:5]])
    before = _tags(db)
    assert len(before) == 29

    lib = Library.open(lib_dir)
    assert _tags(db) == before  # every tag survives, with its source, probability and date
    with sqlite3.connect(db) as conn:
        passes = conn.execute("SELECT key, name, kind, labels, model_identity FROM tag_passes ORDER BY key").fetchall()
    assert passes == [("probe:codes", "probe:codes", "probe:codes", '["zorblat", "quixotl"]', "clipdex:tiny-shapes"),
                      ("zero-shot", "zero-shot", "zero-shot", '["blue", "green", "orange", "purple", "red", "yellow"]',
                       "clipdex:tiny-shapes")]
    rows = json.loads(export_tags(lib, "json"))
    assert {(r["source"], r["pass"]) for r in rows} == {("zero-shot", "zero-shot"), ("probe:codes", "probe:codes")}

    # the colour set, run again, takes over the 0.1.0 pass: the same tags, nothing duplicated
    stats = tag_library(lib, encoder, list(COLORS))
    assert (stats.added, stats.removed, stats.changed + stats.unchanged) == (0, 0, 24)
    assert stats.pass_name == "red, green, blue, yellow, purple, orange"
    # and the probe's pass goes on: its 5 tags are kept or changed, the 19 other pictures get theirs
    probe = tag_with_probe(lib, "codes")
    assert (probe.added, probe.removed, probe.changed + probe.unchanged) == (19, 0, 5)
    rows = json.loads(export_tags(lib, "json"))
    assert len(rows) == 48 and {r["pass"] for r in rows} == {stats.pass_name, "probe:codes"}


def test_an_upgraded_database_has_the_schema_of_a_new_one(v1_db, tmp_path):
    from sqlalchemy import inspect

    old, new = Library.open(v1_db), Library.create(tmp_path / "new")

    def shape(lib: Library, table: str) -> tuple:
        i = inspect(lib.engine)
        return ([(c["name"], str(c["type"]), c["nullable"]) for c in i.get_columns(table)],
                i.get_pk_constraint(table)["constrained_columns"],
                sorted((f["referred_table"], tuple(f["constrained_columns"]), f["options"].get("ondelete"))
                       for f in i.get_foreign_keys(table)),
                sorted((x["name"], tuple(x["column_names"]), bool(x["unique"])) for x in i.get_indexes(table)),
                sorted(tuple(u["column_names"]) for u in i.get_unique_constraints(table)))

    for table in ("tags", "tag_passes", "vector_changes", "held_models", "model_vectors"):
        assert shape(old, table) == shape(new, table), table


V3 = Path(__file__).parent / "data" / "library-v3"


def test_a_library_from_before_the_change_log_keeps_its_index_file_and_follows_by_delta(tmp_path):
    """Schema 3 (commit 599bf5b) had no change log: the upgrade starts one, the flat index file that release
    saved is used as it is (checked against the database, not rebuilt), and readers then follow by delta."""
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=3)
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    shutil.copy(V3 / "clipdex.db", lib_dir / "clipdex.db")
    shutil.copy(V3 / "index.1.faiss", lib_dir / "index.1.faiss")
    with sqlite3.connect(lib_dir / "clipdex.db") as conn:
        conn.execute("UPDATE images SET path = replace(path, '/tmp/v3fix/pics', ?)", (str(pics),))
        conn.execute("UPDATE roots SET path = replace(path, '/tmp/v3fix/pics', ?)", (str(pics),))
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("3",)
        for path, mtime in conn.execute("SELECT path, mtime FROM images").fetchall():
            os.utime(path, (mtime, mtime))
    saved = (lib_dir / "index.1.faiss").stat()

    reader = Library.open(lib_dir)
    assert reader.get_meta("schema_version") == str(migrations.LATEST)
    assert reader.get_meta("changes_from") == "1"
    index = reader.index()
    assert index.base.generation == 1 and index.ntotal == 24
    assert (lib_dir / "index.1.faiss").stat().st_mtime_ns == saved.st_mtime_ns  # used, not rewritten

    write_collection(tmp_path / "more", per_class=1, seed=4)
    writer = Library.open(lib_dir)
    stats = Indexer(writer, None, workers=1, progress=False).run([str(pics), str(tmp_path / "more")])
    assert (stats.encoded, stats.unchanged) == (24, 24)
    after = reader.index()
    assert after.ntotal == 48 and after.generation == writer.generation
    ids, vectors = writer.load_vectors()
    assert after.search(vectors[-1], 1)[0][0] == int(ids[-1])



TINY_B = f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"


def test_a_v1_library_upgraded_in_place_takes_a_second_model_and_switches_back_without_reencoding(v1_library):
    """Schema 6 (several models' vectors): a 0.1.0 library upgrades holding its one model, then ``index --model``
    builds tiny-b's vectors beside tiny's, and ``models use tiny`` brings back the very vectors 0.1.0 wrote."""
    from clipdex.library.held import listing

    lib_dir, pics = v1_library
    with sqlite3.connect(lib_dir / "clipdex.db") as conn:
        before = dict(conn.execute("SELECT id, vector FROM images").fetchall())
    lib = Library.open(lib_dir)
    assert [(e.model, e.pictures, e.active, e.complete) for e in listing(lib)] == [("tiny", 24, True, True)]

    stats = Indexer(lib, TINY_B, workers=1, progress=False).run([str(pics)], switch=True)
    assert (stats.encoded, stats.rebuilt, lib.dim) == (24, True, 32)
    assert [(e.model, e.pictures, e.active) for e in listing(lib)] == [
        (str(lib.model_spec), 24, True), ("tiny", 24, False)]

    back = Indexer(lib, "tiny", workers=1, progress=False).use()
    assert (back.encoded, back.reused, str(lib.model_spec), lib.dim) == (0, 24, "tiny", 64)
    ids, vectors = lib.load_vectors()
    assert {int(i): v.tobytes() for i, v in zip(ids, vectors)} == before
