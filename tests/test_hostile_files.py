"""Hostile files: names that are not UTF-8, huge files, FIFOs. Each is skipped with a reason, quickly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clipdex.decoding import decode_file, hash_bytes, hash_file
from clipdex.errors import UsageError
from clipdex.imaging import DEFAULT_MAX_PIXELS
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


def _bytes_read() -> int | None:
    """Bytes this process has read through read() so far (Linux), or None."""
    try:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("rchar:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return None


def test_a_huge_file_is_refused_without_reading_it(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as fh:
        fh.truncate(3 << 30)  # sparse: costs no disk
    before = _bytes_read()
    got = decode_file(str(huge), 64, "shortest", DEFAULT_MAX_PIXELS)
    assert got.error == "file too large (3.2 GB, limit 1.5 GB)"
    if before is not None:
        assert _bytes_read() - before < 1 << 20


def test_a_large_file_that_is_no_picture_is_refused_from_its_header(tmp_path):
    fake = tmp_path / "fake.jpg"
    with open(fake, "wb") as fh:
        fh.truncate(300 << 20)  # under the size limit, all zeros
    before = _bytes_read()
    got = decode_file(str(fake), 64, "shortest", DEFAULT_MAX_PIXELS)
    assert got.error == "not a recognised image format"
    if before is not None:
        assert _bytes_read() - before < 1 << 20  # the header, not 300 MB


def test_a_picture_is_hashed_whole_and_decoded(tmp_path):
    path = tmp_path / "p.png"
    draw(Sample("red", "circle")).save(path)
    got = decode_file(str(path), 64, "shortest", DEFAULT_MAX_PIXELS)
    assert got.error is None and got.pixels.shape == (64, 64, 3)
    assert got.content_hash == hash_bytes(path.read_bytes()) == hash_file(str(path))


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)  # nobody ever writes to it: a blocking open would wait forever
    started = time.monotonic()
    assert decode_file(str(fifo), 64, "shortest", DEFAULT_MAX_PIXELS).error == "not a regular file"
    with pytest.raises(OSError):
        hash_file(str(fifo))  # what move detection reads
    assert time.monotonic() - started < 2


def test_an_index_run_over_a_folder_holding_a_fifo_completes(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    draw(Sample("blue", "star")).save(pics / "good.png")
    os.mkfifo(pics / "x.jpg")
    lib = Library.create(tmp_path / "lib")
    stats = index(lib, pics)
    assert (stats.indexed, stats.skipped) == (1, 1)
    assert dict(lib.skipped()) == {str(pics / "x.jpg"): "not a regular file"}
