"""``clipdex serve``: the browser UI and JSON API on waitress."""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
import threading
from pathlib import Path

import click

from clipdex.cli.common import (
    backend_option,
    cli_hint,
    fail_cleanly,
    library_option,
    library_path,
    printable,
    tell,
)
from clipdex.errors import ClipdexError, UsageError


def _check_host(host: str) -> str:
    """``host`` without IPv6 brackets; a numeric address that is not one (``256.1.1.1``) is
    refused at once, without a DNS lookup."""
    bare = host.removeprefix("[").removesuffix("]")
    if re.fullmatch(r"[0-9.]+", bare) or ":" in bare:
        try:
            ipaddress.ip_address(bare)
        except ValueError:
            raise UsageError(f"--host {host} is not a valid IP address") from None
    return bare


_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
                        r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*\.?", re.IGNORECASE)


def _check_allowed_host(name: str) -> str:
    """``name`` if it can match a request's Host (a bare name or IP address); refused at once
    otherwise, since a scheme or a port in it would never match and the server would refuse
    every request addressed to it without saying why."""
    bare = name.strip()
    unbracketed = bare.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(unbracketed)
        return unbracketed
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(bare) and not re.fullmatch(r"[0-9.]+", bare):
        return bare
    raise UsageError(f"--allowed-host {name!r} is not a host name or IP address: give the name alone, without a "
                     "scheme, port or path (e.g. --allowed-host photos.lan)")


def bind_error(exc: OSError, host: str, port: int) -> ClipdexError:
    """One line saying why the server cannot listen on ``host:port``."""
    if isinstance(exc, socket.gaierror):
        return UsageError(f"--host {host} is not an address or a known name of this machine ({exc.strerror})")
    if exc.errno == errno.EADDRINUSE:
        return ClipdexError(f"port {port} on {host} is already in use (another server, perhaps another "
                            "clipdex serve, listens there; stop it or choose another port with --port)")
    if exc.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"cannot listen on {host}: it is not an address of this machine")
    if exc.errno == errno.EACCES:
        return ClipdexError(f"not allowed to listen on port {port} (ports below 1024 need administrator "
                            "rights; choose another with --port)")
    return ClipdexError(f"cannot listen on {host} port {port}: {exc.strerror or exc}")


def _url(host: str, server) -> str:  # noqa: ANN001 - a waitress server
    """The address to open, with the port the server really listens on (``--port 0`` picks one)."""
    port = getattr(server, "effective_port", None) or server.effective_listen[0][1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _report_watcher_end(watcher, stopping: threading.Event) -> None:  # noqa: ANN001 - a subprocess.Popen
    """Say so when ``serve --watch``'s watcher stops by itself: it did on an error waiting would not mend
    (its ``Error:`` line is just above), and the server goes on without it."""
    code = watcher.wait()
    if code != 0 and not stopping.is_set():
        click.echo(f"clipdex: the watcher stopped (exit {code}): the library is no longer kept current; the server "
                   "goes on answering (fix what its Error line says, then restart serve --watch)", err=True)


@click.command()
@library_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 makes your pictures reachable from other machines).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64))
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Also answer requests addressed to NAME (a name this machine is reached by, e.g. through "
                   "a proxy). Others are refused, which stops web pages elsewhere from reaching the server "
                   "through DNS rebinding. Repeatable.")
@click.option("--watch", "follow", is_flag=True,
              help="Keep the library current while serving: a `clipdex watch` process follows every folder the "
              "library was indexed from (its lines show here); searches see what it indexes as it commits.")
@backend_option
@fail_cleanly
def serve(library: Path | None, host: str, port: int, threads: int, allowed_hosts: tuple[str, ...],
          follow: bool, backend: str | None) -> None:
    """Search the library in a browser, with a JSON API under /api (waitress WSGI server).

    The server starts even without a library (or with a damaged one): the page and the API
    say what is wrong, and the library is served as soon as it can be opened.
    """
    host = _check_host(host)
    allowed_hosts = tuple(_check_allowed_host(name) for name in allowed_hosts)
    from clipdex.library import demo_library_path
    from clipdex.web import create_app
    from clipdex.web.server import make_server

    path = library_path(library)
    demo = library is None and path == demo_library_path()
    app = create_app({"LIBRARY": path, "WARM_UP": False, "DEMO": demo, "BIND_HOST": host,
                      "ALLOWED_HOSTS": allowed_hosts, "BACKEND": backend})
    try:  # bind before the model loads: a busy port is reported at once
        server = make_server(app, host, port, threads)
    except OSError as exc:
        raise bind_error(exc, host, port) from None
    except ValueError:  # waitress turns a name that does not resolve (or an empty one) into this
        raise UsageError(f"cannot listen on {host}: the name does not resolve" if host
                         else "cannot listen on an empty host name: give an address such as 127.0.0.1") from None
    click.echo("clipdex: loading the model and the index …", err=True)
    app.extensions["clipdex_uploads"].warm_up()
    state = app.extensions["clipdex"]
    problem = state.warm_up(say=tell, image=False)  # text searches first: the image tower loads meanwhile
    if problem is not None:
        click.echo(f"clipdex: {printable(problem)}{cli_hint(problem)}; the page says so until it is fixed, no "
                   "restart needed", err=True)
    if problem is None:
        threading.Thread(target=state.warm_up_image, name="clipdex-image-tower", daemon=True).start()
    shown = state.library_path  # a database URL without its password
    click.echo(f"clipdex: serving {shown} on {_url(host, server)}  (Ctrl-C stops)")
    watcher, interrupted, stopping = None, False, threading.Event()
    if follow:
        from clipdex.indexer.watch_process import start_watch_process

        watcher = start_watch_process(path, backend)
        threading.Thread(target=_report_watcher_end, args=(watcher, stopping), name="clipdex-watcher",
                         daemon=True).start()
    try:
        server.run()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        app.extensions["clipdex_uploads"].close()
        if watcher is not None:
            from clipdex.indexer.watch_process import stop_watch_process

            stopping.set()
            stop_watch_process(watcher, grace=10.0 if interrupted else 0.0)  # Ctrl-C reached it too
