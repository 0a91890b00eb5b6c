"""How well "only the pictures that match" works, on generated pictures whose truth is known.

Shared by ``benchmarks/eval_matches.py`` (which prints the figures) and the tests (which
hold them to the bars): a collection of coloured shapes in which some colour + shape
combinations are deliberately absent; every combination is asked for, in a few phrasings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from clipdex.library import Library
from clipdex.models import Encoder
from clipdex.search.matches import find_matches
from clipdex.search.query import build_query
from clipdex.synthetic import Sample, all_samples

#: How a person might ask for a colour + shape (not all of them are training captions).
PHRASINGS = ("a {c} {s}", "a photo of a {c} {s}.", "{c} {s}", "a picture of a {c} {s}")


def split_combinations(absent: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """``(present, absent)`` colour + shape combinations, ``absent`` of them drawn at random."""
    every = all_samples()
    missing = set(random.Random(seed).sample(range(len(every)), absent))
    return ([s for n, s in enumerate(every) if n not in missing], [s for n, s in enumerate(every) if n in missing])


@dataclass
class MatchScores:
    """Averages over queries: precision and recall where the pictures exist, empty answers where not."""

    precision: float
    recall: float
    empty_share: float
    present_queries: int
    absent_queries: int
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "empty_share": self.empty_share,
                "present_queries": self.present_queries, "absent_queries": self.absent_queries,
                "failures": self.failures}


def evaluate(lib: Library, encoder: Encoder, truth: dict[Path, Sample], absent: list[Sample],
             phrasings: tuple[str, ...] = PHRASINGS) -> MatchScores:
    """Ask ``lib`` for every combination in every phrasing with :func:`find_matches`; ``truth`` maps each
    indexed file to what it shows. An empty answer to a present query counts as precision 1, recall 0."""
    shows = {str(Path(p).resolve()): s for p, s in truth.items()}
    present = sorted({s for s in truth.values()}, key=lambda s: s.label)
    precisions, recalls, empties, failures = [], [], [], []
    for sample in [*present, *absent]:
        wanted = {p for p, s in shows.items() if s == sample}
        for phrasing in phrasings:
            text = phrasing.format(c=sample.color, s=sample.shape)
            got = {h.path for h in find_matches(lib, encoder, build_query(encoder, text))}
            if wanted:
                right = len(got & wanted)
                precisions.append(right / len(got) if got else 1.0)
                recalls.append(right / len(wanted))
                if right < len(wanted) or len(got) > right:
                    failures.append(f"{text!r}: {right} of {len(wanted)} found, {len(got) - right} wrong")
            else:
                empties.append(not got)
                if got:
                    failures.append(f"{text!r} (absent): {len(got)} returned")
    return MatchScores(_mean(precisions), _mean(recalls), _mean(empties), len(precisions), len(empties), failures)


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else float("nan")
