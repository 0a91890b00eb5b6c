"""What the HTTP benchmarks share: a real ``clipdex serve`` in a subprocess, timed searches, percentiles."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (milliseconds)."""
    return float(np.percentile(np.asarray(values), p))


def peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of a running process, in MB (not ``ru_maxrss``: Linux carries that over ``exec`` from the
    parent that forked it, so a small child of a large parent would report the parent's size)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


class Server:
    """``clipdex serve`` on a free loopback port; ``ready`` is the seconds from starting it to its first
    answered search. Use as a context manager: the server is terminated on leaving (Ctrl-C too)."""

    def __init__(self, library: Path, backend: str | None = None, k: int = 20, timeout: float = 300):
        self.port = free_port()
        self.k = k
        command = [sys.executable, "-m", "clipdex", "serve", "--library", str(library), "--port", str(self.port)]
        started = time.perf_counter()
        self.process = subprocess.Popen(command + (["--backend", backend] if backend else []),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
        try:
            self.conn = self._first_answer("ready?", time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self.ready = time.perf_counter() - started

    def _first_answer(self, text: str, deadline: float) -> http.client.HTTPConnection:
        while True:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            try:
                self.search(text, conn)
                return conn
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit(f"server did not start: {self.process.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)

    def search(self, text: str, conn: http.client.HTTPConnection | None = None) -> tuple[float, dict[str, float]]:
        """One ``GET /api/search``: milliseconds for the whole request, and the ``Server-Timing`` parts (ms)."""
        conn = conn or self.conn
        start = time.perf_counter()
        conn.request("GET", "/api/search?" + urllib.parse.urlencode({"q": text, "k": self.k}))
        response = conn.getresponse()
        body = json.loads(response.read())
        took = (time.perf_counter() - start) * 1000
        if response.status != 200 or len(body["results"]) != self.k:
            raise RuntimeError(f"unexpected answer {response.status}: {str(body)[:300]}")
        timing = dict(part.split(";dur=") for part in response.headers["Server-Timing"].split(", "))
        return took, {name: float(ms) for name, ms in timing.items()}

    def peak_rss_mb(self) -> float:
        """The server's peak resident set so far, in MB."""
        return peak_rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
