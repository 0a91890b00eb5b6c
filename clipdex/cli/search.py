"""``clipdex search``: find pictures by text, by example, or both."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.common import fail_cleanly, json_option, library_option, library_path, model_option, print_json


@click.command()
@click.argument("query", required=False)
@library_option
@model_option
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="Search by this example picture.")
@click.option("--not", "negative", metavar="TEXT", help="Push results away from this concept.")
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(1, 1000), help="Number of results.")
@click.option("--tag", default=None, help="Only pictures tagged with this label.")
@click.option("--folder", default=None, type=click.Path(path_type=Path), help="Only pictures under this folder.")
@json_option
@fail_cleanly
def search(query: str | None, library: Path | None, model: str | None, image: Path | None, negative: str | None,
           k: int, tag: str | None, folder: Path | None, as_json: bool) -> None:
    """Find the pictures that best match QUERY (text), --image, or both."""
    from clipdex.library import Library
    from clipdex.search import build_query
    from clipdex.search import search as run_search

    lib = Library.open(library_path(library))
    encoder = lib.encoder_for(model)
    vector = build_query(encoder, text=query, image=image, negative=negative)
    hits = run_search(lib, vector, k, tag=tag, folder=str(folder) if folder else None)
    if as_json:
        print_json({"query": query, "image": str(image) if image else None, "not": negative,
                     "results": [h.as_dict() for h in hits]})
        return
    if not hits:
        click.echo("No results.")
    for h in hits:
        click.echo(f"{h.score:.4f}  {h.path}")
