"""kill -9 at any moment, run again: every picture indexed exactly once, SQLite and FAISS agreeing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from clipdex.library import Library
from clipdex.synthetic import write_collection
from tests.conftest import run_cli


def count(db) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("select count(*) from images").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start(pics, lib_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "clipdex", "index", str(pics), "--library", str(lib_dir), "--model", "tiny",
         "--batch-size", "4", "--workers", "1", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow  # a real process run end to end
def test_kill_9_mid_run_then_resume(tmp_path):
    pics = tmp_path / "pics"
    total = len(write_collection(pics, per_class=2, seed=5))  # 48 pictures, 12 batches
    lib_dir = tmp_path / "lib"
    db = lib_dir / "clipdex.db"
    kills = 0
    for wait_for in (1, 12, 24):  # kill early (startup), and twice mid-run after some batches committed
        proc = start(pics, lib_dir)
        deadline = time.monotonic() + 120
        while proc.poll() is None and count(db) < wait_for and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2
    partial = count(db)
    assert 0 < partial < total

    done = run_cli("index", str(pics), "--library", str(lib_dir), "--model", "tiny", "--json")
    assert done.returncode == 0, done.stderr
    stats = __import__("json").loads(done.stdout)
    assert stats["encoded"] == total - partial          # nothing committed before the kill is encoded again
    assert stats["unchanged"] == partial

    lib = Library.open(lib_dir)
    with sqlite3.connect(db) as conn:
        paths = [r[0] for r in conn.execute("select path from images")]
    assert len(paths) == len(set(paths)) == total        # every picture exactly once
    ids, vectors = lib.load_vectors()
    index = lib.index()
    assert sorted(index.ids().tolist()) == ids.tolist()  # FAISS holds exactly the database's ids
    assert np.allclose(index.vector(int(ids[-1])), vectors[-1])
    assert list(lib_dir.glob("index.*.faiss")) == [lib_dir / f"index.{lib.generation}.faiss"]
    assert not list(lib_dir.glob(".index*.tmp"))           # no temporary files left behind
