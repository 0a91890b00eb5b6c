"""``clipdex watch``: keep a library current as pictures are added, changed, moved and deleted."""

from __future__ import annotations

import datetime as dt
import json
import signal
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
    printable,
    tell,
)
from clipdex.errors import ClipdexError


def _stop_on_signals() -> dict:
    """SIGTERM (``serve --watch`` stopping its watcher, a service manager) stops like Ctrl-C; once stopping,
    a second signal (Ctrl-C at the terminal reaching ``serve`` and its watcher, then the server's SIGTERM)
    does not cut the clean-up short. Returns the handlers they replace."""
    def interrupt(_signum: int, _frame: object) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    return {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@library_option
@model_option
@click.option("--settle", default=1.0, show_default=True, type=click.FloatRange(0.05), metavar="SECONDS",
              help="Seconds without changes before indexing them; a file modified more recently than this is "
              "taken as still being written, and waits.")
@click.option("--max-wait", default=30.0, show_default=True, type=click.FloatRange(0.1), metavar="SECONDS",
              help="Index after this many seconds even while changes keep coming (a long copy).")
@click.option("--poll", is_flag=True,
              help="Look for changes by polling instead of inotify (network shares, some FUSE mounts, where "
              "inotify sees nothing); folders inotify cannot watch are polled anyway.")
@click.option("--poll-interval", default=2.0, show_default=True, type=click.FloatRange(0.1), metavar="SECONDS",
              help="Seconds between two looks when polling.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 256), help="Decoder processes [default: CPU count].")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds one file may take to decode before it is skipped.")
@backend_option
@click.option("--device", default=None, help="torch device (cuda, cpu, ...) [default: cuda if present].")
@json_option
@fail_cleanly
def watch(paths: tuple[Path, ...], library: Path | None, model: str | None, settle: float, max_wait: float,
          poll: bool, poll_interval: float, batch_size: int, workers: int | None, timeout: float,
          backend: str | None, device: str | None, as_json: bool) -> None:
    """Index PATHS (folders) now, then index what changes in them as it happens, until Ctrl-C.

    Without PATHS, follows every folder the library was indexed from. Changes are gathered until
    the folders are quiet (--settle), so a copy of a thousand files is indexed in a few passes,
    each the incremental pass of `clipdex index` (same skip reasons, same crash safety). A renamed
    folder or moved file keeps its vectors (nothing is re-encoded); a picture deleted is removed;
    a folder that goes away (an unmounted drive) keeps its pictures and is swept again when it
    comes back. One line per pass on stdout (--json: one JSON object per line, with an "event"
    key: watching, pass, offline, back, error, stopped). A library busy with another writer (or a
    full disk) is tried again every few seconds; any other error (a bad --model, weights not here,
    a damaged library) stops it at once with the error and exit code of `clipdex index`.
    Ctrl-C (or SIGTERM) stops cleanly: a pass cut short loses at most its batch in flight, which
    the next run indexes.
    """
    from clipdex.indexer.watch import Watcher
    from clipdex.library import Library
    from clipdex.models import EXPORTING

    previous = _stop_on_signals()
    interactive = sys.stderr.isatty()

    def say(line: str) -> None:  # the indexer's progress lines on a terminal; an export is announced everywhere
        if interactive or line.startswith(EXPORTING):
            tell(line)

    def notify(kind: str, details: dict) -> None:
        now = dt.datetime.now().astimezone()
        if as_json:
            shown = {k: v for k, v in details.items() if k not in ("report", "message")}
            click.echo(json.dumps({"event": kind, "time": now.isoformat(timespec="seconds"), **shown,
                                   "message": details["message"]}, default=str))
        else:
            click.echo(f"{now:%H:%M:%S} {printable(details['message'])}", err=kind == "error")
        sys.stdout.flush()

    path = library_path(library, demo_fallback=False)
    lib = Library.create(path) if paths else Library.open(path)
    try:
        watcher = Watcher(lib, [str(p) for p in paths] or None, model, quiet=settle, max_wait=max_wait, poll=poll,
                          poll_interval=poll_interval, notify=notify, device=device, backend=backend,
                          batch_size=batch_size, workers=workers, timeout=timeout, say=say)
        watcher.run()
    except KeyboardInterrupt:
        lib.discard_if_unused()
        notify("stopped", {"message": "stopped watching"})
    except ClipdexError as exc:  # what waiting will not mend: stops as `clipdex index` would (Error: line, its code)
        lib.discard_if_unused()
        if as_json:
            notify("error", {"fatal": True, "message": str(exc)})
        raise
    except BaseException:
        lib.discard_if_unused()  # a first run that fails (a missing folder) leaves no empty library behind
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
