"""``clipdex duplicates``: groups of pictures held more than once, with the one to keep."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click

from clipdex.cli.common import fail_cleanly, library_option, library_path, plural, print_json, printable

_STAGES = {"vectors": "comparing vectors", "pixels": "checking pixels"}


def _progress(stage: str, done: int, total: int) -> None:
    """One self-overwriting line on a terminal's stderr."""
    end = "\n" if done >= total else ""
    click.echo(f"\r{_STAGES.get(stage, stage)}: {done:,}/{total:,}", err=True, nl=False)
    if end:
        click.echo("", err=True)


@click.command()
@click.option("--threshold", type=float, default=None, metavar="T",
              help="Cosine similarity from which two pictures' vectors make them candidates, confirmed by their "
              "pixels [default: 0.9; 0.3 for the tiny demo model].")
@click.option("--keep", type=click.Choice(["largest", "oldest", "newest", "shortest-path"]), default="largest",
              show_default=True, help="Which picture of a group to keep: most pixels (then the one with a capture "
              "date, then bytes), earliest or latest capture date (else file time), or shortest path.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one row per picture, with its group.")
@library_option
@fail_cleanly
def duplicates(threshold: float | None, keep: str, as_json: bool, as_csv: bool, library: Path | None) -> None:
    """List groups of duplicates: the same bytes, or a copy resized, recompressed, lightly cropped, rotated
    by EXIF or converted between PNG and JPEG. Two photos of one subject are not duplicates."""
    from clipdex.duplicates import find_duplicates
    from clipdex.errors import UsageError
    from clipdex.library import Library

    if as_json and as_csv:
        raise UsageError("choose one of --json and --csv")
    lib = Library.open(library_path(library))
    groups = find_duplicates(lib, threshold, keep, progress=_progress if sys.stderr.isatty() else None)
    if as_json:
        print_json({"groups": [g.as_dict() for g in groups]})
    elif as_csv:
        out = csv.writer(sys.stdout)
        out.writerow(["group", "kind", "keep", "id", "path", "width", "height", "size", "captured_at"])
        for n, g in enumerate(groups, 1):
            for p in g.pictures:
                out.writerow([n, g.kind, "yes" if p is g.keeper else "no", p.id, p.path, p.width, p.height, p.size,
                              p.captured_at.isoformat() if p.captured_at else ""])
    elif not groups:
        click.echo(f"No duplicates among the {plural(lib.count(), 'picture', 'pictures')} in {lib.location}.")
    else:
        extra = sum(len(g.pictures) - 1 for g in groups)
        click.echo(f"{plural(len(groups), 'group', 'groups')} of duplicates ({plural(extra, 'picture', 'pictures')} "
                   f"could go; keeping the {keep}):")
        for n, g in enumerate(groups, 1):
            click.echo(f"\n#{n} {g.kind}")
            for p in g.pictures:
                mark = "keep" if p is g.keeper else "    "
                taken = p.captured_at.strftime("%Y-%m-%d") if p.captured_at else "-"
                click.echo(f"  {mark}  {p.width}x{p.height}  {p.size:>10,} B  {taken:<10}  {printable(p.path)}")
