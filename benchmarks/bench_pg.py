"""PostgreSQL against SQLite: how fast the library commits vectors, the way the indexer does.

    python benchmarks/bench_pg.py [--pictures 20000] [--batch 32] [--dim 512] [--url postgresql://...]

Each batch goes through :func:`clipdex.library.writes.store_batch`, exactly what ``clipdex
index`` calls per batch: new rows with their 512-d vectors, the skip list cleared, the
generation bumped and the change log written, one transaction per batch (on PostgreSQL the
generation bump takes its advisory transaction lock). Without ``--url`` a throwaway cluster
is started from Debian's ``postgresql`` binaries (as the tests do). Prints rows/s for both,
their ratio, and how the PostgreSQL rate compares with encoding (ViT-B-32 on a CPU: 10-30
pictures/s; on one GPU ~1,000-2,000/s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _pictures(start: int, count: int, dim: int, rng: np.random.Generator) -> list:
    from clipdex.library.writes import Picture

    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [Picture(path=f"/photos/{(start + i) // 1000:04d}/IMG_{start + i:07d}.jpg", size=2_000_000 + i,
                    mtime=1.7e9 + i, content_hash=f"{start + i:064x}", width=4000, height=3000, captured_at=None,
                    vector=vectors[i]) for i in range(count)]


def rate(where: str, pictures: int, batch: int, dim: int) -> float:
    """Rows per second committed by ``store_batch`` into a new library at ``where``."""
    from clipdex.library import Library
    from clipdex.library.writes import store_batch

    lib = Library.create(where)
    rng = np.random.default_rng(0)
    batches = [_pictures(start, min(batch, pictures - start), dim, rng) for start in range(0, pictures, batch)]
    t0 = time.perf_counter()
    for pics in batches:
        store_batch(lib, pics, [], [])
    seconds = time.perf_counter() - t0
    assert lib.count() == pictures
    lib.close()
    return pictures / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=32, help="pictures per commit (index --batch-size; default 32)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--url", help="an empty PostgreSQL database to use (default: start a throwaway cluster)")
    args = ap.parse_args()

    cluster = None
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-pg-") as tmp:
        os.environ.setdefault("CLIPDEX_CACHE_DIR", str(Path(tmp) / "cache"))
        url = args.url
        if url is None:
            from tests.pgcluster import Cluster

            cluster = Cluster().start(durable=True)
            url = cluster.new_database()
            print("a throwaway local cluster with PostgreSQL's default settings (fsync, synchronous commits)")
        try:
            sqlite = rate(str(Path(tmp) / "lib"), args.pictures, args.batch, args.dim)
            pg = rate(url, args.pictures, args.batch, args.dim)
        finally:
            if cluster is not None:
                cluster.stop()
    print(f"{args.pictures:,} pictures, {args.dim}-d float32 vectors, {args.batch} per commit "
          f"(store_batch: rows, skip list, generation, change log)")
    print(f"SQLite     : {sqlite:10,.0f} rows/s")
    print(f"PostgreSQL : {pg:10,.0f} rows/s   (PG_WRITE_RATE)")
    print(f"ratio PG/SQLite: {pg / sqlite:.2f}")
    print(f"PostgreSQL vs encoding: {pg / 30:,.0f}x ViT-B-32 on a CPU (30/s), {pg / 2000:.1f}x one GPU (2,000/s)")


if __name__ == "__main__":
    main()
