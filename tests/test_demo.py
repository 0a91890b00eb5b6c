"""``clipdex demo`` ends with commands that work exactly as printed, whether or not the user has a library."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from clipdex.synthetic import Sample, write_collection
from tests.conftest import invoke


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh user: empty home folder, default data folder inside it, no CLIPDEX_LIBRARY."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.delenv("CLIPDEX_LIBRARY", raising=False)
    monkeypatch.chdir(home)
    return home


def printed_commands(stdout: str) -> list[str]:
    """The command lines the demo printed after "Next, try:"."""
    tail = stdout[stdout.index("\nNext, try:\n"):]
    return [line.strip() for line in tail.splitlines() if line.startswith("  clipdex ")]


def run_printed(command: str):
    """Run a printed line as a shell would (``~`` expanded), in process.

    ``serve`` is not started: the library it would open is returned. ``index`` gets
    ``--model tiny``, as the default model cannot be downloaded here.
    """
    from clipdex.cli.common import library_path
    from clipdex.cli.serve import serve

    args = [os.path.expanduser(arg) for arg in shlex.split(command)]
    assert args[0] == "clipdex"
    if args[1] == "serve":
        return library_path(serve.make_context("serve", args[2:]).params["library"])
    if args[1] == "index":
        args += ["--model", "tiny"]
    out = invoke(*args[1:])
    assert out.exit_code == 0, (command, out.stderr)
    return out


def found(out) -> list[str]:
    """Paths in ``search`` output, best first."""
    return [line.split("  ", 1)[1] for line in out.stdout.splitlines()]


def check_demo_commands(commands: list[str], lib: Path, pics: Path, note: str) -> None:
    """Each printed command works and finds the demo's pictures; ``note`` is what stderr must say."""
    text, like, tagged, info, serve = commands
    out = run_printed(text)
    assert out.stderr == note
    assert sorted(found(out)[:3]) == [str(pics / "purple" / f"star-00{i}.jpg") for i in range(3)]
    out = run_printed(like)
    assert sorted(found(out)[:2]) == [str(pics / "blue" / f"square-00{i}.jpg") for i in (1, 2)]
    assert str(pics / "blue" / "square-000.jpg") not in found(out)
    out = run_printed(tagged)
    assert found(out) and all(path.startswith(str(pics / "red") + "/") for path in found(out))
    assert run_printed(info).stdout.splitlines()[0] == f"library        {lib}  (the demo library)"
    assert run_printed(serve) == lib


@pytest.mark.slow
def test_the_demo_leads_to_commands_that_work_as_printed(home):
    demo_lib = home / ".local" / "share" / "clipdex" / "demo-library"
    demo_pics = demo_lib.with_name("demo-pictures")

    # a new user: the demo library stands in for theirs, so the commands need no --library
    out = invoke("demo")
    assert out.exit_code == 0, out.stderr
    assert "tagged 72 pictures; 72/72 got their true colour (100%)" in out.stdout
    commands = printed_commands(out.stdout)
    assert commands == [
        'clipdex search "a purple star"',
        f"clipdex search --image {demo_pics}/blue/square-000.jpg",
        'clipdex search "a shape" --tag red',
        "clipdex info",
        "clipdex serve",
        "clipdex index ~/Pictures",
    ]
    assert out.stdout.endswith(
        "Any folders will do. From then on, commands without --library use your own library;\n"
        f"add --library {demo_lib} to come back to the demo.\n")
    check_demo_commands(commands[:5], demo_lib, demo_pics,
                        f"(using the demo library at {demo_lib}: you have no library of your own yet)\n")

    # their own pictures go to their own library, which commands without --library use from then on
    write_collection(home / "Pictures", per_class=1, samples=[Sample("purple", "star"), Sample("red", "circle")])
    run_printed(commands[5])
    own = run_printed('clipdex search "a purple star"')
    assert (own.stderr, found(own)) == ("", [str(home / "Pictures" / "purple" / "star-000.jpg"),
                                            str(home / "Pictures" / "red" / "circle-000.jpg")])

    # now a demo elsewhere: its commands name its library
    other, pics = home / "other demo", home / "other pictures"
    out = invoke("demo", "--library", str(other), "--pictures", str(pics), "--json")
    assert out.exit_code == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["index"]["indexed"] == 72 and report["tagging"]["accuracy"] == 1.0
    assert all("/red/circle-" in r["path"] for r in report["searches"][0]["results"][:3])
    opt = f" --library '{other}'"
    assert report["next"] == [
        f'clipdex search "a purple star"{opt}',
        f"clipdex search --image '{pics}/blue/square-000.jpg'{opt}",
        f'clipdex search "a shape" --tag red{opt}',
        f"clipdex info{opt}",
        f"clipdex serve{opt}",
        "clipdex index ~/Pictures",
    ]
    check_demo_commands(report["next"][:5], other, pics, "")


def test_the_default_demo_names_its_library_once_the_user_has_one(home, monkeypatch):
    from clipdex.demo import library_option_for
    from clipdex.library import default_library_path, demo_library_path

    demo_library_path().mkdir(parents=True)
    (demo_library_path() / "clipdex.db").touch()  # what the demo has built when it asks
    assert library_option_for(demo_library_path()) == ""
    default_library_path().mkdir(parents=True)
    (default_library_path() / "clipdex.db").touch()  # the user's own library
    assert library_option_for(demo_library_path()) == f" --library {demo_library_path()}"
    monkeypatch.setenv("CLIPDEX_LIBRARY", str(demo_library_path()))
    assert library_option_for(demo_library_path()) == ""
