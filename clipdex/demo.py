"""``clipdex demo``: the whole job offline, on generated pictures and the tiny model.

It ends with commands to try next that work exactly as printed: while the user has no
library of their own the demo library stands in for it (see
:func:`clipdex.library.resolve_library`); otherwise the commands name the demo library.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from pathlib import Path

from clipdex.classify.tagging import export_tags, tag_library
from clipdex.indexer import Indexer
from clipdex.library import Library, resolve_library
from clipdex.models import TINY_MODEL
from clipdex.search import build_query, search, with_relevance
from clipdex.synthetic import COLORS, write_collection

DEMO_QUERIES = ("a red circle", "a blue square", "a yellow star", "a photo of a green triangle")
#: The meta key marking a library as the demo's (``clipdex info`` says so).
DEMO_META = "demo"


def library_option_for(library: Path) -> str:
    """``' --library PATH'`` when a command without ``--library`` would open another library, else ``''``."""
    resolved, _ = resolve_library(os.environ.get("CLIPDEX_LIBRARY") or None)
    if resolved.expanduser().resolve() == Path(library).expanduser().resolve():
        return ""
    return f" --library {shlex.quote(str(library))}"


def next_steps(pictures: Path, opt: str) -> list[str]:
    """Commands to try after the demo; ``opt`` is :func:`library_option_for`'s answer."""
    example = shlex.quote(str(pictures / "blue" / "square-000.jpg"))
    return [
        f'clipdex search "a purple star"{opt}',
        f"clipdex search --image {example}{opt}",
        f'clipdex search "a shape" --tag red{opt}',
        f"clipdex info{opt}",
        f"clipdex serve{opt}",
    ]


def run_demo(library: Path, pictures: Path, echo: Callable[[str], None] | None = None) -> dict:
    """Generate pictures, index, search and tag them; return what was found and what to try next."""
    say = echo or (lambda _msg: None)
    truth = write_collection(pictures, per_class=3, seed=7)
    pictures = pictures.expanduser().resolve()
    say(f"Generated {len(truth)} pictures of coloured shapes in {pictures}")
    lib = Library.create(library)
    with lib.session() as s:
        Library.set_meta(s, DEMO_META, "1")
        s.commit()
    opt = library_option_for(lib.path)
    stats = Indexer(lib, TINY_MODEL, progress=False).run([str(pictures)])
    say(f"Indexed into {lib.path}: {stats.summary()}")
    encoder = lib.encoder_for(TINY_MODEL)
    by_path = {str(p.resolve()): s for p, s in truth.items()}
    report: dict = {"library": str(lib.path), "pictures": str(pictures), "index": stats.as_dict(), "searches": []}
    for text in DEMO_QUERIES:
        query = build_query(encoder, text)
        hits = with_relevance(lib, encoder, query, search(lib, query, 5))  # what clipdex search shows
        report["searches"].append({"query": text, "results": [h.as_dict() for h in hits]})
        say(f'\nclipdex search "{text}"{opt}')
        for h in hits:
            shown = by_path.get(h.path)
            say(f"  {h.relevance:.2f}  {Path(h.path).parent.name}/{Path(h.path).name}"
                + (f"  ({shown.label})" if shown else ""))
    labels = list(COLORS)
    tagged = tag_library(lib, encoder, labels)
    rows = json.loads(export_tags(lib, "json"))
    right = sum(1 for r in rows if by_path.get(r["path"]) and by_path[r["path"]].color == r["label"])
    accuracy = right / len(rows) if rows else 0.0
    report["tagging"] = {"labels": labels, **tagged.as_dict(), "accuracy": accuracy}
    say(f'\nclipdex tag --labels "{",".join(labels)}"{opt}')
    say(f"  tagged {tagged.images} pictures; {right}/{len(rows)} got their true colour ({accuracy:.0%})")
    steps = next_steps(pictures, opt)
    own = "clipdex index ~/Pictures"
    report["next"] = [*steps, own]
    say("\nNext, try:")
    say("\n".join(f"  {command}" for command in steps))
    say("The first searches by text, the second finds pictures like that one (leaving it out), the\n"
        "third keeps the pictures the tagging pass called red, and serve shows the same in a browser\n"
        "at http://127.0.0.1:8000/ (Ctrl-C stops it).")
    say("\nThen index your own pictures (the first run downloads the default model, about 600 MB):")
    say(f"  {own}")
    say("Any folders will do. From then on, commands without --library use your own library"
        + (f";\nadd --library {shlex.quote(str(lib.path))} to come back to the demo." if not opt else "."))
    return report
