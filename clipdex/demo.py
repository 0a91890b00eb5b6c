"""``clipdex demo``: the whole job offline, on generated pictures and the tiny model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from clipdex.classify.tagging import export_tags, tag_library
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.search import build_query, search
from clipdex.synthetic import COLORS, write_collection

DEMO_QUERIES = ("a red circle", "a blue square", "a yellow star", "a photo of a green triangle")


def run_demo(library: Path, pictures: Path, echo: Callable[[str], None] | None = None) -> dict:
    """Generate pictures, index, search and tag them; return what was found."""
    say = echo or (lambda _msg: None)
    truth = write_collection(pictures, per_class=3, seed=7)
    say(f"Generated {len(truth)} pictures of coloured shapes in {pictures}")
    lib = Library.create(library)
    stats = Indexer(lib, TINY_MODEL, progress=False).run([str(pictures)])
    say(f"Indexed into {lib.path}: {stats.summary()}")
    encoder = lib.encoder_for(TINY_MODEL)
    by_path = {str(p.resolve()): s for p, s in truth.items()}
    report: dict = {"library": str(lib.path), "pictures": str(pictures), "index": stats.as_dict(), "searches": []}
    for text in DEMO_QUERIES:
        hits = search(lib, build_query(encoder, text), 5)
        report["searches"].append({"query": text, "results": [h.as_dict() for h in hits]})
        say(f'\nclipdex search "{text}"')
        for h in hits:
            shown = by_path.get(h.path)
            say(f"  {h.score:.3f}  {Path(h.path).parent.name}/{Path(h.path).name}"
                + (f"  ({shown.label})" if shown else ""))
    labels = list(COLORS)
    tagged = tag_library(lib, encoder, labels)
    rows = json.loads(export_tags(lib, "json"))
    right = sum(1 for r in rows if by_path.get(r["path"]) and by_path[r["path"]].color == r["label"])
    accuracy = right / len(rows) if rows else 0.0
    report["tagging"] = {"labels": labels, **tagged.as_dict(), "accuracy": accuracy}
    say(f'\nclipdex tag --labels "{",".join(labels)}"')
    say(f"  tagged {tagged.images} pictures; {right}/{len(rows)} got their true colour ({accuracy:.0%})")
    return report
