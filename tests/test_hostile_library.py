"""A hostile or damaged library gives one clear line (CLI) or a 503 (server): never a traceback, a hang,
or an allocation beyond what the files hold. Real SQLite and PostgreSQL, real FAISS files, a real Flask app.

Damage any database can hold (a meta value, a vector of the wrong length, a hostile file name) is tried
on both; damage only a SQLite file can hold (a column declared otherwise, a value of another type) on SQLite."""

from __future__ import annotations

import os
import sqlite3
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipdex.ann import base as bases
from clipdex.cli import main
from clipdex.errors import LibraryError
from clipdex.library import Library
from tests.conftest import BOTH

BACKENDS = BOTH  # see above: what a server's database can hold is tried on PostgreSQL too


def sql(location: str | Path, statement: str, *params) -> None:
    """Run ``statement`` (``?`` placeholders) on the library's database behind clipdex's back."""
    if str(location).startswith("postgresql://"):
        import psycopg

        with psycopg.connect(str(location), autocommit=True) as pg:
            pg.execute(statement.replace("?", "%s"), params)
        return
    with sqlite3.connect(Path(location) / "clipdex.db") as conn:
        conn.execute(statement, params)
    conn.close()


def zeros(location: str | Path, n: int) -> str:
    """SQL for ``n`` zero bytes, in the library's database's dialect."""
    return f"decode(repeat('00', {n}), 'hex')" if str(location).startswith("postgresql://") else f"zeroblob({n})"


@pytest.fixture()
def spoilt(backend, request) -> str:
    """A private copy of the shared library to damage: its folder (WAL folded in), or a cloned database's URL."""
    return str(request.getfixturevalue("copied" if backend == "sqlite" else "lib_dir"))


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def within(seconds: float, fn):
    """``fn()``'s result, failing the test (not hanging it) if it takes longer than ``seconds``."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s"
    return out[0]


# -- index files: FIFOs, forged headers, huge claims ---------------------------------------------------------
def saved(folder: Path, n: int = 3, dim: int = 64) -> Path:
    index = bases.flat_index(dim)
    index.add_with_ids(np.random.default_rng(0).random((n, dim), np.float32), np.arange(n))
    return bases.Base(bases.FLAT, 7, index, np.arange(n)).save(folder)[0]


def test_a_fifo_in_place_of_the_index_file_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "index.7.faiss")
    assert within(5, lambda: bases.load(tmp_path / "index.7.faiss", 64)) is None


def test_an_index_file_claiming_more_vectors_than_it_holds_is_refused_before_faiss_allocates(tmp_path):
    data = bytearray(saved(tmp_path).read_bytes())
    struct.pack_into("<q", data, 8, 1 << 23)  # the outer count
    struct.pack_into("<q", data, 45, 1 << 23)  # the inner IndexFlat's count
    struct.pack_into("<Q", data, 74, (1 << 23) * 64)  # the floats that follow
    (tmp_path / "index.7.faiss").write_bytes(bytes(data) + bytes(15_000))
    assert bases.load(tmp_path / "index.7.faiss", 64) is None


def test_an_inner_flat_index_claiming_two_billion_vectors_is_refused(tmp_path):
    path = saved(tmp_path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 74, 1 << 37)  # 2**31 vectors of 64 floats
    path.write_bytes(bytes(data))
    assert bases.load(tmp_path / "index.7.faiss", 64) is None


def test_a_sound_index_file_still_loads(tmp_path):
    saved(tmp_path)
    assert bases.load(tmp_path / "index.7.faiss", 64).count == 3
    assert bases.load(tmp_path / "index.7.faiss", 32) is None


def test_the_library_rebuilds_over_a_fifo_index_file(spoilt):
    lib = Library.open(spoilt)
    generation = lib.generation
    for path in lib.path.glob("index.*.faiss"):
        path.unlink()
    os.mkfifo(lib.path / f"index.{generation}.faiss")
    index = within(20, lib.index)
    assert index.ntotal == len(lib.load_vectors()[0])
    lib.close()


# -- meta values and vectors: damage named in one line --------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [("dim", "abc"), ("dim", "0"), ("dim", "-64"), ("dim", "1000000000"),
                                            ("generation", "x"), ("schema_version", "abc"),
                                            ("schema_version", "0")])
def test_a_damaged_meta_value_is_one_error_line_naming_it(spoilt, key, value):
    sql(spoilt, "UPDATE meta SET value = ? WHERE key = ?", value, key)
    line = one_error_line(cli("info", "--library", spoilt))
    assert "damaged" in line and repr(key) in line and repr(value) in line


def vector_damage(location: str, damage: str) -> None:
    lib = Library.open(location)
    folder = lib.path  # its index files: in its folder, or a server library's cache folder
    lib.close()
    for path in folder.glob("index.*.faiss"):
        path.unlink()
    if damage == "every vector 40 bytes":
        sql(location, f"UPDATE images SET vector = {zeros(location, 40)}")
        return
    statement = {"6 bytes": zeros(location, 6), "text": "'not a vector'", "200 MB": "zeroblob(200000000)",
                 "NULL": "NULL"}[damage]
    if damage == "NULL":  # the column is NOT NULL: a hostile file declares it otherwise
        with sqlite3.connect(folder / "clipdex.db") as conn:
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'vector BLOB NOT NULL', 'vector BLOB') "
                         "WHERE name = 'images'")
        conn.close()
    sql(location, f"UPDATE images SET vector = {statement} WHERE id = (SELECT min(id) + 3 FROM images)")


def assert_damaged_vector_named(location: str) -> None:
    lib = Library.open(location)
    with pytest.raises(LibraryError, match=r"damaged vector for picture \d+ \(/"):
        lib.index()
    lib.close()
    line = one_error_line(cli("search", "a red circle", "--library", location))
    assert "damaged vector for picture" in line


@pytest.mark.parametrize("damage", ["6 bytes", "every vector 40 bytes"])
def test_a_damaged_vector_names_the_picture(spoilt, damage):
    vector_damage(spoilt, damage)
    assert_damaged_vector_named(spoilt)


@pytest.mark.sqlite_only  # a NOT NULL column declared otherwise, text in a BLOB column, a 200 MB value
@pytest.mark.parametrize("damage", ["NULL", "text", "200 MB"])
def test_a_vector_only_a_sqlite_file_can_hold_names_the_picture(copied, damage):
    vector_damage(str(copied), damage)
    assert_damaged_vector_named(str(copied))


def test_the_server_answers_503_for_a_damaged_library(spoilt):
    from clipdex.web import create_app

    vector_damage(spoilt, "6 bytes")
    app = create_app({"LIBRARY": spoilt, "TESTING": True})  # warming up must not raise
    problem = app.extensions["clipdex"].warm_up()
    assert isinstance(problem, LibraryError) and "damaged vector" in str(problem)
    answer = app.test_client().get("/api/search?q=a+red+circle")
    assert answer.status_code == 503 and "damaged vector for picture" in answer.get_json()["message"]
    sql(spoilt, "UPDATE meta SET value = 'abc' WHERE key = 'dim'")
    for route in ("/api/info", "/api/health"):  # a monitor watching health sees the damage too
        answer = app.test_client().get(route)
        assert answer.status_code == 503 and "'dim'" in answer.get_json()["message"], route


# -- rows the catalog cannot read: 503 naming the picture, never a 500 ---------------------------------------
@pytest.fixture()
def hostile_client(spoilt):
    from clipdex.web import create_app

    app = create_app({"LIBRARY": spoilt, "TESTING": True})
    return app.test_client()


@pytest.mark.parametrize(("column", "value"), [
    ("captured_at", "not a date"), ("captured_at", "99999-01-01 00:00:00"), ("path", None), ("path", b"\x00blob"),
    ("width", "wide"), ("size", "big"), ("mtime", "late"), ("indexed_at", None)])
@pytest.mark.sqlite_only  # NOT NULL columns declared otherwise, values of another type: a SQLite file's damage
def test_a_row_that_cannot_be_read_is_a_503_naming_the_picture(copied, hostile_client, column, value):
    with sqlite3.connect(copied / "clipdex.db") as conn:
        target = conn.execute("SELECT min(id) FROM images").fetchone()[0]
        conn.execute("PRAGMA writable_schema = ON")  # path and indexed_at are NOT NULL: a hostile file says otherwise
        conn.execute("UPDATE sqlite_master SET sql = replace(replace(sql, 'path VARCHAR NOT NULL', 'path VARCHAR'), "
                     "'indexed_at DATETIME NOT NULL', 'indexed_at DATETIME') WHERE name = 'images'")
    conn.close()
    with sqlite3.connect(copied / "clipdex.db") as conn:
        conn.execute(f"UPDATE images SET {column} = ? WHERE id = ?", (value, target))
    conn.close()
    answer = hostile_client.get(f"/api/images/{target}")
    assert answer.status_code == 503, answer.get_json()
    assert f"picture {target} is damaged in the database" in answer.get_json()["message"]
    if column == "captured_at":  # every picture's: a search result, and the capture-date span, show it
        sql(copied, "UPDATE images SET captured_at = ?", value)
        for query in ("q=a+red+circle", "q=a+red+circle&from=1990-01-01&to=1990-01-02"):
            answer = hostile_client.get(f"/api/search?{query}")
            assert answer.status_code == 503 and "is damaged in the database" in answer.get_json()["message"]


# -- file names cannot drive the terminal ----------------------------------------------------------------------
def test_escape_sequences_in_file_names_are_printed_inert(spoilt):
    from clipdex.cli.common import printable

    assert printable("a\x1b[2Jb\x9d0;title\x07\n") == "a\\x1b[2Jb\\x9d0;title\\x07\\x0a"
    hostile = "/pics/\x1b[2J\x1b]0;owned\x07.jpg"
    sql(spoilt, "INSERT INTO skipped (path, reason, size, mtime, recorded_at) VALUES (?, ?, 1, 1, '2024-01-01')",
        hostile, "bad\x1b[31m")
    human = cli("skipped", "--library", spoilt)
    assert human.exit_code == 0 and "\x1b" not in human.output and "\\x1b[2J" in human.output
    assert hostile in cli("skipped", "--library", spoilt, "--json").output.encode().decode("unicode_escape")
    vector_damage(spoilt, "6 bytes")
    sql(spoilt, "UPDATE images SET path = ? WHERE id = (SELECT min(id) + 3 FROM images)", hostile)
    line = one_error_line(cli("search", "a red circle", "--library", spoilt))
    assert "\x1b" not in line and "\x07" not in line


def test_a_malformed_stored_model_spec_is_damage_the_page_explains(spoilt, hostile_client):
    sql(spoilt, "UPDATE meta SET value = '::::' WHERE key = 'model_spec'")
    page = hostile_client.get("/")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    answer = hostile_client.get("/api/search?q=a+red+circle")
    assert answer.status_code == 503 and "'model_spec'" in answer.get_json()["message"]
    assert "'model_spec'" in one_error_line(cli("search", "a red circle", "--library", spoilt))
