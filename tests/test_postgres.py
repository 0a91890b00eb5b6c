"""A library shared on PostgreSQL: concurrent writers, the writers' lock, the cache folder, URLs.

Against a real server the tests start themselves (tests/pgcluster.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from clipdex.errors import LibraryError, NoLibrary
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library.schema import ChangeRow, ImageRow
from clipdex.models import TINY_MODEL
from clipdex.synthetic import COLORS, Sample, draw, write_collection
from clipdex.web import create_app
from tests.conftest import invoke, serve_process

BACKENDS = ("postgresql",)


def index_process(url: str, folder: Path, env: dict | None = None) -> subprocess.Popen:
    """``clipdex index FOLDER --library URL`` in its own process, committing every 2 pictures."""
    return subprocess.Popen(
        [sys.executable, "-m", "clipdex", "index", str(folder), "--library", url, "--batch-size", "2",
         "--workers", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_two_index_processes_on_different_folders_share_one_library_while_a_server_answers(library_at, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    draw(Sample("blue", "square")).save(first / "a.jpg")
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(first)])
    client = create_app({"LIBRARY": library_at, "TESTING": True}).test_client()
    one = write_collection(tmp_path / "one", per_class=3, seed=11, samples=[Sample(c, "star") for c in COLORS])
    two = write_collection(tmp_path / "two", per_class=3, seed=12, samples=[Sample(c, "circle") for c in COLORS])
    procs = [index_process(library_at, tmp_path / "one"), index_process(library_at, tmp_path / "two")]
    answers, seen, snapshots = 0, [], set()
    deadline = time.monotonic() + 240
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        r = client.get("/api/search", query_string={"q": "a star", "k": 100})
        assert r.status_code == 200, r.get_json()
        seen.append(len(r.get_json()["results"]))
        answers += 1
        generation, checksum = lib.ids_snapshot()  # one statement: a generation and the ids it holds
        snapshots.add((generation, checksum.count))
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    reports = [json.loads(out) for out, _ in outs]
    assert [r["indexed"] for r in reports] == [len(one), len(two)]
    assert answers >= 3 and seen == sorted(seen)  # answered throughout; never fewer pictures than before
    # no reader saw half a batch: every commit adds 2 pictures (1 + even), one count per generation, growing
    assert all(count % 2 == 1 for _, count in snapshots), sorted(snapshots)
    by_generation = sorted(snapshots)
    assert any(1 < count < 1 + len(one) + len(two) for _, count in by_generation)  # seen mid-run
    assert len({g for g, _ in by_generation}) == len(by_generation)
    assert [c for _, c in by_generation] == sorted(c for _, c in by_generation)

    fresh = Library.open(library_at)
    expected = {str(first / "a.jpg"), *map(str, one), *map(str, two)}
    with fresh.session() as s:
        paths = list(s.scalars(select(ImageRow.path)))
        ids = list(s.scalars(select(ImageRow.id)))
        logged = s.scalar(select(func.count(func.distinct(ChangeRow.generation))))
    assert sorted(paths) == sorted(expected)  # every picture once
    assert len(set(ids)) == len(ids) == len(expected)
    db_ids, vectors = fresh.load_vectors()
    index = fresh.index()
    assert sorted(index.ids().tolist()) == db_ids.tolist()  # the index agrees with the database
    for i, v in zip(db_ids, vectors):
        assert np.allclose(index.vector(int(i)), v)
    # every commit of both runs got its own generation, in order, with its change-log rows
    assert fresh.generation >= 1 + len(one) // 2 + len(two) // 2
    assert logged >= 1
    assert client.get("/api/search", query_string={"q": "a red circle", "k": 3}).status_code == 200


def test_incremental_writers_share_the_lock_and_a_rebuild_needs_it_alone(library_at, tmp_path):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=3, samples=[Sample("red", "circle"), Sample("blue", "star")])
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    other = Library.open(library_at)
    with lib.write_lock():
        with other.write_lock():  # two incremental writers at once
            pass
        with pytest.raises(LibraryError, match="this needs the library to itself"):
            with other.write_lock(exclusive=True):
                pass
        with pytest.raises(LibraryError, match="this needs the library to itself"):
            Indexer(other, TINY_MODEL, workers=1).run([str(pics)], rebuild=True)
    with other.write_lock(exclusive=True):
        with pytest.raises(LibraryError, match="another clipdex process is rebuilding or tagging"):
            with lib.write_lock():
                pass
    stats = Indexer(other, TINY_MODEL, workers=1).run([str(pics)], rebuild=True)  # free again
    assert stats.encoded == 2


def test_the_cache_folder_holds_the_index_files_and_is_rebuilt_when_lost(library_at, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / "cache"))
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4, samples=[Sample(c, "square") for c in COLORS])
    r = invoke("index", str(pics), "--library", library_at, "--model", "tiny", "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(invoke("info", "--library", library_at, "--json").stdout)
    cache = Path(info["cache_folder"])
    assert info["library"] == library_at and cache.parent == tmp_path / "cache" / "libraries"
    assert info["images"] == len(COLORS)
    assert [p.name for p in cache.glob("index.*")] == [f"index.{info['generation']}.faiss"]
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / "elsewhere"))  # another machine: nothing cached
    hits = json.loads(invoke("search", "a red square", "--library", library_at, "--json", "-k", "1").stdout)
    assert Path(hits["results"][0]["path"]).parent.name == "red"
    assert list((tmp_path / "elsewhere" / "libraries").glob("*/index.*.faiss"))


def test_urls_in_words(library_at, tmp_path):
    r = invoke("search", "a cat", "--library", library_at)
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: no library at {library_at}")
    unreachable = "postgresql://nobody@127.0.0.1:1/none"
    r = invoke("info", "--library", unreachable)
    assert r.exit_code == 1 and r.stderr.startswith(f"Error: cannot use the library database {unreachable}: ")
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(NoLibrary):
        Library.open(library_at)
    with pytest.raises(LibraryError, match="names no database"):
        Library.open("postgresql://user@host")
    r = invoke("info", "--library", "mysql://user@host/photos")
    assert (r.exit_code, r.stderr) == (1, "Error: a library's database server must be PostgreSQL, not mysql "
                                          "(mysql://user@host/photos)\n")


def test_a_named_root_is_found_served_and_kept_on_a_machine_that_mounts_it_elsewhere(library_at, tmp_path,
                                                                                    monkeypatch):
    import shutil

    from clipdex.library.schema import Meta, RootRow

    mount_a = tmp_path / "machine-a" / "archive"
    write_collection(mount_a, per_class=1, seed=5, samples=[Sample(c, "triangle") for c in COLORS])
    only_a = tmp_path / "machine-a" / "home"
    draw(Sample("red", "square")).save((only_a.mkdir(parents=True), only_a / "mine.jpg")[1])
    mount_b = tmp_path / "machine-b" / "srv" / "photos"
    shutil.copytree(mount_a, mount_b)  # the same share, mounted elsewhere (copy2 keeps sizes and times)

    def on(machine: str) -> None:
        monkeypatch.setenv("CLIPDEX_MACHINE", machine)
        monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / f"cache-{machine}"))

    on("a")
    r = invoke("index", str(mount_a), str(only_a), "--library", library_at, "--model", "tiny", "--workers", "1",
               "--root-name", f"archive={mount_a}", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["indexed"] == len(COLORS) + 1
    lib = Library.open(library_at)
    with lib.session() as s:
        stored = sorted(s.scalars(select(ImageRow.path)))
        roots = dict(s.execute(select(RootRow.path, RootRow.machine)).all())
        names = s.execute(select(Meta.key, Meta.value).where(Meta.key.like("root_name:%"))).all()
    assert stored == [str(only_a / "mine.jpg"),  # "/" sorts before "@"
                      *sorted(f"@archive/{p.parent.name}/{p.name}" for p in mount_a.rglob("*.jpg"))]
    assert roots == {"@archive": None, str(only_a): "a"}
    assert names == [("root_name:a:archive", str(mount_a))]  # machine a mounts archive there

    on("b")  # declares the name once, with its own mount point: nothing is new, nothing deleted
    r = invoke("index", str(mount_b), "--library", library_at, "--workers", "1", "--root-name",
               f"archive={mount_b}", "--json")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["indexed"], report["unchanged"], report["removed"]) == (0, len(COLORS), 0)
    r = invoke("search", "a red triangle", "--library", library_at, "-k", "3", "--json")  # recorded for b
    first = json.loads(r.stdout)["results"][0]["path"]
    assert first == str(mount_b / "red" / "triangle-000.jpg") or Path(first).is_relative_to(mount_b)

    client = create_app({"LIBRARY": library_at, "TESTING": True}).test_client()
    hits = client.get("/api/search", query_string={"q": "a red", "k": 50}).get_json()["results"]
    by_path = {h["path"]: h["id"] for h in hits}
    in_archive = [i for p, i in by_path.items() if p.startswith(str(mount_b))]
    assert len(in_archive) == len(COLORS)
    assert client.get(f"/api/images/{in_archive[0]}/file").status_code == 200  # served from b's mount
    mine = by_path[str(only_a / "mine.jpg")]  # machine a's own folder: b does not serve its path
    assert client.get(f"/api/images/{mine}/file").status_code == 404

    on("a")  # and back on a, everything is where it was
    r = invoke("index", str(mount_a), "--library", library_at, "--workers", "1", "--json")
    assert (json.loads(r.stdout)["unchanged"], json.loads(r.stdout)["removed"]) == (len(COLORS), 0)
    assert Library.open(library_at).count() == len(COLORS) + 1


def test_root_names_are_checked(library_at):
    r = invoke("info", "--library", library_at, "--root-name", "no-equals-sign")
    assert r.exit_code == 2 and "a root name is NAME=PATH" in r.stderr
    r = invoke("info", "--library", library_at, "--root-name", "bad name=/x")
    assert r.exit_code == 2 and "letters, digits" in r.stderr


def test_models_switch_back_and_drop_and_tagging_passes_on_a_server(library_at, tmp_path):
    tiny_b = f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=6,
                     samples=[Sample(c, s) for c in list(COLORS)[:3] for s in ("circle", "star")])

    def run(*args: str) -> dict | list:
        out = invoke(*args, "--library", library_at, "--json")
        assert out.exit_code == 0, out.stderr
        return json.loads(out.stdout)

    assert run("index", str(pics), "--model", "tiny", "--workers", "1")["indexed"] == 6
    before = Library.open(library_at).load_vectors()
    assert run("index", str(pics), "--model", tiny_b, "--workers", "1")["indexed"] == 6  # built beside, switched
    assert Library.open(library_at).dim == 32
    back = run("models", "use", "tiny")  # tiny's vectors were held: nothing encoded
    assert back["encoded"] == 0
    again = Library.open(library_at).load_vectors()
    assert np.array_equal(before[0], again[0]) and np.array_equal(before[1], again[1])
    models = {m["model"]: m for m in run("models")}
    assert models["tiny"]["active"] and models[tiny_b]["complete"]
    run("models", "drop", tiny_b)
    assert [m["model"] for m in run("models")] == ["tiny"]
    tagged = run("tag", "--labels", "circle,star")
    assert tagged["images"] == 6
    hits = run("search", "a shape", "--tag", "star", "-k", "10")["results"]
    assert hits and all("star" in Path(h["path"]).name for h in hits)


def test_a_real_server_on_a_url_with_a_password_never_shows_it(library_at, tmp_path):
    import re
    import urllib.request

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=7, samples=[Sample("red", "circle"), Sample("blue", "star")])
    with_password = library_at.replace("postgres@", "postgres:s3cret-word@", 1)  # the test cluster trusts anyone
    assert invoke("index", str(pics), "--library", with_password, "--model", "tiny", "--workers", "1").exit_code == 0
    with serve_process("--library", with_password) as served:
        match = re.fullmatch(rf"clipdex: serving {re.escape(library_at.replace('postgres@', 'postgres:***@'))} "
                             r"on (http://127\.0\.0\.1:\d+/)  \(Ctrl-C stops\)\n", served.ready)
        assert match, (served.ready, served.proc.poll())
        with urllib.request.urlopen(match.group(1) + "api/search?q=a+red+circle&k=1") as r:
            hits = json.loads(r.read())["results"]
        assert Path(hits[0]["path"]).parent.name == "red"
        with urllib.request.urlopen(match.group(1)) as r:
            assert "s3cret-word" not in r.read().decode()
    assert "s3cret-word" not in served.ready + served.err


# -- issue #11 reviews: lock files, roles, URLs, races, frozen writers ---------------------------------------------
def one_error(r) -> str:
    assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_a_symlink_planted_as_a_lock_file_is_never_followed_nor_its_target_truncated(tmp_path):
    from clipdex.library import INDEX_LOCK_NAME, LOCK_NAME

    lib = Library.create(tmp_path / "lib")  # a SQLite library: the cache folder of a server's is the same
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name, lock in ((LOCK_NAME, lib.write_lock), (INDEX_LOCK_NAME, lib.index_lock)):
        (lib.path / name).unlink(missing_ok=True)
        (lib.path / name).symlink_to(victim)
        with pytest.raises(LibraryError, match="is a symlink"):
            with lock():
                pass
        assert victim.read_text() == "precious"
        (lib.path / name).unlink()
        (lib.path / name).write_text("left by someone")  # a plain file: locked, never truncated
        with lock():
            assert (lib.path / name).read_text() == "left by someone"


def role_url(url: str, role: str) -> str:
    return url.replace("postgres@", f"{role}@", 1)


def test_a_role_that_may_not_create_tables_is_told_what_to_grant(pg_cluster, tmp_path):
    url = pg_cluster.new_database()
    database = url.rsplit("/", 1)[1]
    pg_cluster._sql("DO $$ BEGIN CREATE ROLE maker LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg_cluster._sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database)  # PostgreSQL 15's default
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=8, samples=[Sample("red", "circle")])
    r = invoke("index", str(pics), "--library", role_url(url, "maker"), "--model", "tiny", "--workers", "1")
    line = one_error(r)
    assert f"createdb -O maker {database}" in line and "GRANT CREATE ON SCHEMA public TO maker" in line, line


def test_a_select_only_role_searches_and_keeps_its_index_in_memory(pg_cluster, tmp_path, monkeypatch):
    url = pg_cluster.new_database()
    database = url.rsplit("/", 1)[1]
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=9, samples=[Sample(c, "star") for c in COLORS])
    assert invoke("index", str(pics), "--library", url, "--model", "tiny", "--workers", "1").exit_code == 0
    pg_cluster._sql("DO $$ BEGIN CREATE ROLE viewer LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg_cluster._sql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO viewer", database)
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / "kiosk"))  # no index file here yet: one is built
    viewer = role_url(url, "viewer")
    r = invoke("search", "a red star", "--library", viewer, "-k", "1", "--json")
    assert r.exit_code == 0, r.stderr
    assert Path(json.loads(r.stdout)["results"][0]["path"]).parent.name == "red"
    line = one_error(invoke("tags", "add", str(pics / "red"), "mine", "--library", viewer))
    assert "may only read" in line, line


def test_passwords_in_any_part_of_a_url_are_never_shown_and_bad_urls_are_one_line(pg_cluster):
    from clipdex.library import dialect

    base = f"postgresql://postgres@127.0.0.1:{pg_cluster.port}"
    for url in (f"{base}/nosuch?password=s3cretPW", f"{base}/nosuch?sslmode=disable&password=s3cretPW",
                f"postgresql://postgres:s3c@retPW@127.0.0.1:{pg_cluster.port}/nosuch",
                f"postgresql://postgres:s3cretPW@[::1:{pg_cluster.port}/nosuch",
                f"postgresql://postgres:s3cretPW@127.0.0.1:{pg_cluster.port}/nosuch?connect_timeout=abc",
                f"POSTGRESQL://postgres:s3cretPW@127.0.0.1:{pg_cluster.port}/nosuch",
                f"postgresql+psycopg2://postgres:s3cretPW@127.0.0.1:{pg_cluster.port}/nosuch"):
        line = one_error(invoke("info", "--library", url))
        assert "s3c" not in line and "retPW" not in line, (url, line)
        assert "s3c" not in dialect.shown(url) and "retPW" not in dialect.shown(url)
    assert "%40" in one_error(invoke("info", "--library", "postgresql://u:s3c@retPW@127.0.0.1:1/db"))
    assert "postgresql://" in one_error(invoke("info", "--library", "postgresql+psycopg2://u@h/db"))
    assert "cannot use the library database" in one_error(
        invoke("info", "--library", f"POSTGRESQL://postgres@127.0.0.1:{pg_cluster.port}/nosuch"))


def test_two_runs_over_the_same_folder_end_well_or_in_one_line(library_at, tmp_path):
    first = tmp_path / "first"
    draw(Sample("blue", "square")).save((first.mkdir(), first / "a.jpg")[1])
    Indexer(Library.create(library_at), TINY_MODEL, workers=1).run([str(first)])
    pics = write_collection(tmp_path / "pics", per_class=3, seed=13, samples=[Sample(c, "square") for c in COLORS])
    for i in range(6):  # bad files too: both runs record them as skipped
        (tmp_path / "pics" / f"junk{i}.jpg").write_text("not a picture")
    for _ in range(2):
        procs = [index_process(library_at, tmp_path / "pics"), index_process(library_at, tmp_path / "pics")]
        outs = [p.communicate(timeout=240) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0 or (p.returncode == 1 and len(err.strip().splitlines()) == 1
                                         and err.startswith("Error: ")), err
    r = invoke("index", str(tmp_path / "pics"), "--library", library_at, "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    with Library.open(library_at).session() as s:
        assert sorted(s.scalars(select(ImageRow.path))) == sorted([str(first / "a.jpg"), *map(str, pics)])


def test_a_commit_waits_for_a_frozen_writer_only_so_long(library_at, tmp_path, monkeypatch):
    import psycopg

    from clipdex.library import dialect

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=14, samples=[Sample("red", "circle")])
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    monkeypatch.setattr(dialect, "LOCK_TIMEOUT_S", 2)
    draw(Sample("blue", "star")).save(pics / "new.jpg")
    with psycopg.connect(library_at) as frozen:  # holds what a writer stopped inside its commit holds
        frozen.execute("SELECT pg_advisory_xact_lock(%s)", (dialect._signed(lib._keys.generation),))
        started = time.monotonic()
        with pytest.raises(LibraryError, match="held a lock of .* for 2 s"):
            Indexer(Library.open(library_at), TINY_MODEL, workers=1).run([str(pics)])
        assert time.monotonic() - started < 30
    assert Indexer(Library.open(library_at), TINY_MODEL, workers=1).run([str(pics)]).encoded == 1


def test_a_run_that_lost_its_writer_lock_stores_nothing_more(library_at, tmp_path):
    import psycopg

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=15, samples=[Sample("red", "circle")])
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    with lib.write_lock():
        with psycopg.connect(library_at, autocommit=True) as admin:  # the server drops the lock's connection
            admin.execute("SELECT pg_terminate_backend(%s)", (lib._writer.pid,))
        with lib.session() as s, pytest.raises(LibraryError, match="lost its writer lock"):
            Library.bump_generation(s, [])
    with lib.write_lock(), lib.session() as s:  # taken again, it works
        Library.bump_generation(s, [])
        s.commit()


def test_people_tagging_the_same_pictures_at_once_never_collide(library_at, tmp_path):
    import threading

    from clipdex.library.persontags import add_tag

    pics = tmp_path / "pics"
    write_collection(pics, per_class=2, seed=16, samples=[Sample("red", "circle")])
    Indexer(Library.create(library_at), TINY_MODEL, workers=1).run([str(pics)])
    libs = [Library.open(library_at) for _ in range(4)]
    ids = sorted(libs[0].load_vectors()[0].tolist())
    barrier, errors, edits = threading.Barrier(4), [], []

    def edit(lib: Library) -> None:
        barrier.wait()
        try:
            edits.append(add_tag(lib, ids, "ours").changed)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(repr(exc))

    threads = [threading.Thread(target=edit, args=(lib,)) for lib in libs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and sorted(edits) == [0, 0, 0, len(ids)]


def test_request_threads_sharing_a_library_each_hold_the_writer_lock_of_their_own(library_at, tmp_path):
    """The web app's threads share one Library: a thread must never take another's hold for its own."""
    import threading

    lib = Library.create(library_at)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    refused: list[str] = []

    def first() -> None:
        with lib.write_lock():
            first_in.set()
            second_in.wait(30)
        first_out.set()

    def second() -> None:
        first_in.wait(30)
        with lib.write_lock():
            second_in.set()
            first_out.wait(30)  # the first thread's hold is gone; this one's must still keep others out
            try:
                with Library.create(library_at).write_lock(exclusive=True):
                    pass
            except LibraryError as exc:
                refused.append(str(exc))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert refused and refused[0].startswith("other clipdex processes are writing to")
