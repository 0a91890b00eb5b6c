"""A throwaway PostgreSQL cluster for the tests: Debian's ``postgresql`` binaries, a temporary folder,
a free port, an unprivileged user when the tests run as root. One database per test, cloned from a
template (``CREATE DATABASE ... TEMPLATE``), so each test starts empty in milliseconds."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest version installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A running cluster; :meth:`new_database` gives a fresh, empty database's URL."""

    _names = itertools.count()

    def __init__(self, folder: Path | None = None):
        self.bin = bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (see README)")
        self.folder = Path(folder or tempfile.mkdtemp(prefix="clipdex-pg-"))
        self.port = _free_port()
        self.user = "postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            runas = "postgres" if _has_user("postgres") else "nobody"
            self._as = ["runuser", "-u", runas, "--"]
            shutil.chown(self.folder, runas)
        self.data = self.folder / "data"
        self.log = self.folder / "log"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, cwd=self.folder)

    def start(self, durable: bool = False) -> Cluster:
        """initdb and start; ``durable`` keeps PostgreSQL's fsync and synchronous commits (tests do without).
        Clusters left running by test processes that were killed (no teardown) are stopped first."""
        self._sweep()
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        opts = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        self._template = "clipdex_template"
        self._sql(f"CREATE DATABASE {self._template}")
        return self

    def _sweep(self) -> None:
        for owner in Path(tempfile.gettempdir()).glob("clipdex-pg-*/owner.pid"):
            try:
                pid = int(owner.read_text())
                os.kill(pid, 0)
                continue  # its test process is alive
            except ProcessLookupError:
                pass
            except (ValueError, OSError):
                continue
            data = owner.parent / "data"
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            shutil.rmtree(owner.parent, ignore_errors=True)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self._sql(f"CREATE DATABASE {name} TEMPLATE {self._template}")
        return self.url(name)

    def clone(self, url: str) -> str:
        """A new database holding what the database at ``url`` holds. Connections to it are closed first
        (a template must have none): libraries still open on it reconnect (their pools check)."""
        name, source = f"t{os.getpid()}_{next(self._names)}", url.rsplit("/", 1)[1]
        self._sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}' "
                  "AND pid <> pg_backend_pid()")
        self._sql(f"CREATE DATABASE {name} TEMPLATE {source}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass
        for _ in range(50):
            if not (self.data / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
