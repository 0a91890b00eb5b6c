"""``clipdex tag`` and ``clipdex tags``: zero-shot tagging and the stored tags."""

from __future__ import annotations

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
    plural,
    print_json,
    printable,
)

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library
    from clipdex.library.tags import TagStats


def _tag_line(t: dict | None) -> str:
    return f"{t['label']} {t['probability']:.3f}" if t else ""


def _print_stats(stats: TagStats) -> None:
    """The counts line; label counts after a real run, a few examples after a dry run."""
    counts = f"{stats.added} added, {stats.changed} changed, {stats.removed} removed, {stats.unchanged} unchanged"
    where = f'{stats.images} pictures (pass "{stats.pass_name}")'
    if stats.held_back:
        counts += f"; {stats.held_back} held back (labels a person took off)"
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
@click.option("--set", "set_name", default=None, metavar="NAME",
              help="Name this pass: running --set NAME again (any labels) replaces what it gave before.")
@click.option("--multi-label", is_flag=True, help="Keep every label at or above --threshold, not just the top one.")
@click.option("--threshold", default=0.5, show_default=True, type=float, help="Probability cut for --multi-label.")
@click.option("--folder", default=None, type=click.Path(path_type=Path), help="Only tag pictures under this folder.")
@click.option("--dry-run", is_flag=True, help="Say what would be added, changed and removed, with examples; "
              "write nothing.")
@backend_option
@json_option
@fail_cleanly
def tag(library: Path | None, labels: str | None, labels_file: Path | None, templates: tuple[str, ...],
        probe_name: str | None, set_name: str | None, multi_label: bool, threshold: float, folder: Path | None,
        dry_run: bool, backend: str | None, as_json: bool) -> None:
    """Tag the library zero-shot (or with --probe): each picture gets its most probable label(s).

    Each label set (or probe, or --set NAME) is its own pass: another label set adds its
    tags to the earlier ones; running the same label set again replaces only what it gave
    before. Tags a person gave or took off (clipdex tags add/remove) are never changed.
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
                               threshold=threshold, folder=where, dry_run=dry_run, set_name=set_name)
    else:
        from clipdex.classify.tagging import parse_labels, tag_library

        names = parse_labels(labels, labels_file)
        lib = Library.open(library_path(library))
        encoder = loaded(lib.encoder_for(None, backend=backend))
        stats = tag_library(lib, encoder, names, list(templates) or None, multi_label=multi_label,
                            threshold=threshold, folder=where, dry_run=dry_run, set_name=set_name)
    if as_json:
        print_json(stats.as_dict())
    else:
        _print_stats(stats)


@click.group()
def tags() -> None:
    """Work with stored tags."""


@tags.command("export")
@library_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "xmp"]), default="csv", show_default=True,
              help="xmp: a sidecar per tagged picture (photo.jpg.xmp), merged into any already there.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@click.option("--into", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="xmp: write sidecars under this folder, in the pictures' own layout, not next to them.")
@click.option("--naming", type=click.Choice(["full", "stem"]), default="full", show_default=True,
              help="xmp: photo.jpg.xmp (digiKam, darktable) or photo.xmp (Lightroom, Capture One).")
@json_option
@fail_cleanly
def tags_export(library: Path | None, fmt: str, output: Path | None, into: Path | None, naming: str,
                as_json: bool) -> None:
    """Export every tag with its picture path, probability, source and pass (or as XMP sidecars)."""
    from clipdex.classify.tagging import export_tags
    from clipdex.errors import UsageError
    from clipdex.library import Library

    lib = Library.open(library_path(library))
    if fmt == "xmp":
        if output:
            raise UsageError("--output is for csv and json; sidecars go next to the pictures, or --into a folder")
        from clipdex.sidecars import export_sidecars

        report = export_sidecars(lib, into, naming)
        if as_json:
            print_json(report.as_dict())
            return
        click.echo(f"{report.pictures} pictures: {report.created} sidecars created, {report.merged} merged, "
                   f"{report.unchanged} unchanged, {len(report.skipped)} left alone")
        for item in report.skipped:
            click.echo(f"  {printable(item['path'])}: {item['reason']}")
        return
    if into is not None:
        raise UsageError("--into is for --format xmp")
    if as_json:
        raise UsageError("--json is for --format xmp's report; for the tags as JSON use --format json")
    text = export_tags(lib, fmt)
    if not output:
        click.echo(text.rstrip("\n"))
        return
    try:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None


def _person_edit(library: Path | None, paths: tuple[str, ...], label: str, action: str, as_json: bool) -> None:
    from clipdex.library import Library
    from clipdex.library.persontags import add_tag, picture_ids, remove_tag

    lib = Library.open(library_path(library))
    ids = picture_ids(lib, list(paths))
    _not_a_path(lib, label, action)
    edit = (add_tag if action == "add" else remove_tag)(lib, ids, label)
    if as_json:
        print_json(edit.as_dict())
        return
    shown = printable(edit.label)
    if action == "add":
        lifted = f"; {edit.rejections} earlier removals lifted" if edit.rejections else ""
        click.echo(f'tagged {plural(edit.changed, "picture", "pictures")} "{shown}" '
                   f"({edit.pictures - edit.changed} had it already){lifted}")
        return
    passes = ", ".join(f"{n} from {printable(name)}" for name, n in sorted(edit.tags_removed.items()))
    if not edit.changed:
        click.echo(f'"{shown}" was taken off {"that picture" if edit.pictures == 1 else "those pictures"} '
                   "before; tagging passes will not give it back")
        return
    of = f" of the {edit.pictures} named" if edit.pictures != edit.changed else ""
    click.echo(f'took "{shown}" off {plural(edit.changed, "picture", "pictures")}{of}'
               f"{f' ({passes})' if passes else ''}; tagging passes will not give it back")


def _not_a_path(lib: Library, label: str, action: str) -> None:
    """Refuse a LABEL that names a file, a folder or a picture: the label was forgotten, most likely."""
    from clipdex.errors import UsageError
    from clipdex.library.catalog import ids_at_paths
    from clipdex.library.names import check_name

    path = os.path.abspath(os.path.expanduser(check_name(label, "label")))
    if os.path.isdir(path):
        what = "a folder"
    elif os.path.lexists(path) or ids_at_paths(lib, [path]):
        what = "a picture" if ids_at_paths(lib, [path]) else "a file"
    else:
        return
    raise UsageError(f"the last argument is the label, and {printable(label)} is {what}: did you forget the label? "
                     f"(clipdex tags {action} PATH... LABEL; for a label that is also a name here, run it from "
                     "another folder)")


@tags.command("add")
@library_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.argument("label")
@json_option
@fail_cleanly
def tags_add(library: Path | None, paths: tuple[str, ...], label: str, as_json: bool) -> None:
    """Tag pictures (or every picture under a folder) LABEL yourself; no tagging pass changes it."""
    _person_edit(library, paths, label, "add", as_json)


@tags.command("remove")
@library_option
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.argument("label")
@json_option
@fail_cleanly
def tags_remove(library: Path | None, paths: tuple[str, ...], label: str, as_json: bool) -> None:
    """Take LABEL off pictures, whichever pass gave it; re-running a pass will not give it back."""
    _person_edit(library, paths, label, "remove", as_json)


@tags.command("drop-set")
@library_option
@click.argument("name")
@json_option
@fail_cleanly
def tags_drop_set(library: Path | None, name: str, as_json: bool) -> None:
    """Remove the tagging pass NAME and every tag it gave (other passes and people's tags stay)."""
    from clipdex.library import Library
    from clipdex.library.tags import drop_pass

    gone = drop_pass(Library.open(library_path(library)), name)
    if as_json:
        print_json({"pass": name, "tags_removed": gone})
    else:
        click.echo(f'dropped pass "{printable(name)}": {plural(gone, "tag", "tags")} removed')


@tags.command("sets")
@library_option
@json_option
@fail_cleanly
def tags_sets(library: Path | None, as_json: bool) -> None:
    """List the tagging passes: name, kind, tags, labels and model."""
    from clipdex.library import Library
    from clipdex.library.tags import pass_rows

    rows = pass_rows(Library.open(library_path(library)))
    if as_json:
        print_json(rows)
        return
    for r in rows:
        line = f"{printable(r['name'])}  [{r['kind']}, {plural(r['tags'], 'tag', 'tags')}]"
        if r["labels"]:
            line += "  labels: " + printable(", ".join(r["labels"]))
        if r["templates"]:
            line += "  templates: " + printable(" | ".join(r["templates"]))
        if r["model"]:
            line += f"  model: {r['model']}"
        click.echo(line)
