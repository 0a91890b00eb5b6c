"""Classifier commands: their error messages, and eval / probe train with --model and without a library.

The commands run in-process; every message is checked as people read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import DEFAULT_MODEL, tiny_model_dir
from tests.conftest import BOTH, cli
from tests.test_classifiers import write_classes

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_classes(tmp_path_factory.mktemp("colours"), {"red": "red", "blue": "blue", "green": "green"}, 10, 1)


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> str:
    """The tiny model under another identity: its vectors must not be mixed with the tiny model's."""
    folder = tmp_path_factory.mktemp("model") / "tiny-copy"
    shutil.copytree(tiny_model_dir(), folder)
    return f"local-dir:{folder}"


# -- messages ---------------------------------------------------------------------
def test_eval_of_a_picture_or_a_binary_file_says_what_a_dataset_is(tmp_path, colours):
    picture = next((colours / "red").glob("*.jpg"))
    out = cli("eval", picture, "--library", tmp_path / "none", code=2)
    assert out.stderr == f"Error: {picture} is neither a folder of class folders nor a CSV of path,label\n"
    binary = tmp_path / "labels.csv"
    binary.write_bytes(picture.read_bytes())
    out = cli("eval", binary, "--library", tmp_path / "none", code=2)
    assert out.stderr == f"Error: {binary} is neither a folder of class folders nor a CSV of path,label\n"


@pytest.mark.parametrize("args", [
    [],
    ["--labels", "a,b", "--probe", "codes"],
    ["--labels", "a,b", "--labels-file", "labels.txt"],
])
def test_tag_needs_exactly_one_of_labels_labels_file_or_probe(tmp_path, args):
    out = cli("tag", *args, "--library", tmp_path / "none", code=2)
    assert out.stderr == "Error: give exactly one of --labels, --labels-file or --probe\n"


def test_a_threshold_outside_0_1_names_the_option(tmp_path):
    out = cli("tag", "--labels", "a,b", "--multi-label", "--threshold", "1.5", "--library", tmp_path / "none", code=2)
    assert out.stderr == "Error: --threshold must be above 0 and at most 1, got 1.5\n"


def test_an_empty_prompt_is_refused_by_tag_and_eval(library, colours):
    out = cli("tag", "--labels", "red=,blue", "--library", library.location, code=2)
    assert out.stderr == "Error: label 'red' has an empty prompt after '='\n"
    out = cli("eval", colours, "--prompts", "blue=|green|red", "--library", library.location, code=2)
    assert out.stderr == "Error: prompt set 'blue=|green|red': label 'blue' has an empty prompt after '='\n"


def test_export_into_a_missing_folder_is_one_line(library, tmp_path):
    target = tmp_path / "no" / "such" / "x.csv"
    out = cli("tags", "export", "-o", target, "--library", library.location, code=2)
    assert out.stderr == f"Error: cannot write {target}: No such file or directory\n"
    assert out.stdout == ""


def test_a_report_folder_that_cannot_be_made_fails_before_any_work(tmp_path, colours):
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    out = cli("eval", colours, "--report", blocker / "report", "--library", tmp_path / "none", code=2)
    assert out.stderr == f"Error: cannot write the report into {blocker / 'report'}: Not a directory\n"


def test_probe_names_the_class_with_too_few_pictures(tmp_path):
    dataset = write_classes(tmp_path / "ds", {"red": "red", "blue": "blue"}, 4, 0)
    for extra in sorted((dataset / "blue").glob("*.jpg"))[2:]:
        extra.unlink()
    out = cli("probe", "train", dataset, "--name", "few", "--model", "tiny", "--library", tmp_path / "lib", code=2)
    assert out.stderr == "Error: class 'blue' needs at least 3 pictures to train, validate and test a probe; it has 2\n"
    assert not (tmp_path / "lib").exists()  # a failed training leaves nothing behind


# -- without a library, and with another model --------------------------------------
def test_eval_without_a_library_encodes_with_the_model_given(tmp_path, colours):
    alone = json.loads(cli("eval", colours, "--model", "tiny", "--library", tmp_path / "none", "--json").stdout)
    assert (alone["model"], alone["pictures"], alone["reused_vectors"], alone["encoded"]) == ("tiny", 30, 0, 30)
    assert alone["results"][0]["accuracy"] >= 0.9
    text = cli("eval", colours, "--model", "tiny", "--library", tmp_path / "none").stdout.splitlines()
    assert text[0] == "30 pictures, 3 classes, model tiny (0 stored vectors reused, 30 encoded, 0 unreadable)"
    assert not (tmp_path / "none").exists()  # measuring creates no library


def test_eval_without_a_library_or_a_model_uses_the_default_model(tmp_path, colours):
    out = cli("eval", colours, "--library", tmp_path / "none", code=2)
    assert out.stderr.startswith(f"Error: cannot fetch weights for {DEFAULT_MODEL}: ")  # offline here


def test_stored_vectors_are_reused_only_for_the_same_model(colours, other_model, library_at):
    lib = Library.create(library_at)
    Indexer(lib, "tiny", workers=1, progress=False).run([str(colours / "red")])
    same = json.loads(cli("eval", colours, "--library", lib.location, "--json").stdout)
    assert (same["model"], same["reused_vectors"], same["encoded"]) == ("tiny", 10, 20)
    other = json.loads(cli("eval", colours, "--model", other_model, "--library", lib.location, "--json").stdout)
    assert (other["model"], other["reused_vectors"], other["encoded"]) == (other_model, 0, 30)
    out = cli("probe", "train", colours, "--name", "c", "--model", other_model, "--library", lib.location, code=2)
    assert out.stderr.startswith(f"Error: library {lib.location} was built with model tiny, not {other_model}: ")


def test_probe_train_without_a_library_creates_one_for_its_model(tmp_path, library_at):
    dataset = write_classes(tmp_path / "ds", {"red": "red", "blue": "blue"}, 3, 0)  # the fewest that work
    lib_dir = library_at
    out = cli("probe", "train", dataset, "--name", "warm", "--model", "tiny", "--library", lib_dir)
    assert out.stderr == (f"(created a library at {lib_dir} for model tiny, holding the probe; add pictures with: "
                          f"clipdex index PATH --library {lib_dir})\n")
    assert out.stdout.startswith("probe 'warm': 2 classes, trained on 2 pictures (L2 ")
    facts = json.loads(cli("info", "--library", lib_dir, "--json").stdout)
    assert (facts["model"], facts["images"], facts["probes"]) == ("tiny", 0, ["warm"])
    listed = cli("probe", "list", "--library", lib_dir).stdout.splitlines()
    accuracy = json.loads(cli("probe", "list", "--library", lib_dir, "--json").stdout)[0]["test_accuracy"]
    assert listed == ["name  classes    test accuracy  model",
                      f"warm  blue, red  {accuracy:13.3f}  clipdex:tiny-shapes"]
    # index later, with the library's model, then tag with the probe
    Indexer(Library.open(lib_dir), None, workers=1, progress=False).run([str(dataset)])
    tagged = json.loads(cli("tag", "--probe", "warm", "--library", lib_dir, "--json").stdout)
    assert (tagged["images"], tagged["added"], tagged["pass"]["name"]) == (6, 6, "probe:warm")
