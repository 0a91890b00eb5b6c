"""Zero-shot tagging on a labelled generated set, with real storage and export."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from clipdex.classify.tagging import (
    export_tags,
    label_vectors,
    parse_labels,
    softmax,
    tag_library,
)
from clipdex.errors import UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.search import build_query, search
from clipdex.synthetic import COLORS, SHAPES
from tests.conftest import BOTH, copy_library

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL


@pytest.fixture()
def own_library(tmp_path, collection, library, request):
    """A private copy of the shared library, so tagging can write to it."""
    lib = Library.open(copy_library(library, tmp_path / "lib", request))
    yield lib
    lib.close()


def stored(lib):
    return json.loads(export_tags(lib, "json"))


def test_colour_tagging_accuracy(own_library, encoder, collection):
    stats = tag_library(own_library, encoder, list(COLORS))
    assert stats.images == len(collection)
    t = {str(p): s for p, s in collection.items()}
    rows = stored(own_library)
    assert len(rows) == len(collection)
    accuracy = np.mean([t[r["path"]].color == r["label"] for r in rows])
    assert accuracy >= 0.95, accuracy
    assert all(0 < r["probability"] <= 1 and r["source"] == "zero-shot" for r in rows)


def test_shape_tagging_with_a_template_ensemble(own_library, encoder, collection):
    tag_library(own_library, encoder, list(SHAPES), ["a photo of a {}.", "a picture of a {}", "a {}"])
    t = {str(p): s for p, s in collection.items()}
    accuracy = np.mean([t[r["path"]].shape == r["label"] for r in stored(own_library)])
    assert accuracy >= 0.85, accuracy


def test_template_ensemble_is_the_mean_of_template_embeddings(encoder):
    templates = ["a photo of a {}.", "a {}"]
    got = label_vectors(encoder, ["circle", "star"], templates)
    each = encoder.encode_texts(["a photo of a circle.", "a circle"]).mean(axis=0)
    assert np.allclose(got[0], each / np.linalg.norm(each), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_probabilities_are_softmax_of_scaled_cosine(own_library, encoder):
    ids, vectors = own_library.load_vectors()
    labels = label_vectors(encoder, ["red", "blue"], ["a photo of a {}."])
    probs = softmax(encoder.logit_scale * vectors @ labels.T)
    logits = encoder.logit_scale * vectors[0] @ labels.T
    expected = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(probs[0], expected, atol=1e-6)
    assert np.allclose(probs.sum(axis=1), 1.0)


def test_multi_label_keeps_every_label_over_the_threshold(own_library, encoder):
    stats = tag_library(own_library, encoder, ["red", "orange", "circle", "square"], multi_label=True, threshold=0.2)
    rows = stored(own_library)
    assert all(r["probability"] >= 0.2 for r in rows)
    assert stats.tags_written == len(rows)
    per_image = {}
    for r in rows:
        per_image.setdefault(r["id"], []).append(r["label"])
    assert any(len(v) > 1 for v in per_image.values())


def test_another_label_set_adds_and_search_can_filter_by_tag(own_library, encoder, collection):
    tag_library(own_library, encoder, ["circle", "square", "triangle", "star"])
    tag_library(own_library, encoder, list(COLORS))
    rows = stored(own_library)
    assert {r["label"] for r in rows} & set(SHAPES) and {r["label"] for r in rows} & set(COLORS)
    assert len(rows) == 2 * len(collection)  # one colour and one shape per picture
    hits = search(own_library, build_query(encoder, "a circle"), 10, tag="green")
    t = {str(p): s for p, s in collection.items()}
    assert hits and all(t[h.path].color == "green" for h in hits)


def test_tagging_a_folder_only(own_library, encoder, collection):
    root = next(iter(collection)).parent.parent
    stats = tag_library(own_library, encoder, list(SHAPES), folder=str(root / "red"))
    assert stats.images == 20
    assert all("/red/" in r["path"] for r in stored(own_library))


def test_export_csv(own_library, encoder):
    tag_library(own_library, encoder, list(COLORS))
    rows = list(csv.DictReader(io.StringIO(export_tags(own_library, "csv"))))
    assert list(rows[0]) == ["id", "path", "label", "probability", "source", "pass"]
    assert len(rows) == 120
    assert {(r["source"], r["pass"]) for r in rows} == {("zero-shot", ", ".join(COLORS))}


@pytest.mark.parametrize("labels,message", [
    ("cat", "need at least two distinct labels to choose between, got 1"),
    ("cat, cat ,", "need at least two distinct labels to choose between, got 1"),
])
def test_bad_label_sets(labels, message):
    with pytest.raises(UsageError, match=message):
        parse_labels(labels)


def test_labels_file_with_comments(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# colours\nred\nblue  # the sky\n\n")
    assert parse_labels(labels_file=f) == ["red", "blue"]


def test_template_without_placeholder_is_refused(own_library, encoder):
    with pytest.raises(UsageError, match="must contain exactly one {}"):
        tag_library(own_library, encoder, ["a", "b"], ["a photo"])


def test_changed_picture_loses_its_stale_tags(library_at, tmp_path, encoder):
    from clipdex.synthetic import Sample, draw

    pics = tmp_path / "pics"
    pics.mkdir()
    draw(Sample("red", "circle")).save(pics / "a.jpg")
    draw(Sample("blue", "square")).save(pics / "b.jpg")
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    tag_library(lib, encoder, list(COLORS))
    assert len(stored(lib)) == 2
    draw(Sample("green", "star")).save(pics / "a.jpg")
    import os
    os.utime(pics / "a.jpg", (1, 1))
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    assert [r["path"] for r in stored(lib)] == [str(pics / "b.jpg")]


def test_label_with_its_own_prompt(own_library, encoder, collection):
    tag_library(own_library, encoder, ["warm=something red", "cold=something blue"])
    t = {str(p): s for p, s in collection.items()}
    rows = stored(own_library)
    assert {r["label"] for r in rows} == {"warm", "cold"}
    reds = [r for r in rows if t[r["path"]].color == "red"]
    assert all(r["label"] == "warm" for r in reds)
