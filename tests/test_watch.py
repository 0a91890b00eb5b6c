"""``clipdex watch``: a real watchdog observer on real folders, real passes of the indexer into a real library.

The watcher runs in a thread with short settle times; tests wait for conditions (a pass, a
row) with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from clipdex.errors import ClipdexError, LibraryError, ModelMismatch, ModelUnavailable, NoLibrary, UsageError
from clipdex.indexer import Indexer
from clipdex.indexer.watch import PassReport, Watcher, passes_by_itself
from clipdex.library import Library, writes
from clipdex.library.storage import DiskFull, ReadOnlyLibrary
from clipdex.models import TINY_MODEL
from clipdex.synthetic import write_collection
from tests.conftest import BOTH, invoke
from tests.terminal import Terminal, processes_in_group

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL

DEADLINE = 60.0


def wait_until(condition: Callable[[], object], what: str, deadline: float = DEADLINE) -> object:
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


class Running:
    """A :class:`Watcher` in a thread, and what it said."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher
        self.events: list[tuple[str, dict]] = []
        watcher.notify = lambda kind, details: self.events.append((kind, details))
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.watcher.run(self.stop)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            self.errors.append(exc)

    @property
    def reports(self) -> list[PassReport]:
        return self.watcher.reports

    def next_pass(self, after: int) -> PassReport:
        """The first pass after the ``after`` passes seen so far (waits for it)."""
        wait_until(lambda: len(self.reports) > after or self.errors, "a pass")
        assert not self.errors, self.errors
        return self.reports[after]

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


@contextmanager
def watching(lib: Library, roots: list[Path] | None, **options: object) -> Iterator[Running]:
    options = {"quiet": 0.3, "recheck": 0.2, "retry": 0.2, "workers": 1, **options}
    run = Running(Watcher(lib, [str(r) for r in roots] if roots is not None else None, TINY_MODEL, **options))
    run.thread.start()
    try:
        run.next_pass(0)  # the catch-up sweep
        yield run
    finally:
        run.stop.set()
        run.thread.join(timeout=30)
        assert not run.thread.is_alive()
    assert not run.errors, run.errors
    assert run.kinds()[-1] == "stopped"


def rows(lib: Library) -> dict[str, writes.KnownRow]:
    return {r.path: r for r in writes.known_rows(lib, lambda _p: True)}


@pytest.fixture()
def pics(tmp_path) -> Path:
    write_collection(tmp_path / "pics", per_class=1, seed=11, samples=None)
    return tmp_path / "pics"


@pytest.fixture()
def spare(tmp_path) -> Path:
    """Pictures outside the watched folder, to copy in."""
    write_collection(tmp_path / "spare", per_class=1, seed=12)
    return tmp_path / "spare"


def test_new_changed_moved_and_deleted_pictures_follow_the_folder(tmp_path, pics, spare, library_at):
    lib = Library.create(library_at)
    with watching(lib, [pics]) as run:
        first = run.reports[0]
        assert first.stats.indexed == len(rows(lib)) == 24 and first.events == 0

        new = pics / "red" / "new.jpg"
        shutil.copy(spare / "blue" / "circle-000.jpg", new)
        report = run.next_pass(1)
        assert report.stats.indexed == 1 and report.events >= 1
        assert str(new) in rows(lib)
        assert str(new) in {lib_path for lib_path in rows(lib)} and lib.index().ids().size == 25  # searchable

        old = rows(lib)[str(new)]
        shutil.copy(spare / "green" / "square-000.jpg", new)  # the same file, other content
        report = run.next_pass(2)
        assert report.stats.indexed == 1 and report.stats.encoded == 1
        changed = rows(lib)[str(new)]
        assert changed.id == old.id and changed.content_hash != old.content_hash

        moved = pics / "blue" / "moved.jpg"
        os.rename(new, moved)
        report = run.next_pass(3)
        assert (report.stats.moved, report.stats.encoded, report.stats.removed) == (1, 0, 0)
        assert rows(lib)[str(moved)].id == old.id and str(new) not in rows(lib)

        moved.unlink()
        report = run.next_pass(4)
        assert report.stats.removed + report.forgotten == 1
        assert str(moved) not in rows(lib) and len(rows(lib)) == 24 and lib.index().ids().size == 24


def test_a_renamed_folder_is_moves_and_nothing_is_encoded(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    with watching(lib, [pics]) as run:
        before = {p: r.id for p, r in rows(lib).items() if "/red/" in p}
        assert len(before) == 4
        os.rename(pics / "red", pics / "rouge")
        report = run.next_pass(1)
        assert (report.stats.moved, report.stats.encoded, report.stats.removed, report.forgotten) == (4, 0, 0, 0)
        after = {p: r.id for p, r in rows(lib).items() if "/rouge/" in p}
        assert sorted(after.values()) == sorted(before.values())
        assert {p.replace("/rouge/", "/red/") for p in after} == set(before)


def test_a_move_between_two_watched_folders_is_one_pass_and_no_encoding(tmp_path, pics, spare, library_at):
    """Each watched folder has its own inotify instance: the side a file left is reported as a deletion, 0.5 s
    later (watchdog waits that long for the other half of a move), within the default settle time."""
    lib = Library.create(library_at)
    with watching(lib, [pics, spare], quiet=1.0) as run:
        image_id = rows(lib)[str(spare / "red" / "star-000.jpg")].id
        os.rename(spare / "red" / "star-000.jpg", pics / "from-spare.jpg")
        report = run.next_pass(1)
        assert sorted(report.roots) == sorted([str(pics), str(spare)])
        assert (report.stats.moved, report.stats.encoded, report.stats.removed) == (1, 0, 0)
        assert rows(lib)[str(pics / "from-spare.jpg")].id == image_id


def test_a_copy_of_many_files_becomes_few_passes(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    many = tmp_path / "many"
    write_collection(many, per_class=5, seed=13)  # 120 pictures
    with watching(lib, [pics], quiet=0.5) as run:
        shutil.copytree(many, pics / "many")
        wait_until(lambda: sum(r.stats.indexed for r in run.reports[1:]) >= 120, "the whole copy indexed")
        passes = run.reports[1:]
        assert len(rows(lib)) == 24 + 120
        assert 1 <= len(passes) <= 3, [r.summary() for r in passes]
        assert sum(r.stats.indexed for r in passes) == 120 and sum(r.stats.skipped for r in passes) == 0


def test_a_file_still_being_written_waits_until_it_is_complete(tmp_path, pics, spare, library_at):
    lib = Library.create(library_at)
    data = (spare / "red" / "star-000.jpg").read_bytes()
    target = pics / "red" / "slow.jpg"
    with watching(lib, [pics], quiet=1.0) as run:
        with open(target, "wb") as fh:  # written in pieces, each sooner than the settle time after the last
            for start in range(0, len(data), len(data) // 8):
                fh.write(data[start:start + len(data) // 8])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(0.1)  # a writer's own pace, not a wait for the watcher
                assert len(run.reports) == 1, "a pass ran while the file was being written"
        report = run.next_pass(1)
        assert report.stats.indexed == 1 and report.stats.skipped == 0
        row = rows(lib)[str(target)]
        assert row.size == len(data) and not lib.skipped()


def test_a_folder_that_goes_away_keeps_its_pictures_and_is_swept_when_back(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    away = tmp_path / "unmounted"
    with watching(lib, [pics]) as run:
        ids = sorted(r.id for r in rows(lib).values())
        os.rename(pics, away)  # what an unmounted drive looks like from its mount point's parent
        wait_until(lambda: "offline" in run.kinds(), "the folder reported gone")
        assert sorted(r.id for r in rows(lib).values()) == ids
        details = dict(run.events)["offline"]
        assert details["root"] == str(pics) and details["kept"] == 24

        (away / "red" / "circle-000.jpg").unlink()  # changed while away: seen once it is back
        os.rename(away, pics)
        report = run.next_pass(1)
        assert "back" in run.kinds() and report.roots == [str(pics)]
        assert (report.stats.unchanged, report.stats.removed, report.stats.encoded) == (23, 1, 0)

        # an empty folder in its place (the bare mount point): nothing is deleted either
        os.rename(pics, away)
        pics.mkdir()
        report = run.next_pass(2)
        assert report.stats.removed == 0 and report.stats.kept_empty == {str(pics): 23}
        assert len(rows(lib)) == 23


def test_deleting_the_last_picture_of_a_folder_removes_it(tmp_path, pics, spare, library_at):
    """The indexer alone keeps pictures of a folder now empty (it may be a mount point); a deletion seen is one."""
    lib = Library.create(library_at)
    (pics / "solo").mkdir()
    shutil.copy(spare / "red" / "star-000.jpg", pics / "solo" / "only.jpg")
    with watching(lib, [pics]) as run:
        assert str(pics / "solo" / "only.jpg") in rows(lib)
        (pics / "solo" / "only.jpg").unlink()
        report = run.next_pass(1)
        assert report.forgotten == 1 and str(pics / "solo" / "only.jpg") not in rows(lib)
        shutil.rmtree(pics / "green")  # a folder deleted whole
        report = run.next_pass(2)
        assert report.stats.removed + report.forgotten == 4
        assert not [p for p in rows(lib) if "/green/" in p]


def test_skip_reasons_are_those_of_index(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    with watching(lib, [pics]) as run:
        (pics / "broken.jpg").write_bytes(b"\xff\xd8\xff not a picture")
        report = run.next_pass(1)
        assert report.stats.skipped == 1 and report.stats.indexed == 0
        reference = Library.create(tmp_path / "ref")
        Indexer(reference, TINY_MODEL, workers=1).run([str(pics)])
        assert lib.skipped() == reference.skipped() and len(lib.skipped()) == 1


def test_polling_where_inotify_is_not_wanted(tmp_path, pics, spare, library_at):
    lib = Library.create(library_at)
    with watching(lib, [pics], poll=True, poll_interval=0.2) as run:
        assert dict(run.events)["watching"]["method"] == "polling"
        shutil.copy(spare / "red" / "star-000.jpg", pics / "polled.jpg")
        report = run.next_pass(1)
        assert report.stats.indexed == 1 and str(pics / "polled.jpg") in rows(lib)


def test_without_paths_it_follows_the_library_folders(tmp_path, pics, spare, library_at):
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    later = tmp_path / "later"
    later.mkdir()
    with watching(lib, None) as run:
        assert run.reports[0].stats.unchanged == 24
        Indexer(lib, TINY_MODEL, workers=1).run([str(later)])  # another folder indexed while it watches
        wait_until(lambda: str(later) in run.watcher._watches, "the new folder followed")
        shutil.copy(spare / "red" / "star-000.jpg", later / "x.jpg")
        wait_until(lambda: str(later / "x.jpg") in rows(lib), "the picture in the new folder")


#: What a pass meets while another process holds the library (SQLite: any writer; a server: a tagging pass or a
#: rebuild, as incremental writers share it).
BUSY = {"sqlite": "another clipdex process is writing to ",
        "postgresql": "another clipdex process is rebuilding or tagging "}


def test_a_busy_library_is_retried(tmp_path, pics, spare, library_at, backend):
    lib = Library.create(library_at)
    with watching(lib, [pics]) as run:
        with Library.open(library_at).write_lock(exclusive=True):  # as `clipdex tag` holds it, in another process
            shutil.copy(spare / "red" / "star-000.jpg", pics / "later.jpg")
            wait_until(lambda: "error" in run.kinds(), "the busy library reported")
            assert dict(run.events)["error"]["message"].startswith(BUSY[backend] + lib.location)
        report = run.next_pass(1)
        assert report.stats.indexed == 1


def test_the_command_refuses_what_it_cannot_watch_and_leaves_no_library(tmp_path, pics, library_at, backend):
    lib = library_at
    missing = invoke("watch", str(tmp_path / "missing"), "--library", lib)
    assert (missing.exit_code, missing.stderr) == (2, f"Error: path not found: {tmp_path / 'missing'}\n")
    a_file = pics / "red" / "star-000.jpg"
    refused = invoke("watch", str(a_file), "--library", lib)
    assert refused.exit_code == 2 and refused.stderr.startswith(f"Error: watch follows folders, and {a_file} is a file")
    nothing = invoke("watch", "--library", lib)
    assert nothing.exit_code == 1
    if backend == "sqlite":  # no library was made
        assert nothing.stderr.startswith(f"Error: no library at {lib}") and not (tmp_path / "lib").exists()
    else:  # a server's tables stay, as after a failed `clipdex index` (Library.discard_if_unused)
        assert nothing.stderr.startswith(f"Error: library at {lib} is empty")


class JsonLines:
    """The JSON lines a ``clipdex watch --json`` in a :class:`Terminal` printed so far (stdout, read as it comes)."""

    def __init__(self, run: Terminal):
        self.run, self.lines, self.pending = run, [], ""
        os.set_blocking(run.proc.stdout.fileno(), False)

    def events(self) -> list[str]:
        try:
            self.pending += os.read(self.run.proc.stdout.fileno(), 65536).decode()
        except BlockingIOError:
            pass
        *complete, self.pending = self.pending.split("\n")
        self.lines.extend(json.loads(line) for line in complete if line.strip())
        return [line["event"] for line in self.lines]

    def finish(self) -> tuple[int, str, str]:
        os.set_blocking(self.run.proc.stdout.fileno(), True)
        code, out, shown = self.run.finish()
        self.lines.extend(json.loads(line) for line in (self.pending + out).splitlines() if line.strip())
        return code, out, shown


@pytest.mark.slow  # a real process run end to end
def test_the_command_prints_json_lines_and_ctrl_c_stops_everything(tmp_path, pics, library_at):
    lib = library_at
    many = tmp_path / "many"
    write_collection(many, per_class=20, seed=14)  # 480 pictures: a pass still running when Ctrl-C comes
    run = Terminal("watch", str(pics), "--library", lib, "--model", "tiny", "--workers", "2",
                   "--batch-size", "4", "--backend", "torch", "--settle", "0.2", "--json")
    printed = JsonLines(run)
    events = printed.events
    wait_until(lambda: "pass" in events(), "the catch-up pass", deadline=120)
    lines = printed.lines
    first = next(line for line in lines if line["event"] == "pass")
    assert first["indexed"] == 24 and first["roots"] == [str(pics)]
    shutil.copytree(many, pics / "many")
    run.wait_for(r"480 new")  # the pass has started (its lines show on a terminal)
    reader = Library.open(lib)  # and its decoders are up: a first batch of the copy is committed
    wait_until(lambda: len(rows(reader)) > 24, "a first batch of the copy committed")
    os.killpg(run.group, signal.SIGINT)  # what Ctrl-C does: SIGINT to the whole foreground group
    code, out, shown = printed.finish()
    assert code == 0, shown
    assert "Traceback" not in shown
    assert lines[-1]["event"] == "stopped"
    # its decoders end with it (exited ones may wait a moment for init to reap them: seen in CI)
    wait_until(lambda: all(" Z " in p for p in processes_in_group(run.group)), "the decoders stopped", deadline=10)
    wait_until(lambda: processes_in_group(run.group) == [], "the decoders reaped", deadline=10)
    kept = Library.open(lib)
    ids, _ = kept.load_vectors()
    assert 24 <= len(ids) <= 24 + 480 and sorted(kept.index().ids().tolist()) == ids.tolist()


@pytest.mark.slow  # a real process killed part-way
def test_a_watcher_killed_mid_pass_loses_nothing_committed_and_the_next_one_catches_up(tmp_path, pics, library_at):
    lib = library_at
    many = tmp_path / "many"
    write_collection(many, per_class=20, seed=15)  # 480 pictures
    run = Terminal("watch", str(pics), "--library", lib, "--model", "tiny", "--workers", "2",
                   "--batch-size", "4", "--backend", "torch", "--settle", "0.2", "--json")
    printed = JsonLines(run)
    wait_until(lambda: "pass" in printed.events(), "the catch-up pass", deadline=120)
    shutil.copytree(many, pics / "many")
    run.wait_for(r"480 new")
    reader = Library.open(lib)
    wait_until(lambda: len(rows(reader)) > 24, "a first batch of the copy committed")
    os.killpg(run.group, signal.SIGKILL)  # the watcher and its decoders, at once
    printed.finish()
    kept = Library.open(lib)
    committed = len(kept.load_vectors()[0])
    assert 24 < committed < 24 + 480
    with watching(kept, [pics]) as again:
        assert again.reports[0].stats.indexed == 24 + 480 - committed
    ids, _ = kept.load_vectors()
    assert len(ids) == 24 + 480 == len(rows(kept)) and sorted(kept.index().ids().tolist()) == ids.tolist()


@pytest.mark.slow  # a real server and its watcher, end to end
def test_serve_watch_follows_the_library_folders_and_stops_with_the_server(tmp_path, pics, spare, library_at):
    lib = library_at
    Indexer(Library.create(lib), TINY_MODEL, workers=1).run([str(pics)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--library", lib, "--port", str(port),
                             "--watch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        def found(path: Path) -> bool:
            query = urllib.parse.urlencode({"q": "a picture", "k": 100, "folder": str(path.parent)})
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/search?{query}", timeout=30) as answer:
                    return str(path) in {hit["path"] for hit in json.load(answer)["results"]}
            except OSError:
                return False

        wait_until(lambda: found(pics / "red" / "circle-000.jpg"), "the server answering", deadline=120)
        target = pics / "red" / "served.jpg"
        shutil.copy(spare / "blue" / "star-000.jpg", target)
        wait_until(lambda: found(target), "the new picture searchable through the server", deadline=60)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert "watching " + str(pics) in out and "stopped watching" in out and "Traceback" not in out, out
    wait_until(lambda: processes_in_group(proc.pid) == [], "the watcher's processes gone", deadline=10)


# -- errors that waiting will not mend stop the watcher, as they stop `clipdex index` ------------------------


def stopped_by_itself(run: Running) -> BaseException:
    """The error a watcher's :meth:`Watcher.run` ended with, waited for (a watcher retrying forever never ends)."""
    wait_until(lambda: not run.thread.is_alive(), "the watcher to stop by itself", deadline=30)
    assert len(run.errors) == 1, run.errors
    return run.errors[0]


def index_error(lib_path: Path | str, pics: Path, model: str) -> ClipdexError:
    """What `clipdex index` raises for the same library, folder and model."""
    with pytest.raises(ClipdexError) as raised:
        Indexer(Library.create(lib_path), model, workers=1).run([str(pics)])
    return raised.value


def test_a_bad_model_stops_the_watcher_at_once_with_the_error_of_index(tmp_path, pics, library_at):
    (tmp_path / "empty-model").mkdir()
    for model in ("bogus", f"local-dir:{tmp_path / 'nowhere'}", f"local-dir:{tmp_path / 'empty-model'}"):
        lib_path = library_at
        lib = Library.create(lib_path)
        run = Running(Watcher(lib, [str(pics)], model, quiet=0.3, recheck=0.2, retry=0.2, workers=1))
        run.thread.start()
        error = stopped_by_itself(run)
        lib.discard_if_unused()  # as the command does: nothing was stored
        expected = index_error(lib_path, pics, model)
        assert isinstance(error, ModelUnavailable) and type(error) is type(expected), (model, error)
        assert str(error) == str(expected)
        assert "error" not in run.kinds()  # no "(trying again every …s)"
        assert not (tmp_path / "lib").exists()


def test_another_models_library_stops_the_watcher_before_it_watches(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    run = Running(Watcher(lib, [str(pics)], "ViT-B-32:openai", retry=0.2, workers=1))
    run.thread.start()
    error = stopped_by_itself(run)
    assert isinstance(error, ModelMismatch) and "was built with model" in str(error)
    assert run.kinds() == []


def test_a_library_folder_that_vanishes_stops_the_watcher_saying_so(tmp_path, pics, spare):
    lib_path = tmp_path / "lib"
    lib = Library.create(lib_path)
    run = Running(Watcher(lib, [str(pics)], TINY_MODEL, quiet=0.3, recheck=0.2, retry=0.2, workers=1))
    run.thread.start()
    run.next_pass(0)
    shutil.rmtree(lib_path)  # a library on a drive that was unmounted
    shutil.copy(spare / "red" / "star-000.jpg", pics / "later.jpg")
    error = stopped_by_itself(run)
    assert isinstance(error, LibraryError)
    assert str(error) == (f"the library folder {lib_path} is gone (deleted, or on a drive no longer mounted): "
                          "nothing more can be indexed into it")
    assert "error" not in run.kinds()  # never "cannot lock the library … No such file or directory"


def test_only_a_busy_library_or_a_full_disk_is_worth_trying_again(tmp_path, pics, library_at):
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    with lib.write_lock(exclusive=True), pytest.raises(LibraryError) as busy:  # what a pass meets while `tag` runs
        with Library.open(library_at).write_lock():
            pass
    assert passes_by_itself(busy.value)
    assert passes_by_itself(DiskFull(f"the disk holding the library at {lib.path} is full"))
    db = tmp_path / "damaged" / "library.db"
    db.parent.mkdir()
    db.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LibraryError) as damaged:
        Library.open(db.parent).count()
    for error in (damaged.value, NoLibrary(str(tmp_path / "none")), ReadOnlyLibrary("read-only"),
                  ModelUnavailable("bad model spec"), UsageError("bad"), ModelMismatch("another model"),
                  LibraryError(f"cannot lock the library at {lib.path}: No such file or directory")):
        assert not passes_by_itself(error), error


def clipdex_process(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """A real ``clipdex`` process, given a minute (a watcher retrying forever would be killed and fail the test)."""
    return subprocess.run([sys.executable, "-P", "-m", "clipdex", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.slow  # real processes, one of them importing torch
def test_the_command_stops_on_what_index_stops_on_with_its_line_and_code(tmp_path, pics):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "no-cache")}  # the default model's weights absent
    for model, env in (("bogus", None), (f"local-dir:{tmp_path / 'nowhere'}", None), (None, offline)):
        chosen = ["--model", model] if model else []
        index = clipdex_process("index", str(pics), "--library", "lib", *chosen, cwd=tmp_path, env=env)
        watch = clipdex_process("watch", str(pics), "--library", "lib", *chosen, "--json", cwd=tmp_path, env=env)
        assert index.returncode == 2 and index.stderr.startswith("Error: "), index.stderr
        assert (watch.returncode, watch.stderr) == (index.returncode, index.stderr), model
        last = json.loads(watch.stdout.splitlines()[-1])
        assert last["event"] == "error" and last["fatal"] is True
        assert index.stderr.startswith(f"Error: {last['message']}")
        assert "trying again" not in watch.stdout + watch.stderr and "cannot lock" not in watch.stderr
        assert not (tmp_path / "lib").exists()
    assert "no network access" in index.stderr and "--model local-dir:DIR" in index.stderr  # the advice, both


@pytest.mark.slow  # a real server
def test_serve_says_when_its_watcher_stops_and_goes_on_answering(library_at):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    missing = library_at  # no library there: its watcher stops at once, "no library at …"
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "serve", "--library", missing, "--port", str(port),
                             "--watch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("the watcher stopped" in line for line in said), "the server saying so", deadline=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(said)
    assert f"Error: no library at {missing}" in out and "the watcher stopped (exit 1)" in out, out
    assert "Traceback" not in out, out
