"""Search quality and behaviour on a real library built with the tiny model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from clipdex.errors import UsageError
from clipdex.search import build_query, search
from clipdex.synthetic import COLORS, SHAPES
from tests.conftest import BOTH

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL


def truth(collection) -> dict[str, object]:
    return {str(p): s for p, s in collection.items()}


@pytest.mark.parametrize("color,shape", [("red", "circle"), ("blue", "square"), ("yellow", "star"),
                                         ("green", "triangle"), ("purple", "circle"), ("orange", "square")])
def test_top5_for_a_colour_shape_query_are_exactly_that(library, encoder, collection, color, shape):
    hits = search(library, build_query(encoder, f"a {color} {shape}"), 5)
    labels = [truth(collection)[h.path] for h in hits]
    assert [(s.color, s.shape) for s in labels] == [(color, shape)] * 5
    assert all(-1.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_precision_at_4_over_every_combination(library, encoder, collection):
    t = truth(collection)
    right = 0
    for color in COLORS:
        for shape in SHAPES:
            hits = search(library, build_query(encoder, f"a photo of a {color} {shape}."), 4)
            right += sum(1 for h in hits if (t[h.path].color, t[h.path].shape) == (color, shape))
    precision = right / (4 * len(COLORS) * len(SHAPES))
    assert precision >= 0.9, precision


def test_search_by_example_image_finds_its_kind(library, encoder, collection, tmp_path):
    from clipdex.synthetic import Sample, draw

    example = tmp_path / "query.png"
    draw(Sample("blue", "circle"), (300, 300)).save(example)
    hits = search(library, build_query(encoder, image=example), 4)
    t = truth(collection)
    assert [(t[h.path].color, t[h.path].shape) for h in hits] == [("blue", "circle")] * 4


def test_text_and_image_combined(library, encoder, collection, tmp_path):
    from clipdex.synthetic import Sample, draw

    example = tmp_path / "query.png"
    draw(Sample("red", "square"), (300, 300)).save(example)
    q = build_query(encoder, text="a red square", image=example)
    assert np.isclose(np.linalg.norm(q), 1.0, atol=1e-5)
    hits = search(library, q, 3)
    assert all((truth(collection)[h.path].color, truth(collection)[h.path].shape) == ("red", "square") for h in hits)


def test_not_pushes_results_away_from_a_concept(library, encoder, collection):
    t = truth(collection)
    plain = search(library, build_query(encoder, "a circle"), 16)
    pushed = search(library, build_query(encoder, "a circle", negative="red"), 16)
    assert sum(t[h.path].color == "red" for h in pushed) < sum(t[h.path].color == "red" for h in plain) or \
        sum(t[h.path].color == "red" for h in plain) == 0
    assert sum(t[h.path].color == "red" for h in pushed[:8]) == 0
    assert sum(t[h.path].shape == "circle" for h in pushed[:8]) >= 6


def test_folder_filter_and_offset(library, encoder, collection):
    root = next(iter(collection)).parent.parent
    hits = search(library, build_query(encoder, "a red circle"), 5, folder=str(root / "blue"))
    assert hits and all(Path(h.path).parent.name == "blue" for h in hits)
    first = search(library, build_query(encoder, "a star"), 6)
    page2 = search(library, build_query(encoder, "a star"), 3, offset=3)
    assert [h.id for h in page2] == [h.id for h in first[3:]]


def test_empty_query_and_bad_k_are_refused(library, encoder):
    with pytest.raises(UsageError, match="nothing to search for"):
        build_query(encoder, text="  ")
    with pytest.raises(UsageError, match="k must be between 1 and 1000"):
        search(library, build_query(encoder, "a circle"), 0)


def test_unreadable_query_image_is_a_usage_error(encoder, tmp_path):
    bad = tmp_path / "nope.jpg"
    bad.write_text("not a picture")
    with pytest.raises(UsageError, match="cannot use .*nope.jpg as a query image: not a recognised image format"):
        build_query(encoder, image=bad)


def test_why_empty_returns_reasons_as_data(library, tmp_path):
    from clipdex.search import EmptyReason, why_empty

    assert why_empty(library) == []  # no filter: nothing to blame
    assert why_empty(library, tag="red") == [EmptyReason("unknown_tag", tag="red", known=())]
    empty_folder = EmptyReason("empty_folder", folder=str(tmp_path / "x"))
    assert why_empty(library, folder=f"{tmp_path}/x/") == [empty_folder]
    since, until = dt.datetime(2020, 1, 1), dt.datetime(2021, 1, 1)
    assert why_empty(library, since=since, until=until) == [EmptyReason("undated", count=120)]
    assert why_empty(library, since=until, until=since) == [EmptyReason("empty_date_range")]
    assert [r.as_dict() for r in why_empty(library, tag="red", since=since)] == [
        {"kind": "unknown_tag", "tag": "red", "known": []}]
