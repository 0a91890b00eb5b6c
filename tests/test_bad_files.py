"""Bad files never stop a run: each is skipped with a reason and the good ones are indexed."""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.synthetic import Sample, draw
from tests.conftest import BOTH, run_cli
from tests.faulty import hang_or_crash

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


def bomb_png(path: Path, width: int = 40_000, height: int = 40_000) -> None:
    """A tiny PNG whose header claims 1.6 gigapixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture()
def messy(tmp_path):
    pics = tmp_path / "pics"
    pics.mkdir()
    for i, (c, s) in enumerate([("red", "circle"), ("blue", "square"), ("green", "star")]):
        draw(Sample(c, s)).save(pics / f"good-{i}.jpg")
    good = pics / "good-0.jpg"
    (pics / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (pics / "empty.png").write_bytes(b"")
    (pics / "notes.jpg").write_text("this is not a picture\n")
    bomb_png(pics / "bomb.png")
    os.symlink("loop.jpg", pics / "loop.jpg")
    os.symlink("missing.jpg", pics / "dangling.jpg")
    (pics / "sub").mkdir()
    os.symlink("..", pics / "sub" / "back")  # a folder loop
    shutil.copy(good, pics / "spin.jpg")
    shutil.copy(good, pics / "crash.jpg")
    (pics / "README.txt").write_text("ignored: not an image extension")
    return pics


EXPECTED = {
    "truncated.jpg": "cannot decode: image file is truncated",
    "empty.png": "empty file",
    "notes.jpg": "not a recognised image format",
    "bomb.png": "refused: 40000x40000 pixels exceeds the 180,000,000 pixel limit (possible decompression bomb)",
    "loop.jpg": "symlink loop",
    "dangling.jpg": "broken symlink",
    "back": "symlink loop (folder already visited)",
    "spin.jpg": "decoder timed out after 2s",
    "crash.jpg": "decoder crashed (signal 6)",
}


def test_every_bad_kind_is_skipped_with_its_reason(messy, library_at):
    lib = Library.create(library_at)
    stats = Indexer(lib, TINY_MODEL, workers=2, timeout=2, decode_fn=hang_or_crash).run([str(messy)])
    assert stats.indexed == 3
    reasons = {Path(p).name: r for p, r in lib.skipped()}
    assert set(reasons) == set(EXPECTED)
    for name, reason in EXPECTED.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert stats.skipped == len(EXPECTED)
    # the same bad files are not retried on the next run, and the good ones are unchanged
    again = Indexer(lib, TINY_MODEL, workers=2, timeout=2, decode_fn=hang_or_crash).run([str(messy)])
    assert (again.indexed, again.unchanged) == (0, 3)
    assert lib.index().ntotal == 3


def test_a_decoder_blocked_without_cpu_hits_the_wall_clock_cap(tmp_path):
    from clipdex.decodepool import DecodePool

    draw(Sample("red", "circle")).save(tmp_path / "hang.jpg")
    draw(Sample("red", "circle")).save(tmp_path / "fine.jpg")
    pool = DecodePool(workers=1, timeout=0.3, decode_fn=hang_or_crash)
    results = [d for chunk in pool.run([str(tmp_path / "hang.jpg"), str(tmp_path / "fine.jpg")], 64) for d in chunk]
    assert {Path(d.path).name: d.error for d in results} == {
        "hang.jpg": "decoder timed out after 0.3s", "fine.jpg": None}


def test_a_ctrl_c_reaching_decoders_while_they_start_is_dropped_silently(tmp_path, capfd):
    """Ctrl-C goes to the whole process group: decoders still importing must not die with a traceback."""
    import signal

    from clipdex.decodepool import DecodePool

    draw(Sample("red", "circle")).save(tmp_path / "fine.jpg")
    pool = DecodePool(workers=2).start()
    for slot in pool._slots:  # at once: they are still starting their interpreters
        os.kill(slot.proc.pid, signal.SIGINT)
    results = [d for chunk in pool.run([str(tmp_path / "fine.jpg")] * 4, 64) for d in chunk]
    assert [d.error for d in results] == [None] * 4
    assert "Traceback" not in capfd.readouterr().err


def test_a_decoder_whose_parent_went_away_while_it_started_exits_quietly(capfd):
    from clipdex.decodepool import DecodePool

    pool = DecodePool(workers=1)
    slot = pool._spawn()
    slot.conn.close()  # what a parent stopped or killed at that moment leaves it
    slot.proc.join(60)
    assert slot.proc.exitcode == 0
    assert "Traceback" not in capfd.readouterr().err


def test_a_fixed_file_is_retried_and_leaves_the_skip_list(messy, library_at):
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(messy / "notes.jpg")])
    assert [r for _, r in lib.skipped()] == ["not a recognised image format"]
    draw(Sample("red", "circle")).save(messy / "notes.jpg")
    stats = Indexer(lib, TINY_MODEL, workers=1).run([str(messy / "notes.jpg")])
    assert stats.indexed == 1 and lib.skipped() == []


def test_permission_denied_is_skipped(tmp_path, library_at):
    pics = tmp_path / "pics"
    pics.mkdir()
    draw(Sample("red", "circle")).save(pics / "ok.jpg")
    draw(Sample("red", "circle")).save(pics / "secret.jpg")
    os.chmod(pics / "secret.jpg", 0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        # root reads anything; in a new user namespace it keeps owning its files but loses
        # CAP_DAC_OVERRIDE over them, so a mode-000 file is unreadable, as for anyone else
        prefix = ["unshare", "--user", "--"]
    import subprocess
    env = {**os.environ, "HOME": str(tmp_path)}
    out = subprocess.run([*prefix, sys.executable, "-m", "clipdex", "index", str(pics), "--library", library_at,
                          "--model", "tiny", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    done = run_cli("skipped", "--library", library_at, "--json")
    assert [(Path(r["path"]).name, r["reason"]) for r in __import__("json").loads(done.stdout)] == [
        ("secret.jpg", "permission denied")]
