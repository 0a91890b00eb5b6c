"""How soon a running ``clipdex serve --watch`` finds what is copied into its folders.

Through a real server process and real HTTP (``/api/search`` with the ``folder`` filter), with
the tiny model and small generated pictures:

1. latency: a picture written into a watched folder, from its file being closed to the API
   returning it, over ``--pictures`` pictures one at a time (bar: p95 <= 5 s);
2. a copy of ``--bulk`` files into a watched folder, until all of them are searchable, against
   the wall time of ``clipdex index`` on the same files into a new library (bar: <= +10 %),
   measured first, alone on the machine;
3. what a pass costs when nothing changed (the watcher sweeps whole watched folders: this is
   its price on top of the encoding), in this process, on the served library at its final size.

    python benchmarks/bench_watch.py [--pictures 20] [--bulk 1000] [--settle 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serving import free_port, percentile  # noqa: E402

from clipdex.synthetic import all_samples, write_collection  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def clipdex(*args: str) -> float:
    """Run ``clipdex ARGS``; its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipdex", *args], check=True, env=ENV, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def search(port: int, folder: Path, k: int = 100, offset: int = 0) -> list[str]:
    """Paths the server returns for a search restricted to ``folder``."""
    query = urllib.parse.urlencode({"q": "a picture", "k": k, "offset": offset, "folder": str(folder)})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?{query}", timeout=60) as answer:
        return [hit["path"] for hit in json.load(answer)["results"]]


def wait_for(condition, what: str, deadline: float = 600.0, pause: float = 0.02):  # noqa: ANN001, ANN201
    end = time.monotonic() + deadline
    while True:
        try:
            value = condition()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pictures", type=int, default=20)
    parser.add_argument("--bulk", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipdex-bench-watch-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    watched, staging = work / "watched", work / "staging"
    write_collection(watched / "base", per_class=2, seed=args.seed)  # 48 pictures already indexed
    samples = all_samples()
    write_collection(staging / "single", per_class=1 + args.pictures // len(samples), seed=args.seed + 1)
    singles = sorted((staging / "single").rglob("*.jpg"))[:args.pictures]
    write_collection(staging / "bulk", per_class=-(-args.bulk // len(samples)), seed=args.seed + 2)
    for extra in sorted((staging / "bulk").rglob("*.jpg"))[args.bulk:]:
        extra.unlink()
    print(f"pictures: {len(singles)} one at a time, a copy of {args.bulk}; model tiny; {os.cpu_count()} CPUs")

    clipdex("index", str(watched), "--library", str(work / "lib"), "--model", "tiny")  # also warms the ONNX cache
    index_seconds = clipdex("index", str(staging / "bulk"), "--library", str(work / "ref"), "--model", "tiny")
    print(f"clipdex index of the {args.bulk} files into a new library: {index_seconds:.2f} s (wall, alone)")

    port = free_port()
    log = open(work / "serve.log", "w+")
    server = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--library", str(work / "lib"), "--port",
                               str(port), "--watch"], stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: search(port, watched / "base"), "the server")
        wait_for(lambda: "swept" in (work / "serve.log").read_text(), "the watcher's first sweep")

        incoming = watched / "incoming"
        incoming.mkdir()
        rng = random.Random(args.seed)
        latencies = []
        for i, source in enumerate(singles):
            target = incoming / f"new-{i:03d}.jpg"
            data = source.read_bytes()
            with open(target, "wb") as fh:
                fh.write(data)
            closed = time.perf_counter()
            wait_for(lambda target=target: str(target) in search(port, incoming), f"{target} searchable", 60)
            latencies.append(time.perf_counter() - closed)
            time.sleep(rng.uniform(0.2, 1.5))  # next one at a random phase of the watcher's cycle
        print(f"closed -> returned by the API, {len(latencies)} pictures: p50 {percentile(latencies, 50):.2f} s, "
              f"p95 {percentile(latencies, 95):.2f} s, max {max(latencies):.2f} s   (bar: p95 <= 5 s)")

        bulk = watched / "bulk"
        started = time.perf_counter()
        shutil.copytree(staging / "bulk", bulk)
        copied = time.perf_counter()
        answers = []  # how long searches take while the watcher indexes

        def all_there() -> list[str]:
            asked = time.perf_counter()
            found = search(port, bulk, k=1, offset=args.bulk - 1)
            answers.append(time.perf_counter() - asked)
            return found

        wait_for(all_there, "the whole copy searchable", pause=0.1)
        done = time.perf_counter()
        from_start, from_end = done - started, done - copied
        print(f"copy of {args.bulk} files ({copied - started:.2f} s to copy): all searchable {from_end:.2f} s after "
              f"the copy ended, {from_start:.2f} s after it began: {from_start / index_seconds - 1:+.0%} against "
              f"index   (bar: <= +10 %)")
        print(f"searches answered meanwhile: {len(answers)}, p50 {percentile(answers, 50) * 1000:.0f} ms, "
              f"max {max(answers) * 1000:.0f} ms")
        passes = [line for line in (work / "serve.log").read_text().splitlines() if " file event" in line]
        bulk_passes = [line for line in passes if "bulk" in line or f"indexed {args.bulk}" in line]
        print(f"watcher passes: {len(passes)} in all ({len(passes) - len(latencies)} beyond one per single picture)")
        for line in passes[len(latencies):] or bulk_passes:
            print("   ", line)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()

    from clipdex.indexer import Indexer
    from clipdex.library import Library
    from clipdex.models import TINY_MODEL, Encoder

    lib = Library.open(work / "lib")
    indexer = Indexer(lib, Encoder(TINY_MODEL).load(), workers=2)
    indexer.run([str(watched)])  # the model and the first look paid once
    sweeps = []
    for _ in range(5):
        stats = indexer.run([str(watched)])
        sweeps.append(stats.seconds)
    print(f"a pass with nothing changed over {stats.unchanged} pictures: p50 {percentile(sweeps, 50) * 1000:.0f} ms "
          f"({percentile(sweeps, 50) / stats.unchanged * 1e6:.0f} us per picture)")


if __name__ == "__main__":
    main()
