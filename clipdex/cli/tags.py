"""``clipdex tag`` and ``clipdex tags``: zero-shot tagging and the stored tags."""

from __future__ import annotations

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
    print_json,
)

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library.tags import TagStats


def _tag_line(t: dict | None) -> str:
    return f"{t['label']} {t['probability']:.3f}" if t else ""


def _print_stats(stats: TagStats) -> None:
    """The counts line; label counts after a real run, a few examples after a dry run."""
    counts = f"{stats.added} added, {stats.changed} changed, {stats.removed} removed, {stats.unchanged} unchanged"
    where = f'{stats.images} pictures (pass "{stats.pass_name}")'
    if not stats.dry_run:
        click.echo(f"tagged {where}: {stats.tags_written} tags; {counts}")
        for label, count in sorted(stats.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            click.echo(f"{count:8d}  {label}")
        return
    click.echo(f"dry run, nothing written: tagging {where} would give {stats.tags_written} tags; {counts}")
    for e in stats.examples:
        moved = " -> ".join(t for t in (_tag_line(e["before"]), _tag_line(e["after"])) if t)
        click.echo(f"  {e['change']:<8} {moved}  {e['path']}")


@click.command()
@library_option
@click.option("--labels", default=None,
              help='Comma-separated labels, e.g. "cat,dog,car"; LABEL=PROMPT encodes PROMPT but stores LABEL.')
@click.option("--labels-file", type=click.Path(dir_okay=False, path_type=Path), help="One label per line.")
@click.option("--template", "templates", multiple=True,
              help='Prompt template with {} for the label (repeatable; averaged) [default: "a photo of a {}."].')
@click.option("--probe", "probe_name", default=None, help="Tag with this trained probe instead of words.")
@click.option("--multi-label", is_flag=True, help="Keep every label at or above --threshold, not just the top one.")
@click.option("--threshold", default=0.5, show_default=True, type=float, help="Probability cut for --multi-label.")
@click.option("--folder", default=None, type=click.Path(path_type=Path), help="Only tag pictures under this folder.")
@click.option("--dry-run", is_flag=True, help="Say what would be added, changed and removed, with examples; "
              "write nothing.")
@backend_option
@json_option
@fail_cleanly
def tag(library: Path | None, labels: str | None, labels_file: Path | None, templates: tuple[str, ...],
        probe_name: str | None, multi_label: bool, threshold: float, folder: Path | None, dry_run: bool,
        backend: str | None, as_json: bool) -> None:
    """Tag the library zero-shot (or with --probe): each picture gets its most probable label(s).

    Each label set (or probe) is its own pass: another label set adds its tags to the
    earlier ones; running the same label set again replaces only what it gave before.
    """
    from clipdex.errors import UsageError
    from clipdex.library import Library

    if sum(x is not None for x in (labels, labels_file, probe_name)) != 1:
        raise UsageError("give exactly one of --labels, --labels-file or --probe")
    if probe_name is not None and templates:
        raise UsageError("--probe brings its own classes: drop --template")
    if multi_label and not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be above 0 and at most 1, got {threshold:g}")
    where = str(folder) if folder else None
    if probe_name is not None:
        from clipdex.classify.probe import tag_with_probe

        stats = tag_with_probe(Library.open(library_path(library)), probe_name, multi_label=multi_label,
                               threshold=threshold, folder=where, dry_run=dry_run)
    else:
        from clipdex.classify.tagging import parse_labels, tag_library

        names = parse_labels(labels, labels_file)
        lib = Library.open(library_path(library))
        encoder = loaded(lib.encoder_for(None, backend=backend))
        stats = tag_library(lib, encoder, names, list(templates) or None, multi_label=multi_label,
                            threshold=threshold, folder=where, dry_run=dry_run)
    if as_json:
        print_json(stats.as_dict())
    else:
        _print_stats(stats)


@click.group()
def tags() -> None:
    """Work with stored tags."""


@tags.command("export")
@library_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@fail_cleanly
def tags_export(library: Path | None, fmt: str, output: Path | None) -> None:
    """Export every tag with its picture path, probability, source and pass."""
    from clipdex.classify.tagging import export_tags
    from clipdex.errors import UsageError
    from clipdex.library import Library

    text = export_tags(Library.open(library_path(library)), fmt)
    if not output:
        click.echo(text.rstrip("\n"))
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
