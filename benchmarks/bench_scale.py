"""Large libraries, per size and index type, measured side by side in one run.

    python benchmarks/bench_scale.py [--sizes 100000,1000000] [--types flat,ivf] [--json] [--keep DIR]

For each size, a library is filled once through the project's own storage code
(``writes.store_batch``, 5,000 pictures a transaction) with CLIP-like synthetic 512-d vectors
(:func:`clipdex.ann.synthetic.clip_like_vectors`: Zipf-sized clusters on a low-rank subspace in a
narrow cone, 2 % near-duplicates) and bound to a ViT-B-32 with random weights. Then, per index
type, in this order:

- **build**: the index built from scratch in a child process (its wall time, its own peak RSS),
  and the size of the index file;
- **search**: 200 text-like queries (:func:`clip_like_queries`, across a modality gap) one at a
  time through ``lib.index().search(q, 10)`` in this process; p50/p95, and recall@10 against the
  exact top 10, computed by streaming the generated vectors again (not with any index);
- **catch-up**: a reader holding the index, a second ``Library`` commits 32 pictures with
  ``store_batch``, the reader's next ``lib.index()`` is timed (median of 5);
- **HTTP**: the real ``clipdex serve``; whole requests for a few texts repeated (their vectors are
  cached after the first), back to back for ``--http-seconds``: idle, then while a writer process
  commits 32 pictures every 2 s under the write lock and keeps the index up like ``clipdex
  index`` does after each batch. It stands for ``clipdex index`` without pictures: no decoding or
  encoding competes for the cores, so real indexing weighs more. ``peak_rss_mb`` is the server's
  ``VmHWM`` at the end.

Pictures added by the catch-up and writer steps are removed again, so every type sees the same
library. ``--json`` prints one row per size and type with the keys of :data:`KEYS` (and more).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _serving import Server, peak_rss_mb, percentile  # noqa: E402

from clipdex.ann.synthetic import clip_like_queries, clip_like_vectors  # noqa: E402
from clipdex.library import Library, writes  # noqa: E402
from clipdex.library.writes import Picture  # noqa: E402

DIM, SEED, BATCH, K = 512, 0, 5000, 10
KEYS = ("size", "index_type", "build_s", "peak_rss_mb", "disk_mb", "search_p50_ms", "search_p95_ms", "recall_at_10",
        "catchup_ms", "http_p95_idle_ms", "http_p95_indexing_ms")
TEXTS = ("a dog on the beach", "birthday cake with candles", "snowy mountain at sunset", "a red bicycle",
         "children playing in the garden")
NEW = "/photos/new/"  # pictures the benchmark adds after filling, and removes again
EPOCH = dt.datetime(2005, 1, 1)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pictures(vectors: np.ndarray, first: int, prefix: str = "/photos/") -> list[Picture]:
    """Photo-like rows for ``vectors``, numbered from ``first``: paths, unique hashes, sizes, dates over 20 years."""
    out = []
    for n, v in enumerate(vectors, first):
        w, h = ((4032, 3024), (3024, 4032), (4000, 3000))[n % 3]
        taken = EPOCH + dt.timedelta(seconds=(n * 7919 % 631_000_000))
        out.append(Picture(f"{prefix}{n // 1000:04d}/IMG_{n:07d}.jpg", 2_000_000 + n % 3_000_000,
                           1.6e9 + n, hashlib.sha256(f"{prefix}{n}".encode()).hexdigest(), w, h, taken, v))
    return out


def added_pictures(count: int, start: int) -> list[Picture]:
    """``count`` new pictures from further along the same stream, on paths no other run used."""
    vectors = np.concatenate(list(clip_like_vectors(count, DIM, seed=SEED, start=start, chunk=count)))
    return pictures(vectors, start, f"{NEW}{time.time_ns()}/")


def kept(folder: Path, size: int) -> int | None:
    """The first id of the library of ``size`` pictures a run with ``--keep`` left in ``folder``, if it is one."""
    from sqlalchemy import func, select

    from clipdex.errors import LibraryError
    from clipdex.library.schema import ImageRow

    try:
        remove_added(folder)  # left by a run that was stopped while it measured
        lib = Library.open(folder)
        with lib.session() as s:
            low, high, count = s.execute(select(func.min(ImageRow.id), func.max(ImageRow.id), func.count())).one()
        probe = [0, size // 2, size - 1]
        _, stored = lib.vectors_of([(low or 0) + p for p in probe])
        lib.close()
    except LibraryError:
        return None
    made = np.concatenate([next(clip_like_vectors(1, DIM, seed=SEED, start=p)) for p in probe])
    sound = count == size and high - low + 1 == size and len(stored) == 3 and np.allclose(stored, made)
    return low if sound else None


def fill(folder: Path, model_dir: Path, size: int) -> tuple[float | None, int]:
    """The library of ``size`` pictures in ``folder`` (kept if it is already there): insert seconds
    (None if kept) and the id of the first picture (ids are consecutive, in stream order)."""
    from clipdex.models import parse_model_spec

    if folder.exists():
        first = kept(folder, size)
        if first is not None:
            say(f"{size:,}: keeping the library in {folder}")
            return None, first
        say(f"{size:,}: {folder} holds no library of {size:,} of these pictures: filling it again")
        shutil.rmtree(folder)
    lib = Library.create(folder)
    with lib.session() as s:
        lib.bind_model(s, parse_model_spec(f"local-dir:{model_dir}"), DIM)
        s.commit()
    lib.add_roots(["/photos"])
    began, first, done = time.perf_counter(), None, 0
    for chunk in clip_like_vectors(size, DIM, seed=SEED, chunk=BATCH):
        ids = writes.store_batch(lib, pictures(chunk, done), [], [])
        first = ids[0] if first is None else first
        if ids != list(range(first + done, first + done + len(ids))):
            raise SystemExit("store_batch gave non-consecutive ids: this benchmark maps ids to stream positions")
        done += len(ids)
        if done % (size // 10 or 1) < BATCH:
            rate = done / (time.perf_counter() - began)
            say(f"{size:,}: stored {done:,} pictures ({rate:,.0f}/s)")
    lib.close()
    return time.perf_counter() - began, first


def exact_top(queries: np.ndarray, size: int, first_id: int) -> np.ndarray:
    """The ids of each query's exact top :data:`K`, from the generated vectors streamed again."""
    scores = np.full((len(queries), 0), -np.inf, np.float32)
    ids = np.zeros((len(queries), 0), np.int64)
    done = 0
    for chunk in clip_like_vectors(size, DIM, seed=SEED):
        scores = np.concatenate([scores, queries @ chunk.T], axis=1)
        chunk_ids = np.arange(first_id + done, first_id + done + len(chunk), dtype=np.int64)
        ids = np.concatenate([ids, np.broadcast_to(chunk_ids, (len(queries), len(chunk)))], axis=1)
        top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
        scores, ids = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
        done += len(chunk)
    return ids


def build_index(lib: Library, kind: str) -> dict:
    """A new base index of ``kind`` (``auto``, ``flat``, ``ivf``) built from scratch and saved; its report."""
    if hasattr(lib, "build_index"):  # the library's own call for this
        getattr(lib, "set_index_type", lib.keeper.set_kind)(kind)
        with lib.write_lock():
            report = dict(lib.build_index(kind))
    else:  # until then: the upkeep ``clipdex index --index-type KIND`` runs, without a file to reuse
        from clipdex.ann.base import index_files

        lib.keeper.set_kind(kind)
        with lib.write_lock():
            for path in index_files(lib.path):
                path.unlink()
            built = lib.keeper.maintain(final=True)
        if built is None:
            raise SystemExit("the library built no index: this benchmark needs lib.build_index(kind)")
        report = built.as_dict()
    report.setdefault("type", report.get("kind"))
    return report


def child_build(folder: str, kind: str) -> None:
    """In a child process: build, then print the report, wall seconds and this process's peak RSS."""
    lib = Library.open(folder)
    began = time.perf_counter()
    report = build_index(lib, kind)
    seconds = time.perf_counter() - began
    print(json.dumps({"report": report, "seconds": seconds, "peak_rss_mb": peak_rss_mb(os.getpid())}))


def child_model(folder: str, backend: str) -> None:
    """In a child process (torch and the model stay out of this one): the random-weight model, and the
    one-time ONNX export before any timing."""
    model = Path(folder)
    if not (model / "open_clip_config.json").exists():
        from bench_index import make_model

        model.mkdir(exist_ok=True)
        make_model(model, "ViT-B-32")
    if backend == "onnx":
        from clipdex.models import Encoder

        Encoder(f"local-dir:{model}", backend="onnx").load()


def child_writer(folder: str, start: str) -> None:
    """In a child process: commit 32 pictures every 2 s, under the write lock, keeping the index up."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    lib = Library.open(folder)
    position = int(start)
    with lib.write_lock():
        while True:
            began = time.monotonic()
            writes.store_batch(lib, added_pictures(32, position), [], [])
            lib.keeper.maintain()
            position += 32
            time.sleep(max(0.0, 2.0 - (time.monotonic() - began)))


def run_child(*args: str) -> str:
    """What a child process printed (it is killed if this one is interrupted)."""
    done = subprocess.run([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"{args[0]} failed (exit {done.returncode})")
    return done.stdout


def remove_added(folder: Path) -> None:
    from sqlalchemy import select

    from clipdex.library.schema import ImageRow

    lib = Library.open(folder)
    with lib.session() as s:
        ids = list(s.scalars(select(ImageRow.id).where(ImageRow.path.like(f"{NEW}%"))))
    writes.apply_moves_and_removals(lib, [], ids)
    lib.close()


def measure_reader(folder: Path, size: int, queries: np.ndarray, exact: np.ndarray) -> dict:
    """Search latency and recall in this process, then the reader's catch-up after a 32-picture commit."""
    lib, writer = Library.open(folder), Library.open(folder)
    try:
        began, kind = time.perf_counter(), lib.index().kind
        load_s = time.perf_counter() - began
        for q in queries[:20]:
            lib.index().search(q, K)  # warm-up
        took, hits = [], 0
        for q, truth in zip(queries, exact):
            began = time.perf_counter()
            found = lib.index().search(q, K)
            took.append((time.perf_counter() - began) * 1000)
            hits += len({i for i, _ in found} & set(truth.tolist()))
        catchup, added, problems = [], [], []
        for rep in range(5):
            batch = added_pictures(32, size + 1_000_000 + 32 * rep)
            added += writes.store_batch(writer, batch, [], [])
            began = time.perf_counter()
            live = lib.index()
            catchup.append((time.perf_counter() - began) * 1000)
            if live.ntotal != size + len(added) or live.search(batch[5].vector, 1)[0][0] != added[-32 + 5]:
                problems.append(f"after commit {rep + 1} the reader has {live.ntotal:,} pictures, or misses a new one")
        writes.apply_moves_and_removals(writer, [], added)
    finally:
        lib.keeper.forget()
        lib.close()
        writer.close()
    for problem in problems:
        say(f"WARNING: {problem}")
    return {"kind": kind, "load_s": load_s, "search_p50_ms": percentile(took, 50),
            "search_p95_ms": percentile(took, 95), "recall_at_10": hits / exact.size,
            "catchup_ms": float(np.median(catchup)), "catchup_max_ms": max(catchup)}


def timed_requests(server: Server, seconds: float) -> tuple[list[float], list[float]]:
    """Whole requests and their index search (``Server-Timing``), in ms, back to back for ``seconds``."""
    took, searched, end = [], [], time.monotonic() + seconds
    while time.monotonic() < end:
        whole, parts = server.search(TEXTS[len(took) % len(TEXTS)])
        took.append(whole)
        searched.append(parts["search"])
    return took, searched


def measure_http(folder: Path, size: int, backend: str, seconds: float) -> dict:
    """Whole HTTP requests idle and during a concurrent writer; the server's peak RSS."""
    with Server(folder, backend) as server:
        for text in TEXTS * 4:
            server.search(text)  # encodes each text once; later requests use the cached vector
        idle, idle_search = timed_requests(server, seconds)
        before = Library.open(folder)
        generation = before.generation
        writer = subprocess.Popen([sys.executable, __file__, "--child", "writer", str(folder), str(size + 2_000_000)])
        try:
            time.sleep(0.5)
            busy, _ = timed_requests(server, seconds)
        finally:
            writer.terminate()
            writer.wait()
        commits = before.generation - generation
        before.close()
        rss = server.peak_rss_mb()
    remove_added(folder)
    return {"peak_rss_mb": rss, "http_search_p50_idle_ms": percentile(idle_search, 50),
            "http_p50_idle_ms": percentile(idle, 50), "http_p95_idle_ms": percentile(idle, 95),
            "http_p50_indexing_ms": percentile(busy, 50), "http_p95_indexing_ms": percentile(busy, 95),
            "http_requests": len(idle) + len(busy), "commits_while_measuring": commits, "server_ready_s": server.ready}


def measure(folder: Path, size: int, kind: str, queries: np.ndarray, exact: np.ndarray,
            args: argparse.Namespace) -> dict:
    say(f"{size:,} {kind}: building the index …")
    built = json.loads(run_child("build", str(folder), kind).strip().splitlines()[-1])
    from clipdex.ann.base import index_files

    row = {"size": size, "index_type": kind, "build_s": built["seconds"], "build_peak_rss_mb": built["peak_rss_mb"],
           "disk_mb": sum(p.stat().st_size for p in index_files(folder)) / 2**20,
           **{f"built_{k}": built["report"].get(k) for k in ("type", "nlist", "nprobe", "recall_at_10")}}
    say(f"{size:,} {kind}: {built['report']}; searching …")
    row.update(measure_reader(folder, size, queries, exact))
    say(f"{size:,} {kind}: serving …")
    row.update(measure_http(folder, size, args.backend, args.http_seconds))
    return row


GOALS = (("search p50 ≤ 10 ms, recall@10 ≥ 0.95", lambda r: r["search_p50_ms"] <= 10 and r["recall_at_10"] >= 0.95),
         ("catch-up ≤ 50 ms", lambda r: r["catchup_ms"] <= 50),
         ("server peak RSS ≤ 2 GB", lambda r: r["peak_rss_mb"] <= 2048),
         ("HTTP p95 indexing ≤ 2× idle", lambda r: r["http_p95_indexing_ms"] <= 2 * r["http_p95_idle_ms"]))


def print_table(rows: list[dict], args: argparse.Namespace, inserts: dict[int, float | None]) -> None:
    print("Vectors: clipdex.ann.synthetic.clip_like_vectors(seed=0), 512-d: 3,000 Zipf-sized clusters on a "
          "96-rank power-law subspace in a narrow cone (pairwise cosine ≈ 0.41, nearest neighbour ≈ 0.85), "
          "2 % near-duplicates; 200 text-like queries across a modality gap (best cosine ≈ 0.36).")
    print(f"Machine: {os.cpu_count()} cores. HTTP: clipdex serve --backend {args.backend}, k=20, {len(TEXTS)} "
          f"texts repeated (cached vectors), {args.http_seconds:.0f} s back to back per phase; the writer commits "
          "32 pictures every 2 s (store_batch + index upkeep, no decoding or encoding).")
    print("Load average (1 min) at the start and end: {:.2f}, {:.2f}".format(*args.load))
    for size, seconds in inserts.items():
        what = "kept from --keep" if seconds is None else f"{seconds:.0f} s, {size / seconds:,.0f} pictures/s"
        print(f"Inserting {size:,} pictures with store_batch ({BATCH:,} a transaction): {what}")
    head = ("size", "type", "build s", "build RSS", "disk MB", "search p50", "p95", "recall@10", "catch-up",
            "server RSS", "HTTP p50 (search)", "p95 idle", "p95 indexing")
    print(" | ".join(head))
    for r in rows:
        kind = r["index_type"] if r["index_type"] == r["kind"] else f"{r['index_type']}→{r['kind']}"
        nprobe = f" (nprobe {r['built_nprobe']}/{r['built_nlist']})" if r["kind"] == "ivf" else ""
        print(" | ".join([f"{r['size']:,}", kind + nprobe, f"{r['build_s']:.1f}", f"{r['build_peak_rss_mb']:,.0f} MB",
                          f"{r['disk_mb']:,.0f}", f"{r['search_p50_ms']:.2f} ms", f"{r['search_p95_ms']:.2f} ms",
                          f"{r['recall_at_10']:.3f}", f"{r['catchup_ms']:.1f} ms", f"{r['peak_rss_mb']:,.0f} MB",
                          f"{r['http_p50_idle_ms']:.1f} ms ({r['http_search_p50_idle_ms']:.1f})",
                          f"{r['http_p95_idle_ms']:.1f} ms",
                          f"{r['http_p95_indexing_ms']:.1f} ms ({r['commits_while_measuring']} commits)"]))
    print("\nGoals (set for 1M pictures on this 2-core machine):")
    for r in rows:
        verdicts = ", ".join(f"{name}: {'PASS' if ok(r) else 'FAIL'}" for name, ok in GOALS)
        print(f"  {r['size']:,} {r['index_type']}: {verdicts}")


def interrupted(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up as Ctrl-C does: servers and children stopped, temp files gone


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated library sizes (5000000 fits in 24 GB)")
    ap.add_argument("--types", default="flat,ivf", help="comma-separated index types: auto, flat, ivf")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--keep", type=Path, help="keep the libraries (and model) here and reuse them in later runs")
    ap.add_argument("--backend", default="onnx", help="clipdex serve --backend")
    ap.add_argument("--http-seconds", type=float, default=15.0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if bad := set(types) - {"auto", "flat", "ivf"}:
        ap.error(f"unknown index types: {', '.join(sorted(bad))}")
    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="clipdex-scale-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        args.load = [os.getloadavg()[0]]
        rows, inserts = run(work, sizes, types, args)
        args.load.append(os.getloadavg()[0])
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows, args, inserts)


def run(work: Path, sizes: list[int], types: list[str], args: argparse.Namespace) -> tuple[list[dict], dict]:
    model = work / "model"
    os.environ["CLIPDEX_ONNX_CACHE"] = str(work / "onnx-cache")
    run_child("model", str(model), args.backend)
    queries = clip_like_queries(200, DIM, SEED)
    rows, inserts = [], {}
    for size in sizes:
        inserts[size], first_id = fill(work / str(size), model, size)
        exact = exact_top(queries, size, first_id)
        rows += [measure(work / str(size), size, kind, queries, exact, args) for kind in types]
    return rows, inserts


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        {"build": child_build, "writer": child_writer, "model": child_model}[sys.argv[2]](*sys.argv[3:])
    else:
        try:
            main()
        except KeyboardInterrupt:
            sys.exit("interrupted: servers and child processes stopped")
