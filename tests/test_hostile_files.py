"""Hostile files: names that are not UTF-8, huge files, FIFOs. Each is skipped with a reason, quickly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipdex.errors import UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.synthetic import Sample, draw


def index(lib: Library, *paths: Path):
    return Indexer(lib, TINY_MODEL, workers=1).run([str(p) for p in paths])


def test_a_file_name_that_is_not_utf8_is_skipped_not_fatal(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    draw(Sample("red", "circle")).save(pics / "good.jpg")
    picture = (pics / "good.jpg").read_bytes()
    with open(os.fsencode(pics) + b"/bad\xffname.jpg", "wb") as fh:
        fh.write(picture)
    os.mkdir(os.fsencode(pics) + b"/dir\xfe")
    with open(os.fsencode(pics) + b"/dir\xfe/inside.jpg", "wb") as fh:
        fh.write(picture)
    with open(os.fsencode(pics) + b"/notes\xff.txt", "wb") as fh:  # not a picture: not mentioned
        fh.write(b"text")
    lib = Library.create(tmp_path / "lib")
    stats = index(lib, pics)
    shown_file, shown_dir = f"{pics}/bad\\xffname.jpg", f"{pics}/dir\\xfe"
    assert (stats.indexed, stats.skipped) == (1, 2)
    expected = {shown_file: "file name is not valid UTF-8",
                shown_dir: "folder name is not valid UTF-8 (its pictures are left out)"}
    assert stats.skipped_files == expected
    assert dict(lib.skipped()) == expected
    again = index(lib, pics)  # never decoded, never a crash, still listed
    assert (again.indexed, again.unchanged, again.skipped) == (0, 1, 2)
    assert dict(lib.skipped()) == expected
    os.unlink(os.fsencode(pics) + b"/bad\xffname.jpg")
    index(lib, pics)
    assert dict(lib.skipped()) == {shown_dir: expected[shown_dir]}


def test_a_root_whose_name_is_not_utf8_is_a_usage_error(tmp_path):
    root = os.fsencode(tmp_path) + b"/pics\xff"
    os.mkdir(root)
    lib = Library.create(tmp_path / "lib")
    with pytest.raises(UsageError, match="not valid UTF-8"):
        Indexer(lib, TINY_MODEL, workers=1).run([os.fsdecode(root)])
