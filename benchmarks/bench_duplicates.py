"""Duplicate detection, measured: pair precision and recall on a generated collection, and the speed of
the near-duplicate search.

1. Quality: :func:`clipdex.duplicates.generated.write_collection` writes originals (photo-like scenes),
   derived copies of each (resized, recompressed JPEG, cropped 1-6 % unevenly, rotated by EXIF,
   PNG <-> JPEG), byte-identical copies, and second shots of each subject (things moved, other light:
   not duplicates). They are indexed with the tiny model and ``find_duplicates`` runs at the default
   threshold; every pair of pictures it puts in one group is a predicted pair, every pair of an
   original and its copies a true one. Also printed: the cosine of true pairs and of second shots
   (what the vectors alone would confuse) and the pixel difference of both.
2. Speed: the vector stage (one range search per picture) on ``--vectors`` synthetic CLIP-like 512-d
   vectors (:mod:`clipdex.ann.synthetic`, 2 % near-duplicates), flat and IVF as the library would build them.

Usage: python benchmarks/bench_duplicates.py [--subjects 60] [--vectors 100000] [--skip-speed]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipdex.ann.synthetic import clip_like_vectors
from clipdex.duplicates import DEFAULT_THRESHOLD, DUPLICATES_NPROBE, TINY_THRESHOLD, find_duplicates
from clipdex.duplicates.generated import write_collection
from clipdex.duplicates.pixels import (
    MAX_COLOUR_DIFFERENCE,
    MAX_DIFFERENCE,
    colour_difference,
    difference,
    signature_of_file,
)
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL


def pair_scores(groups: list, truth: set[frozenset[str]]) -> tuple[float, float, int, int]:
    """Precision, recall, predicted and true pair counts of ``groups`` against ``truth``."""
    predicted = {frozenset((a.path, b.path)) for g in groups for a, b in itertools.combinations(g.pictures, 2)}
    hit = len(predicted & truth)
    return hit / max(1, len(predicted)), hit / max(1, len(truth)), len(predicted), len(truth)


def quality(subjects: int, folder: Path, workers: int = 2, thresholds: tuple = (None,)) -> dict:
    """Build the collection and library in ``folder``, find duplicates; the figures as a dict."""
    began = time.perf_counter()
    collection = write_collection(folder / "pictures", subjects, seed=7, copies=5, shots=2, exact=subjects // 10)
    written = time.perf_counter() - began
    lib = Library.create(folder / "library")
    Indexer(lib, TINY_MODEL, workers=workers).run([str(folder / "pictures")])
    sweep = {}
    for threshold in thresholds:
        began = time.perf_counter()
        groups = find_duplicates(lib, threshold)
        sweep[threshold] = (*pair_scores(groups, collection.true_pairs()), len(groups), time.perf_counter() - began)
    precision, recall, predicted, true, _, found = sweep[None]
    by_path = {p: i for i, p in zip(*_paths(lib))}
    ids, vectors = lib.load_vectors()
    vector_of = dict(zip(ids.tolist(), vectors))
    cos = {"copies": [], "second shots": []}
    diff = {"copies": [], "second shots": []}
    colour = {"copies": [], "second shots": []}
    truth = collection.true_pairs()
    files = [str(f) for f in collection.files]
    for a, b in itertools.combinations(files, 2):
        if Path(a).name[:5] != Path(b).name[:5]:
            continue
        what = "copies" if frozenset((a, b)) in truth else "second shots"
        cos[what].append(float(vector_of[by_path[a]] @ vector_of[by_path[b]]))
        sa, sb = signature_of_file(a), signature_of_file(b)
        diff[what].append(difference(sa, sb))
        colour[what].append(colour_difference(sa, sb))
    lib.close()
    return {"pictures": len(collection.files), "true pairs": true, "predicted pairs": predicted,
            "precision": precision, "recall": recall, "groups": sweep[None][4], "sweep": sweep,
            "write s": written, "find s": found,
            "cosine": {k: (min(v), float(np.median(v)), max(v)) for k, v in cos.items()},
            "difference": {k: (min(v), float(np.median(v)), max(v)) for k, v in diff.items()},
            "colour": {k: (min(v), float(np.median(v)), max(v)) for k, v in colour.items()}}


def _paths(lib: Library) -> tuple[list[int], list[str]]:
    from sqlalchemy import select

    from clipdex.library.schema import ImageRow

    with lib.engine.connect() as conn:
        rows = conn.execute(select(ImageRow.id, ImageRow.path)).all()
    return [r[0] for r in rows], [r[1] for r in rows]


def speed(x: np.ndarray, kind: str, threshold: float, nprobes: tuple = (None,)) -> list[dict]:
    """Time the vector stage (a range search of every vector) on ``x`` in a ``kind`` base built as a library's is,
    once per ``nprobes`` entry (None: the base's tuned nprobe; ignored by a flat base)."""
    from clipdex.ann.build import build
    from clipdex.ann.live import LiveIndex

    count = len(x)
    ids = np.arange(1, count + 1, dtype=np.int64)
    order = np.random.default_rng(0).permutation(count)

    def fetch(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return wanted, x[wanted - 1]

    began = time.perf_counter()
    base, _ = build(kind, x.shape[1], 1, count, lambda: iter([(ids, x)]),
                    lambda n: (ids[order[:n]], x[order[:n]]), fetch)
    built = time.perf_counter() - began
    live = LiveIndex(x.shape[1], 1, base, fetch)
    out = []
    for nprobe in nprobes:
        began, pairs = time.perf_counter(), set()
        for start in range(0, count, 2048):
            for n, (hits, _) in enumerate(live.range_search(x[start:start + 2048], threshold, 65, nprobe)):
                me = start + n + 1
                pairs.update((min(me, int(h)), max(me, int(h))) for h in hits if h != me)
        out.append({"kind": kind, "build s": built, "search s": time.perf_counter() - began, "pairs": pairs,
                    "nprobe": nprobe or base.nprobe, "nlist": base.nlist})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    print(f"default thresholds: cosine {DEFAULT_THRESHOLD} (CLIP models), {TINY_THRESHOLD} (tiny model); "
          f"pixel structure difference {MAX_DIFFERENCE}, colour {MAX_COLOUR_DIFFERENCE}")
    if not args.skip_quality:
        with tempfile.TemporaryDirectory() as tmp:
            q = quality(args.subjects, Path(tmp))
        print(f"quality: {q['pictures']} pictures ({args.subjects} subjects x (original + 5 copies + 2 second "
              f"shots), {args.subjects // 10} byte-identical copies), tiny model")
        print(f"  pair precision {q['precision']:.3f}, recall {q['recall']:.3f} ({q['predicted pairs']} predicted, "
              f"{q['true pairs']} true pairs, {q['groups']} groups); find_duplicates {q['find s']:.1f} s")
        for what in ("copies", "second shots"):
            c, d, k = q["cosine"][what], q["difference"][what], q["colour"][what]
            print(f"  {what:<13} cosine min/median/max {c[0]:.3f}/{c[1]:.3f}/{c[2]:.3f}   "
                  f"structure difference {d[0]:.3f}/{d[1]:.3f}/{d[2]:.3f}   colour {k[0]:.1f}/{k[1]:.1f}/{k[2]:.1f}")
        sys.stdout.flush()
    if not args.skip_speed:
        x = np.concatenate(list(clip_like_vectors(args.vectors)))
        exact = None
        for kind in ("flat", "ivf"):
            for s in speed(x, kind, DEFAULT_THRESHOLD, (None,) if kind == "flat" else (None, DUPLICATES_NPROBE)):
                shape = f", nlist {s['nlist']}, nprobe {s['nprobe']}" if kind == "ivf" else ""
                found = "" if exact is None else f", {len(s['pairs'] & exact) / max(1, len(exact)):.3f} of the flat's"
                exact = s["pairs"] if exact is None else exact
                print(f"speed: {args.vectors:,} synthetic 512-d vectors, {kind}{shape}: range search of every "
                      f"vector {s['search s']:.1f} s ({len(s['pairs']):,} candidate pairs at cosine >= "
                      f"{DEFAULT_THRESHOLD}{found}; index built in {s['build s']:.1f} s)")
                sys.stdout.flush()

if __name__ == "__main__":
    main()
