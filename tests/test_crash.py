"""kill -9 at any moment, run again: every picture indexed exactly once, the database and FAISS agreeing
(SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipdex.library import Library
from clipdex.synthetic import write_collection
from tests.conftest import BOTH, run_cli

BACKENDS = BOTH  # killed on SQLite and on PostgreSQL


def paths(location: str) -> list[str]:
    """The pictures' paths the library's database holds now, read as another process would (none yet: [])."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, connect_timeout=5) as conn:
            if conn.execute("SELECT to_regclass('images')").fetchone()[0] is None:
                return []
            return [r[0] for r in conn.execute("SELECT path FROM images")]
    try:
        with sqlite3.connect(f"file:{Path(location) / 'clipdex.db'}?mode=ro", uri=True, timeout=5) as conn:
            return [r[0] for r in conn.execute("SELECT path FROM images")]
    except sqlite3.OperationalError:
        return []


def start(pics, location):
    return subprocess.Popen(
        [sys.executable, "-m", "clipdex", "index", str(pics), "--library", location, "--model", "tiny",
         "--batch-size", "4", "--workers", "1", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.mark.slow  # a real process run end to end
def test_kill_9_mid_run_then_resume(tmp_path, library_at):
    pics = tmp_path / "pics"
    total = len(write_collection(pics, per_class=2, seed=5))  # 48 pictures, 12 batches
    kills = 0
    for wait_for in (1, 12, 24):  # kill early (startup), and twice mid-run after some batches committed
        proc = start(pics, library_at)
        deadline = time.monotonic() + 120
        while proc.poll() is None and len(paths(library_at)) < wait_for and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
    assert kills >= 2
    partial = len(paths(library_at))
    assert 0 < partial < total

    done = run_cli("index", str(pics), "--library", library_at, "--model", "tiny", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["encoded"] == total - partial          # nothing committed before the kill is encoded again
    assert stats["unchanged"] == partial

    lib = Library.open(library_at)
    stored = paths(library_at)
    assert len(stored) == len(set(stored)) == total      # every picture exactly once
    ids, vectors = lib.load_vectors()
    index = lib.index()
    assert sorted(index.ids().tolist()) == ids.tolist()  # FAISS holds exactly the database's ids
    assert np.allclose(index.vector(int(ids[-1])), vectors[-1])
    assert list(lib.path.glob("index.*.faiss")) == [lib.path / f"index.{lib.generation}.faiss"]
    assert not list(lib.path.glob(".index*.tmp"))           # no temporary files left behind
