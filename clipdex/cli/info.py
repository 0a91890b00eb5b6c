"""``clipdex info``, ``skipped`` and ``demo``: look at a library, or try clipdex on generated pictures."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.common import fail_cleanly, json_option, library_option, library_path, print_json


@click.command()
@library_option
@json_option
@fail_cleanly
def info(library: Path | None, as_json: bool) -> None:
    """Show counts, model, embedding size, index type and size on disk."""
    from clipdex.classify.probe import list_probes
    from clipdex.library import Library

    lib = Library.open(library_path(library))
    facts = {**lib.info(), "probes": [p["name"] for p in list_probes(lib)]}
    if as_json:
        print_json(facts)
        return
    for key, value in facts.items():
        if key == "size_bytes":
            value = f"{value / 1e6:.1f} MB"
        elif key == "probes":
            value = ", ".join(value) or "none"
        click.echo(f"{key.replace('_', ' '):>14}: {value}")


@click.command()
@library_option
@json_option
@fail_cleanly
def skipped(library: Path | None, as_json: bool) -> None:
    """List files the indexer skipped, with the reason."""
    from clipdex.library import Library

    rows = Library.open(library_path(library)).skipped()
    if as_json:
        print_json([{"path": p, "reason": r} for p, r in rows])
        return
    if not rows:
        click.echo("No skipped files.")
    for path, reason in rows:
        click.echo(f"{path}\t{reason}")


@click.command()
@click.option("--library", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo library [default: a 'demo-library' folder beside the default "
              "library; CLIPDEX_LIBRARY is not used, so your own library is never touched].")
@click.option("--pictures", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the generated pictures [default: LIBRARY/../demo-pictures].")
@json_option
@fail_cleanly
def demo(library: Path | None, pictures: Path | None, as_json: bool) -> None:
    """Offline demo: generate pictures, index them with the tiny model, search and tag."""
    from clipdex.demo import run_demo
    from clipdex.library import default_library_path

    lib_path = library or default_library_path().with_name("demo-library")
    report = run_demo(lib_path, pictures or lib_path.with_name("demo-pictures"),
                      echo=None if as_json else click.echo)
    if as_json:
        print_json(report)
