"""``clipdex tag`` and ``clipdex tags``: zero-shot tagging and the stored tags."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.common import fail_cleanly, json_option, library_option, library_path, print_json


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
@json_option
@fail_cleanly
def tag(library: Path | None, labels: str | None, labels_file: Path | None, templates: tuple[str, ...],
        probe_name: str | None, multi_label: bool, threshold: float, folder: Path | None, as_json: bool) -> None:
    """Tag the library zero-shot (or with --probe): each picture gets its most probable label(s)."""
    from clipdex.classify.tagging import parse_labels, tag_library
    from clipdex.errors import UsageError
    from clipdex.library import Library

    where = str(folder) if folder else None
    if probe_name is not None:
        if labels or labels_file or templates:
            raise UsageError("--probe brings its own classes: drop --labels, --labels-file and --template")
        from clipdex.classify.probe import tag_with_probe

        stats = tag_with_probe(Library.open(library_path(library)), probe_name, multi_label=multi_label,
                               threshold=threshold, folder=where)
    else:
        names = parse_labels(labels, labels_file)
        lib = Library.open(library_path(library))
        stats = tag_library(lib, lib.encoder_for(None), names, list(templates) or None, multi_label=multi_label,
                            threshold=threshold, folder=where)
    if as_json:
        print_json(stats.as_dict())
        return
    click.echo(f"tagged {stats.images} pictures with {stats.tags_written} tags")
    for label, count in sorted(stats.counts.items(), key=lambda kv: -kv[1]):
        click.echo(f"{count:8d}  {label}")


@click.group()
def tags() -> None:
    """Work with stored tags."""


@tags.command("export")
@library_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@fail_cleanly
def tags_export(library: Path | None, fmt: str, output: Path | None) -> None:
    """Export every tag with its picture path and probability."""
    from clipdex.classify.tagging import export_tags
    from clipdex.library import Library

    text = export_tags(Library.open(library_path(library)), fmt)
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        click.echo(text.rstrip("\n"))
