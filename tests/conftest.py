"""Shared fixtures: the real tiny model, generated collections, real libraries on disk."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL, Encoder
from clipdex.synthetic import write_collection

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach for the network


def pytest_configure(config: pytest.Config) -> None:
    # ONNX exports of this run go to a fresh folder of their own, shared by the xdist workers (they
    # inherit the controller's environment) and removed at the end; never to the user's cache
    if not os.environ.get("CLIPDEX_ONNX_CACHE"):
        os.environ["CLIPDEX_ONNX_CACHE"] = tempfile.mkdtemp(prefix="clipdex-test-onnx-")
        config._clipdex_onnx_cache = os.environ["CLIPDEX_ONNX_CACHE"]
    # cache folders of PostgreSQL libraries (index files): never the user's
    if not os.environ.get("CLIPDEX_CACHE_DIR"):
        os.environ["CLIPDEX_CACHE_DIR"] = tempfile.mkdtemp(prefix="clipdex-test-cache-")
        config._clipdex_cache_dir = os.environ["CLIPDEX_CACHE_DIR"]
    config.addinivalue_line(
        "markers", "slow: end to end through a browser, whole demo runs, crash recovery; the fast tier is "
        "`pytest -m 'not slow'`")
    config.addinivalue_line(
        "markers", "sqlite_only: in a module run on both databases (BACKENDS = BOTH), this test runs on SQLite "
        "alone: it is about SQLite's own files, or about nothing a database changes")


def pytest_unconfigure(config: pytest.Config) -> None:
    for name in ("_clipdex_onnx_cache", "_clipdex_cache_dir"):
        folder = getattr(config, name, None)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test driving the browser is ``slow`` without saying so."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


# -- SQLite and PostgreSQL -----------------------------------------------------------------------
#: A test module that sets ``BACKENDS = BOTH`` runs every test using ``library``, ``backend`` or
#: ``library_at`` once on SQLite and once on a real PostgreSQL server the tests start themselves;
#: a test marked ``@pytest.mark.sqlite_only`` there runs on SQLite alone.
BOTH = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = getattr(metafunc.module, "BACKENDS", ("sqlite",))
        if metafunc.definition.get_closest_marker("sqlite_only"):
            backends = ("sqlite",)  # not run and skipped on PostgreSQL: not run there at all
        metafunc.parametrize("backend", backends, indirect=True, scope="session")


@pytest.fixture(scope="session")
def backend(request) -> str:
    """``sqlite`` or ``postgresql``: where this test's libraries keep their database."""
    return request.param


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster (Debian's ``postgresql``; see tests/pgcluster.py), started once."""
    from tests.pgcluster import Cluster, bin_dir

    assert bin_dir() is not None, "PostgreSQL missing: install Debian's postgresql package (see README)"
    cluster = Cluster().start()
    yield cluster
    cluster.stop()


def new_location(backend: str, request: pytest.FixtureRequest, folder: Path) -> str:
    """Where a new library goes: ``folder`` (SQLite), or a fresh empty database's URL (PostgreSQL)."""
    if backend == "sqlite":
        return str(folder)
    return request.getfixturevalue("pg_cluster").new_database()


@pytest.fixture()
def library_at(backend, request, tmp_path) -> str:
    """Where this test may create a library: a folder, or an empty PostgreSQL database's URL (``--library``
    takes either). Pass it to ``Library.create``/``open`` and the CLI; ``lib.location`` gives it back."""
    return new_location(backend, request, tmp_path / "lib")


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder(TINY_MODEL).load()


@pytest.fixture(scope="session")
def collection(tmp_path_factory) -> dict[Path, object]:
    """5 JPEGs of each of the 24 colour-shape combinations (120 pictures)."""
    return write_collection(tmp_path_factory.mktemp("pics"), per_class=5, seed=1)


@pytest.fixture(scope="session")
def library(tmp_path_factory, collection, backend, request) -> Library:
    """A library indexed once from ``collection``; tests must not modify it. On SQLite, or on PostgreSQL
    in modules that ask for both (``BACKENDS``); ``library.location`` is what ``--library`` takes."""
    lib = Library.create(new_location(backend, request, tmp_path_factory.mktemp("lib")))
    root = next(iter(collection)).parent.parent
    Indexer(lib, TINY_MODEL, workers=2).run([str(root)])
    return lib


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
    """Run the real ``clipdex`` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "clipdex", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )


@dataclass
class Served:
    """A real ``clipdex serve`` process: the first line it printed, and (once stopped) its stderr."""

    proc: subprocess.Popen
    ready: str
    err: str = ""


@contextlib.contextmanager
def serve_process(*args: str) -> Iterator[Served]:
    """``clipdex serve --port 0 ARGS`` in its own process until the block ends (then SIGTERM)."""
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    served = Served(proc, proc.stdout.readline())
    try:
        yield served
    finally:
        proc.terminate()
        served.err = proc.communicate(timeout=60)[1]


def invoke(*args: str, env: dict | None = None) -> Result:
    """Run a ``clipdex`` command in this process (no interpreter start, no torch import): the fast way.

    ``stdout`` and ``stderr`` are kept apart; an uncaught exception fails the test with its traceback.
    """
    from clipdex.cli import main

    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


CHROMIUM = os.environ.get("CLIPDEX_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (no sandbox, no background networking)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: install Debian's chromium package (see README)"
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        yield b
        b.close()


def copy_library(library: Library, folder: Path, request: pytest.FixtureRequest) -> str:
    """A private copy of ``library`` that a test may change: its folder copied to ``folder`` (SQLite), or
    its database cloned (PostgreSQL; the new library's cache folder starts empty). Its location."""
    if not library.server:
        shutil.copytree(library.path, folder)
        return str(folder)
    library.engine.dispose()  # a template database must have no connections
    return request.getfixturevalue("pg_cluster").clone(library.location)


@pytest.fixture()
def lib_dir(tmp_path, library, request) -> str:
    """A private copy of the shared library: its folder, or its cloned database's URL (``--library`` takes both)."""
    return copy_library(library, tmp_path / "lib", request)


def cli(*args: str | Path, code: int = 0) -> Result:
    """Run a ``clipdex`` command in process, checking its exit code is ``code``; its result."""
    from clipdex.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def export(location: str) -> list[dict]:
    """Every tag of the library at ``location``, as ``clipdex tags export --format json`` gives them."""
    return json.loads(cli("tags", "export", "--format", "json", "--library", location).stdout)


@pytest.fixture()
def copied(tmp_path, library) -> Path:
    """A private copy of the session library, its WAL folded in (no ``-wal``/``-shm`` files left)."""
    if library.server:
        pytest.skip("copies a SQLite library's files")
    shutil.copytree(library.path, tmp_path / "lib")
    with sqlite3.connect(tmp_path / "lib" / "clipdex.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for extra in ("clipdex.db-wal", "clipdex.db-shm", ".write.lock", ".index.lock"):
        (tmp_path / "lib" / extra).unlink(missing_ok=True)
    return tmp_path / "lib"
