"""What every command shares: error handling, common options, JSON output.

Library errors become ``Error: ...`` on stderr with the error's exit code, plus a hint
about which command to run next where the CLI knows one (the library's own messages
never name flags, as the web shows them too). Nothing else here exits.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from clipdex.errors import ClipdexError, ModelMismatch, ModelUnavailable, NoLibrary

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.models import Encoder


_QUICK_EXIT = False


def request_quick_exit() -> None:
    """Let the program end without the interpreter's teardown once this command is done
    (see :func:`clipdex.cli.run`): for commands that write nothing and leave no worker behind."""
    global _QUICK_EXIT
    _QUICK_EXIT = True


def quick_exit_requested() -> bool:
    return _QUICK_EXIT


def cli_hint(exc: ClipdexError) -> str:
    """What to run next for errors the CLI can say more about ('' if nothing)."""
    if isinstance(exc, NoLibrary):
        where = shlex.quote(exc.path.replace(":***@", ":PASSWORD@"))  # messages mask it; a command needs it
        if exc.empty:
            return f" (run: clipdex index PATH --library {where})"
        return f" (create one with: clipdex index PATH --library {where})"
    if isinstance(exc, ModelMismatch) and exc.requested:
        return (f" (omit --model, or switch the library to it, the current model answering meanwhile: "
                f"clipdex index PATH --model {exc.requested}; clipdex models lists what it holds)")
    if isinstance(exc, ModelUnavailable) and exc.fetch_failed:
        return ("; download it on a connected machine and point --model local-dir:DIR at a folder "
                "holding open_clip_config.json and the weights")
    return ""


def fail_cleanly(fn: Callable) -> Callable:
    """Turn library exceptions into one ``Error:`` line and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ClipdexError as exc:
            click.echo(f"Error: {printable(exc)}{cli_hint(exc)}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def _folder_or_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Path | str | None:
    """A database URL stays as typed; a ``file://`` URL is its folder; anything else is a folder."""
    from clipdex.library.paths import folder_or_url

    try:
        return None if value is None else folder_or_url(value)
    except ClipdexError as exc:
        raise click.BadParameter(str(exc)) from None


def _declare_root_names(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> None:
    from clipdex.library.places import declare, forget_declared

    forget_declared()
    try:
        for value in values:
            declare(value)
    except ClipdexError as exc:
        raise click.BadParameter(str(exc)) from None


def _set_cache_dir(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """What ``cache_base`` reads, set for this process and the ones it starts (``serve --watch``)."""
    if value:
        os.environ["CLIPDEX_CACHE_DIR"] = os.path.abspath(os.path.expanduser(value))


def library_option(fn: Callable) -> Callable:
    """``--library DIR|URL``, ``--cache-dir DIR`` and ``--root-name NAME=PATH`` (which every library opened
    then follows)."""
    fn = click.option(
        "--cache-dir",
        metavar="DIR",
        envvar="CLIPDEX_CACHE_DIR",
        expose_value=False,
        callback=_set_cache_dir,
        help="Where a library on a database server keeps this machine's index files (a folder per library "
        "under DIR/libraries). Env CLIPDEX_CACHE_DIR; default: ~/.cache/clipdex.",
    )(fn)
    fn = click.option(
        "--root-name",
        "root_names",
        multiple=True,
        metavar="NAME=PATH",
        envvar="CLIPDEX_ROOT_NAMES",
        expose_value=False,
        callback=_declare_root_names,
        help="PATH is this machine's mount point of a share known to the library as NAME: pictures under it are "
        "stored relative to NAME, so machines mounting the share elsewhere (each declaring the same NAME with "
        "its own PATH) find, serve and keep them. Recorded for this machine by index; repeatable. Env "
        "CLIPDEX_ROOT_NAMES (space-separated). A machine is known by CLIPDEX_MACHINE, default its host name.",
    )(fn)
    return click.option(
        "--library",
        "library",
        type=str,
        callback=_folder_or_url,
        envvar="CLIPDEX_LIBRARY",
        default=None,
        metavar="DIR|URL",
        help="Library directory, or a database URL such as postgresql://user@host/db for a library shared on a "
        "PostgreSQL server (its index files then live in a local cache folder: see --cache-dir). Env "
        "CLIPDEX_LIBRARY; default: the per-user data directory.",
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


def backend_option(fn: Callable) -> Callable:
    return click.option(
        "--backend",
        type=click.Choice(["auto", "onnx", "torch"], case_sensitive=False),
        envvar="CLIPDEX_BACKEND",
        default=None,
        help="What runs the model. auto (the default): PyTorch in half precision when a CUDA GPU is present and "
        "the work is indexing or tagging; otherwise ONNX Runtime on the CPU once the model is exported (its first "
        "use exports it, ~20 s, verified against PyTorch, into ~/.cache/clipdex/onnx or CLIPDEX_ONNX_CACHE), or "
        "PyTorch, with a note, when the export is refused. onnx: ONNX Runtime only. torch: PyTorch only. Vectors "
        "of both are interchangeable. Env CLIPDEX_BACKEND.",
    )(fn)


def tell(line: str) -> None:
    """A progress line or note for the person at the terminal: stderr, so stdout stays the result."""
    click.echo(printable(line), err=True)


def loaded(encoder: Encoder) -> Encoder:
    """``encoder`` loaded, with a one-time export announced and a fallback to PyTorch noted on stderr."""
    encoder.load(say=tell)
    if encoder.note:
        tell(f"note: {encoder.note}")
    return encoder


def library_path(library: Path | str | None, demo_fallback: bool = True) -> Path | str:
    """``--library`` as given, else the default library folder.

    With ``demo_fallback`` the demo library stands in while the user has no library of
    their own (see :func:`clipdex.library.resolve_library`), and stderr says so.
    """
    from clipdex.library import default_library_path, resolve_library

    if not demo_fallback:
        return library or default_library_path()
    path, is_demo = resolve_library(library)
    if is_demo:
        click.echo(f"(using the demo library at {path}: you have no library of your own yet)", err=True)
    return path


_CONTROL = dict.fromkeys([*range(0x20), 0x7F, *range(0x80, 0xA0)])


def printable(text: object) -> str:
    """``text`` safe to print to a terminal: control characters (ESC, C0, C1) become ``\\xNN``.

    File names may hold escape sequences that would clear the screen or retitle the window.
    For human output only; JSON is escaped by the encoder.
    """
    return "".join(f"\\x{ord(c):02x}" if ord(c) in _CONTROL else c for c in str(text))


def plural(count: int, one: str, many: str) -> str:
    """``1 picture`` / ``2 pictures``: counts in messages read as sentences."""
    return f"{count} {one if count == 1 else many}"


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
