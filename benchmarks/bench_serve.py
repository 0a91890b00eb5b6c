"""Search latency through HTTP on a library of 100,000 pictures' vectors, per backend side by side.

    python benchmarks/bench_serve.py [--vectors 100000] [--queries 300] [--arch ViT-B-32] [--backends onnx,torch]

Builds a library whose rows carry random unit vectors (what matters here is how many there
are, not what they show), bound to a model of the given architecture with random weights
(text encoding costs the same whatever the weights). Starts the real ``clipdex serve`` in a
subprocess on 127.0.0.1, sends a bounded number of different text queries one after another
over one keep-alive connection, and prints p50/p95 of the whole request and its split:
text encoding and index search (from the ``Server-Timing`` header) and the rest (HTTP,
JSON, database lookup of the hits). Each backend gets its own server in turn; "ready" is the time
from starting ``clipdex serve`` to its first answered search. The ONNX export is made once before
(it is a one-time cost per model, reported apart), in a cache of the benchmark's own.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _serving import Server, percentile  # noqa: E402

WORDS = ("dog cat beach sunset mountain city street car bicycle tree flower birthday cake candles snow "
         "river boat bridge forest portrait child market night lights kitchen book desk window rain "
         "horse bird garden").split()


def make_library(folder: Path, model_dir: Path, n: int, dim: int) -> None:
    from sqlalchemy import insert

    from clipdex.library import Library
    from clipdex.library.schema import ImageRow, utcnow
    from clipdex.models import parse_model_spec

    lib = Library.create(folder)
    rng = np.random.default_rng(0)
    now = utcnow()
    with lib.session() as s:
        lib.bind_model(s, parse_model_spec(f"local-dir:{model_dir}"), dim)
        for start in range(0, n, 10_000):
            vecs = rng.standard_normal((min(10_000, n - start), dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            s.execute(insert(ImageRow), [
                {"path": f"/photos/{(start + i) // 1000:03d}/IMG_{start + i:06d}.jpg", "size": 1, "mtime": 0.0,
                 "content_hash": f"{start + i:064x}", "width": 4000, "height": 3000, "indexed_at": now,
                 "vector": v.tobytes()} for i, v in enumerate(vecs)])
        lib.bump_generation(s)
        s.commit()
    lib.add_roots(["/photos"])
    lib.index()  # rebuilt from SQLite and saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--arch", default="ViT-B-32")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--backends", default="onnx,torch", help="comma-separated --backend values to compare")
    args = ap.parse_args()
    from bench_index import make_model

    with tempfile.TemporaryDirectory(prefix="clipdex-serve-") as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        make_model(work / "model", args.arch)
        import open_clip

        dim = open_clip.get_model_config(args.arch)["embed_dim"]
        t0 = time.perf_counter()
        make_library(work / "lib", work / "model", args.vectors, dim)
        print(f"library of {args.vectors:,} vectors ({dim}-d) built in {time.perf_counter() - t0:.0f}s", flush=True)

        os.environ["CLIPDEX_ONNX_CACHE"] = str(work / "onnx-cache")
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        if "onnx" in backends:
            from clipdex.models import Encoder

            t0 = time.perf_counter()
            Encoder(f"local-dir:{work / 'model'}", backend="onnx").load()
            print(f"one-time ONNX export: {time.perf_counter() - t0:.1f}s", flush=True)
        results = {b: serve_and_query(work, b, args) for b in backends}
    print(f"{args.queries} text queries, k={args.k}, {args.vectors:,} vectors, {args.arch}, loopback HTTP")
    print(f"{'':>14} " + " ".join(f"{b + ' p50':>10} {b + ' p95':>10}" for b in backends))
    for name in ("whole request", "text encoding", "index search", "the rest"):
        cells = (f"{percentile(results[b][name], 50):7.1f} ms {percentile(results[b][name], 95):7.1f} ms"
                 for b in backends)
        print(f"{name:>14} " + " ".join(cells))
    print(f"{'ready':>14} " + " ".join(f"{results[b]['ready']:8.2f} s {'':>10}" for b in backends))


def serve_and_query(work: Path, backend: str, args: argparse.Namespace) -> dict:
    """Start ``clipdex serve --backend BACKEND``, wait for its first search, then time the queries."""
    total, encode, search, rest = [], [], [], []
    with Server(work / "lib", backend, k=args.k, timeout=120) as server:
        for i in range(args.queries + 10):
            q = f"a photo of a {WORDS[i % len(WORDS)]} and a {WORDS[(i * 7 + 3) % len(WORDS)]} number {i}"
            took, timing = server.search(q)
            if i < 10:
                continue  # warm-up
            total.append(took)
            encode.append(timing["encode"])
            search.append(timing["search"])
            rest.append(took - timing["encode"] - timing["search"])
    return {"whole request": total, "text encoding": encode, "index search": search, "the rest": rest,
            "ready": server.ready}


if __name__ == "__main__":
    main()
