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
from clipdex.library.persontags import add_tag, picture_ids, tags_of
from clipdex.library.schema import ImageRow, Meta, RootRow, utcnow
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
    r = invoke("index", str(share), "--library", library_at, "--root-name", f"all={share}",
               "--root-name", f"all={share / 'blue'}")
    assert r.exit_code == 2 and f"root name all is given twice, at {share} and at {share / 'blue'}" in r.stderr
    r = invoke("index", str(share), "--library", library_at, "--root-name", f"gone={tmp_path / 'nowhere'}")
    assert r.exit_code == 2 and f"root name gone={tmp_path / 'nowhere'}: no such folder on this machine" in r.stderr
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
    places.declare(f"archive={share}")
    said: list[str] = []
    again = Indexer(Library.open(library_at), TINY_MODEL, workers=1, say=said.append).run([str(share)])
    assert (again.indexed, again.unchanged, again.removed) == (0, 2 * len(COLORS), 0)
    assert f"{2 * len(COLORS)} pictures indexed by path are now stored under root name archive, nothing " \
           "re-encoded" in said
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
    shutil.rmtree(folder.parent)  # and the folder of every library there
    folder.parent.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(LibraryError, match=f"the cache folder {folder.parent} of .* is a symlink"):
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
        lib.set_meta(s, "index_file@ahead", json.dumps({"generation": 2, "built_at": now + 10 * 24 * 3600}))
        assert lib.keeper._prunable(s, 10) == 10  # a clock far ahead (or damage) holds nothing back either


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


def test_a_name_declared_over_70000_pictures_adopts_them_all(library_at, tmp_path, on):
    """More pictures than PostgreSQL takes parameters in one statement (65,535)."""
    from sqlalchemy import text

    on("a")
    mount = tmp_path / "big"
    mount.mkdir()
    lib = Library.create(library_at)
    with lib.session() as s:  # as if indexed by path: rows straight into the tables (encoding 70k takes long)
        s.execute(text("INSERT INTO images (path, size, mtime, content_hash, width, height, indexed_at, vector) "
                       "SELECT :p || g || '.jpg', 1, 0, md5(g::text), 1, 1, now(), '\\x00'::bytea "
                       "FROM generate_series(1, 70000) g"), {"p": f"{mount}/"})
        s.add(RootRow(path=str(mount), added_at=utcnow(), machine="a"))
        s.commit()
    places.declare(f"big={mount}")
    lib = Library.create(library_at)  # opened anew: it follows the declaration
    with lib.write_lock():
        lib.add_roots([str(mount)])
    with lib.session() as s:
        paths = list(s.scalars(select(ImageRow.path)))
    assert len(paths) == 70000 and "@big/1.jpg" in paths and all(p.startswith("@big/") for p in paths)


def test_adoption_waits_for_no_one_and_is_refused_while_another_writer_runs(library_at, tmp_path, on):
    share = tmp_path / "share"
    write_collection(share, per_class=1, seed=39, samples=[Sample(c, "circle") for c in list(COLORS)[:3]])
    on("a")
    index(library_at, str(share))
    other = Library.open(library_at)
    with other.write_lock():  # another run on this machine, indexing the folder by path right now
        r = invoke("index", str(share), "--library", library_at, "--root-name", f"archive={share}")
        assert r.exit_code == 1 and r.stderr.startswith(f"Error: other clipdex processes are writing to {library_at}")
    assert not any(p.startswith("@") for p in stored_paths(library_at))  # nothing half adopted
    assert index(library_at, str(share), "--root-name", f"archive={share}")["indexed"] == 0
    assert all(p.startswith("@archive/") for p in stored_paths(library_at))


def test_a_name_declared_through_a_symlink_adopts_the_folder_and_overlaps_are_seen_through_links(
        library_at, tmp_path, on):
    real = tmp_path / "scans"
    write_collection(real, per_class=1, seed=40, samples=[Sample(c, "square") for c in list(COLORS)[:3]])
    link = tmp_path / "link"
    link.symlink_to(real)
    on("a")
    index(library_at, str(real))
    assert index(library_at, str(link), "--root-name", f"scans={link}")["indexed"] == 0
    assert len(stored_paths(library_at)) == 3 and all(p.startswith("@scans/") for p in stored_paths(library_at))
    r = invoke("index", str(link), "--library", library_at, "--root-name", f"scans={link}",
               "--root-name", f"again={real}")
    assert r.exit_code == 2 and f"root names cannot overlap: again={real} is the same folder as scans={link}" \
        in r.stderr, r.stderr


def test_a_name_is_not_moved_to_another_folder_while_its_mount_point_is_there(library_at, tmp_path, on):
    share, other = tmp_path / "share", tmp_path / "other"
    write_collection(share, per_class=1, seed=41, samples=[Sample(c, "star") for c in list(COLORS)[:3]])
    write_collection(other, per_class=1, seed=42, samples=[Sample("blue", "square")])
    on("b")
    index(library_at, str(share), "--root-name", f"archive={share}")
    r = invoke("index", str(other), "--library", library_at, "--root-name", f"archive={other}")
    assert (r.exit_code, r.stderr) == (2, f"Error: root name archive is recorded at {share} on this machine (b), "
                                          f"which is still there: a name moves to {other} only once its old mount "
                                          "point is gone or empty (unmounted), so a mistyped path never replaces "
                                          "the share's pictures; give another folder another name\n")
    assert len(stored_paths(library_at)) == 3
    moved = tmp_path / "remounted"
    share.rename(moved)  # the share really moved: its old mount point is empty (an unmounted mount point)
    share.mkdir()
    again = index(library_at, str(moved), "--root-name", f"archive={moved}")
    assert (again["indexed"], again["unchanged"], again["removed"]) == (0, 3, 0)


def test_the_same_path_on_two_machines_needs_a_root_name(library_at, tmp_path, on):
    home = tmp_path / "home"
    write_collection(home, per_class=1, seed=43, samples=[Sample("red", "circle")])
    on("a")
    index(library_at, str(home))
    on("b")  # b's own folder of that path (or the same share without its name)
    for folder in (home, tmp_path):  # the same path, or one around it
        r = invoke("index", str(folder), "--library", library_at)
        assert r.exit_code == 2 and r.stderr.startswith(
            f"Error: {folder} overlaps {home}, a folder machine 'a' indexed by path: the same path on two "
            f"machines must be indexed under a root name (--root-name NAME={folder}"), r.stderr
    with Library.open(library_at).session() as s:
        assert dict(s.execute(select(RootRow.path, RootRow.machine)).all()) == {str(home): "a"}


def test_a_rebuild_or_switch_that_cannot_reach_every_picture_is_refused(library_at, tmp_path, on):
    home_a, home_b, share = tmp_path / "a-home", tmp_path / "b-home", tmp_path / "share"
    for folder, seed in ((home_a, 44), (home_b, 45), (share, 46)):
        write_collection(folder, per_class=1, seed=seed, samples=[Sample("green", "circle")])
    on("a")
    index(library_at, str(home_a), str(share), "--root-name", f"archive={share}")
    on("b")
    places.forget_declared()
    index(library_at, str(home_b))
    before = Library.open(library_at).count()
    for how in (["--rebuild"], ["--model", f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"]):
        r = invoke("index", str(home_b), "--library", library_at, *how)
        assert (r.exit_code, r.stderr) == (1, (
            "Error: a rebuild or a model switch reads every picture (to encode it, or to see it is unchanged), and "
            "2 cannot be read on this machine (b): 1 in folders of machine 'a'; 1 under root name 'archive', not "
            "declared here. Nothing was changed: run it on a machine that reaches them all (a folder machines share "
            "needs the same root name declared on each)\n")), r.stderr
    assert Library.open(library_at).count() == before == 3


def test_a_server_follows_a_name_declared_after_it_started(library_at, tmp_path, on, monkeypatch):
    share = tmp_path / "share"
    write_collection(share, per_class=1, seed=47, samples=[Sample("red", "circle")])
    on("a")
    index(library_at, str(share), "--root-name", f"archive={share}")
    mount_b = tmp_path / "b-mount"
    shutil.copytree(share, mount_b)
    on("b")
    places.forget_declared()
    monkeypatch.setattr(places, "MOUNTS_TTL_S", 0.0)  # (10 s in use)
    client = create_app({"LIBRARY": library_at, "TESTING": True}).test_client()
    picture = client.get("/api/search", query_string={"q": "a red circle", "k": 1}).get_json()["results"][0]["id"]
    assert client.get(f"/api/images/{picture}/file").status_code == 404
    index(library_at, str(mount_b), "--root-name", f"archive={mount_b}")
    places.forget_declared()  # what the server knows now comes from the library alone
    assert client.get(f"/api/images/{picture}/file").status_code == 200


def test_a_missing_schema_is_one_line_and_info_says_which_machine_and_names(library_at, tmp_path, on):
    r = invoke("index", str(tmp_path), "--library", f"{library_at}?options=-csearch_path%3Dnosuchschema")
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1 and r.stderr.startswith(
        f"Error: cannot make the library {library_at}?options=-csearch_path%3Dnosuchschema: the schema its "
        "search_path names does not exist in database"), r.stderr
    share = tmp_path / "share"
    write_collection(share, per_class=1, seed=48, samples=[Sample("red", "circle")])
    on("a")
    index(library_at, str(share), "--root-name", f"archive={share}")
    places.forget_declared()
    info = json.loads(invoke("info", "--library", library_at, "--json").stdout)
    assert (info["machine"], info["root_names"]) == ("a", {"archive": str(share)})
    text = invoke("info", "--library", library_at).stdout
    assert "machine        a\n" in text and f"root names     archive={share}\n" in text
    folder = Path(info["cache_folder"])
    folder.chmod(0o777)
    Library.open(library_at)
    assert folder.stat().st_mode & 0o777 == 0o700
    r = invoke("info", "--library", "file://elsewhere/x")
    assert r.exit_code == 2 and "a file:// library URL names a folder on this machine, not on elsewhere" in r.stderr


def test_a_rebuild_with_a_share_or_folder_not_mounted_is_refused_and_loses_nothing(library_at, tmp_path, on):
    share, home = tmp_path / "mnt" / "share", tmp_path / "home"
    write_collection(share, per_class=1, seed=49, samples=[Sample(c, "star") for c in list(COLORS)[:3]])
    write_collection(home, per_class=1, seed=50, samples=[Sample("red", "circle")])
    on("a")
    index(library_at, str(share), str(home), "--root-name", f"archive={share}")
    lib = Library.open(library_at)
    add_tag(lib, picture_ids(lib, [str(share / "red" / "star-000.jpg")]), "kept")
    aside = tmp_path / "unmounted"
    share.rename(aside)
    share.mkdir()  # what an unmounted mount point looks like
    for how in (["--rebuild"], ["--model", f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"]):
        r = invoke("index", str(home), "--library", library_at, *how)
        assert r.exit_code == 1 and r.stderr == (
            "Error: a rebuild or a model switch reads every picture (to encode it, or to see it is unchanged), and "
            f"3 cannot be read on this machine (a): 3 in {share}, missing or empty here (not mounted?). Nothing was "
            "changed: mount what is missing again (or, to drop its pictures, run with --prune-empty)\n"), r.stderr
    backup = tmp_path / "home" / "backup"
    shutil.copytree(aside, backup)  # a private copy of the share, while the share is not mounted
    report = index(library_at, str(home))
    assert (report["moved"], report["removed"]) == (0, 0)  # the share's pictures stay the share's
    shutil.rmtree(share)
    aside.rename(share)
    assert len([p for p in stored_paths(library_at) if p.startswith("@archive/")]) == 3
    lib = Library.open(library_at)
    kept = [i for i, in lib.session().execute(select(ImageRow.id).where(ImageRow.path == "@archive/red/star-000.jpg"))]
    assert [t["label"] for t in tags_of(lib, kept[0])] == ["kept"]


def test_a_name_declared_for_the_first_time_must_hold_the_shares_pictures(library_at, tmp_path, on):
    share = tmp_path / "a" / "share"
    write_collection(share, per_class=1, seed=51, samples=[Sample(c, "square") for c in list(COLORS)[:4]])
    on("a")
    index(library_at, str(share), "--root-name", f"share={share}")
    wrong = tmp_path / "c" / "share"
    shutil.copytree(share / "red", wrong / "red")  # a folder holding only part of it, or the wrong folder
    on("c")
    r = invoke("index", str(wrong), "--library", library_at, "--root-name", f"share={wrong}")
    assert (r.exit_code, r.stderr) == (2, (
        f"Error: root name share is declared on this machine (c) for the first time at {wrong}, but 3 of 4 "
        "pictures the library holds under it are not there: is that where this machine mounts the share? "
        "(Indexing it would take them for deleted, for every machine.)\n")), r.stderr
    r = invoke("index", str(tmp_path / "c"), "--library", library_at, "--root-name", f"share={tmp_path / 'c'}")
    assert r.exit_code == 2, r.stderr  # one folder too high: nothing where the pictures should be
    assert len(stored_paths(library_at)) == 4


def test_a_single_machine_rebuild_keeps_a_picture_indexed_by_itself_and_refuses_a_missing_folder(tmp_path):
    pics, drive = tmp_path / "pics", tmp_path / "drive"
    write_collection(pics, per_class=1, seed=52, samples=[Sample("red", "circle")])
    write_collection(drive, per_class=1, seed=53, samples=[Sample("blue", "star")])
    lib = tmp_path / "lib"  # SQLite: one machine
    index(str(lib), str(pics / "red" / "circle-000.jpg"), str(drive))
    shutil.rmtree(drive)  # unplugged
    r = invoke("index", str(pics), "--library", str(lib), "--rebuild")
    assert r.exit_code == 1 and f"1 cannot be read on this machine ({places.machine()}): 1 in {drive}, missing or " \
        "empty here (not mounted?)" in r.stderr, r.stderr
    dropped = invoke("index", str(pics), "--library", str(lib), "--rebuild", "--prune-empty", "--json")
    assert dropped.exit_code == 0, dropped.stderr
    assert [Path(p).name for p in stored_paths(str(lib))] == ["circle-000.jpg"]
