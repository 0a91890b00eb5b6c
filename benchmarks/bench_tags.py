"""Tags a photographer can trust, timed: a tagging pass, its re-run with people's removals held back,
a dry run, people's edits, dropping a pass, and XMP sidecars written, left as they are and merged.

    python benchmarks/bench_tags.py [--pictures 20000] [--removed 0.01]

The library is filled through ``store_batch`` with random unit vectors (no decoding or
encoding: this times the tag bookkeeping, not the model), under a temporary folder so the
sidecars have somewhere to go. The pass is a fixed random linear classifier over 8 labels,
applied through the same code as ``clipdex tag`` (``apply_classifier`` -> ``write_pass``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 64
LABELS = ("beach", "city", "forest", "mountain", "snow", "food", "people", "night")


def timed(what: str, fn, n: int, unit: str = "pictures"):
    began = time.perf_counter()
    out = fn()
    took = time.perf_counter() - began
    print(f"{what:<58} {took:8.2f} s  {n / took:10,.0f} {unit}/s")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pictures", type=int, default=20_000)
    ap.add_argument("--removed", type=float, default=0.01, help="share of pictures a person takes a tag off")
    args = ap.parse_args()

    from clipdex.classify.tagging import apply_classifier, softmax
    from clipdex.library import Library, writes
    from clipdex.library.persontags import add_tag, remove_tag
    from clipdex.library.tags import ZERO_SHOT, PassSpec, drop_pass
    from clipdex.models import TINY_MODEL, parse_model_spec
    from clipdex.sidecars import export_sidecars

    n = args.pictures
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((DIM, len(LABELS))).astype(np.float32) * 8
    with tempfile.TemporaryDirectory(prefix="clipdex-bench-tags-") as tmp:
        root = Path(tmp) / "photos"
        lib = Library.create(Path(tmp) / "lib")
        with lib.session() as s:
            lib.bind_model(s, parse_model_spec(TINY_MODEL), DIM)
            s.commit()
        lib.add_roots([str(root)])
        for start in range(0, n, 5000):
            vectors = rng.standard_normal((min(5000, n - start), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            writes.store_batch(lib, [writes.Picture(str(root / f"{i // 1000:03d}" / f"IMG_{i:06d}.jpg"), 1000, 1.6e9,
                                                    hashlib.sha256(str(i).encode()).hexdigest(), 64, 48,
                                                    dt.datetime(2020, 1, 1), v)
                                     for i, v in enumerate(vectors, start)], [], [])
        print(f"{n:,} pictures, {len(LABELS)} labels, single-label pass; "
              f"a person takes a tag off {args.removed:.0%} of them\n")
        spec = PassSpec(ZERO_SHOT, LABELS, templates=("a photo of a {}.",),
                        model_identity=parse_model_spec(TINY_MODEL).identity, name="scenes")

        def run(dry: bool = False):
            return apply_classifier(lib, lambda v: softmax(v @ weights), spec, dry_run=dry)

        timed("tag --set scenes (first run)", run, n)
        ids = list(range(1, n + 1, max(1, round(1 / args.removed)))) if args.removed > 0 else []
        from clipdex.library.tags import export_rows

        given = {r["id"]: r["label"] for r in export_rows(lib)}
        by_label: dict[str, list[int]] = {}
        for i in ids:
            by_label.setdefault(given[i], []).append(i)
        timed(f"tags remove ({len(ids):,} pictures, by label)",
              lambda: [remove_tag(lib, group, label) for label, group in by_label.items()], len(ids))
        timed(f"tags add ({n:,} pictures, one label)", lambda: add_tag(lib, list(range(1, n + 1)), "2020"), n)
        again = timed("tag --set scenes again (removals held back)", run, n)
        print(f"{'':<58} held back {again.held_back:,}, unchanged {again.unchanged:,}")
        timed("tag --set scenes --dry-run", lambda: run(True), n)

        for i in range(n):  # sidecars are written only for pictures that are there: stand-in files
            picture = root / f"{i // 1000:03d}" / f"IMG_{i:06d}.jpg"
            picture.parent.mkdir(parents=True, exist_ok=True)
            picture.touch()
        report = timed("tags export --format xmp (sidecars created)", lambda: export_sidecars(lib), n, "sidecars")
        assert report.created == n, report.as_dict()
        report = timed("tags export --format xmp (all up to date)", lambda: export_sidecars(lib), n, "sidecars")
        assert report.unchanged == n, report.as_dict()
        timed(f"tags remove '2020' ({len(ids):,} pictures)", lambda: remove_tag(lib, ids, "2020"), len(ids))
        report = timed(f"tags export --format xmp ({len(ids):,} merged)", lambda: export_sidecars(lib), n, "sidecars")
        assert report.merged == len(ids), report.as_dict()
        timed("tags drop-set scenes", lambda: drop_pass(lib, "scenes"), n)
        lib.close()


if __name__ == "__main__":
    main()
