"""``clipdex search`` options the API has too (dates, more-like-this), and answers that explain themselves.

Also ``info`` and ``skipped``, which read the same library. Everything runs in process.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.models import TINY_MODEL
from clipdex.synthetic import Sample, write_collection
from tests.conftest import BOTH, copy_library, invoke

BACKENDS = BOTH  # every test using a library here runs on SQLite and on PostgreSQL
TAKEN = dt.datetime(2021, 7, 14, 18, 30, 5)


@pytest.fixture(scope="module")
def dated(tmp_path_factory, library, collection, request) -> dict:
    """A copy of the session library plus two pictures taken on 2021-07-14 and one broken file, tagged twice."""
    base = tmp_path_factory.mktemp("dated")
    lib = copy_library(library, base / "lib", request)
    folder = base / "dated"
    write_collection(folder, per_class=1, samples=[Sample("red", "circle"), Sample("blue", "square")], taken=TAKEN)
    (folder / "broken.jpg").write_text("not a picture")
    from clipdex.library import Library

    Indexer(Library.open(lib), TINY_MODEL, workers=1, progress=False).run([str(folder)])
    for labels in ("red,green,blue,yellow,purple,orange", "circle,square,triangle,star"):
        assert invoke("tag", "--labels", labels, "--library", str(lib)).exit_code == 0
    return {"lib": str(lib), "folder": folder, "root": next(iter(collection)).parent.parent}


def search_json(*args: str) -> dict:
    out = invoke("search", *args, "--json")
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


# -- more like this -------------------------------------------------------------------------------------------

def test_image_search_leaves_the_picture_itself_out(library, collection, monkeypatch):
    root = next(iter(collection)).parent.parent
    example = root / "red" / "circle-000.jpg"
    found = search_json("--image", str(example), "-k", "4", "--library", library.location)
    paths = [r["path"] for r in found["results"]]
    assert str(example) not in paths
    assert len(paths) == 4 and all("/red/circle-" in p for p in paths)

    kept = search_json("--image", str(example), "-k", "4", "--include-self", "--library", library.location)
    assert kept["results"][0]["path"] == str(example) and kept["results"][0]["score"] > 0.99

    monkeypatch.chdir(root / "red")  # a relative path names the same picture
    relative = search_json("--image", "circle-000.jpg", "-k", "4", "--library", library.location)
    assert [r["path"] for r in relative["results"]] == paths


def test_when_only_the_picture_itself_matches_the_answer_says_so(dated):
    example = dated["folder"] / "blue" / "square-000.jpg"
    out = invoke("search", "--image", str(example), "--folder", str(example.parent), "--library", dated["lib"])
    assert (out.exit_code, out.stdout) == (
        0, "No results: the only match is the --image picture itself (--include-self keeps it)\n")


# -- capture dates --------------------------------------------------------------------------------------------

def test_from_and_to_are_inclusive_days(dated):
    found = search_json("a red circle", "--from", "2021-07-14", "--to", "2021-07-14", "--library", dated["lib"])
    assert [Path(r["path"]).relative_to(dated["folder"]).as_posix() for r in found["results"]] == [
        "red/circle-000.jpg", "blue/square-000.jpg"]
    assert {r["captured_at"] for r in found["results"]} == {TAKEN.isoformat()}


SPAN = "(capture dates run from 2021-07-14 to 2021-07-14)"
UNDATED = "120 pictures have no capture date and date filters leave them out"


@pytest.mark.parametrize("args,answer", [
    (["--from", "2021-07-15"], f"No results: no picture was taken on or after 2021-07-15 {SPAN}; {UNDATED}\n"),
    (["--to", "2021-07-13"], f"No results: no picture was taken on or before 2021-07-13 {SPAN}; {UNDATED}\n"),
    (["--from", "2021-07-15", "--to", "2021-07-16"],
     f"No results: no picture was taken between 2021-07-15 and 2021-07-16 {SPAN}; {UNDATED}\n"),
])
def test_an_empty_date_range_says_why(dated, args, answer):
    out = invoke("search", "a red circle", *args, "--library", dated["lib"])
    assert (out.exit_code, out.stdout) == (0, answer)


def test_a_range_that_ends_before_it_starts_is_bad_input(dated):
    out = invoke("search", "a red circle", "--from", "2021-07-15", "--to", "2021-07-14", "--library", dated["lib"])
    assert (out.exit_code, out.stderr) == (2, "Error: --from 2021-07-15 is after --to 2021-07-14\n")


def test_undated_pictures_left_out_by_a_date_filter_are_counted(dated):
    out = invoke("search", "a red circle", "--folder", str(dated["root"] / "red"), "--from", "2021-01-01",
                 "--library", dated["lib"])
    assert (out.exit_code, out.stdout) == (0, "No results: 20 pictures have no capture date and date filters leave "
                                              "them out\n")


# -- other empty answers --------------------------------------------------------------------------------------

def test_an_unknown_tag_names_the_closest_ones(dated):
    found = search_json("a shape", "--tag", "orang", "--library", dated["lib"])
    assert found["results"] == []
    [reason] = found["why_empty"]
    known = reason.pop("known")
    assert reason == {"kind": "unknown_tag", "tag": "orang"}
    assert known[0] == "orange"  # the closest first, then the most used
    assert sorted(known) == sorted("red,green,blue,yellow,purple,orange,circle,square,triangle,star".split(","))
    out = invoke("search", "a shape", "--tag", "orang", "--library", dated["lib"])
    assert (out.exit_code, out.stdout) == (
        0, f"No results: no picture has the tag 'orang' (tags: {', '.join(known[:6])}, …)\n")


def test_a_tag_in_an_untagged_library(library):
    out = invoke("search", "a shape", "--tag", "red", "--library", library.location)
    assert out.stdout == "No results: no picture has the tag 'red' (no picture is tagged yet: see clipdex tag --help)\n"


def test_a_folder_without_indexed_pictures(library, tmp_path):
    out = invoke("search", "a shape", "--folder", str(tmp_path / "elsewhere"), "--library", library.location)
    assert out.stdout == f"No results: no indexed picture under {tmp_path / 'elsewhere'}\n"


def test_filters_that_each_match_but_not_together(dated):
    args = ("a shape", "--tag", "red", "--folder", str(dated["root"] / "blue"), "--library", dated["lib"])
    assert invoke("search", *args).stdout == (
        "No results: no picture matches all the filters together, though each filter matches some\n")
    assert search_json(*args)["why_empty"] == [{"kind": "no_overlap"}]


def test_a_library_whose_pictures_are_all_gone(tmp_path, library_at):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, samples=[Sample("red", "circle")])
    lib = library_at
    assert invoke("index", str(pics), "--library", lib, "--model", "tiny").exit_code == 0
    shutil.rmtree(pics / "red")
    assert invoke("index", str(pics), "--library", lib, "--prune-empty").exit_code == 0
    out = invoke("search", "a red circle", "--library", lib)
    assert (out.exit_code, out.stdout) == (0, "No results: the library holds no pictures\n")


# -- info and skipped -----------------------------------------------------------------------------------------

def test_info_and_skipped_name_the_library_and_agree(dated):
    lib = dated["lib"]
    info = invoke("info", "--library", lib).stdout.splitlines()
    generation = json.loads(invoke("info", "--library", lib, "--json").stdout)["generation"]
    assert info[:6] == [
        f"library        {lib}",
        "pictures       122",
        "skipped files  1  (clipdex skipped lists them)",
        "tagged         122 pictures, 10 labels",
        "model          tiny, 64-dimensional vectors",
        f"index          flat (auto), exact, generation {generation}",
    ]
    assert info[6].startswith("size on disk   ") and info[6].endswith(" MB")
    assert info[7] == "probes         none"

    reason = json.loads(invoke("skipped", "--library", lib, "--json").stdout)[0]["reason"]
    skipped = invoke("skipped", "--library", lib)
    assert skipped.stdout == (f"1 skipped file in {lib} (retried once they change):\n"
                              f"{dated['folder'] / 'broken.jpg'}\t{reason}\n")


def test_skipped_with_nothing_skipped(library):
    assert invoke("skipped", "--library", library.location).stdout == f"No skipped files in {library.location}.\n"


def test_the_last_day_there_is_can_end_a_range(dated):
    out = invoke("search", "a red circle", "--to", "9999-12-31", "-k", "1", "--json", "--library", dated["lib"])
    assert out.exit_code == 0 and len(json.loads(out.stdout)["results"]) == 1  # dated pictures, no overflow
