"""Findings of a new-user review, each replayed through the real CLI on real files and libraries."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from clipdex.demo import DEMO_META
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library.schema import ImageRow
from clipdex.models import TINY_MODEL
from clipdex.synthetic import write_collection
from clipdex.web import create_app
from tests.conftest import BOTH, invoke, new_location

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


def tagged_library(tmp_path: Path, folder: str, lib: str) -> tuple[Path, str, list[Path]]:
    """Six pictures under ``folder`` indexed and tagged into a new library at ``lib`` (a folder or a URL)."""
    pics = tmp_path / folder
    files = sorted(write_collection(pics, per_class=1, seed=3))[:6]
    for extra in set(pics.rglob("*.jpg")) - set(files):
        extra.unlink()
    first = invoke("index", str(pics), "--library", lib, "--model", "tiny", "--workers", "1", "--json")
    assert json.loads(first.stdout)["indexed"] == 6, first.output
    assert invoke("tag", "--labels", "red,blue", "--library", lib).exit_code == 0
    return pics, lib, files


def counts(lib: str) -> tuple[int, int]:
    info = json.loads(invoke("info", "--library", lib, "--json").stdout)
    tags = json.loads(invoke("tags", "export", "--format", "json", "--library", lib).stdout)
    return info["images"], len(tags)


def test_an_empty_folder_keeps_its_pictures_and_tags_until_pruned(tmp_path, library_at):
    pics, lib, _ = tagged_library(tmp_path, "em", library_at)
    before = counts(lib)
    pics.rename(tmp_path / "em.bak")
    pics.mkdir()  # the mount point of an unmounted drive
    out = invoke("index", str(pics), "--library", lib)
    assert out.exit_code == 0
    assert out.stderr == (f"Warning: {pics} holds no pictures now; kept its 6 indexed pictures (is a drive "
                          "unmounted?); to remove them, index it again with --prune-empty\n")
    assert "removed 0" in out.stdout and "no pictures found" not in out.stdout
    assert counts(lib) == before
    as_json = json.loads(invoke("index", str(pics), "--library", lib, "--json").stdout)
    assert as_json["kept_empty"] == {str(pics): 6} and as_json["removed"] == 0
    pruned = json.loads(invoke("index", str(pics), "--library", lib, "--prune-empty", "--json").stdout)
    assert pruned["removed"] == 6 and pruned["kept_empty"] == {}
    assert counts(lib) == (0, 0)


def test_an_emptied_folder_inside_the_indexed_one_keeps_its_pictures_too(tmp_path, library_at):
    pics, lib, files = tagged_library(tmp_path, "nested", library_at)
    sub = files[0].parent  # a colour folder, like a drive mounted inside the indexed folder
    inside = sorted(sub.glob("*.jpg"))
    sub.rename(tmp_path / "away")
    sub.mkdir()
    out = json.loads(invoke("index", str(pics), "--library", lib, "--json").stdout)
    assert out["kept_empty"] == {str(sub): len(inside)} and out["removed"] == 0
    (tmp_path / "away").rename(tmp_path / "gone")
    sub.rmdir()  # deleted whole: its nearest folder still holds pictures, so its pictures go
    out = json.loads(invoke("index", str(pics), "--library", lib, "--json").stdout)
    assert out["kept_empty"] == {} and out["removed"] == len(inside)


def test_a_touched_file_keeps_its_tags_and_is_not_reindexed(tmp_path, library_at):
    pics, lib, files = tagged_library(tmp_path, "t2", library_at)
    before = counts(lib)
    st = files[0].stat()
    os.utime(files[0], (st.st_atime, st.st_mtime + 100))  # touch, or a restore without times
    out = json.loads(invoke("index", str(pics), "--library", lib, "--json").stdout)
    assert (out["indexed"], out["unchanged"], out["encoded"]) == (0, 6, 0)
    assert counts(lib) == before
    with Library.open(lib).session() as s:
        mtime = s.scalar(select(ImageRow.mtime).where(ImageRow.path == str(files[0])))
    assert mtime == files[0].stat().st_mtime  # the new mtime is recorded: the next run reads nothing


@pytest.mark.parametrize("host,message", [
    ("nosuch.invalid", "Error: cannot listen on nosuch.invalid: the name does not resolve\n"),
    ("", "Error: cannot listen on an empty host name: give an address such as 127.0.0.1\n"),
])
def test_serve_on_a_host_that_cannot_be_listened_on_is_one_line(tmp_path, host, message):
    out = invoke("serve", "--host", host, "--port", "0", "--library", str(tmp_path / "lib"))
    assert (out.exit_code, out.stdout, out.stderr) == (2, "", message)


def test_the_demo_library_served_by_its_path_says_it_is_the_demo(tmp_path, backend, request):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=4)
    lib = Library.create(new_location(backend, request, tmp_path / "demo-library"))
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    plain = create_app({"LIBRARY": lib.location, "WARM_UP": False, "TESTING": True}).test_client()
    assert plain.get("/api/info").get_json()["demo"] is False
    with lib.session() as s:
        Library.set_meta(s, DEMO_META, "1")
        s.commit()
    client = create_app({"LIBRARY": lib.location, "WARM_UP": False, "TESTING": True}).test_client()
    assert client.get("/api/info").get_json()["demo"] is True
    assert b'id="demo-banner"' in client.get("/").data
    missing = create_app({"LIBRARY": tmp_path / "none", "WARM_UP": False, "TESTING": True}).test_client()
    assert missing.get("/api/health").status_code in (200, 503)  # no library: not the demo, and no error
