"""'Only the pictures that match', measured: precision and recall where the pictures exist, empty answers
where they do not, at the one default cut-off (:data:`clipdex.search.calibration.MATCH`).

Each round generates a fresh collection of coloured shapes (:mod:`clipdex.synthetic`) in which
``--absent`` of the 24 colour + shape combinations are left out (a different draw per round),
indexes it with each model (``--models``: the shipped tiny model and tests/data/tiny-b, a second small
model of another seed and size), and asks for every combination in four phrasings
(:data:`clipdex.search.evaluation.PHRASINGS`) with ``find_matches``. Bars: precision >= 0.95 and
recall >= 0.90 averaged over the queries whose pictures exist, and an empty answer for >= 90 % of
the queries whose combination is absent. Also printed: how long a search for every match takes.

Usage: python benchmarks/eval_matches.py [--rounds 3] [--per-class 8] [--absent 6] [--models tiny,tiny-b] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.search.calibration import MATCH, Z_CUT
from clipdex.search.evaluation import PHRASINGS, evaluate, split_combinations
from clipdex.synthetic import write_collection

BARS = {"precision": 0.95, "recall": 0.90, "empty_share": 0.90}
TINY_B = f"local-dir:{Path(__file__).resolve().parent.parent / 'tests' / 'data' / 'tiny-b'}"
MODELS = {"tiny": TINY_MODEL, "tiny-b": TINY_B}


def one_round(folder: Path, seed: int, per_class: int, absent: int, model: str = TINY_MODEL) -> dict:
    """Generate, index with ``model`` and evaluate one collection in ``folder``; its figures."""
    present, missing = split_combinations(absent, seed)
    truth = write_collection(folder / "pictures", per_class=per_class, seed=1000 + seed, samples=present)
    lib = Library.create(folder / "library")
    Indexer(lib, model, workers=2, progress=False).run([str(folder / "pictures")])
    encoder = lib.encoder_for(model)
    began = time.perf_counter()
    scores = evaluate(lib, encoder, truth, missing)
    took = (time.perf_counter() - began) / (scores.present_queries + scores.absent_queries)
    lib.close()
    return {"seed": seed, "pictures": len(truth), "absent": [s.label for s in missing], **scores.as_dict(),
            "ms_per_query": took * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--absent", type=int, default=6)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report = {}
    for name in args.models.split(","):
        rounds = []
        for seed in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="clipdex-eval-matches-") as tmp:
                rounds.append(one_round(Path(tmp), seed, args.per_class, args.absent, MODELS[name]))
        weights = {"precision": "present_queries", "recall": "present_queries", "empty_share": "absent_queries"}
        overall = {key: sum(r[key] * r[w] for r in rounds) / sum(r[w] for r in rounds) for key, w in weights.items()}
        report[name] = {"rounds": rounds, "overall": overall}
    if args.json:
        print(json.dumps({"models": report, "bars": BARS}, indent=2))
        return
    print(f"cut-off relevance {MATCH} (z >= {Z_CUT}) for every model and query, {len(PHRASINGS)} phrasings per "
          f"combination, {args.per_class} pictures per present combination, {args.absent} of 24 combinations absent "
          "per round")
    for name, result in report.items():
        print(f"\n{name}")
        print(f"{'round':>5} {'pictures':>8} {'queries':>9} {'precision':>9} {'recall':>7} {'empty':>7} "
              f"{'ms/query':>8}  absent")
        for r in result["rounds"]:
            queries = f"{r['present_queries']}+{r['absent_queries']}"
            print(f"{r['seed']:>5} {r['pictures']:>8} {queries:>9} {r['precision']:>9.3f} {r['recall']:>7.3f} "
                  f"{r['empty_share']:>7.1%} {r['ms_per_query']:>8.1f}  {', '.join(r['absent'])}")
            for failure in r["failures"][:8]:
                print(f"        {failure}")
            if len(r["failures"]) > 8:
                print(f"        … {len(r['failures']) - 8} more")
        overall = result["overall"]
        verdict = {key: "ok" if overall[key] >= bar else "BELOW BAR" for key, bar in BARS.items()}
        print(f"{name} overall: precision {overall['precision']:.3f} (bar {BARS['precision']}, "
              f"{verdict['precision']}), recall {overall['recall']:.3f} (bar {BARS['recall']}, {verdict['recall']}), "
              f"empty answers for absent {overall['empty_share']:.1%} (bar {BARS['empty_share']:.0%}, "
              f"{verdict['empty_share']})")


if __name__ == "__main__":
    main()
