"""``clipdex index`` as seen from outside: what it says while it works, and what it leaves behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clipdex.cli import main
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.synthetic import write_collection
from tests.conftest import BOTH, new_location
from tests.terminal import Terminal, processes_in_group

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


@pytest.fixture()
def pics(tmp_path):
    write_collection(tmp_path / "pics", per_class=1, seed=3)
    return tmp_path / "pics"


@pytest.mark.slow  # a real process run end to end
def test_progress_lines_on_a_terminal_and_nothing_left_running(pics, library_at):
    run = Terminal("index", str(pics), "--library", library_at, "--model", "tiny", "--workers", "2", "--json")
    code, out, shown = run.finish()
    assert code == 0, shown
    lines = [line for line in re.split(r"[\r\n]+", shown) if line.strip()]
    assert lines[:3] == [f"scanning {pics} …",
                         "found 24 pictures: 24 new, 0 changed, 0 unchanged, 0 moved; 0 gone from the library",
                         "loading model tiny …"]
    assert re.search(r"indexing: 100%\|.*\| 24/24 ", shown)
    assert json.loads(out)["indexed"] == 24  # with --json, stdout holds the JSON and nothing else
    assert processes_in_group(run.group) == []  # no decoder, no resource tracker outlives the command


@pytest.mark.slow  # a real process run end to end
def test_ctrl_c_stops_everything(tmp_path, library_at):
    pics = tmp_path / "pics"
    write_collection(pics, per_class=20, seed=5)  # 480 pictures
    lib = library_at
    # PyTorch and small batches: the tiny model in ONNX Runtime could finish before the signal lands
    run = Terminal("index", str(pics), "--library", lib, "--model", "tiny", "--workers", "2",
                   "--batch-size", "4", "--backend", "torch")
    run.wait_for(r"indexing: +\d+%\|[^|]*\| +([4-9]|\d\d)/480")  # a few batches are committed
    os.killpg(run.group, signal.SIGINT)  # what Ctrl-C does: SIGINT to the whole foreground group
    code, out, shown = run.finish()
    assert code == 130 and shown.rstrip().endswith("Interrupted."), shown
    assert "Traceback" not in shown
    assert processes_in_group(run.group) == []
    kept = Library.open(lib)
    ids, _ = kept.load_vectors()
    assert 4 <= len(ids) < 480 and sorted(kept.index().ids().tolist()) == ids.tolist()


@pytest.mark.slow  # a real process run end to end
def test_a_failing_run_leaves_no_process_and_no_library(tmp_path, pics, backend, request):
    lib = new_location(backend, request, tmp_path / "new" / "lib")
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "index", str(pics), "--library", lib,
                             "--model", f"local-dir:{tmp_path / 'no-model'}", "--workers", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, err = proc.communicate(timeout=300)
    # the decoders were already starting when the model failed to load
    assert (proc.returncode, err) == (2, f"Error: model folder not found: {tmp_path / 'no-model'}\n")
    assert processes_in_group(proc.pid) == []
    assert not (tmp_path / "new").exists()  # nor the library it was about to create (a server's tables stay)


def test_images_per_second_is_what_the_bar_showed(pics, encoder, capsys, library_at):
    stats = Indexer(Library.create(library_at), encoder, workers=2, progress=True).run([str(pics)])
    bar = capsys.readouterr().err
    final = re.findall(r"indexing: 100%\|[^|]*\| 24/24 \[[^,]+, *([\d.]+)img/s\]", bar)
    assert final, bar
    assert stats.processed == 24 and stats.images_per_second == pytest.approx(float(final[-1]), rel=0.01)
    assert stats.summary().endswith(f"{stats.images_per_second:.1f} images/s over {stats.encode_seconds:.1f}s of "
                                    f"decoding and encoding ({stats.seconds:.1f}s in all)")
    assert stats.encode_seconds < stats.seconds  # the rate leaves out scanning and loading the model


def test_an_empty_folder_says_so(tmp_path, library_at):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a picture")
    lib = library_at
    human = CliRunner().invoke(main, ["index", str(empty), "--library", lib, "--model", "tiny"])
    assert human.exit_code == 0, human.output
    first, summary = human.stdout.splitlines()
    assert first == f"no pictures found in {empty}"
    assert summary.startswith("indexed 0 · unchanged 0 · moved 0 · removed 0 · skipped 0 · nothing to encode (")
    as_json = CliRunner().invoke(main, ["index", str(empty), "--library", lib, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["empty_roots"] == [str(empty)]
