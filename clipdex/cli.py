"""The ``clipdex`` command line: parses, calls the library, prints.

Heavy modules (torch, open_clip, faiss) are imported inside the commands, so
``clipdex --help`` answers at once. Library errors become ``Error: ...`` on stderr
with the error's exit code; nothing here exits on its own.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from clipdex import __version__
from clipdex.errors import ClipdexError


def _fail_cleanly(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClipdexError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def library_option(fn: Callable) -> Callable:
    return click.option(
        "--library",
        "library",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="CLIPDEX_LIBRARY",
        default=None,
        help="Library directory (env CLIPDEX_LIBRARY; default: the per-user data directory).",
    )(fn)


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(fn)


def model_option(fn: Callable) -> Callable:
    return click.option(
        "--model",
        default=None,
        metavar="SPEC",
        help="open_clip model: ARCH:PRETRAINED_TAG, hf-hub:ORG/REPO, local-dir:/path, or 'tiny' "
        "(the built-in demo model). Default: the library's model, or ViT-B-32:datacomp_xl_s13b_b90k "
        "for a new library.",
    )(fn)


def _path(library: Path | None) -> Path:
    from clipdex.library import default_library_path

    return library or default_library_path()


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipdex")
def main() -> None:
    """Search and tag your pictures by what they show.

    \b
    Start with:   clipdex demo                  (offline, tiny built-in model)
    Then:         clipdex index ~/Pictures      (incremental; re-run any time)
                  clipdex search "a dog on a beach at sunset"
                  clipdex tag --labels "cat,dog,car"
    """


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@library_option
@model_option
@click.option("--rebuild", is_flag=True, help="Re-encode every picture (also switches the library to --model).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 256), help="Decoder processes [default: CPU count].")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds one file may take to decode before it is skipped.")
@click.option("--device", default=None, help="torch device (cuda, cpu, ...) [default: cuda if present].")
@json_option
@_fail_cleanly
def index(paths: tuple[Path, ...], library: Path | None, model: str | None, rebuild: bool, batch_size: int,
          workers: int | None, timeout: float, device: str | None, as_json: bool) -> None:
    """Index the pictures under PATHS (folders or files).

    Only new and changed files are encoded; deleted ones are dropped and moved ones keep
    their vector. Unreadable files are skipped and listed by `clipdex skipped`.
    """
    from clipdex.indexer import Indexer
    from clipdex.library import Library

    lib = Library.create(_path(library))
    indexer = Indexer(lib, model, batch_size=batch_size, workers=workers, timeout=timeout, device=device,
                      progress=None if not as_json else False)
    stats = indexer.run([str(p) for p in paths], rebuild=rebuild)
    if as_json:
        _print_json(stats.as_dict())
    else:
        click.echo(stats.summary())


@main.command()
@click.argument("query", required=False)
@library_option
@model_option
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="Search by this example picture.")
@click.option("--not", "negative", metavar="TEXT", help="Push results away from this concept.")
@click.option("-k", "k", default=20, show_default=True, type=click.IntRange(1, 1000), help="Number of results.")
@click.option("--tag", default=None, help="Only pictures tagged with this label.")
@click.option("--folder", default=None, type=click.Path(path_type=Path), help="Only pictures under this folder.")
@json_option
@_fail_cleanly
def search(query: str | None, library: Path | None, model: str | None, image: Path | None, negative: str | None,
           k: int, tag: str | None, folder: Path | None, as_json: bool) -> None:
    """Find the pictures that best match QUERY (text), --image, or both."""
    from clipdex.library import Library
    from clipdex.search import build_query
    from clipdex.search import search as run_search

    lib = Library.open(_path(library))
    encoder = lib.encoder_for(model)
    vector = build_query(encoder, text=query, image=image, negative=negative)
    hits = run_search(lib, vector, k, tag=tag, folder=str(folder) if folder else None)
    if as_json:
        _print_json({"query": query, "image": str(image) if image else None, "not": negative,
                     "results": [h.as_dict() for h in hits]})
        return
    if not hits:
        click.echo("No results.")
    for h in hits:
        click.echo(f"{h.score:.4f}  {h.path}")


@main.command()
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
@_fail_cleanly
def tag(library: Path | None, labels: str | None, labels_file: Path | None, templates: tuple[str, ...],
        probe_name: str | None, multi_label: bool, threshold: float, folder: Path | None, as_json: bool) -> None:
    """Tag the library zero-shot (or with --probe): each picture gets its most probable label(s)."""
    from clipdex.errors import UsageError
    from clipdex.library import Library
    from clipdex.search.tagging import parse_labels, tag_library

    where = str(folder) if folder else None
    if probe_name is not None:
        if labels or labels_file or templates:
            raise UsageError("--probe brings its own classes: drop --labels, --labels-file and --template")
        from clipdex.search.probe import tag_with_probe

        stats = tag_with_probe(Library.open(_path(library)), probe_name, multi_label=multi_label,
                               threshold=threshold, folder=where)
    else:
        names = parse_labels(labels, labels_file)
        lib = Library.open(_path(library))
        stats = tag_library(lib, lib.encoder_for(None), names, list(templates) or None, multi_label=multi_label,
                            threshold=threshold, folder=where)
    if as_json:
        _print_json(stats.as_dict())
        return
    click.echo(f"tagged {stats.images} pictures with {stats.tags_written} tags")
    for label, count in sorted(stats.counts.items(), key=lambda kv: -kv[1]):
        click.echo(f"{count:8d}  {label}")


@main.group()
def tags() -> None:
    """Work with stored tags."""


@tags.command("export")
@library_option
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout.")
@_fail_cleanly
def tags_export(library: Path | None, fmt: str, output: Path | None) -> None:
    """Export every tag with its picture path and probability."""
    from clipdex.library import Library
    from clipdex.search.tagging import export_tags

    text = export_tags(Library.open(_path(library)), fmt)
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    else:
        click.echo(text.rstrip("\n"))


@main.command()
@library_option
@json_option
@_fail_cleanly
def info(library: Path | None, as_json: bool) -> None:
    """Show counts, model, embedding size, index type and size on disk."""
    from clipdex.library import Library
    from clipdex.search.probe import list_probes

    lib = Library.open(_path(library))
    facts = {**lib.info(), "probes": [p["name"] for p in list_probes(lib)]}
    if as_json:
        _print_json(facts)
        return
    for key, value in facts.items():
        if key == "size_bytes":
            value = f"{value / 1e6:.1f} MB"
        elif key == "probes":
            value = ", ".join(value) or "none"
        click.echo(f"{key.replace('_', ' '):>14}: {value}")


@main.command()
@library_option
@json_option
@_fail_cleanly
def skipped(library: Path | None, as_json: bool) -> None:
    """List files the indexer skipped, with the reason."""
    from clipdex.library import Library

    rows = Library.open(_path(library)).skipped()
    if as_json:
        _print_json([{"path": p, "reason": r} for p, r in rows])
        return
    if not rows:
        click.echo("No skipped files.")
    for path, reason in rows:
        click.echo(f"{path}\t{reason}")


@main.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 makes your pictures reachable from other machines).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64))
@_fail_cleanly
def serve(library: Path | None, host: str, port: int, threads: int) -> None:
    """Search the library in a browser, with a JSON API under /api (waitress WSGI server)."""
    import waitress

    from clipdex.web import create_app

    app = create_app({"LIBRARY": _path(library)})
    click.echo(f"clipdex: serving {_path(library)} on http://{host}:{port}/  (Ctrl-C stops)")
    waitress.serve(app, host=host, port=port, threads=threads, ident="clipdex")


@main.command()
@click.option("--library", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to build the demo library [default: a 'demo-library' folder beside the default "
              "library; CLIPDEX_LIBRARY is not used, so your own library is never touched].")
@click.option("--pictures", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the generated pictures [default: LIBRARY/../demo-pictures].")
@json_option
@_fail_cleanly
def demo(library: Path | None, pictures: Path | None, as_json: bool) -> None:
    """Offline demo: generate pictures, index them with the tiny model, search and tag."""
    from clipdex.demo import run_demo
    from clipdex.library import default_library_path

    lib_path = library or default_library_path().with_name("demo-library")
    report = run_demo(lib_path, pictures or lib_path.with_name("demo-pictures"),
                      echo=None if as_json else click.echo)
    if as_json:
        _print_json(report)


from clipdex import cli_classifiers  # noqa: E402,F401  (registers eval and probe)
