"""Duplicates: range search (flat, IVF, overlay), the pixel signal, grouping and keepers, CLI and web."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random

import numpy as np
import pytest

from clipdex.ann.base import Base, flat_index
from clipdex.ann.build import build
from clipdex.ann.live import LiveIndex
from clipdex.ann.synthetic import clip_like_vectors
from clipdex.duplicates import KEEP_RULES, find_duplicates, keeper_order
from clipdex.duplicates.generated import DERIVATIONS, derive, random_scene, shoot_again, write_collection
from clipdex.duplicates.pixels import MAX_DIFFERENCE, difference, signature_of_file
from clipdex.errors import UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.web import create_app
from tests.conftest import invoke


# -- range search ---------------------------------------------------------------------
def _brute(x: np.ndarray, ids: np.ndarray, q: np.ndarray, threshold: float) -> list[set[int]]:
    scores = q @ x.T
    return [set(ids[row >= threshold].tolist()) for row in scores]


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    x = next(clip_like_vectors(3000, 64, seed=3, clusters=40, near_duplicates=0.05))
    return np.arange(10, 10 + len(x), dtype=np.int64), x


def _fetch(ids_all: np.ndarray, x: np.ndarray):
    def fetch(wanted: np.ndarray):
        wanted = np.asarray(wanted, np.int64)
        present = wanted[np.isin(wanted, ids_all)]
        return np.sort(present), x[np.sort(present) - ids_all[0]]
    return fetch


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_range_search_matches_exact_search(vectors, kind):
    ids, x = vectors
    fetch = _fetch(ids, x)
    order = np.random.default_rng(0).permutation(len(ids))
    base, _ = build(kind, x.shape[1], 1, len(ids), lambda: iter([(ids, x)]),
                    lambda n: (ids[order[:n]], x[order[:n]]), fetch)
    assert base.kind == kind
    live = LiveIndex(x.shape[1], 1, base, fetch)
    q = x[:300]
    found = live.range_search(q, 0.9)
    expected = _brute(x, ids, q, 0.9)
    got = [set(h.tolist()) for h, _ in found]
    assert all(g <= e for g, e in zip(got, expected))  # never a pair below the threshold
    recall = sum(len(g) for g in got) / sum(len(e) for e in expected)
    assert recall >= (1.0 if kind == "flat" else 0.95)
    for (hits, scores), row in zip(found, q):  # exact scores, best first
        assert np.allclose(scores, x[hits - ids[0]] @ row, atol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)


def test_range_search_sees_the_overlay_and_hides_what_changed(vectors):
    ids, x = vectors
    index = flat_index(x.shape[1])
    index.add_with_ids(x[:2000], ids[:2000])
    live = LiveIndex(x.shape[1], 1, Base("flat", 1, index, ids[:2000]), _fetch(ids, x))
    moved = ids[5]  # its vector replaced by a copy of picture 0's: found through the overlay, not the base
    live = live.with_delta(2, np.array([moved]), np.array([moved, ids[2500]]), np.stack([x[0], x[2500]]))
    hits, scores = live.range_search(x[:1], 0.999)[0]
    assert moved in hits.tolist() and ids[0] in hits.tolist()
    hits5 = live.range_search(x[5:6], 0.999)[0][0]
    assert moved not in hits5.tolist()  # its old vector is hidden in the base
    assert ids[2500] in live.range_search(x[2500:2501], 0.999)[0][0].tolist()
    assert len(live.range_search(x[:3], 0.9, limit=1)[1][0]) <= 1


# -- the pixel signal -----------------------------------------------------------------------------------
def test_pixel_difference_tells_copies_from_second_shots(tmp_path):
    rng = random.Random(5)
    for n in range(3):
        scene = random_scene(rng)
        original = tmp_path / f"o{n}.jpg"
        scene.render().save(original, quality=92)
        mine = signature_of_file(original)
        for how in DERIVATIONS:
            copy = derive(original, how, tmp_path / f"o{n}-{how}", rng)
            assert difference(mine, signature_of_file(copy)) <= MAX_DIFFERENCE, how
        shot = tmp_path / f"o{n}-shot.jpg"
        shoot_again(scene, rng).render().save(shot, quality=92)
        assert difference(mine, signature_of_file(shot)) > MAX_DIFFERENCE


# -- grouping on a real library ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dup_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dups")
    collection = write_collection(folder / "pictures", 8, seed=11, copies=5, shots=1, exact=2)
    for n, path in enumerate(sorted(collection.files, key=lambda p: p.name, reverse=True)):
        os.utime(path, (1_600_000_000 + 3600 * n, 1_600_000_000 + 3600 * n))  # distinct file times for "oldest"
    lib = Library.create(folder / "library")
    Indexer(lib, TINY_MODEL, workers=1).run([str(folder / "pictures")])
    lib.collection = collection
    return lib


def test_groups_meet_the_precision_and_recall_bars(dup_library):
    groups = find_duplicates(dup_library)
    predicted = {frozenset((a.path, b.path)) for g in groups for a, b in itertools.combinations(g.pictures, 2)}
    truth = dup_library.collection.true_pairs()
    hit = len(predicted & truth)
    assert hit / len(predicted) >= 0.95 and hit / len(truth) >= 0.95
    shots = {str(p) for p in dup_library.collection.files if "-shot" in p.name}
    assert not any(p.path in shots for g in groups for p in g.pictures)  # second shots of a subject are apart


def test_exact_copies_alone_are_an_exact_group(dup_library, tmp_path):
    # the exact twin sits inside its subject's near group; alone (threshold 1: no near candidates) it is exact
    groups = find_duplicates(dup_library, threshold=1.0)
    exact = [g for g in groups if g.kind == "exact"]
    assert len(exact) == 2 and all(len({p.content_hash for p in g.pictures}) == 1 for g in exact)
    assert all(any("-exact" in p.path for p in g.pictures) for g in exact)
    near = find_duplicates(dup_library)
    assert {g.kind for g in near} == {"near"}


@pytest.mark.parametrize("rule", KEEP_RULES)
def test_keeper_follows_the_rule(dup_library, rule):
    order = keeper_order(rule)
    for g in find_duplicates(dup_library, keep=rule):
        assert g.keeper == min(g.pictures, key=order)
        if rule == "largest":
            assert g.keeper.width * g.keeper.height == max(p.width * p.height for p in g.pictures)
        if rule == "oldest":
            assert g.keeper.mtime == min(os.stat(p.path).st_mtime for p in g.pictures)
        if rule == "shortest-path":
            assert len(g.keeper.path) == min(len(p.path) for p in g.pictures)


def test_bad_arguments_are_usage_errors(dup_library):
    with pytest.raises(UsageError):
        find_duplicates(dup_library, keep="prettiest")
    with pytest.raises(UsageError):
        find_duplicates(dup_library, threshold=1.5)


# -- CLI --------------------------------------------------------------------------------------------------------
def test_cli_json_csv_and_text(dup_library):
    lib = str(dup_library.path)
    result = invoke("duplicates", "--library", lib, "--json")
    assert result.exit_code == 0, result.stderr
    groups = json.loads(result.stdout)["groups"]
    assert groups == [g.as_dict() for g in find_duplicates(dup_library)]
    assert all(g["kind"] in ("exact", "near") and g["keeper"] == g["pictures"][0]["id"] for g in groups)
    assert {"id", "path"} <= set(groups[0]["pictures"][0])
    rows = list(csv.DictReader(io.StringIO(invoke("duplicates", "--library", lib, "--csv", "--keep", "oldest").stdout)))
    assert len(rows) == sum(len(g["pictures"]) for g in groups)
    assert sum(r["keep"] == "yes" for r in rows) == len(groups)
    text = invoke("duplicates", "--library", lib).stdout
    assert f"{len(groups)} groups of duplicates" in text and text.count("keep  ") == len(groups)


def test_cli_errors_take_one_line(dup_library):
    result = invoke("duplicates", "--library", str(dup_library.path), "--threshold", "2")
    assert result.exit_code == 2 and result.stderr.startswith("Error: threshold") and result.stderr.count("\n") == 1
    result = invoke("duplicates", "--library", str(dup_library.path), "--json", "--csv")
    assert result.exit_code == 2 and result.stderr.startswith("Error:")


# -- web -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(dup_library):
    return create_app({"LIBRARY": dup_library.path, "TESTING": True, "WARM_UP": False}).test_client()


def test_api_and_page_list_the_groups(client, dup_library):
    body = client.get("/api/duplicates?keep=shortest-path").get_json()
    assert body == {"groups": [g.as_dict() for g in find_duplicates(dup_library, keep="shortest-path")]}
    page = client.get("/duplicates?keep=shortest-path").get_data(as_text=True)
    assert page.count('class="dup-group"') == len(body["groups"])
    for g in body["groups"]:
        assert f'data-keeper="{g["keeper"]}"' in page
        assert all(f"/api/images/{p['id']}/thumbnail" in page for p in g["pictures"])


def test_api_errors_have_the_api_shape(client):
    r = client.get("/api/duplicates?threshold=abc")
    assert r.status_code == 400 and set(r.get_json()) == {"status", "message"}
    r = client.get("/api/duplicates?keep=prettiest")
    assert r.status_code == 400 and "keep must be one of" in r.get_json()["message"]
