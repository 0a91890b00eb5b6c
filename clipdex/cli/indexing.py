"""``clipdex index``: build and update a library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipdex.cli.common import (
    backend_option,
    fail_cleanly,
    json_option,
    library_option,
    library_path,
    model_option,
    print_json,
    tell,
)


class _IndexCommand(click.Command):
    """``--ray`` takes an optional address: ``--ray PATH`` (a path where an address would be) means a local Ray."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from clipdex.indexer.distributed import LOCAL, looks_like_address

        args = list(args)
        for i, arg in enumerate(args[:-1]):
            if arg == "--ray" and not args[i + 1].startswith("-") and not looks_like_address(args[i + 1]):
                args[i] = f"--ray={LOCAL}"
        return super().parse_args(ctx, args)


@click.command(cls=_IndexCommand)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@library_option
@model_option
@click.option("--rebuild", is_flag=True,
              help="Re-encode every picture of the library (also switches it to --model). It answers searches with "
              "its current vectors until the new set is complete; an interrupted rebuild continues where it stopped.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 256), help="Decoder processes [default: CPU count].")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds one file may take to decode before it is skipped.")
@click.option("--prune-empty", is_flag=True,
              help="A PATH that holds no picture at all (say, the mount point of an unmounted drive) normally keeps "
              "the pictures indexed from it; with this flag they are removed from the library, tags included.")
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivf"]), default=None,
              help="The search index: exact (flat), inverted-file (ivf: approximate, tuned to recall@10 >= 0.95, "
              "for large libraries), or auto: flat below 40,000 pictures, ivf above. Recorded in the library "
              "[default: what the library has, auto for a new one].")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Decode and encode on a Ray cluster (pip install 'clipdex[ray]'): alone, a Ray started on this "
              "machine; auto, the cluster this machine belongs to; or HOST:PORT / ray://HOST:PORT. Every PATH must "
              "be readable at the same path on the cluster's nodes. Planning and storing stay here.")
@backend_option
@click.option("--device", default=None, help="torch device (cuda, cpu, ...) [default: cuda if present].")
@json_option
@fail_cleanly
def index(paths: tuple[Path, ...], library: Path | None, model: str | None, rebuild: bool, batch_size: int,
          workers: int | None, timeout: float, prune_empty: bool, index_type: str | None, backend: str | None,
          device: str | None, ray_address: str | None, as_json: bool) -> None:
    """Index the pictures under PATHS (folders or files).

    With --model naming another model than the library's, that model's vectors are built beside the
    current ones, which keep answering searches, and the library switches to it once they are complete
    (an interrupted run continues where it stopped); the previous model's vectors are kept: see
    `clipdex models`.

    Only new and changed files are encoded; deleted ones are dropped and moved ones keep
    their vector; a file only touched (same bytes, new mtime) keeps its tags. A PATH now holding
    no picture at all keeps what was indexed from it, with a warning (exit 0): see --prune-empty.
    Unreadable files are skipped and listed by `clipdex skipped`. When stderr
    is a terminal, progress lines and a bar show there as the run goes (with --json too:
    stdout holds only the JSON).
    """
    from clipdex.models import EXPORTING

    interactive = sys.stderr.isatty()

    def say(line: str) -> None:  # progress lines on a terminal; a one-time export is announced everywhere
        if interactive or line.startswith(EXPORTING):
            tell(line)

    from clipdex.indexer import Indexer
    from clipdex.library import Library

    ray = None
    if ray_address is not None:
        from clipdex.indexer.distributed import RayOptions, import_ray

        ray = RayOptions(ray_address)
        import_ray()  # missing Ray is said before the library is touched
    lib = Library.create(library_path(library, demo_fallback=False))
    indexer = Indexer(lib, model, batch_size=batch_size, workers=workers, timeout=timeout, device=device,
                      backend=backend, progress=interactive, say=say, index_type=index_type, ray=ray)
    stats = indexer.run([str(p) for p in paths], rebuild=rebuild, prune_empty=prune_empty, switch=model is not None)
    if stats.backend_note:
        tell(f"note: {stats.backend_note}")
    for warning in stats.warnings():
        click.echo(f"Warning: {warning}; to remove them, index it again with --prune-empty", err=True)
    if as_json:
        print_json(stats.as_dict())
        return
    for note in stats.notes():
        click.echo(note)
    click.echo(stats.summary())
    if stats.rebuilt and model is not None and not rebuild:
        click.echo(f"now using {lib.model_spec} ({stats.encoded} pictures encoded, {stats.reused} vectors reused); "
                   "the previous model's vectors are kept: see clipdex models")
