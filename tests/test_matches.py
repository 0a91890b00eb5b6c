"""Only the pictures that match: calibrated relevance, --only-matches, matches=1, --sort date, and the bars."""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import delete

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library import calibration as stored
from clipdex.library.schema import Meta
from clipdex.models import TINY_MODEL
from clipdex.search import build_query, find_matches, search, with_relevance
from clipdex.search.calibration import BACKGROUND, MATCH, VOCABULARY_ID, background_for
from clipdex.search.evaluation import evaluate, split_combinations
from clipdex.synthetic import write_collection
from clipdex.web import create_app
from tests.conftest import BOTH, copy_library, invoke, new_location

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL

DATES = {"2021": dt.datetime(2021, 7, 1, 12), "2019": dt.datetime(2019, 3, 5, 9), "undated": None}


@pytest.fixture(scope="module")
def world(tmp_path_factory, backend, request):
    """A fresh collection with 5 of the 24 colour + shape combinations absent, each present one 4 times:
    twice taken in 2021, once in 2019, once undated; indexed with the tiny model."""
    present, absent = split_combinations(5, seed=11)
    root = tmp_path_factory.mktemp("match-pics")
    truth = {}
    for n, (folder, taken) in enumerate(DATES.items()):
        truth |= write_collection(root / folder, per_class=2 if folder == "2021" else 1, seed=20 + n,
                                  samples=present, taken=taken)
    lib = Library.create(new_location(backend, request, tmp_path_factory.mktemp("match-lib") / "lib"))
    Indexer(lib, TINY_MODEL, workers=2, progress=False).run([str(root)])
    truth = {str(p.resolve()): s for p, s in truth.items()}
    return SimpleNamespace(lib=lib, truth=truth, present=present, absent=absent)


def showing(world, want) -> set[str]:
    return {p for p, s in world.truth.items() if want(s)}


def cli_json(world, *args: str) -> dict:
    out = invoke("search", *args, "--library", world.lib.location, "--json")
    assert out.exit_code == 0, out.stderr
    return json.loads(out.stdout)


def test_the_bars_hold_on_a_fresh_collection_with_absent_combinations(world, encoder):
    scores = evaluate(world.lib, encoder, world.truth, world.absent)
    assert scores.present_queries == 4 * len(world.present) and scores.absent_queries == 4 * len(world.absent)
    assert scores.precision >= 0.95 and scores.recall >= 0.90, scores.failures
    assert scores.empty_share >= 0.90, scores.failures


def test_only_matches_returns_every_matching_picture_not_a_fixed_top_k(world):
    sample = world.present[0]
    query = f"a {sample.color} {sample.shape}"
    found = cli_json(world, query, "--only-matches")
    assert {r["path"] for r in found["results"]} == showing(world, lambda s: s == sample)
    assert found["matches"] == len(found["results"])  # as the API's matches=1 says
    capped = cli_json(world, query, "--only-matches", "-k", "1")  # -k caps the list, the count stays
    assert capped["results"] == found["results"][:1] and capped["matches"] == found["matches"]
    assert all(r["relevance"] >= MATCH for r in found["results"]), found
    relevances = [r["relevance"] for r in found["results"]]
    assert relevances == sorted(relevances, reverse=True)
    # the raw cosine stays in --json, the same number a top-k search gives
    top = cli_json(world, query, "-k", str(len(found["results"])))
    assert {r["id"]: r["score"] for r in top["results"]} == {r["id"]: r["score"] for r in found["results"]}
    # broader queries than the measured ones: every picture of the shape, of the colour
    circles = cli_json(world, "a circle", "--only-matches")["results"]
    assert {r["path"] for r in circles} == showing(world, lambda s: s.shape == "circle")
    reds = cli_json(world, "something red", "--only-matches")["results"]
    assert {r["path"] for r in reds} == showing(world, lambda s: s.color == "red")


def test_an_absent_combination_gets_an_empty_answer_that_says_why(world):
    sample = world.absent[0]
    query = f"a photo of a {sample.color} {sample.shape}."
    found = cli_json(world, query, "--only-matches")
    assert found["results"] == []
    (reason,) = found["why_empty"]
    assert reason["kind"] == "no_match" and reason["closest"]["relevance"] < MATCH
    assert world.truth[reason["closest"]["path"]] != sample
    out = invoke("search", query, "--only-matches", "--library", world.lib.location)
    assert out.exit_code == 0
    assert out.stdout == (f"No picture matches (the closest, {reason['closest']['path']}, has relevance "
                          f"{reason['closest']['relevance']:.2f}; a match needs 0.50)\n")


def test_people_see_calibrated_relevance_and_scripts_also_get_the_raw_cosine(world):
    sample = world.present[1]
    query = f"a {sample.color} {sample.shape}"
    found = cli_json(world, query, "-k", "6")["results"]
    assert set(found[0]) >= {"id", "path", "score", "relevance", "width", "height", "captured_at"}
    lines = invoke("search", query, "-k", "6", "--library", world.lib.location).stdout.splitlines()
    assert lines == [f"{r['relevance']:.2f}  {r['path']}" for r in found]
    # the first 4 show the query, the next ones do not, and relevance says so where raw cosine cannot
    assert [r["relevance"] >= MATCH for r in found] == [True] * 4 + [False] * 2
    assert all(0 < r["score"] < 1 for r in found)


def test_matches_sorted_by_capture_date_undated_last(world):
    by_score = cli_json(world, "a star", "--only-matches")["results"]
    by_date = cli_json(world, "a star", "--only-matches", "--sort", "date")["results"]
    assert sorted(r["id"] for r in by_date) == sorted(r["id"] for r in by_score) and by_date
    dates = [r["captured_at"] for r in by_date]
    dated = [d for d in dates if d is not None]
    assert dates == dated + [None] * (len(dates) - len(dated)) and dated == sorted(dated)
    assert dated[0].startswith("2019-") and dated[-1].startswith("2021-")
    lines = invoke("search", "a star", "--only-matches", "--sort", "date", "--library", world.lib.location).stdout
    assert lines.splitlines()[0].split()[1] == dated[0][:10] and lines.splitlines()[-1].split()[1] == "undated"


def test_only_matches_wants_a_text_query(world):
    picture = next(iter(world.truth))
    out = invoke("search", "--image", picture, "--only-matches", "--library", world.lib.location)
    assert out.exit_code == 2 and out.stderr.startswith("Error: --only-matches needs a text query")
    plain = cli_json(world, "--image", picture, "-k", "3")["results"]
    assert plain and all(r["relevance"] is None for r in plain)  # a picture as query: raw similarity only


@pytest.fixture()
def writable(tmp_path, library, request):
    """A private copy of the session library (all 24 combinations), to change its settings."""
    lib = Library.open(copy_library(library, tmp_path / "lib", request))
    yield lib
    lib.close()


def test_calibration_is_kept_in_the_library_per_model_and_read_back(writable, encoder):
    key = stored.meta_key(encoder.spec.identity)
    with writable.session() as s:
        s.execute(delete(Meta).where(Meta.key == key))
        s.commit()
    query = build_query(encoder, "a blue triangle")
    before = with_relevance(writable, encoder, query, search(writable, query, 8))
    value = json.loads(writable.get_meta(key))
    assert key == "calibration:clipdex:tiny-shapes"
    assert value["vocabulary"] == VOCABULARY_ID and value["prompts"] == len(BACKGROUND)
    matrix = stored.unpack_matrix(value["background"])
    assert matrix.shape == (len(BACKGROUND), encoder.dim)
    np.testing.assert_allclose(matrix, encoder.encode_texts(list(BACKGROUND)), atol=1e-3)
    # what is stored is what is used: another background changes relevance
    shifted = np.roll(matrix, 1, axis=1)
    stored.store(writable, encoder.spec.identity, {**value, "background": stored.pack_matrix(shifted)})
    after = with_relevance(writable, encoder, query, search(writable, query, 8))
    assert [h.relevance for h in after] != [h.relevance for h in before]
    # a vocabulary of another clipdex version is encoded again and replaced
    stored.store(writable, encoder.spec.identity, {**value, "vocabulary": "older"})
    np.testing.assert_allclose(background_for(writable, encoder), matrix)
    assert json.loads(writable.get_meta(key))["vocabulary"] == VOCABULARY_ID
    again = with_relevance(writable, encoder, query, search(writable, query, 8))
    assert [h.relevance for h in again] == [h.relevance for h in before]


@pytest.fixture(scope="module")
def client(world):
    return create_app({"LIBRARY": world.lib.location, "TESTING": True}).test_client()


def test_api_matches_pages_through_every_match(client, world, encoder):
    expected = [h.id for h in find_matches(world.lib, encoder, build_query(encoder, "a square"))]
    assert len(expected) > 5
    got, offset = [], 0
    while True:
        body = client.get("/api/search", query_string={"q": "a square", "matches": 1, "k": 5, "offset": offset})
        assert body.status_code == 200
        page = body.get_json()
        assert page["matches"] == len(expected)
        got += [r["id"] for r in page["results"]]
        assert all(r["relevance"] >= MATCH and "score" in r for r in page["results"])
        if not page["has_more"]:
            break
        offset += 5
    assert got == expected


def test_api_matches_empty_when_nothing_matches_and_sorted_by_date(client, world):
    sample = world.absent[1]
    body = client.get("/api/search", query_string={"q": f"a {sample.color} {sample.shape}", "matches": "1"}).get_json()
    assert body["results"] == [] and body["matches"] == 0 and body["has_more"] is False
    assert body["why_empty"][0]["kind"] == "no_match"
    dated = client.get("/api/search", query_string={"q": "a triangle", "matches": 1, "sort": "date", "k": 100})
    dates = [r["captured_at"] for r in dated.get_json()["results"]]
    known = [d for d in dates if d]
    assert known == sorted(known) and dates == known + [None] * (len(dates) - len(known)) and known


def test_api_refuses_matches_without_text_and_bad_values(client, world):
    picture = Path(next(iter(world.truth)))
    upload = client.post("/api/search?matches=1", data={"image": (io.BytesIO(picture.read_bytes()), "q.jpg")},
                         content_type="multipart/form-data")
    assert upload.status_code == 400 and "matches=1 needs a text query" in upload.get_json()["message"]
    assert client.get("/api/images/1/similar?matches=1").status_code == 400
    assert client.get("/api/search?q=a+star&matches=maybe").status_code == 400
    assert client.get("/api/search?q=a+star&sort=name").status_code == 400
    plain = client.get("/api/search?q=a+star&k=3").get_json()
    assert all(0 <= r["relevance"] <= 1 for r in plain["results"]) and "matches" not in plain


@pytest.fixture(scope="module")
def served(world):
    import threading

    import waitress

    srv = waitress.create_server(create_app({"LIBRARY": world.lib.location}), host="127.0.0.1", port=0, threads=2)
    threading.Thread(target=srv.run, daemon=True).start()
    yield f"http://127.0.0.1:{srv.effective_port}"
    srv.close()


def test_the_page_toggle_shows_only_matches_with_relevance_and_sorts_by_date(browser, served, client, world):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(served + "/?q=a+star")
    expect(page.locator("#status")).to_contain_text("results for")
    page.check("#matches")
    stars = showing(world, lambda s: s.shape == "star")
    expect(page.locator("#status")).to_have_text(f"{len(stars)} matches for “a star”")
    assert "matches=1" in page.url
    assert {t.replace(served, "") for t in page.locator("#grid .card").evaluate_all("cs => cs.map(c => c.title)")} \
        == stars
    assert all(float(s) >= MATCH for s in page.locator("#grid .card .score").all_text_contents())
    page.select_option("#sort", "date")
    expect(page).to_have_url(f"{served}/?q=a+star&matches=1&sort=date")
    by_date = client.get("/api/search?q=a+star&matches=1&sort=date&k=100").get_json()["results"]
    expect(page.locator("#grid .card")).to_have_count(len(by_date))
    assert page.locator("#grid .card").evaluate_all("cs => cs.map(c => c.title)") == [r["path"] for r in by_date]
    assert page.locator("#grid .card .taken").all_text_contents() == [
        (r["captured_at"] or "undated")[:10] if r["captured_at"] else "undated" for r in by_date]
    page.uncheck("#matches")  # a plain ranking comes page by page: it is not put in date order
    expect(page).to_have_url(f"{served}/?q=a+star")
    page.select_option("#sort", "date")  # ordering the whole answer by date turns "Only matches" on
    expect(page).to_have_url(f"{served}/?q=a+star&matches=1&sort=date")
    absent = world.absent[2]
    page.fill("#q", f"a {absent.color} {absent.shape}")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text(f"Nothing matches “a {absent.color} {absent.shape}”.")
    expect(page.locator("#empty-hints")).to_contain_text("No picture matches; the closest has relevance")
    assert page.locator("#grid .card").count() == 0 and errors == []
    context.close()


def test_not_leaves_out_its_own_matches_and_relevance_stays_the_positive_texts(world, client):
    stars = showing(world, lambda s: s.shape == "star")
    colour = next(s.color for s in world.present if s.shape == "star")
    found = cli_json(world, "a star", "--only-matches", "--not", colour)
    assert {r["path"] for r in found["results"]} == {p for p in stars if world.truth[p].color != colour}
    assert found["results"] and all(r["relevance"] >= MATCH for r in found["results"])
    api = client.get("/api/search", query_string={"q": "a star", "matches": 1, "not": colour, "k": 100}).get_json()
    assert {r["path"] for r in api["results"]} == {r["path"] for r in found["results"]}
    # a plain search is still ranked away from the colour, but shows the relevance of "a star"
    plain = cli_json(world, "a star", "-k", "3", "--not", colour)["results"]
    assert all(world.truth[r["path"]].color != colour and r["relevance"] >= MATCH for r in plain)


def test_a_filter_that_keeps_pictures_none_matching_is_not_blamed(world, client):
    sample = world.present[0]
    other = next(s for s in world.present if s.color != sample.color and s.shape != sample.shape)
    folder = str(Path(next(p for p, s in world.truth.items() if s == sample)).parent.parent)  # e.g. .../2019
    kept = len([p for p in world.truth if p.startswith(folder + "/")])
    query = f"a {other.color} {other.shape}"
    found = cli_json(world, query, "--only-matches", "--folder", folder, "--tag", "nosuch")
    assert found["why_empty"][0]["kind"] == "unknown_tag"  # a filter that keeps nothing is still named
    ok = cli_json(world, query, "--only-matches", "--folder", folder, "--not", other.color)
    (reason,) = ok["why_empty"]
    assert reason["kind"] == "no_match" and reason["among"] == kept and reason["closest"]["relevance"] < MATCH
    out = invoke("search", query, "--only-matches", "--folder", folder, "--not", other.color,
                 "--library", world.lib.location)
    assert out.stdout.startswith(f"No picture matches among the {kept} pictures the filters keep (the closest, ")
    assert "left out the ones that do" in out.stdout


class _Writer:
    """Another process in the middle of a write to ``lib``'s meta table (an ``index``, a ``tag``), reads allowed."""

    def __init__(self, lib: Library):
        if lib.server:
            import psycopg

            self.conn = psycopg.connect(lib.location)
            self.conn.execute("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")  # inside psycopg's own transaction
        else:
            self.conn = sqlite3.connect(lib.path / "clipdex.db", isolation_level=None)
            self.conn.execute("BEGIN IMMEDIATE")
        self.mark = "%s" if lib.server else "?"

    def count(self, key: str) -> int:
        return self.conn.execute(f"SELECT count(*) FROM meta WHERE key = {self.mark}", (key,)).fetchone()[0]

    def done(self) -> None:
        self.conn.rollback() if hasattr(self.conn, "info") else self.conn.execute("ROLLBACK")
        self.conn.close()


def test_a_search_does_not_wait_for_a_writer_to_store_the_calibration(writable, encoder):
    key = stored.meta_key(encoder.spec.identity)
    with writable.session() as s:
        s.execute(delete(Meta).where(Meta.key == key))
        s.commit()
    holder = _Writer(writable)
    try:
        query = build_query(encoder, "a red star")
        began = time.perf_counter()
        hits = with_relevance(writable, encoder, query, search(writable, query, 3))
        assert time.perf_counter() - began < 5 and all(h.relevance is not None for h in hits)
        assert holder.count(key) == 0
    finally:
        holder.done()
    with_relevance(writable, encoder, query, search(writable, query, 3))  # the writer is done: stored now
    assert writable.get_meta(key) is not None


TINY_B = f"local-dir:{Path(__file__).parent / 'data' / 'tiny-b'}"


def test_the_second_model_ranks_right_and_its_cut_off_errs_on_the_side_of_leaving_out(tmp_path, library_at):
    """tests/data/tiny-b (32 numbers, another seed): the same default cut-off keeps precision, but this weak model
    scores near misses (a red circle for "a red square") as high as true matches, so no cut-off of any score reaches
    the recall and empty-answer bars (benchmarks/eval_matches.py prints its figures; README says so)."""
    present, absent = split_combinations(6, seed=0)
    truth = write_collection(tmp_path / "pics", per_class=4, seed=5, samples=present)
    lib = Library.create(library_at)
    Indexer(lib, TINY_B, workers=1, progress=False).run([str(tmp_path / "pics")])
    enc = lib.encoder_for(TINY_B)
    scores = evaluate(lib, enc, truth, absent, phrasings=("a {c} {s}",))
    assert scores.precision >= 0.95, scores.failures
    assert scores.recall >= 0.5 and scores.empty_share >= 0.5, scores.as_dict()  # far from useless, below the bars
    # its ranking is right: every match of a present combination comes first in a plain search
    sample = present[0]
    wanted = {str(p.resolve()) for p, s in truth.items() if s == sample}
    top = search(lib, build_query(enc, f"a {sample.color} {sample.shape}"), len(wanted))
    assert {h.path for h in top} == wanted
