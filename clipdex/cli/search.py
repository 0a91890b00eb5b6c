"""``clipdex search``: find pictures by text, by example, or both."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipdex.cli.common import (
    backend_option,
    fail_cleanly,
    json_option,
    library_option,
    library_path,
    loaded,
    model_option,
    plural,
    print_json,
    printable,
    request_quick_exit,
)

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.search import EmptyReason

#: How many labels an "unknown tag" answer lists before it stops with "…".
SHOWN_LABELS = 6


def explain(reason: EmptyReason, first: dt.date | None, last: dt.date | None) -> str:
    """One reason for an empty answer, in the CLI's words (the options it names are the CLI's)."""
    if reason.kind == "empty_library":
        return "the library holds no pictures"
    if reason.kind == "unknown_tag":
        if not reason.known:
            return f"no picture has the tag {reason.tag!r} (no picture is tagged yet: see clipdex tag --help)"
        shown = ", ".join(reason.known[:SHOWN_LABELS]) + (", …" if len(reason.known) > SHOWN_LABELS else "")
        return f"no picture has the tag {reason.tag!r} (tags: {shown})"
    if reason.kind == "empty_folder":
        return f"no indexed picture under {printable(reason.folder)}"
    if reason.kind == "empty_date_range":
        return f"--from {first} is after --to {last}"
    if reason.kind == "none_in_date_range":
        wanted = (f"on or after {first}" if last is None else f"on or before {last}" if first is None
                  else f"between {first} and {last}")
        return (f"no picture was taken {wanted} (capture dates run from {reason.first:%Y-%m-%d} "
                f"to {reason.last:%Y-%m-%d})")
    if reason.kind == "undated":
        return (plural(reason.count, "picture has", "pictures have")
                + f" no capture date and date filters leave {'it' if reason.count == 1 else 'them'} out")
    return "no picture matches all the filters together, though each filter matches some"


@click.command()
@click.argument("query", required=False)
@library_option
@model_option
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="Search by this example picture.")
@click.option("--include-self", is_flag=True,
              help="Keep the --image picture itself in the results when it is in the library (left out by default, "
              "like 'More like this').")
@click.option("--not", "negative", metavar="TEXT", help="Push results away from this concept.")
@click.option("-k", "k", default=None, type=click.IntRange(1, 1000),
              help="Number of results, 1-1000 [default: 20] (the web API returns the same ranking in pages of up "
              "to 100). With --only-matches: show at most this many of the matches [default: all].")
@click.option("--only-matches", is_flag=True,
              help="Every picture that matches the text query (calibrated relevance of at least 0.5), however "
              "many, and none when nothing does. With --not, the pictures matching that text are left out.")
@click.option("--sort", type=click.Choice(["score", "date"]), default="score", show_default=True,
              help="Order by relevance, or by capture date (oldest first, undated pictures last).")
@click.option("--tag", default=None, help="Only pictures tagged with this label.")
@click.option("--folder", default=None, type=click.Path(path_type=Path), help="Only pictures under this folder.")
@click.option("--from", "first", default=None, metavar="YYYY-MM-DD",
              help="Only pictures taken on or after this day (undated pictures are left out).")
@click.option("--to", "last", default=None, metavar="YYYY-MM-DD",
              help="Only pictures taken on or before this day (undated pictures are left out).")
@backend_option
@json_option
@fail_cleanly
def search(query: str | None, library: Path | None, model: str | None, image: Path | None, include_self: bool,
           negative: str | None, k: int | None, only_matches: bool, sort: str, tag: str | None, folder: Path | None,
           first: str | None, last: str | None,
           backend: str | None, as_json: bool) -> None:
    """Find the pictures that best match QUERY (text), --image, or both.

    Filters (--tag, --folder, --from/--to) combine with any search; when nothing is found,
    the answer says which filter left everything out. Text queries show a calibrated relevance
    (0..1; 0.5 and above is a match), --json also the raw cosine ("score").
    """
    request_quick_exit()
    from clipdex.errors import LibraryError, UsageError
    from clipdex.library import Library
    from clipdex.library.catalog import ids_at_paths
    from clipdex.search import build_query, day_range, find_matches, parse_day, sort_hits, why_empty, with_relevance
    from clipdex.search import search as run_search
    from clipdex.search.matches import closest_miss
    from clipdex.search.query import one_model

    if not (query and query.strip()) and image is None:
        raise UsageError("nothing to search for: give a text query, --image PATH, or both")
    if only_matches and image is not None:
        raise UsageError("--only-matches needs a text query without --image (relevance is calibrated for text)")
    first_day, last_day = parse_day(first, "--from"), parse_day(last, "--to")
    if first_day and last_day and first_day > last_day:
        raise UsageError(f"--from {first_day} is after --to {last_day}")
    since, until = day_range(first_day, last_day)
    lib = Library.open(library_path(library))
    encoder = loaded(lib.encoder_for(model, backend=backend, quick_start=True))
    held = lib.index().generation  # the snapshot the search starts from (see one_model below)
    vector = build_query(encoder, text=query, image=image, negative=negative)
    text_only = image is None
    has_not = bool(negative and negative.strip())
    # relevance is the positive text's; --not ranks (top k) or leaves out its own matches (--only-matches)
    positive = build_query(encoder, text=query) if text_only and has_not else vector
    unwanted = build_query(encoder, text=negative) if text_only and has_not else None
    exclude = None
    if image is not None and not include_self:
        exclude = ids_at_paths(lib, sorted({os.path.abspath(image), os.path.realpath(image)})) or None
    filters = {"tag": tag, "folder": str(folder) if folder else None, "since": since, "until": until}
    matches = None
    overtaken = LibraryError(f"library {lib.path} switched models during this search: run it again")
    try:
        if only_matches:
            hits = sort_hits(find_matches(lib, encoder, positive, exclude=exclude, negative=unwanted, **filters),
                             sort)
            matches = len(hits)
            hits = hits[:k] if k else hits
        else:
            hits = run_search(lib, vector, k or 20, exclude=exclude, **filters)
            hits = sort_hits(with_relevance(lib, encoder, positive, hits) if text_only else hits, sort)
        reasons = [] if hits else why_empty(lib, **filters)
        only_self = not hits and bool(exclude) and bool(run_search(lib, vector, 1, **filters))
        miss = None
        if only_matches and not hits and not reasons:  # the filters leave pictures, none of them matches
            miss = closest_miss(lib, encoder, positive, negative=unwanted, exclude=exclude, **filters)
    except (ValueError, RuntimeError):  # widths differ: a model switch overtook the search, or a real fault
        if one_model(lib, encoder, held):
            raise
        raise overtaken from None
    if not one_model(lib, encoder, held):
        raise overtaken
    if as_json:
        why = [{"kind": "only_self"}] if only_self else [r.as_dict() for r in reasons]
        body = {"query": query, "image": str(image) if image else None, "not": negative,
                "results": [h.as_dict() for h in hits], "why_empty": [miss] if miss else why}
        if matches is not None:
            body["matches"] = matches
        print_json(body)
        return
    if only_self:
        click.echo("No results: the only match is the --image picture itself (--include-self keeps it)")
    elif miss is not None:
        click.echo(no_match_line(miss, filtered=any(v is not None for v in filters.values()), negative=negative))
    elif not hits:
        click.echo("No results: " + "; ".join(explain(r, first_day, last_day) for r in reasons) if reasons
                   else "No results.")
    for h in hits:
        shown = f"{h.relevance:.2f}" if h.relevance is not None else f"{h.score:.4f}"
        date = "" if sort != "date" else f"  {h.captured_at:%Y-%m-%d}" if h.captured_at else "  undated   "
        click.echo(f"{shown}{date}  {printable(h.path)}")
    if matches is not None and matches > len(hits):
        click.echo(f"(the first {len(hits)} of {plural(matches, 'match', 'matches')}: -k {k} shows no more)", err=True)


def no_match_line(miss: dict, filtered: bool, negative: str | None) -> str:
    """The CLI's words for :func:`clipdex.search.matches.closest_miss`."""
    where = f" among the {plural(miss['among'], 'picture', 'pictures')} the filters keep" if filtered else ""
    closest = miss["closest"]
    if closest is None:
        return (f"No picture matches{where} once --not {negative!r} leaves out "
                f"{plural(miss['left_out'], 'match', 'matches')}")
    dropped = f"; --not {negative!r} left out the ones that do" if miss["left_out"] else ""
    return (f"No picture matches{where} (the closest, {printable(closest['path'])}, has relevance "
            f"{closest['relevance']:.2f}; a match needs 0.50){dropped}")
