"""Where a shared library's pictures are: root names that never overlap or leak between machines, folders
adopted by a name declared late, pictures of other machines explained, and each library's own cache folder
and locks. Against a real PostgreSQL server (tests/pgcluster.py) unless a test says otherwise."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import delete, select

from clipdex.errors import LibraryError, UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library, paths, places
from clipdex.library.persontags import add_tag, tags_of
from clipdex.library.schema import ImageRow, Meta, RootRow
from clipdex.models import TINY_MODEL
from clipdex.synthetic import COLORS, Sample, write_collection
from clipdex.web import create_app
from tests.conftest import invoke

BACKENDS = ("postgresql",)


@pytest.fixture()
def on(monkeypatch, tmp_path):
    """``on(machine)``: what follows runs as that machine, with its own cache folder."""
    def switch(machine: str) -> None:
        monkeypatch.setenv("CLIPDEX_MACHINE", machine)
        monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / f"cache-{machine.replace(':', '_')}"))
    yield switch
    places.forget_declared()


def index(location: str, *args: str) -> dict:
    r = invoke("index", *args, "--library", location, "--model", "tiny", "--workers", "1", "--json")
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def stored_paths(location: str) -> list[str]:
    with Library.open(location).session() as s:
        return sorted(s.scalars(select(ImageRow.path)))


def index_agrees(location: str) -> None:
    lib = Library.open(location)
    ids, _ = lib.load_vectors()
    assert sorted(lib.index().ids().tolist()) == ids.tolist()


def test_a_machine_whose_name_holds_a_colon_sees_no_other_machines_root_names(library_at, tmp_path, on):
    share = tmp_path / "share"
    write_collection(share, per_class=1, seed=31, samples=[Sample("red", "circle")])
    on("x:y")
    index(library_at, str(share), "--root-name", f"archive={share}")
    on("x")  # its prefix "root_name:x:" begins "root_name:x:y:archive": not a name of x's
    places.forget_declared()
    assert Library.open(library_at).places.mounts() == {}
    with Library.open(library_at).session() as s:
        assert s.get(Meta, "root_name:x:y:archive").value == str(share)


def test_root_names_that_overlap_are_refused_before_anything_is_written(library_at, tmp_path, on):
    share = tmp_path / "share"
    write_collection(share, per_class=1, seed=32, samples=[Sample("blue", "star")])
    on("a")
    r = invoke("index", str(share), "--library", library_at, "--root-name", f"all={share}",
               "--root-name", f"stars={share / 'blue'}")
    assert r.exit_code == 2 and (f"root names cannot overlap: stars={share / 'blue'} is inside all={share}"
                                 in r.stderr), r.stderr
    index(library_at, str(share), "--root-name", f"all={share}")
    r = invoke("index", str(share / "blue"), "--library", library_at, "--root-name", f"stars={share / 'blue'}")
    assert r.exit_code == 2, r.stderr  # against the name recorded for this machine by the first run
    assert r.stderr == f"Error: root names cannot overlap: stars={share / 'blue'} is inside all={share}\n"
    assert stored_paths(library_at) == ["@all/blue/star-000.jpg"]


def test_a_folder_indexed_before_its_name_was_declared_is_adopted_without_re_encoding(library_at, tmp_path, on):
    share = tmp_path / "share"
    write_collection(share, per_class=2, seed=33, samples=[Sample(c, "square") for c in COLORS])
    (share / "broken.jpg").write_bytes(b"not a picture")
    on("a")
    first = index(library_at, str(share))
    assert first["indexed"] == 2 * len(COLORS)
    lib = Library.open(library_at)
    red = lib.places.stored(str(share / "red" / "square-000.jpg"))
    keep = [i for i, in lib.session().execute(select(ImageRow.id).where(ImageRow.path == red))]
    add_tag(lib, keep, "favourite")
    again = index(library_at, str(share), "--root-name", f"archive={share}")
    assert (again["indexed"], again["unchanged"], again["removed"]) == (0, 2 * len(COLORS), 0)
    assert all(p.startswith("@archive/") for p in stored_paths(library_at))
    lib = Library.open(library_at)
    assert [t["label"] for t in tags_of(lib, keep[0])] == ["favourite"]
    assert lib.skipped() == [(str(share / "broken.jpg"), "not a recognised image format")]
    with lib.session() as s:
        assert dict(s.execute(select(RootRow.path, RootRow.machine)).all()) == {"@archive": None}
    index_agrees(library_at)


def test_a_share_indexed_twice_under_two_forms_becomes_one_when_named(library_at, tmp_path, on):
    mount_a = tmp_path / "a" / "archive"
    write_collection(mount_a, per_class=1, seed=34, samples=[Sample(c, "star") for c in COLORS])
    mount_b = tmp_path / "b" / "photos"
    shutil.copytree(mount_a, mount_b)  # the same share, mounted elsewhere
    on("a")
    index(library_at, str(mount_a), "--root-name", f"archive={mount_a}")
    on("b")
    places.forget_declared()
    index(library_at, str(mount_b))  # the name forgotten: indexed a second time, by path
    lib = Library.open(library_at)
    assert lib.count() == 2 * len(COLORS)
    plain = lib.places.stored(str(mount_b / "green" / "star-000.jpg"))
    twin_id, = [i for i, in lib.session().execute(select(ImageRow.id).where(ImageRow.path == plain))]
    add_tag(lib, [twin_id], "seen on b")
    named = index(library_at, str(mount_b), "--root-name", f"archive={mount_b}")
    assert (named["indexed"], named["removed"]) == (0, 0)
    lib = Library.open(library_at)
    assert lib.count() == len(COLORS)
    assert all(p.startswith("@archive/") for p in stored_paths(library_at))
    green = select(ImageRow.id).where(ImageRow.path == "@archive/green/star-000.jpg")
    kept, = [i for i, in lib.session().execute(green)]
    assert [t["label"] for t in tags_of(lib, kept)] == ["seen on b"]  # the duplicate's tag went to the twin
    index_agrees(library_at)
    hits = json.loads(invoke("search", "a green star", "--library", library_at, "-k", "1", "--json").stdout)
    assert hits["results"][0]["path"] == str(mount_b / "green" / "star-000.jpg")


def test_a_picture_of_another_machine_is_explained_not_just_missing(library_at, tmp_path, on):
    home = tmp_path / "home"
    share = tmp_path / "share"
    write_collection(home, per_class=1, seed=35, samples=[Sample("red", "circle")])
    write_collection(share, per_class=1, seed=36, samples=[Sample("blue", "circle")])
    on("a")
    index(library_at, str(home), str(share), "--root-name", f"archive={share}")
    on("b")
    places.forget_declared()
    client = create_app({"LIBRARY": library_at, "TESTING": True}).test_client()
    hits = {Path(h["path"]).parent.name if not h["path"].startswith("@") else "named": h["id"]
            for h in client.get("/api/search", query_string={"q": "a circle", "k": 10}).get_json()["results"]}
    r = client.get(f"/api/images/{hits['red']}/thumbnail")
    assert r.status_code == 404
    assert r.get_json()["message"] == (
        f"picture {hits['red']} is in {home} on machine 'a', not this one (b); a folder that several machines "
        "reach is shared by a root name (--root-name NAME=PATH on each)")
    r = client.get(f"/api/images/{hits['named']}/file")
    assert r.status_code == 404
    assert r.get_json()["message"] == (
        f"picture {hits['named']} is under the shared root name 'archive', which this machine (b) has not "
        "declared: index with --root-name archive=PATH where that share is mounted here")


def test_two_schemas_of_one_database_are_two_libraries_with_their_own_cache_and_locks(library_at, pg_cluster):
    for schema in ("team_a", "team_b"):
        pg_cluster._sql(f"CREATE SCHEMA {schema}", library_at.rsplit("/", 1)[1])
    urls = [f"{library_at}?options=-csearch_path%3D{schema}" for schema in ("team_a", "team_b")]
    one, two = (Library.create(url) for url in urls)
    assert one.path != two.path and one.get_meta("library_id") != two.get_meta("library_id")
    with one.write_lock(exclusive=True), two.write_lock(exclusive=True):  # no wait for the other's writer
        pass
    assert Library.create(urls[0]).path == one.path  # a library keeps its folder


def test_a_cloned_database_gets_a_cache_folder_of_its_own(library, request, tmp_path):
    from tests.conftest import copy_library

    clone = Library.open(copy_library(library, tmp_path / "copy", request))
    assert clone.get_meta("library_id") == library.get_meta("library_id")
    assert clone.path != Library.open(library.location).path


def test_the_cache_folder_is_made_only_for_a_library_and_refused_when_planted(library_at, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path / "cache"))
    r = invoke("search", "a cat", "--library", library_at)
    assert r.exit_code == 1 and not (tmp_path / "cache").exists()  # no library there: nothing made
    lib = Library.create(library_at)
    folder = lib.path
    assert folder.parent == tmp_path / "cache" / "libraries" and (folder.stat().st_mode & 0o777) == 0o700
    shutil.rmtree(folder)
    (tmp_path / "elsewhere").mkdir()
    folder.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LibraryError, match=f"the cache folder {folder} of .* is a symlink or not a folder"):
        Library.open(library_at)
    folder.unlink()
    folder.mkdir()
    os.chown(folder, 4242, 4242)  # as root, here and in CI
    with pytest.raises(LibraryError, match=f"the cache folder {folder} of .* belongs to another user"):
        Library.open(library_at)


def test_cache_dir_flag_chooses_where_index_files_go(library_at, tmp_path):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=37, samples=[Sample("red", "circle")])
    r = invoke("index", str(pics), "--library", library_at, "--model", "tiny", "--workers", "1",
               "--cache-dir", str(tmp_path / "mine"), "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(invoke("info", "--library", library_at, "--cache-dir", str(tmp_path / "mine"), "--json").stdout)
    assert Path(info["cache_folder"]).parent == tmp_path / "mine" / "libraries"
    assert list(Path(info["cache_folder"]).glob("index.*.faiss"))


def test_a_machine_gone_for_weeks_no_longer_holds_the_change_log_back(library_at, tmp_path):
    from clipdex.library import indexkeeper

    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=38, samples=[Sample("red", "circle")])
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    now = time.time()
    with lib.session() as s:
        s.execute(delete(Meta).where(Meta.key.like("index_file@%")))  # this machine's own: fresh, generation 1
        for machine, built in (("gone", now - indexkeeper.STALE_S - 60), ("alive", now - 3600)):
            lib.set_meta(s, f"index_file@{machine}", json.dumps({"generation": 1 if machine == "gone" else 3,
                                                                  "built_at": built}))
        s.commit()
        assert lib.keeper._prunable(s, 10) == 3  # the live machine's file still needs generation 3 on
        lib.set_meta(s, "index_file@alive", json.dumps({"generation": 3, "built_at": now - indexkeeper.STALE_S - 60}))
        assert lib.keeper._prunable(s, 10) == 10


def test_overlapping_names_are_refused_in_words(tmp_path):
    places.forget_declared()
    try:
        places.declare(f"a={tmp_path}")
        with pytest.raises(UsageError, match=f"root names cannot overlap: b={tmp_path} is the same folder as a="):
            places.declare(f"b={tmp_path}")
        with pytest.raises(UsageError, match=f"root names cannot overlap: c={tmp_path.parent} is around a="):
            places.declare(f"c={tmp_path.parent}")
    finally:
        places.forget_declared()


def test_cache_folder_keys_follow_where_a_url_leads(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path))
    base = "postgresql://u:secret@/photos"
    sockets = {paths.cache_folder(f"{base}?host=/run/{s}", "id1") for s in ("a", "b")}
    assert len(sockets) == 2  # two servers reached through two sockets
    assert paths.cache_folder("postgresql://u:one@h/photos", "id1") == paths.cache_folder(
        "postgresql://v:two@h/photos?connect_timeout=5", "id1")  # who connects, and how patiently, is no matter
    assert paths.cache_folder("postgresql://h/photos", "id1") != paths.cache_folder("postgresql://h/photos", "id2")
    assert np.all([p.parent == tmp_path / "libraries" for p in sockets])


def test_hints_and_child_command_lines_never_hold_a_password(tmp_path, monkeypatch):
    from clipdex.indexer.watch_process import start_watch_process, stop_watch_process

    url = "postgresql://ann:s3cret@127.0.0.1:1/photos"
    r = invoke("search", "a cat", "--library", url)
    assert "s3cret" not in r.stderr and r.exit_code == 1
    monkeypatch.setenv("CLIPDEX_CACHE_DIR", str(tmp_path))
    child = start_watch_process(url)  # what serve --watch starts: the URL goes in its environment
    try:
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
        assert b"s3cret" not in cmdline and b"watch" in cmdline
    finally:
        stop_watch_process(child, grace=30)


def test_the_create_one_hint_asks_for_the_password_it_masks(library_at):
    url = library_at.replace("postgres@", "postgres:s3cret@")  # the test server trusts; the password is unused
    r = invoke("search", "a cat", "--library", url)
    masked = library_at.replace("postgres@", "postgres:***@")
    assert (r.exit_code, r.stderr) == (1, f"Error: no library at {masked} (create one with: clipdex index PATH "
                                          f"--library {library_at.replace('postgres@', 'postgres:PASSWORD@')})\n")


def test_a_file_url_is_its_folder_and_an_unknown_home_is_refused(tmp_path):
    r = invoke("info", "--library", f"file://{tmp_path}/my%20lib")
    assert (r.exit_code, r.stderr) == (1, f"Error: no library at {tmp_path}/my lib (create one with: clipdex index "
                                          f"PATH --library '{tmp_path}/my lib')\n")
    r = invoke("search", "a cat", "--root-name", "x=~nobody-here/y", "--library", str(tmp_path))
    assert r.exit_code == 2 and "cannot expand ~nobody-here in 'x=~nobody-here/y': no such user" in r.stderr
