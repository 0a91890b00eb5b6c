"""Duplicates: range search (flat, IVF, overlay), the pixel signal, grouping and keepers, CLI and web."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import threading
import time

import numpy as np
import pytest

from clipdex.ann.base import Base, flat_index
from clipdex.ann.build import build
from clipdex.ann.live import LiveIndex
from clipdex.ann.synthetic import clip_like_vectors
from clipdex.duplicates import DUPLICATES_NPROBE, KEEP_RULES, find_duplicates, keeper_order
from clipdex.duplicates.generated import DERIVATIONS, derive, random_scene, shoot_again, write_collection
from clipdex.duplicates.pixels import MAX_DIFFERENCE, difference, same_picture, signature_of_file
from clipdex.errors import UsageError
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL
from clipdex.web import create_app
from tests.conftest import BOTH, invoke, new_location

BACKENDS = BOTH  # the tests on a library run on SQLite and on PostgreSQL


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


@pytest.mark.parametrize("kind,nprobe", [("flat", None), ("ivf", None), ("ivf", DUPLICATES_NPROBE)])
def test_range_search_matches_exact_search(vectors, kind, nprobe):
    ids, x = vectors
    fetch = _fetch(ids, x)
    order = np.random.default_rng(0).permutation(len(ids))
    base, _ = build(kind, x.shape[1], 1, len(ids), lambda: iter([(ids, x)]),
                    lambda n: (ids[order[:n]], x[order[:n]]), fetch)
    assert base.kind == kind
    live = LiveIndex(x.shape[1], 1, base, fetch)
    q = x[:300]
    found = live.range_search(q, 0.9, nprobe=nprobe)  # near duplicates need few lists: they are close
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
            assert same_picture(mine, signature_of_file(copy)), how
        shot = tmp_path / f"o{n}-shot.jpg"
        shoot_again(scene, rng).render().save(shot, quality=92)
        assert difference(mine, signature_of_file(shot)) > MAX_DIFFERENCE
        assert not same_picture(mine, signature_of_file(shot))


def test_pixel_check_tells_flat_shapes_apart(tmp_path):
    # the demo's pictures: one flat shape on a plain light background; the grey, normalised structure
    # alone called many of them one picture (purple square ~ blue square), their colour does not
    from clipdex.synthetic import write_collection as write_shapes

    files = sorted(write_shapes(tmp_path, per_class=3, seed=7))
    signatures = [signature_of_file(f) for f in files]
    assert sum(difference(a, b) <= MAX_DIFFERENCE for a, b in itertools.combinations(signatures, 2)) > 10
    same = [(files[i].name, files[j].name) for i, j in itertools.combinations(range(len(files)), 2)
            if same_picture(signatures[i], signatures[j])]
    assert same == []


def test_signatures_refuse_what_is_not_a_regular_file(tmp_path):
    from clipdex.errors import DecodeError

    fifo = tmp_path / "planted.jpg"
    os.mkfifo(fifo)
    began = time.monotonic()
    with pytest.raises(DecodeError, match="not a regular file"):
        signature_of_file(fifo)
    assert time.monotonic() - began < 5


# -- grouping on a real library ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def dup_library(tmp_path_factory, backend, request):
    folder = tmp_path_factory.mktemp("dups")
    collection = write_collection(folder / "pictures", 8, seed=11, copies=5, shots=1, exact=2)
    for n, path in enumerate(sorted(collection.files, key=lambda p: p.name, reverse=True)):
        os.utime(path, (1_600_000_000 + 3600 * n, 1_600_000_000 + 3600 * n))  # distinct file times for "oldest"
    lib = Library.create(new_location(backend, request, folder / "library"))
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
    with pytest.raises(UsageError, match="raise the threshold"):  # the budget of candidate pairs
        find_duplicates(dup_library, max_pairs=3)


def _exif_dated(image, path, taken: str = "2019:03:04 10:11:12"):
    exif = image.getexif()
    exif.get_ifd(0x8769)[36867] = taken  # DateTimeOriginal
    image.save(path, quality=92, exif=exif)


@pytest.fixture(scope="module")
def case_library(tmp_path_factory, backend, request):
    """The demo's flat shapes, a crop of a crop (a chain), and a dated camera JPEG with its PNG conversion."""
    from clipdex.synthetic import write_collection as write_shapes

    folder = tmp_path_factory.mktemp("cases")
    write_shapes(folder / "pictures" / "shapes", per_class=3, seed=7)
    rng = random.Random(3)
    image = random_scene(rng).render()
    w, h = image.size
    image.save(folder / "pictures" / "chain-0.jpg", quality=92)
    once = image.crop((round(w * .06), round(h * .06), w, h))  # 6 % off two sides: a copy of chain-0
    once.save(folder / "pictures" / "chain-1.jpg", quality=92)
    w1, h1 = once.size
    once.crop((round(w1 * .06), round(h1 * .06), w1, h1)).save(folder / "pictures" / "chain-2.jpg", quality=92)
    camera = random_scene(rng).render()
    _exif_dated(camera, folder / "pictures" / "IMG_0001.jpg")
    camera.save(folder / "pictures" / "IMG_0001 (edited).png")
    lib = Library.create(new_location(backend, request, folder / "library"))
    Indexer(lib, TINY_MODEL, workers=1).run([str(folder / "pictures")])
    return lib


def test_no_group_among_the_demo_shapes(case_library):
    groups = find_duplicates(case_library)
    assert not [p.path for g in groups for p in g.pictures if "/shapes/" in p.path]


def test_members_are_confirmed_against_the_keeper_not_through_a_chain(case_library):
    groups = [g for g in find_duplicates(case_library) if "chain-" in g.keeper.path]
    # chain-1 is a copy of chain-0 and chain-2 one of chain-1, but chain-2 is cropped 12 % from chain-0
    assert [[os.path.basename(p.path) for p in g.pictures] for g in groups] == [["chain-0.jpg", "chain-1.jpg"]]
    for g in find_duplicates(case_library):
        keeper = signature_of_file(g.keeper.path)
        assert all(same_picture(keeper, signature_of_file(p.path)) for p in g.pictures[1:])


def test_largest_keeps_the_dated_original_over_a_bigger_conversion(case_library):
    group = next(g for g in find_duplicates(case_library) if "IMG_0001" in g.keeper.path)
    assert [os.path.basename(p.path) for p in group.pictures] == ["IMG_0001.jpg", "IMG_0001 (edited).png"]
    assert group.pictures[1].size > group.keeper.size and group.keeper.captured_at is not None
    text = invoke("duplicates", "--library", case_library.location).stdout
    assert "2019-03-04  " in text  # the capture date is shown


def test_a_fifo_in_place_of_a_picture_costs_that_picture_only(tmp_path, library_at):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    scene = random_scene(random.Random(8)).render()
    scene.save(pictures / "a.jpg", quality=92)
    scene.save(pictures / "b.png")
    scene.resize((scene.width // 2, scene.height // 2)).save(pictures / "c.jpg", quality=90)
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pictures)])
    assert len(find_duplicates(lib)[0].pictures) == 3
    (pictures / "b.png").unlink()
    os.mkfifo(pictures / "b.png")  # no writer ever opens it: a blocking open would wait forever
    found: list = []
    worker = threading.Thread(target=lambda: found.append(find_duplicates(lib)), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "find_duplicates hangs on a FIFO"
    assert [sorted(os.path.basename(p.path) for p in g.pictures) for g in found[0]] == [["a.jpg", "c.jpg"]]


# -- CLI --------------------------------------------------------------------------------------------------------
def test_cli_json_csv_and_text(dup_library):
    lib = dup_library.location
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
    result = invoke("duplicates", "--library", dup_library.location, "--threshold", "2")
    assert result.exit_code == 2 and result.stderr.startswith("Error: threshold") and result.stderr.count("\n") == 1
    result = invoke("duplicates", "--library", dup_library.location, "--json", "--csv")
    assert result.exit_code == 2 and result.stderr.startswith("Error:")


# -- web -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(dup_library):
    return create_app({"LIBRARY": dup_library.location, "TESTING": True, "WARM_UP": False}).test_client()


def test_api_and_page_list_the_groups(client, dup_library):
    body = client.get("/api/duplicates?keep=shortest-path").get_json()
    assert body == {"groups": [g.as_dict() for g in find_duplicates(dup_library, keep="shortest-path")]}
    page = client.get("/duplicates?keep=shortest-path").get_data(as_text=True)
    assert page.count('class="dup-group"') == len(body["groups"])
    for g in body["groups"]:
        assert f'data-keeper="{g["keeper"]}"' in page
        assert all(f"/api/images/{p['id']}/thumbnail" in page for p in g["pictures"])


def test_page_works_under_its_csp_and_shows_file_names(client, dup_library):
    page = client.get("/duplicates").get_data(as_text=True)
    assert "onchange" not in page and "<script>" not in page  # the CSP blocks inline scripts and handlers
    assert "/static/duplicates.js" in page and client.get("/static/duplicates.js").status_code == 200
    assert 'name="threshold"' in page and 'type="submit"' in page  # usable without a script too
    for g in find_duplicates(dup_library):
        assert all(f'<span class="dup-name" title="{p.path}">{os.path.basename(p.path)}</span>' in page
                   for p in g.pictures)


def test_page_and_api_refuse_cross_site_requests_and_costly_thresholds(client):
    cross = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    for url in ("/duplicates?threshold=0.31", "/api/duplicates", "/duplicates"):
        r = client.get(url, headers=cross)
        assert r.status_code == 403 and set(r.get_json()) == {"status", "message"}
    assert client.get("/duplicates", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    for url in ("/api/duplicates?threshold=0.0001", "/duplicates?threshold=0.1", "/api/duplicates?threshold=-1"):
        r = client.get(url)
        assert r.status_code == 400, url
    assert "at least 0.3" in client.get("/api/duplicates?threshold=0.0001").get_json()["message"]


def test_a_second_computation_is_answered_busy_not_queued(client):
    from clipdex.web import duplicates as web

    assert web._lock.acquire(timeout=60)  # another request computing
    try:
        began = time.monotonic()
        r = client.get("/api/duplicates?threshold=0.97")  # not cached
        assert r.status_code == 503 and r.headers["Retry-After"] and "busy" in r.get_json()["message"]
        assert client.get("/duplicates?threshold=0.97").status_code == 503
        assert time.monotonic() - began < 5
    finally:
        web._lock.release()
    assert client.get("/api/duplicates?threshold=0.97").status_code == 200


def test_api_errors_have_the_api_shape(client):
    r = client.get("/api/duplicates?threshold=abc")
    assert r.status_code == 400 and set(r.get_json()) == {"status", "message"}
    r = client.get("/api/duplicates?keep=prettiest")
    assert r.status_code == 400 and "keep must be one of" in r.get_json()["message"]
