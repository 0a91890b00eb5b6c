"""``clipdex info``, ``skipped`` and ``demo``: look at a library, or try clipdex on generated pictures."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.common import (
    fail_cleanly,
    json_option,
    library_option,
    library_path,
    plural,
    print_json,
    printable,
)


def _index_line(facts: dict) -> str:
    """The index's kind and shape: "ivf (auto), 1024 lists, nprobe 48, recall@10 0.962 measured when built"."""
    kind, setting = facts.get("index_type"), facts["index_setting"]
    if kind is None:
        return f"not built yet ({setting}), generation {facts['generation']}"
    line = f"{kind} ({setting})"
    if kind == "ivf":
        line += (f", {facts['index_nlist']} lists, nprobe {facts['index_nprobe']}, recall@10 "
                 f"{facts['index_recall_at_10']:.3f} measured when built, trained on {facts['index_trained_on']:,} "
                 "pictures")
    else:
        line += ", exact"
    return line + f", generation {facts['generation']}"


def _rows(facts: dict) -> list[tuple[str, str]]:
    """``clipdex info`` as (heading, value) lines: the library first, then what it holds."""
    rows = [
        ("library", facts["library"] + ("  (the demo library)" if facts["demo"] else "")),
        ("pictures", str(facts["images"])),
        ("skipped files", str(facts["skipped"]) + ("  (clipdex skipped lists them)" if facts["skipped"] else "")),
        ("tagged", f"{plural(facts['tagged_images'], 'picture', 'pictures')}, "
                   f"{plural(facts['tag_labels'], 'label', 'labels')}"),
        ("model", f"{facts['model'] or 'none yet'}, {facts['embedding_dim'] or '?'}-dimensional vectors"),
        ("index", _index_line(facts)),
        ("size on disk", f"{facts['size_bytes'] / 1e6:.1f} MB"),
        ("probes", ", ".join(facts["probes"]) or "none"),
        ("other models", ", ".join(f"{m['model']} ({m['pictures']} of {m['total']} pictures"
                                   f"{', building' if m['building'] else ''})" for m in facts["held_models"])
         or "none  (clipdex models)"),
    ]
    shown = {"library", "demo", "images", "skipped", "tagged_images", "tag_labels", "model", "embedding_dim",
             "index_type", "index_setting", "index_nlist", "index_nprobe", "index_recall_at_10", "index_trained_on",
             "index_generation", "generation", "size_bytes", "probes", "held_models"}
    return rows + [(key.replace("_", " "), ", ".join(f"{k}={v}" for k, v in value.items())
                    if isinstance(value, dict) else str(value)) for key, value in facts.items() if key not in shown]


@click.command()
@library_option
@json_option
@fail_cleanly
def info(library: Path | None, as_json: bool) -> None:
    """Show the library's folder, counts, model, index and size on disk."""
    from clipdex.classify.probe import list_probes
    from clipdex.demo import DEMO_META
    from clipdex.library import Library, held

    lib = Library.open(library_path(library))
    facts = {**lib.info(), "demo": lib.get_meta(DEMO_META) == "1", "probes": [p["name"] for p in list_probes(lib)],
             "held_models": [m.as_dict() for m in held.listing(lib) if not m.active]}
    if as_json:
        print_json(facts)
        return
    for heading, value in _rows(facts):
        click.echo(f"{heading:<14} {printable(value)}")


@click.command()
@library_option
@json_option
@fail_cleanly
def skipped(library: Path | None, as_json: bool) -> None:
    """List the files the indexer skipped, with the reason (each is retried once it changes)."""
    from clipdex.library import Library

    lib = Library.open(library_path(library))
    rows = lib.skipped()
    if as_json:
        print_json([{"path": p, "reason": r} for p, r in rows])
        return
    if not rows:
        click.echo(f"No skipped files in {lib.location}.")
        return
    click.echo(f"{plural(len(rows), 'skipped file', 'skipped files')} in {lib.location} (retried once they change):")
    for path, reason in rows:
        click.echo(f"{printable(path)}\t{printable(reason)}")


@click.command()
@click.option("--library", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo library [default: a 'demo-library' folder beside the default "
              "library; CLIPDEX_LIBRARY is not used, so your own library is never touched].")
@click.option("--pictures", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the generated pictures [default: LIBRARY/../demo-pictures].")
@json_option
@fail_cleanly
def demo(library: Path | None, pictures: Path | None, as_json: bool) -> None:
    """Offline demo: generate pictures, index them with the tiny model, search and tag.

    It ends with commands to try next, which work exactly as printed.
    """
    from clipdex.demo import run_demo
    from clipdex.library import demo_library_path

    lib_path = library or demo_library_path()
    report = run_demo(lib_path, pictures or lib_path.with_name("demo-pictures"),
                      echo=None if as_json else click.echo)
    if as_json:
        print_json(report)
