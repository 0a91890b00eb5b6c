"""Re-running ``clipdex index`` over an unchanged collection: how long does doing nothing take?

    python benchmarks/bench_rerun.py [--files 10000]

Writes N small JPEGs in nested folders, indexes them once with the tiny model, then times
a second run in a fresh process-like state (new Library object, nothing cached), which
must only walk, stat and compare. Prints the first run, the re-run and the files/second
of the re-run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()

    from clipdex.indexer import Indexer
    from clipdex.library import Library
    from clipdex.models import TINY_MODEL

    with tempfile.TemporaryDirectory(prefix="clipdex-rerun-") as tmp:
        root = Path(tmp) / "photos"
        for i in range(args.files):
            folder = root / f"{i // 1000:02d}" / f"{i // 100 % 10:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (48, 32), (i % 256, (i // 256) % 256, 90)).save(folder / f"IMG_{i:05d}.jpg")
        lib_dir = Path(tmp) / "lib"

        t0 = time.perf_counter()
        first = Indexer(Library.create(lib_dir), TINY_MODEL, batch_size=256, progress=False).run([str(root)])
        first_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        again = Indexer(Library.open(lib_dir), TINY_MODEL, progress=False).run([str(root)])
        rerun_s = time.perf_counter() - t0
    assert first.indexed == args.files and again.unchanged == args.files and again.indexed == 0
    print(f"first run : {first.indexed} files indexed in {first_s:.1f}s")
    print(f"re-run    : {again.unchanged} files unchanged in {rerun_s:.2f}s "
          f"({again.unchanged / rerun_s:,.0f} files/s)")


if __name__ == "__main__":
    main()
