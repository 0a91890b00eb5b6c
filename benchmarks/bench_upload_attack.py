"""What hostile uploads cost the server: time, and peak memory of the server and its decoders.

    python benchmarks/bench_upload_attack.py [--concurrent 8] [--arch ViT-B-32] [--source DIR]

Starts the real ``clipdex serve`` in a subprocess on 127.0.0.1 (a small library bound to a
random-weights model of ``--arch``, so the server holds what a real one does), then for each
picture posts it once and ``--concurrent`` times at once, each round on a fresh server:

* ``bomb``: a 13000 x 13000 16-bit greyscale PNG, 328 KB on disk (169 MP: under indexing's
  180 MP limit, over the uploads' 50 MP one);
* ``wide``: a 7000 x 7000 16-bit greyscale PNG, 95 KB (49 MP: decoded, in a worker process).

Prints, per round: statuses, the slowest answer, the server's peak resident memory (VmHWM
from /proc) before and after, and the decoder workers' peak (sampled while they live; they
are replaced after a big picture). ``--source DIR`` runs the server from another checkout
(e.g. a ``git worktree`` of an older commit) to compare; keep ``--concurrent 1`` there, as
the old code needs about 5 GB per bomb.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def make_png(path: Path, side: int) -> None:
    arr = np.zeros((side, side), np.uint16)
    arr[::97, :] = 50000  # a few lines, so it is not all one value
    Image.fromarray(arr).save(path, optimize=True)


def status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found


class ChildPeaks(threading.Thread):
    """Samples the peak resident memory of the server's child processes until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peaks, self.stop = pid, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for child in children(self.pid):
                self.peaks[child] = max(self.peaks.get(child, 0), status_kb(child, "VmHWM"))
            self.stop.wait(0.02)


def post(port: int, data: bytes, name: str) -> tuple[int, float]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request("POST", "/api/search?k=5", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    response.read()
    return response.status, time.perf_counter() - start


def start_server(lib: Path, source: str | None) -> tuple[subprocess.Popen, int]:
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import free_port

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if source:
        env["PYTHONPATH"] = source
    server = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--library", str(lib), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=lib.parent)  # not
    # the checkout: `python -m` puts the working directory first on the path
    deadline = time.monotonic() + 300
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise SystemExit(f"server did not start: {server.stderr.read().decode()[-800:]}")
        time.sleep(0.2)


def one_round(lib: Path, source: str | None, data: bytes, name: str, count: int) -> str:
    server, port = start_server(lib, source)
    try:
        time.sleep(1)  # let the decoder workers finish starting
        before = status_kb(server.pid, "VmHWM")
        peaks = ChildPeaks(server.pid)
        peaks.start()
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            results = list(pool.map(lambda _: post(port, data, name), range(count)))
        peaks.stop.set()
        peaks.join()
        after = status_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=60)
    codes = [s for s, _ in results]
    statuses = ", ".join(f"{codes.count(code)}x{code}" for code in sorted(set(codes)))
    workers = sorted(peaks.peaks.values(), reverse=True)
    worker_peak = workers[0] / 1024 if workers else 0
    return (f"{name:>5} x{count}: {statuses:<14} slowest {max(t for _, t in results):6.2f} s   server peak "
            f"{before / 1024:6.0f} -> {after / 1024:6.0f} MB   decoder peak {worker_peak:5.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("--source", help="run the server from this checkout instead (PYTHONPATH)")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_index import make_model
    from bench_serve import make_library

    with tempfile.TemporaryDirectory(prefix="clipdex-uploads-") as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        make_model(work / "model", args.arch)
        import open_clip

        dim = open_clip.get_model_config(args.arch)["embed_dim"]
        if args.source:  # a library in the schema of the code that serves it
            here = Path(__file__).parent
            subprocess.run([sys.executable, "-c", "import sys; from bench_serve import make_library; "
                            f"make_library(*map(__import__('pathlib').Path, sys.argv[1:3]), 1000, {dim})",
                            str(work / "lib"), str(work / "model")], check=True, cwd=work,
                           env={**os.environ, "PYTHONPATH": f"{args.source}{os.pathsep}{here}"})
        else:
            make_library(work / "lib", work / "model", 1000, dim)
        pictures = {"bomb": work / "bomb.png", "wide": work / "wide.png"}
        make_png(pictures["bomb"], 13000)
        make_png(pictures["wide"], 7000)
        sizes = ", ".join(f"{name} {path.stat().st_size:,} bytes" for name, path in pictures.items())
        print(f"server: {args.source or 'this checkout'}, {args.arch}; {sizes}", flush=True)
        for name, path in pictures.items():
            for count in sorted({1, args.concurrent}):
                print(one_round(work / "lib", args.source, path.read_bytes(), name, count), flush=True)


if __name__ == "__main__":
    main()
