"""A library holds several models' vectors: ``index --model NEW`` builds beside the old, ``models use`` switches back.

With the shipped tiny model and tests/data/tiny-b (another seed and size: 32-number vectors).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from clipdex.library import Library
from clipdex.models import Encoder
from clipdex.search import build_query
from clipdex.synthetic import write_collection
from clipdex.web.state import WebState
from tests.conftest import BOTH, copy_library, invoke
from tests.terminal import Terminal

TINY_B = f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL


def top_hits(lib: Library, encoder: Encoder, text: str = "a red circle", k: int = 5) -> list[int]:
    return [i for i, _ in lib.index().search(build_query(encoder, text), k)]


def query(location: str, sql: str, **params) -> list[tuple]:
    """Rows of ``sql`` read straight from the library's database (SQLite or PostgreSQL)."""
    lib = Library.open(location)
    try:
        with lib.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params).all()]
    finally:
        lib.close()


def staged(location: str) -> int:
    return query(location, "SELECT count(*) FROM staged_vectors")[0][0]


@pytest.fixture()
def copied(tmp_path, library, request) -> str:
    """A private copy of the session library: its folder, or its cloned database's URL."""
    return copy_library(library, tmp_path / "lib", request)


def listed(lib_dir: str) -> dict[str, dict]:
    out = invoke("models", "--library", str(lib_dir), "--json")
    assert out.exit_code == 0, out.stderr
    return {m["model"]: m for m in json.loads(out.stdout)}


@pytest.mark.slow  # a real process killed part-way
def test_a_killed_switch_leaves_the_old_model_serving_then_resumes_switches_and_switches_back(
        copied, library, encoder, collection):
    root = next(iter(collection)).parent.parent
    ids_before, vectors_before = Library.open(copied).load_vectors()
    expected = top_hits(library, encoder)
    run = Terminal("index", str(root), "--library", str(copied), "--model", TINY_B, "--workers", "1",
                   "--batch-size", "4")
    run.wait_for(r"encoding: +\d+%\|[^|]*\| +(2\d|[3-9]\d)/120")  # at least 20 of tiny-b's vectors committed
    os.killpg(run.group, signal.SIGSTOP)  # frozen part-way: a loaded machine could finish it while we search
    serving = Library.open(copied)  # searched while tiny-b's vectors are being made: tiny answers
    assert str(serving.model_spec) == "tiny" and top_hits(serving, encoder) == expected
    os.killpg(run.group, signal.SIGKILL)
    run.finish()
    done = staged(copied)
    assert 20 <= done < 120

    lib = Library.open(copied)  # killed: still tiny, all its vectors, the same answers
    assert str(lib.model_spec) == "tiny"
    ids, vectors = lib.load_vectors()
    assert ids.tolist() == ids_before.tolist() and np.array_equal(vectors, vectors_before)
    assert top_hits(lib, encoder) == expected
    models = listed(copied)
    assert models["tiny"] == {"model": "tiny", "identity": "clipdex:tiny-shapes", "dim": 64, "pictures": 120,
                                   "total": 120, "active": True, "building": False, "complete": True}
    building = next(m for name, m in models.items() if name != "tiny")
    assert (building["pictures"], building["active"], building["building"], building["complete"]) == (
        done, False, True, False)

    out = invoke("index", str(root), "--library", str(copied), "--model", TINY_B, "--workers", "2", "--json")
    assert out.exit_code == 0, out.stderr
    stats = json.loads(out.stdout)
    assert (stats["encoded"], stats["reused"], stats["rebuilt"]) == (120 - done, done, True)
    switched = Library.open(copied)
    tiny_b = switched.encoder_for(None)
    assert switched.model_spec.identity == Encoder(TINY_B).spec.identity and switched.dim == 32
    assert switched.load_vectors()[0].tolist() == ids_before.tolist()  # every picture keeps its id
    red_circles = {i for i, p in zip(*_paths(switched)) if collection[Path(p)].color == "red"
                   and collection[Path(p)].shape == "circle"}
    assert set(top_hits(switched, tiny_b)) == red_circles  # tiny-b's own vectors answer, and well
    assert {m["model"]: (m["active"], m["complete"]) for m in listed(copied).values()} == {
        "tiny": (False, True), str(tiny_b.spec): (True, True)}

    out = invoke("models", "use", "tiny", "--library", str(copied), "--json")  # back, without encoding
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout) == {"model": "tiny", "kept": 120, "encoded": 0, "removed": 0, "skipped": 0,
                                      "switched": True}
    back = Library.open(copied)
    ids, vectors = back.load_vectors()
    assert ids.tolist() == ids_before.tolist() and np.array_equal(vectors, vectors_before)
    assert top_hits(back, encoder) == expected and staged(copied) == 0


def _paths(lib: Library) -> tuple[list[int], list[str]]:
    with lib.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, path FROM images ORDER BY id")).all()
    return [r[0] for r in rows], [r[1] for r in rows]


@pytest.fixture()
def small(tmp_path, library_at) -> tuple[str, Path]:
    """A library of 24 pictures indexed with tiny, a probe 'colours' trained on it, and zero-shot tags."""
    pics = tmp_path / "pics"
    write_collection(pics, per_class=1, seed=3)
    lib_dir = library_at
    assert invoke("index", str(pics), "--library", str(lib_dir), "--model", "tiny", "--workers", "1").exit_code == 0
    out = invoke("probe", "train", str(pics), "--name", "colours", "--library", str(lib_dir))
    assert out.exit_code == 0, out.stderr
    out = invoke("tag", "--labels", "circle,square,triangle", "--library", str(lib_dir))
    assert out.exit_code == 0, out.stderr
    return lib_dir, pics


def _tags(lib_dir: str, source: str) -> dict[str, str]:
    return dict(query(lib_dir, "SELECT i.path, t.label FROM tags t JOIN images i ON i.id = t.image_id "
                               "WHERE t.source = :source", source=source))


def test_probes_and_tags_stay_usable_with_their_model_and_a_held_model_completes_when_used(small, tmp_path):
    lib_dir, pics = small
    web = WebState(lib_dir)
    assert str(web.encoder().spec) == "tiny"
    out = invoke("tag", "--probe", "colours", "--library", str(lib_dir))
    assert out.exit_code == 0, out.stderr
    by_tiny = _tags(lib_dir, "probe:colours")
    assert len(by_tiny) == 24 and all(Path(p).parent.name == label for p, label in by_tiny.items())

    out = invoke("index", str(pics), "--library", str(lib_dir), "--model", TINY_B, "--workers", "1")
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines()[-1] == (f"now using {Encoder(TINY_B).spec} (24 pictures encoded, 0 vectors reused); "
                                           "the previous model's vectors are kept: see clipdex models")
    assert web.encoder().spec.identity == Encoder(TINY_B).spec.identity  # a server follows the switch
    out = invoke("tag", "--probe", "colours", "--library", str(lib_dir), "--json")  # tiny's probe, tiny's vectors
    assert out.exit_code == 0, out.stderr
    assert _tags(lib_dir, "probe:colours") == by_tiny
    hits = invoke("search", "a shape", "--tag", "circle", "--library", str(lib_dir), "--json", "-k", "50")
    assert hits.exit_code == 0, hits.stderr  # tags made under tiny filter tiny-b's search
    assert {h["path"] for h in json.loads(hits.stdout)["results"]} == {
        p for p, label in _tags(lib_dir, "zero-shot").items() if label == "circle"}

    write_collection(tmp_path / "more", per_class=1, seed=4)  # indexed by tiny-b only: tiny becomes incomplete
    assert invoke("index", str(pics), str(tmp_path / "more"), "--library", str(lib_dir),
                  "--workers", "1").exit_code == 0
    models = listed(lib_dir)
    assert (models["tiny"]["pictures"], models["tiny"]["total"], models["tiny"]["complete"]) == (24, 48, False)
    out = invoke("tag", "--probe", "colours", "--library", str(lib_dir))  # tags what tiny has vectors of
    assert out.exit_code == 0, out.stderr
    assert _tags(lib_dir, "probe:colours") == by_tiny

    out = invoke("models", "use", "tiny", "--library", str(lib_dir), "--json")
    assert out.exit_code == 0, out.stderr
    assert (json.loads(out.stdout)["kept"], json.loads(out.stdout)["encoded"]) == (24, 24)
    assert str(web.encoder().spec) == "tiny"
    assert all(m["complete"] for m in listed(lib_dir).values())
    out = invoke("tag", "--probe", "colours", "--library", str(lib_dir))
    assert len(_tags(lib_dir, "probe:colours")) == 48

    refused = invoke("models", "drop", "tiny", "--library", str(lib_dir))
    assert refused.exit_code == 2 and refused.stderr.startswith("Error: tiny is the library's active model")
    unknown = invoke("models", "drop", "nosuch:model", "--library", str(lib_dir))
    assert unknown.exit_code == 2 and unknown.stderr.startswith("Error: this library holds no model 'nosuch:model'")
    size = Library.open(lib_dir).info()
    out = invoke("models", "drop", TINY_B, "--library", str(lib_dir), "--json")
    assert out.exit_code == 0, out.stderr
    assert json.loads(out.stdout)["vectors"] == 48
    assert list(listed(lib_dir)) == ["tiny"]
    assert query(lib_dir, "SELECT count(*) FROM model_vectors") == [(0,)]
    assert Library.open(lib_dir).info()["images"] == size["images"] == 48
    again = invoke("models", "use", TINY_B, "--library", str(lib_dir))
    assert again.exit_code == 2 and "holds no vectors of model" in again.stderr


def test_models_lists_one_model_for_a_library_of_one_and_use_of_the_active_one_changes_nothing(copied):
    before = Library.open(copied).generation
    out = invoke("models", "--library", str(copied))
    assert out.exit_code == 0, out.stderr
    assert out.stdout.splitlines() == ["model  pictures  active  complete", "tiny    120/120  yes     yes"]
    out = invoke("models", "use", "tiny", "--library", str(copied))
    assert out.stdout == "tiny is already the library's model\n"
    assert Library.open(copied).generation == before


def test_a_search_overtaken_by_a_switch_is_told_apart_and_the_server_never_mixes_two_models(small):
    """A switch commits at any moment: a search that encoded with the old model, or began from a snapshot
    older than the switch, compared two models' vectors (with equal widths, silently)."""
    from clipdex.search.query import one_model
    from clipdex.web import create_app

    lib_dir, pics = small
    assert invoke("index", str(pics), "--library", str(lib_dir), "--model", TINY_B, "--workers", "1").exit_code == 0
    assert invoke("models", "use", "tiny", "--library", str(lib_dir)).exit_code == 0
    lib, tiny, tiny_b = Library.open(lib_dir), Encoder("tiny").load(), Encoder(TINY_B).load()
    held = lib.index().generation
    assert one_model(lib, tiny, held) and not one_model(lib, tiny_b, held)
    assert invoke("models", "use", TINY_B, "--library", str(lib_dir)).exit_code == 0
    assert not one_model(lib, tiny, held)  # began before the switch: its snapshot is tiny's
    assert not one_model(lib, tiny_b, held)  # the right model now, but an older snapshot
    assert one_model(lib, tiny_b, lib.index().generation)

    client = create_app({"LIBRARY": lib_dir, "WARM_UP": False}).test_client()
    answers = {}
    for model in ("tiny", TINY_B):
        assert invoke("models", "use", model, "--library", str(lib_dir)).exit_code == 0
        answers[model] = client.get("/api/search?q=a+red+circle&k=5").get_json()["results"]
    stop, seen, failures = threading.Event(), [], []

    def ask() -> None:
        while not stop.is_set():
            got = client.get("/api/search?q=a+red+circle&k=5")
            (seen if got.status_code in (200, 503) else failures).append(got.get_json())

    askers = [threading.Thread(target=ask) for _ in range(2)]
    for t in askers:
        t.start()
    try:
        for model in ("tiny", TINY_B) * 3:
            out = invoke("models", "use", model, "--library", str(lib_dir))
            assert out.exit_code == 0, out.stderr
    finally:
        stop.set()
        for t in askers:
            t.join(30)
    assert not failures
    ids = [tuple(h["id"] for h in answer["results"]) for answer in seen if "results" in answer]
    known = {tuple(h["id"] for h in a) for a in answers.values()}
    assert ids and set(ids) <= known
