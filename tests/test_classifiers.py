"""clipdex eval and linear probes on generated labelled datasets, with the tiny model (commands run in-process)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from clipdex.cli import main
from clipdex.imaging import load_for_model
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.synthetic import SHAPES, Sample, draw
from tests.conftest import BOTH, copy_library

BACKENDS = BOTH  # every test on a library runs on SQLite and on PostgreSQL

CODE_NAMES = {"zorblat": "red", "quixotl": "blue", "fendrak": "green", "mirvane": "yellow"}


def write_classes(folder: Path, classes: dict[str, str], per_class: int, seed: int) -> Path:
    """One sub-folder per class name; each picture a random shape in the class's colour."""
    rng = random.Random(seed)
    for name, colour in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(Sample(colour, rng.choice(SHAPES)), (200, 200), rng).save(folder / name / f"{i:03d}.jpg")
    return folder


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory, library, request) -> str:
    """A copy of the shared library for this module: its folder, or its cloned database's URL."""
    return copy_library(library, tmp_path_factory.mktemp("cls") / "lib", request)


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_classes(tmp_path_factory.mktemp("colours"), {"red": "red", "blue": "blue", "green": "green"}, 10, 1)


@pytest.fixture(scope="module")
def code_names(tmp_path_factory):
    return write_classes(tmp_path_factory.mktemp("codes"), CODE_NAMES, 20, 2)


def run_cli(*args: str) -> Result:
    """The real ``clipdex`` command, in-process (``returncode`` as for a subprocess)."""
    result = CliRunner().invoke(main, list(args))
    result.returncode = result.exit_code
    return result


def cli_json(*args):
    out = run_cli(*args, "--json")
    assert out.returncode == 0, (out.output, out.exception)
    return json.loads(out.stdout)


def test_eval_matches_an_independent_computation(lib_dir, colours, encoder):
    report = cli_json("eval", str(colours), "--library", str(lib_dir))
    (result,) = report["results"]
    assert report["classes"] == ["blue", "green", "red"] and report["pictures"] == 30
    # independently: encode every picture and the prompts, softmax over logit_scale * cosine
    paths, truth = [], []
    for i, c in enumerate(["blue", "green", "red"]):
        for p in sorted((colours / c).glob("*.jpg")):
            paths.append(p)
            truth.append(i)
    pixels = np.stack([load_for_model(p, encoder.image_size)[0] for p in paths])
    images = encoder.encode_pixels(pixels)
    texts = encoder.encode_texts([f"a photo of a {c}." for c in ["blue", "green", "red"]])
    predicted = (images @ texts.T).argmax(axis=1)
    truth = np.array(truth)
    assert result["accuracy"] == pytest.approx(np.mean(predicted == truth))
    recalls = [np.mean(predicted[truth == k] == k) for k in range(3)]
    assert result["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    confusion = np.zeros((3, 3), int)
    for t, p in zip(truth, predicted):
        confusion[t, p] += 1
    assert result["confusion"] == confusion.tolist()
    tp = confusion[2, 2]
    assert result["per_class"]["red"]["precision"] == pytest.approx(tp / confusion[:, 2].sum())
    assert result["accuracy"] >= 0.9
    assert report["encoded"] == 30 and report["reused_vectors"] == 0


def test_a_wrong_prompt_set_scores_lower(lib_dir, colours):
    report = cli_json("eval", str(colours), "--library", str(lib_dir),
                      "--prompts", "blue|green|red",
                      "--prompts", "blue=a red thing|green=a blue thing|red=a green thing",
                      "--templates", "photo", "--templates", "plain")
    assert len(report["results"]) == 4
    good = [r for r in report["results"] if r["prompts"]["red"] == "red"]
    bad = [r for r in report["results"] if r["prompts"]["red"] == "a green thing"]
    assert min(r["accuracy"] for r in good) > max(r["accuracy"] for r in bad) + 0.5
    worst = bad[0]["mistakes"][0]
    assert worst["p_predicted"] >= bad[0]["mistakes"][-1]["p_predicted"] and worst["truth"] != worst["predicted"]


def test_indexed_pictures_reuse_their_vectors_and_csv_datasets(tmp_path, library_at, colours, encoder):
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(colours / "red")])
    csv = tmp_path / "labels.csv"
    rows = ["path,label"] + [f"{os.path.relpath(p, tmp_path)},{p.parent.name}"  # relative to the CSV
                             for c in ("red", "blue") for p in sorted((colours / c).glob("*.jpg"))]
    csv.write_text("\n".join(rows) + "\n")
    report = cli_json("eval", str(csv), "--library", lib.location)
    assert (report["pictures"], report["reused_vectors"], report["encoded"]) == (20, 10, 10)
    assert report["results"][0]["accuracy"] >= 0.9


def test_probe_learns_code_names_that_words_cannot(lib_dir, code_names):
    report = cli_json("probe", "train", str(code_names), "--name", "codes", "--library", str(lib_dir))
    assert report["train"] + report["validation"] + report["test"] == 80
    assert report["test"] == 20  # a quarter of each class, never seen in training or validation
    assert report["probe_accuracy"] >= 0.9
    assert report["zero_shot_accuracy"] <= 0.5  # four classes: chance is 0.25
    tagged = cli_json("tag", "--probe", "codes", "--library", str(lib_dir))
    assert tagged["images"] == 120 and set(tagged["counts"]) <= set(CODE_NAMES)
    rows = json.loads(run_cli("tags", "export", "--format", "json", "--library", str(lib_dir)).stdout)
    by_path = {r["path"]: r for r in rows if r["source"] == "probe:codes"}
    red = [r for p, r in by_path.items() if "/red/" in p]
    assert np.mean([r["label"] == "zorblat" for r in red]) >= 0.9
    info = cli_json("info", "--library", str(lib_dir))
    assert info["probes"] == ["codes"]
    # the probe's pass and a zero-shot pass live side by side; re-running the probe changes nothing
    assert cli_json("tag", "--labels", "red,blue", "--library", str(lib_dir))["added"] == 120
    again = cli_json("tag", "--probe", "codes", "--library", str(lib_dir))
    assert (again["added"], again["changed"], again["removed"], again["unchanged"]) == (0, 0, 0, 120)
    rows = json.loads(run_cli("tags", "export", "--format", "json", "--library", str(lib_dir)).stdout)
    assert sorted({(r["source"], r["pass"]) for r in rows}) == [("probe:codes", "probe:codes"),
                                                                ("zero-shot", "red, blue")]
    assert len(rows) == 240


def test_split_keeps_test_pictures_out_of_training():
    from clipdex.classify.probe import split

    labels = np.repeat(np.arange(4), 20)
    rest, test = split(labels, 0.25, np.random.default_rng(0))
    assert not set(rest) & set(test) and len(rest) + len(test) == 80
    assert np.bincount(labels[test]).tolist() == [5, 5, 5, 5]


@pytest.mark.parametrize("setup,args,message", [
    ("one_class", [], "needs at least two classes with pictures, found only 'red'"),
    ("unreadable", [], "class 'broken' has no readable pictures"),
    ("colours", ["--prompts", "red|blue|purple"],
     "'purple' is not a class of the dataset (classes: blue, green, red); write CLASS=PROMPT"),
    ("colours", ["--prompts", "red|blue"], "has no prompt for class 'green'"),
])
def test_eval_errors(tmp_path, lib_dir, colours, setup, args, message):
    if setup == "one_class":
        dataset = write_classes(tmp_path / "ds", {"red": "red"}, 2, 0)
    elif setup == "unreadable":
        dataset = write_classes(tmp_path / "ds", {"red": "red"}, 2, 0)
        (dataset / "broken").mkdir()
        (dataset / "broken" / "x.jpg").write_text("not a picture")
    else:
        dataset = colours
    out = run_cli("eval", str(dataset), "--library", str(lib_dir), *args)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("Error: ") and message in out.stderr and "Traceback" not in out.stderr


def test_probe_from_another_model_is_refused(tmp_path, library_at):
    from clipdex.models import tiny_model_dir

    pics = write_classes(tmp_path / "pics", {"a": "red", "b": "blue"}, 3, 0)
    lib = library_at
    cli_json("probe", "train", str(pics), "--name", "codes", "--model", "tiny", "--library", str(lib))
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir(), other)
    assert run_cli("index", str(pics), "--library", str(lib), "--rebuild", "--model", f"local-dir:{other}"
                   ).returncode == 0
    # the library still holds tiny's vectors, which the probe would read (tests/test_model_switch.py): drop them
    assert run_cli("models", "drop", "tiny", "--library", str(lib)).returncode == 0
    out = run_cli("tag", "--probe", "codes", "--library", str(lib))
    assert out.returncode == 2
    assert out.stderr == ("Error: probe 'codes' was trained on embeddings of model clipdex:tiny-shapes, but this "
                          f"library now uses local-dir:{other}: train it again\n")


def test_html_report_renders_the_confusion_matrix(tmp_path, lib_dir, colours, browser):
    report_dir = tmp_path / "report"
    out = cli_json("eval", str(colours), "--library", str(lib_dir), "--report", str(report_dir),
                   "--prompts", "blue|green|red", "--prompts", "blue=a red thing|green=a blue thing|red=a green thing")
    assert out["report"] == str(report_dir / "index.html")
    page = browser.new_page()
    page.goto((report_dir / "index.html").as_uri())
    matrices = page.locator("svg.confusion")
    assert matrices.count() == 2
    assert matrices.first.is_visible() and matrices.first.bounding_box()["width"] > 100
    cells = matrices.first.locator("rect")
    assert cells.count() == 9
    counts = [int(t) for t in matrices.first.locator("text").all_text_contents() if t.isdigit()]
    assert sum(counts) == 30
    assert page.locator(".mistakes img").count() > 0
    page.wait_for_function("[...document.querySelectorAll('.mistakes img')].every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    page.close()
