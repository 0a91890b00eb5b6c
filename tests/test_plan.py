"""Fast unit tier: planning a run from a hand-built scan, no model and (almost) no files."""

from __future__ import annotations

import os

from clipdex.indexer.plan import make_plan
from clipdex.indexer.rebuild import GONE, survey
from clipdex.indexer.scan import FileFacts, Scan
from clipdex.library.staging import Unusable
from clipdex.library.writes import KnownRow


def scan_of(roots: list[str], files: dict[str, tuple[int, float]]) -> Scan:
    return Scan(roots, {p: FileFacts(*f) for p, f in files.items()})


def no_reads(path: str) -> str:
    raise AssertionError(f"{path} should not have been read")


def test_new_changed_unchanged_and_removed():
    found = scan_of(["/pics"], {"/pics/a.jpg": (10, 1.0), "/pics/b.jpg": (20, 2.0), "/pics/new.jpg": (30, 3.0)})
    known = [KnownRow(1, "/pics/a.jpg", 10, 1.0, "ha"), KnownRow(2, "/pics/b.jpg", 20, 9.0, "hb"),
             KnownRow(3, "/pics/gone.jpg", 40, 4.0, "hg"), KnownRow(4, "/elsewhere/x.jpg", 50, 5.0, "hx")]
    # only b.jpg (same size, new mtime) is read, to tell an edit from a touch; nothing vanished is of size 30
    plan = make_plan(found, known, {}, hash_fn={"/pics/b.jpg": "hb-edited"}.__getitem__)
    assert plan.todo == ["/pics/b.jpg", "/pics/new.jpg"]
    assert plan.changed_ids == {"/pics/b.jpg": 2}
    assert plan.unchanged_ids == [1]
    assert plan.removed_ids == [3]  # the picture outside the swept folder is left alone
    assert plan.moves == []
    assert plan.describe() == "found 3 pictures: 1 new, 1 changed, 1 unchanged, 0 moved; 1 gone from the library"


def test_a_moved_file_keeps_its_id_only_with_the_same_size_and_hash():
    found = scan_of(["/pics"], {"/pics/moved.jpg": (40, 7.0), "/pics/lookalike.jpg": (40, 8.0),
                                "/pics/other-size.jpg": (41, 8.0)})
    known = [KnownRow(3, "/pics/old/place.jpg", 40, 4.0, "h-moved")]
    hashes = {"/pics/moved.jpg": "h-moved", "/pics/lookalike.jpg": "h-else"}
    read: list[str] = []

    def hash_fn(path: str) -> str:
        read.append(path)
        return hashes[path]

    plan = make_plan(found, known, {}, hash_fn=hash_fn)
    assert plan.moves == [(3, "/pics/moved.jpg")]
    assert plan.removed_ids == []
    assert plan.todo == ["/pics/lookalike.jpg", "/pics/other-size.jpg"]
    assert sorted(read) == ["/pics/lookalike.jpg", "/pics/moved.jpg"]  # a file of another size is never hashed


def test_a_changed_file_is_never_taken_for_a_move():
    found = scan_of(["/pics"], {"/pics/a.jpg": (40, 2.0)})
    known = [KnownRow(1, "/pics/a.jpg", 40, 1.0, "h1"), KnownRow(2, "/pics/b.jpg", 40, 1.0, "h1")]
    plan = make_plan(found, known, {}, hash_fn={"/pics/a.jpg": "h-new"}.__getitem__)
    assert (plan.todo, plan.changed_ids, plan.moves, plan.removed_ids) == (["/pics/a.jpg"], {"/pics/a.jpg": 1}, [], [2])


def test_a_skipped_file_is_retried_only_once_it_changed():
    found = scan_of(["/pics"], {"/pics/bad.jpg": (5, 1.0), "/pics/fixed.jpg": (6, 2.0)})
    skipped = {"/pics/bad.jpg": (5, 1.0), "/pics/fixed.jpg": (6, 1.0)}
    assert make_plan(found, [], skipped, hash_fn=no_reads).todo == ["/pics/fixed.jpg"]


def test_rebuild_survey_resumes_and_sorts_out_what_is_gone(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    for name in ("done.jpg", "todo.jpg", "changed.jpg"):
        (pics / name).write_bytes(b"x" * len(name))
    facts = {n: (os.stat(pics / n).st_size, os.stat(pics / n).st_mtime) for n in ("done.jpg", "changed.jpg")}
    rows = [KnownRow(1, str(pics / "done.jpg"), 0, 0, ""), KnownRow(2, str(pics / "todo.jpg"), 0, 0, ""),
            KnownRow(3, str(pics / "changed.jpg"), 0, 0, ""), KnownRow(4, str(pics / "deleted.jpg"), 0, 0, ""),
            KnownRow(5, "/unmounted/x.jpg", 0, 0, ""), KnownRow(6, str(pics / "gone-before.jpg"), 0, 0, "")]
    staged = {1: facts["done.jpg"], 3: (facts["changed.jpg"][0], 1.0), 6: GONE}
    todo, where, unusable, done = survey(rows, staged, Scan([str(pics)]))
    assert todo == [str(pics / "todo.jpg"), str(pics / "changed.jpg")]
    assert where[str(pics / "changed.jpg")] == (3, *facts["changed.jpg"])
    assert unusable == [Unusable(4, None), Unusable(5, "file not found when the library was rebuilt")]
    assert done == [1, 6]


def test_a_touched_file_with_the_same_bytes_is_unchanged_not_reencoded():
    found = scan_of(["/pics"], {"/pics/a.jpg": (40, 2.0), "/pics/b.jpg": (41, 2.0), "/pics/c.jpg": (40, 2.0)})
    known = [KnownRow(1, "/pics/a.jpg", 40, 1.0, "ha"), KnownRow(2, "/pics/b.jpg", 40, 1.0, "hb"),
             KnownRow(3, "/pics/c.jpg", 40, 1.0, "hc")]
    read: list[str] = []

    def hash_fn(path: str) -> str:
        read.append(path)
        return {"/pics/a.jpg": "ha", "/pics/c.jpg": "h-edited"}[path]

    plan = make_plan(found, known, {}, hash_fn=hash_fn)
    assert plan.touched == [(1, "/pics/a.jpg")] and 1 in plan.unchanged_ids
    assert plan.todo == ["/pics/b.jpg", "/pics/c.jpg"] and plan.changed_ids == {"/pics/b.jpg": 2, "/pics/c.jpg": 3}
    assert sorted(read) == ["/pics/a.jpg", "/pics/c.jpg"]  # a new size is a change without reading the file


def test_an_empty_root_keeps_its_pictures_unless_pruned():
    found = Scan(["/mnt/drive", "/pics"], {"/pics/a.jpg": FileFacts(10, 1.0)})
    known = [KnownRow(1, "/pics/a.jpg", 10, 1.0, "ha"), KnownRow(2, "/pics/gone.jpg", 20, 1.0, "hg"),
             KnownRow(3, "/mnt/drive/x.jpg", 30, 1.0, "hx"), KnownRow(4, "/mnt/drive/sub/y.jpg", 30, 1.0, "hy")]
    plan = make_plan(found, known, {}, hash_fn=no_reads)
    assert plan.kept_empty == {"/mnt/drive": 2}
    assert plan.removed_ids == [2]  # a root that still has pictures loses its vanished ones as before
    pruned = make_plan(found, known, {}, hash_fn=no_reads, prune_empty=True)
    assert pruned.kept_empty == {} and sorted(pruned.removed_ids) == [2, 3, 4]


def test_pictures_of_an_empty_root_found_elsewhere_are_moves_not_kept():
    found = Scan(["/old", "/new"], {"/new/x.jpg": FileFacts(30, 2.0)})
    known = [KnownRow(3, "/old/x.jpg", 30, 1.0, "hx"), KnownRow(4, "/old/y.jpg", 31, 1.0, "hy")]
    plan = make_plan(found, known, {}, hash_fn={"/new/x.jpg": "hx"}.__getitem__)
    assert plan.moves == [(3, "/new/x.jpg")]
    assert plan.kept_empty == {"/old": 1} and plan.removed_ids == []


def test_a_folder_under_a_root_that_is_now_empty_keeps_its_pictures_unless_pruned():
    found = Scan(["/pics"], {"/pics/blue/b.jpg": FileFacts(10, 1.0)})
    known = [KnownRow(1, "/pics/blue/b.jpg", 10, 1.0, "hb"),
             KnownRow(2, "/pics/drive/2020/x.jpg", 20, 1.0, "hx"),   # /pics/drive is an empty mount point
             KnownRow(3, "/pics/drive/y.jpg", 30, 1.0, "hy"),
             KnownRow(4, "/pics/red/gone.jpg", 40, 1.0, "hg")]       # /pics/red was deleted whole
    folders = {"/pics", "/pics/blue", "/pics/drive"}.__contains__
    plan = make_plan(found, known, {}, hash_fn=no_reads, is_dir=folders)
    assert plan.kept_empty == {"/pics/drive": 2} and plan.removed_ids == [4]
    pruned = make_plan(found, known, {}, hash_fn=no_reads, is_dir=folders, prune_empty=True)
    assert pruned.kept_empty == {} and sorted(pruned.removed_ids) == [2, 3, 4]
