"""``clipdex models``: the models a library holds vectors of; switch between them, drop one."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipdex.cli.common import backend_option, fail_cleanly, json_option, library_option, library_path, print_json, tell


def _table(entries: list) -> list[str]:
    rows = [("model", "pictures", "active", "complete")]
    for e in entries:
        state = "yes" if e.complete else ("building" if e.building else "no")
        rows.append((e.model, f"{e.pictures}/{e.total}", "yes" if e.active else "-", state))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]


@click.group(invoke_without_command=True)
@library_option
@json_option
@click.pass_context
@fail_cleanly
def models(ctx: click.Context, library: Path | None, as_json: bool) -> None:
    """List the models whose vectors the library holds: pictures covered, active, complete.

    Indexing with --model NAME builds another model's vectors beside the active one's and
    switches to it; the previous model's stay, so `models use` switches back without
    re-encoding (pictures indexed meanwhile are encoded then). `models drop` frees one.
    """
    if ctx.invoked_subcommand is not None:
        return
    from clipdex.library import Library
    from clipdex.library.held import listing

    entries = listing(Library.open(library_path(library)))
    if as_json:
        print_json([e.as_dict() for e in entries])
        return
    for line in _table(entries):
        click.echo(line)


@models.command("use")
@click.argument("name")
@library_option
@backend_option
@json_option
@fail_cleanly
def use(name: str, library: Path | None, backend: str | None, as_json: bool) -> None:
    """Switch the library to NAME, a model it holds: searches then use it.

    Pictures added or changed since NAME was last in use are encoded with it first (no folder
    is scanned); the model in use until now is held in turn.
    """
    from clipdex.indexer import Indexer
    from clipdex.library import Library
    from clipdex.library.held import find

    lib = Library.open(library_path(library))
    entry = find(lib, name)
    spec = entry.model if entry is not None else name
    interactive = sys.stderr.isatty()
    indexer = Indexer(lib, spec, backend=backend, progress=interactive, say=tell if interactive else None)
    stats = indexer.use()
    active = str(lib.model_spec)
    if as_json:
        print_json({"model": active, "kept": stats.reused, "encoded": stats.encoded, "removed": stats.removed,
                     "skipped": stats.skipped, "switched": stats.rebuilt})
        return
    if not stats.rebuilt:
        click.echo(f"{active} is already the library's model")
        return
    click.echo(f"now using {active}: {stats.reused} vectors kept, {stats.encoded} pictures encoded"
               + (f", {stats.removed} gone" if stats.removed else "")
               + (f", {stats.skipped} skipped" if stats.skipped else ""))


@models.command("drop")
@click.argument("name")
@library_option
@json_option
@fail_cleanly
def drop(name: str, library: Path | None, as_json: bool) -> None:
    """Forget the vectors of NAME, a model the library holds but is not using."""
    from clipdex.library import Library
    from clipdex.library.held import drop as drop_model

    entry = drop_model(Library.open(library_path(library)), name)
    if as_json:
        print_json({"dropped": entry.model, "vectors": entry.pictures})
        return
    click.echo(f"dropped {entry.model} ({entry.pictures} vectors)")
