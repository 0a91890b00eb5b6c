"""Switching a library's model: building a second model beside the first, switching back, and what it costs.

    python benchmarks/bench_model_switch.py [--per-class 20]

On ``24 * per-class`` generated pictures indexed with the tiny model, prints the seconds of

1. ``index --model tiny-b``: building tests/data/tiny-b's vectors beside tiny's, then switching;
2. ``models use tiny``: switching back (no picture encoded: the vectors tiny kept are swapped in);
3. ``index --rebuild --model tiny``: what switching back cost before (every picture re-encoded);

plus search answers during step 1 (a search while the new vectors are staged is answered by the old
model: top-5 overlap with the answer before the switch started), recall of tiny-b against tiny's
own search for "a red circle" (both should find red circles), and the database size with one and
with two models' vectors. Run on the shared 2-core machine: wall-clock figures vary by a few tens of
per cent between runs.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.search import build_query
from clipdex.synthetic import write_collection

TINY_B = f"local-dir:{Path(__file__).resolve().parent.parent / 'tests' / 'data' / 'tiny-b'}"


def top(lib: Library, text: str = "a red circle", k: int = 5) -> list[int]:
    encoder = lib.encoder_for(None)
    return [i for i, _ in lib.index().search(build_query(encoder, text), k)]


def db_mb(lib: Library) -> float:
    with lib.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return (lib.path / "clipdex.db").stat().st_size / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pics = Path(tmp) / "pics"
        truth = write_collection(pics, per_class=args.per_class, seed=11)
        red_circles = {str(p) for p, s in truth.items() if s.color == "red" and s.shape == "circle"}
        lib = Library.create(Path(tmp) / "lib")
        Indexer(lib, "tiny", workers=2).run([str(pics)])
        one_model = db_mb(lib)
        before = top(lib)
        Indexer(lib, TINY_B, workers=2).run([str(pics)], switch=True)  # export + warm caches once
        Indexer(lib, "tiny", workers=2).use()
        Indexer(lib, None).run([str(pics)])
        lib_dir = lib.path
        from clipdex.library.held import drop

        drop(lib, TINY_B)

        answers: list[list[int]] = []
        done = threading.Event()

        def search_meanwhile() -> None:  # another process's view: its own Library object
            reader = Library.open(lib_dir)
            while not done.is_set():
                if reader.model_spec is not None and str(reader.model_spec) == "tiny":
                    answers.append(top(reader))
                time.sleep(0.05)

        t = threading.Thread(target=search_meanwhile)
        t.start()
        t0 = time.perf_counter()
        built = Indexer(lib, TINY_B, workers=2).run([str(pics)], switch=True)
        build_s = time.perf_counter() - t0
        done.set()
        t.join()
        two_models = db_mb(lib)
        with lib.engine.connect() as conn:
            paths = dict(conn.exec_driver_sql("SELECT id, path FROM images").all())
        b_hits = {paths[i] for i in top(lib, k=len(red_circles))}
        t0 = time.perf_counter()
        back = Indexer(lib, "tiny", workers=2).use()
        use_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        Indexer(lib, "tiny", workers=2).run([str(pics)], rebuild=True)
        rebuild_s = time.perf_counter() - t0

    n = len(truth)
    same = sum(1 for a in answers if a == before)
    print(f"{n} pictures (tiny: 64-number vectors; tiny-b: 32)")
    print(f"index --model tiny-b (build beside, switch):  {build_s:6.2f} s  ({built.encoded} encoded)")
    print(f"models use tiny (switch back):                {use_s:6.2f} s  ({back.encoded} encoded, {back.reused} kept)")
    print(f"index --rebuild --model tiny (re-encode all): {rebuild_s:6.2f} s")
    print(f"searches answered by tiny during the build:   {len(answers)} ({same} with the same top 5 as before)")
    print(f"tiny-b's top {len(red_circles)} for 'a red circle' that are red circles: "
          f"{len(b_hits & red_circles)}/{len(red_circles)}")
    print(f"clipdex.db: {one_model:.2f} MB with one model, {two_models:.2f} MB holding two")


if __name__ == "__main__":
    main()
