"""Hostile files and requests against the server, on a real library: a FIFO in a picture's
place, pictures whose names hold control characters, files rewritten behind the server's
back, roots the database should never hold, odd URLs, and cross-site requests."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.synthetic import Sample, draw
from clipdex.web import create_app


@pytest.fixture(scope="module")
def site(tmp_path_factory, encoder):
    """A small library of pictures under pics/, each test spoiling its own picture."""
    base = tmp_path_factory.mktemp("hostile")
    pics = base / "pics"
    pics.mkdir()
    names = ["fifo.jpg", "line\nbreak.jpg", "tab\there\r.png", "rewritten.bmp", "plain.jpg", "twin.jpg"]
    for i, name in enumerate(names):
        draw(Sample(["red", "blue", "green", "yellow", "purple", "orange"][i], "circle")).save(pics / name)
    lib = Library.create(base / "lib")
    Indexer(lib, encoder, workers=1).run([str(pics)])
    app = create_app({"LIBRARY": lib.path, "WARM_UP": False})
    client = app.test_client()
    ids = {Path(r["path"]).name: r["id"] for r in client.get("/api/search?q=a+shape&k=50").get_json()["results"]}
    assert set(ids) == set(names)
    return lib, pics, ids, app, client


def assert_json_error(r, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"status", "message"} and body["status"] == status
    return body


def answered_within(client, url: str, seconds: float = 10.0):
    """GET ``url`` in a daemon thread; fail (instead of hanging the test run) if it blocks."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", client.get(url)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert "r" in box, f"{url} did not answer within {seconds} s"
    return box["r"]


def test_a_fifo_in_a_pictures_place_is_refused_without_blocking(site):
    """Was: open() of the FIFO blocked the request thread for ever (8 requests: every waitress thread)."""
    lib, pics, ids, _, client = site
    path = pics / "fifo.jpg"
    path.unlink()
    os.mkfifo(path)
    for kind in ("file", "thumbnail", "preview"):
        body = assert_json_error(answered_within(client, f"/api/images/{ids['fifo.jpg']}/{kind}"), 404)
        assert body["message"] == f"picture {ids['fifo.jpg']} is no longer a file"
