"""``clipdex serve``: clear one-line errors for addresses it cannot use, a start that says what
it is doing, and a server that starts on a damaged or missing library and recovers."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner
from flask import template_rendered

from clipdex.cli import main
from clipdex.web import create_app
from tests.conftest import BOTH, serve_process

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


def serve(*args: str):
    return CliRunner().invoke(main, ["serve", *args])


def test_a_busy_port_is_one_clear_line(library_at):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve("--library", library_at, "--port", str(port))
    assert (r.exit_code, r.stdout) == (1, "")
    assert r.stderr == (f"Error: port {port} on 127.0.0.1 is already in use (another server, perhaps another "
                        "clipdex serve, listens there; stop it or choose another port with --port)\n")


def test_an_address_that_is_not_one_or_not_this_machines_is_one_clear_line(library_at):
    r = serve("--library", library_at, "--host", "256.1.1.1")
    assert (r.exit_code, r.stderr) == (2, "Error: --host 256.1.1.1 is not a valid IP address\n")
    r = serve("--library", library_at, "--host", "192.0.2.1", "--port", "0")  # TEST-NET-1, never ours
    assert (r.exit_code, r.stderr) == (2, "Error: cannot listen on 192.0.2.1: it is not an address of this machine\n")


def get(url: str) -> tuple[int, dict | str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            status, body, kind = response.status, response.read().decode(), response.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read().decode(), exc.headers.get_content_type()
    return status, json.loads(body) if kind == "application/json" else body


@pytest.mark.slow  # a whole `clipdex serve` process
def test_serve_says_what_it_serves_and_answers(library):
    """The line people read names the library (a database URL without its password), and the API answers."""
    with serve_process("--library", library.location) as served:
        match = re.fullmatch(rf"clipdex: serving {re.escape(library.location)} on (http://127\.0\.0\.1:\d+/)  "
                             r"\(Ctrl-C stops\)\n", served.ready)
        assert match, (served.ready, served.proc.poll())
        status, info = get(match.group(1) + "api/info")
        assert status == 200 and (info["images"], info["demo"]) == (120, False)
        status, found = get(match.group(1) + "api/search?q=a+red+circle&k=3")
        assert status == 200 and all("/red/circle-" in hit["path"] for hit in found["results"])
    err = served.err
    assert err.splitlines()[0] == "clipdex: loading the model and the index …" and "Traceback" not in err, err


@pytest.mark.slow  # a whole `clipdex serve` process
@pytest.mark.sqlite_only  # a damaged SQLite file in the demo library's folder
def test_serve_starts_on_a_damaged_demo_library_and_recovers_without_a_restart(tmp_path, library):
    """Was: a damaged library stopped ``serve`` with a traceback; the model loaded for 11-15 s
    before anything was printed; the page could not tell it was showing the demo library."""
    data = tmp_path / "data"
    demo = data / "clipdex" / "demo-library"  # no library of the user's own: the demo stands in
    demo.mkdir(parents=True)
    (demo / "clipdex.db").write_bytes(b"not a database at all " * 200)
    env = {k: v for k, v in os.environ.items() if k != "CLIPDEX_LIBRARY"}
    env.update(XDG_DATA_HOME=str(data), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = proc.stdout.readline()
        match = re.fullmatch(rf"clipdex: serving {re.escape(str(demo))} on (http://127\.0\.0\.1:\d+/)  "
                             r"\(Ctrl-C stops\)\n", ready)
        assert match, (ready, proc.poll())
        url = match.group(1)
        status, body = get(url + "api/info")
        assert status == 503 and set(body) == {"status", "message"}
        assert str(demo) in body["message"] and "file is not a database" in body["message"]
        status, page = get(url)
        assert status == 200 and html.escape(body["message"]) in page
        (demo / "clipdex.db").unlink()
        for item in library.path.iterdir():  # the library becomes readable, as if `clipdex demo` ran again
            if item.is_file():
                shutil.copy2(item, demo / item.name)
        status, info = get(url + "api/info")
        assert status == 200 and info["demo"] is True and info["images"] == 120
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    lines = err.splitlines()
    loading = lines.index("clipdex: loading the model and the index …")
    problem = next(i for i, line in enumerate(lines) if "file is not a database" in line)
    assert loading < problem and lines[problem].startswith("clipdex: ")
    assert lines[problem].endswith("; the page says so until it is fixed, no restart needed")


def test_the_page_and_info_know_when_the_library_is_the_demo(library):
    rendered = []

    def note(sender, template, context, **extra):
        rendered.append(context)

    for demo in (True, False):
        app = create_app({"LIBRARY": library.location, "WARM_UP": False, "DEMO": demo})
        with template_rendered.connected_to(note, app):
            assert app.test_client().get("/").status_code == 200
        assert rendered.pop()["demo"] is demo
        assert app.test_client().get("/api/info").get_json()["demo"] is demo


@pytest.mark.parametrize("name", ["photos.lan:8000", "http://photos.lan", "photos.lan/", "", "[::1]:8000",
                                  "256.1.1.1", "a b"])
def test_an_allowed_host_that_could_never_match_is_refused_at_start(tmp_path, name):
    """Was: accepted, then every request addressed to it refused (the Host check compares bare names)."""
    r = serve("--library", str(tmp_path / "lib"), "--allowed-host", name, "--port", "0")
    assert (r.exit_code, r.stdout) == (2, "")
    assert r.stderr == (f"Error: --allowed-host {name!r} is not a host name or IP address: give the name alone, "
                        "without a scheme, port or path (e.g. --allowed-host photos.lan)\n")


def test_allowed_hosts_that_can_match_are_taken():
    from clipdex.cli.serve import _check_allowed_host

    for name in ("photos.lan", "PHOTOS.lan.", "nas_1.home", "192.168.1.20", "[fe80::1]", "fe80::1", "localhost"):
        assert _check_allowed_host(name) == name.removeprefix("[").removesuffix("]")
