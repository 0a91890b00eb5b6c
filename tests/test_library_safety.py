"""A library is never lost or overwritten: damaged files, read-only mounts, full disks, wrong paths.

Read-only mounts and full disks are real: a user and mount namespace (``unshare``) gives
the test a read-only bind mount, or a small tmpfs that fills up, with no root needed
outside it (as root, the namespace is the only way to stop root writing anyway).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from clipdex.ann import base as bases
from clipdex.cli import main
from clipdex.indexer import Indexer
from clipdex.library import Library, migrations
from clipdex.synthetic import write_collection
from tests.conftest import BOTH

BACKENDS = BOTH  # index files and failed runs on SQLite and PostgreSQL; SQLite's own files on SQLite (sqlite_only)
V1_DB = Path(__file__).parent / "data" / "library-v1" / "clipdex.db"


def cli(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def namespaces_work() -> bool:
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="user and mount namespaces (unshare) unavailable")


def in_namespace(setup: str, script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``setup`` (mounts) then the Python ``script`` inside a new user + mount namespace."""
    code = tmp_path / "inside.py"
    code.write_text(textwrap.dedent(script))
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                           f"{setup} && exec {sys.executable} {code}"],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path),
                               "PYTHONPATH": str(Path(__file__).parent.parent)})


# -- 2. a FAISS file that disagrees with the database is rebuilt, not trusted ----------------------------------
@pytest.mark.parametrize("wrong", ["empty", "foreign ids", "one missing"])
def test_an_index_file_that_disagrees_with_the_database_is_rebuilt(lib_dir, wrong):
    lib = Library.open(lib_dir)
    folder = lib.path  # the library's folder, or a server library's cache folder on this machine
    ids, vectors = lib.load_vectors()
    bad = bases.flat_index(vectors.shape[1])
    if wrong == "foreign ids":
        bad.add_with_ids(vectors, ids + 1000)
    elif wrong == "one missing":
        bad.add_with_ids(vectors[1:], ids[1:])
    bases.Base(bases.FLAT, lib.generation, bad, bases.flat_ids(bad)).save(folder)  # as if for this generation

    fresh = Library.open(lib_dir)
    assert sorted(fresh.index().ids().tolist()) == ids.tolist()
    assert fresh.index().search(vectors[0], 1)[0][0] == int(ids[0])
    saved = faiss.deserialize_index(np.fromfile(folder / f"index.{fresh.generation}.faiss", dtype=np.uint8))
    assert saved.ntotal == len(ids)  # and the right one replaced the wrong file


# -- 3. damaged databases: one line, exit 1, never written to ----------------------------------------------------
def damage(db: Path, how: str) -> str:
    """Damage ``db`` and return what SQLite (or clipdex) will say about it."""
    data = db.read_bytes()
    if how == "truncated":
        db.write_bytes(data[: len(data) // 3])
        return "database disk image is malformed"
    if how == "emptied":
        db.write_bytes(b"")
        return "the file is empty, 0 bytes"
    db.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, len(data), dtype=np.uint8)))
    return "file is not a database"


@pytest.mark.sqlite_only  # a damaged SQLite file
@pytest.mark.parametrize("how", ["truncated", "emptied", "garbage"])
def test_a_damaged_database_is_reported_and_left_alone(copied, how, collection):
    db = copied / "clipdex.db"
    what = damage(db, how)
    damaged = db.read_bytes()
    root = next(iter(collection)).parent.parent
    expected = (f"Error: the library database {db} is damaged ({what}); it was left as it is: restore it from a "
                "backup, or move it away and index again\n")
    for args in (["search", "a red circle"], ["info"], ["index", root, "--model", "tiny"]):
        out = cli(*args, "--library", copied)
        assert (out.exit_code, out.stdout, out.stderr) == (1, "", expected), args
        assert db.read_bytes() == damaged, args


@needs_namespaces
@pytest.mark.slow  # a real process run end to end
@pytest.mark.sqlite_only  # a read-only folder holding a SQLite library
def test_a_read_only_library_is_searchable_but_not_changeable(tmp_path, copied, library, collection):
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(V1_DB, old / "clipdex.db")
    root = next(iter(collection)).parent.parent
    expected_hits = json.loads(cli("search", "a red circle", "-k", "3", "--json", "--library", library.path).stdout)
    files = sorted(p.name for p in copied.iterdir())
    assert files == ["clipdex.db", f"index.{library.generation}.faiss"]  # no -wal, no -shm: as copied off a disk
    script = f"""
        import json
        from click.testing import CliRunner
        from clipdex.cli import main
        runs = [["search", "a red circle", "-k", "3", "--json", "--library", "{copied}"],
                ["info", "--json", "--library", "{copied}"],
                ["index", "{root}", "--library", "{copied}"],
                ["tag", "--labels", "red,blue", "--library", "{copied}"],
                ["info", "--library", "{old}"]]
        print(json.dumps([[r.exit_code, r.stdout, r.stderr] for r in (CliRunner().invoke(main, a) for a in runs)]))
    """
    ro = " && ".join(f"mount --bind {d} {d} && mount -o remount,bind,ro {d}" for d in (copied, old))
    done = in_namespace(ro, script, tmp_path)
    assert done.returncode == 0, done.stderr
    (search, info, index, tag, old_info) = json.loads(done.stdout)
    assert search[0] == 0 and json.loads(search[1])["results"] == expected_hits["results"]
    assert info[0] == 0 and json.loads(info[1])["images"] == 120
    refused = f"Error: library at {copied} is read-only: it can be searched here but not changed\n"
    assert index[0] == tag[0] == 1 and index[2] == tag[2] == refused
    assert old_info == [1, "", f"Error: library at {old} was written by an older clipdex (schema version 1) and must "
                               f"be upgraded to version {migrations.LATEST} before use, which needs write access to "
                               "its folder\n"]
    assert sorted(p.name for p in copied.iterdir()) == files


@needs_namespaces
@pytest.mark.slow  # a real process run end to end
def test_a_full_disk_stops_the_run_with_what_was_committed_and_the_next_run_continues(tmp_path, encoder):
    pics = tmp_path / "pics"
    total = len(write_collection(pics, per_class=5, seed=5))  # 120 pictures
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    script = f"""
        import shutil, subprocess, sys
        from tests.terminal import processes_in_group
        run = subprocess.Popen([sys.executable, "-m", "clipdex", "index", "{pics}", "--library", "{disk / 'lib'}",
                                "--model", "tiny", "--batch-size", "4", "--workers", "1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
        _, err = run.communicate()
        left = processes_in_group(run.pid)  # the error struck mid-run: no decoder may outlive it
        shutil.copytree("{disk / 'lib'}", "{kept}")  # the small disk goes away with the namespace
        sys.stdout.write(str(run.returncode) + " " + str(left) + "\\n" + err)
    """
    done = in_namespace(f"mount -t tmpfs -o size=300k tmpfs {disk}", script, tmp_path)
    code, message = done.stdout.split("\n", 1)
    found = re.fullmatch(  # (the tiny model may be exported first: this process has a cache of its own)
        rf"(?:exporting model tiny to ONNX .*\n)?"
        rf"Error: the disk holding the library at {disk / 'lib'} is full: (\d+) pictures were indexed and committed "
        r"before it filled up; free some space and run the same indexing again to continue from there\n", message)
    assert code == "1 []" and found, done.stdout + done.stderr
    committed = int(found.group(1))
    with sqlite3.connect(kept / "clipdex.db") as conn:
        assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == committed
    assert 0 < committed < total

    stats = Indexer(Library.open(kept), encoder, workers=2, progress=False).run([str(pics)])
    assert (stats.encoded, stats.unchanged) == (total - committed, committed)


@pytest.mark.parametrize("command", [["search", "a cat"], ["info"], ["index", "."]])
def test_a_library_path_that_is_a_file(tmp_path, command):
    picture = tmp_path / "some.jpg"
    picture.write_bytes(b"\xff\xd8 not really")
    out = cli(*command, "--library", picture)
    assert (out.exit_code, out.stderr) == (1, f"Error: library path {picture} is a file, not a folder\n")
    assert picture.read_bytes() == b"\xff\xd8 not really"


# -- 4. a failed run leaves no library where there was none --------------------------------------------------------
@pytest.mark.parametrize("args,code", [(["missing-folder", "--model", "tiny"], 2),
                                       (["pics", "--model", "ViT-B-32:nosuchtag"], 2)])
def test_a_failed_first_run_leaves_nothing_behind(tmp_path, args, code):
    write_collection(tmp_path / "pics", per_class=1, seed=3)
    args = [str(tmp_path / a) if not a.startswith(("-", "tiny", "ViT")) else a for a in args]
    out = cli("index", *args, "--library", tmp_path / "new" / "library")
    assert out.exit_code == code, out.output
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing-folder"  # a folder that was there stays, without a database in it
    existing.mkdir()
    out = cli("index", *args, "--library", existing)
    assert out.exit_code == code and list(existing.iterdir()) == []


def test_a_failed_run_on_an_existing_library_keeps_it(lib_dir, collection):
    root = next(iter(collection)).parent.parent
    out = cli("index", root / "nowhere", "--library", lib_dir)
    assert out.exit_code == 2 and Library.open(lib_dir).info()["images"] == 120
