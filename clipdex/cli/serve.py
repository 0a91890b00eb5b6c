"""``clipdex serve``: the browser UI and JSON API on waitress."""

from __future__ import annotations

from pathlib import Path

import click

from clipdex.cli.common import fail_cleanly, library_option, library_path


@click.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 makes your pictures reachable from other machines).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64))
@fail_cleanly
def serve(library: Path | None, host: str, port: int, threads: int) -> None:
    """Search the library in a browser, with a JSON API under /api (waitress WSGI server)."""
    import waitress

    from clipdex.web import create_app

    path = library_path(library)
    app = create_app({"LIBRARY": path})
    click.echo(f"clipdex: serving {path} on http://{host}:{port}/  (Ctrl-C stops)")
    waitress.serve(app, host=host, port=port, threads=threads, ident="clipdex")
