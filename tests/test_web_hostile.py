"""Hostile files and requests against the server, on a real library: a FIFO in a picture's
place, pictures whose names hold control characters, files rewritten behind the server's
back, roots the database should never hold, odd URLs, and cross-site requests."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.synthetic import Sample, draw
from clipdex.web import create_app
from clipdex.web.uploads import UploadDecoder
from tests.conftest import BOTH, new_location

BACKENDS = BOTH  # every test on the small library runs on SQLite and on PostgreSQL


@pytest.fixture(scope="module")
def site(tmp_path_factory, encoder, backend, request):
    """A small library of pictures under pics/, each test spoiling its own picture."""
    base = tmp_path_factory.mktemp("hostile")
    pics = base / "pics"
    pics.mkdir()
    names = ["fifo.jpg", "line\nbreak.jpg", "tab\there\r.png", "rewritten.bmp", "plain.jpg", "twin.jpg"]
    for i, name in enumerate(names):
        draw(Sample(["red", "blue", "green", "yellow", "purple", "orange"][i], "circle")).save(pics / name)
    Image.new("RGB", (4000, 3000), (255, 255, 255)).save(pics / "big.png", compress_level=1)  # 36 MB decoded
    names.append("big.png")
    lib = Library.create(new_location(backend, request, base / "lib"))
    Indexer(lib, encoder, workers=1).run([str(pics)])
    app = create_app({"LIBRARY": lib.location, "WARM_UP": False})
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


def test_renditions_are_decoded_in_the_limited_workers_not_the_server(site):
    """Was: thumbnails and previews were decoded in the server process, without a memory or
    time limit (one 13400 x 13400 PNG preview took the server from 0.85 to 2.43 GB). The
    worker's memory limit decides now: with a 16 MB limit the 36 MB picture is refused in
    the worker's words, a small one is still made, and the server's own limits are untouched."""
    lib, _, ids, _, _ = site
    small = create_app({"LIBRARY": lib.location, "WARM_UP": False, "UPLOAD_DECODER": {"memory_bytes": 16 << 20}})
    client = small.test_client()
    try:
        body = assert_json_error(client.get(f"/api/images/{ids['big.png']}/preview"), 422)
        assert body["message"] == f"picture {ids['big.png']} cannot be decoded: cannot decode: not enough memory"
        r = client.get(f"/api/images/{ids['plain.jpg']}/thumbnail")
        assert r.status_code == 200 and r.mimetype == "image/jpeg"
    finally:
        small.extensions["clipdex_uploads"].close()
    _, _, ids, app, client = site
    r = client.get(f"/api/images/{ids['big.png']}/thumbnail")  # within the default limit it is made
    assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (320, 240)


class CountingDecoder(UploadDecoder):
    """The real decoder pool, counting the renditions it is asked for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.renders = 0

    def render(self, fd: int, size: int, **kwargs) -> bytes:
        self.renders += 1
        return super().render(fd, size, **kwargs)


def test_concurrent_first_requests_for_a_rendition_decode_it_once(site):
    lib, _, ids, _, _ = site
    app = create_app({"LIBRARY": lib.location, "WARM_UP": False})
    app.extensions["clipdex_uploads"] = decoder = CountingDecoder()
    start, answers = threading.Barrier(6), []

    def fetch() -> None:
        client = app.test_client()
        start.wait()
        answers.append(client.get(f"/api/images/{ids['twin.jpg']}/preview"))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        decoder.close()
    assert [r.status_code for r in answers] == [200] * 6
    assert len({r.data for r in answers}) == 1 and decoder.renders == 1


@pytest.mark.parametrize("site_header", ["cross-site", "same-site", "cross-site, same-origin", "bogus"])
def test_cross_site_requests_to_the_api_are_refused(site, site_header):
    """Was: a page elsewhere could make the server decode pictures with <img src=.../preview>."""
    _, _, ids, _, client = site
    for url in (f"/api/images/{ids['plain.jpg']}/preview", f"/api/images/{ids['plain.jpg']}/file", "/api/health",
                "/api/search?q=a+circle"):
        body = assert_json_error(client.get(url, headers={"Sec-Fetch-Site": site_header}), 403)
        assert body["message"].startswith("cross-site GET refused (/api/")
    # two headers, one of them cross-site, are cross-site too
    r = client.get("/api/health", headers=[("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site")])
    assert_json_error(r, 403)
    for own in ("same-origin", "none", None):
        headers = {"Sec-Fetch-Site": own} if own else {}
        assert client.get(f"/api/images/{ids['plain.jpg']}/thumbnail", headers=headers).status_code == 200
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to the page


@pytest.mark.parametrize("kind", ["file", "thumbnail", "preview"])
def test_names_with_control_characters_are_served(site, kind):
    """Was: 500, werkzeug refuses a newline in Content-Disposition."""
    _, _, ids, _, client = site
    for name, shown in (("line\nbreak.jpg", "line_break"), ("tab\there\r.png", "tab_here_")):
        r = client.get(f"/api/images/{ids[name]}/{kind}")
        assert r.status_code == 200, r.get_data(as_text=True)[:200]
        disposition = r.headers["Content-Disposition"]
        assert shown in disposition and not any(c in disposition for c in "\n\r\t")


def test_a_file_rewritten_with_its_size_and_mtime_kept_gets_a_new_etag_and_rendition(site):
    """Was: the ETag and the cached thumbnail followed the database, not the file: the old ones stayed."""
    _, pics, ids, _, client = site
    image_id, path = ids["rewritten.bmp"], pics / "rewritten.bmp"
    before = {kind: client.get(f"/api/images/{image_id}/{kind}") for kind in ("thumbnail", "file")}
    st = path.stat()
    draw(Sample("green", "square")).save(path)  # a BMP of the same size: same length, other bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    for kind, old in before.items():
        r = client.get(f"/api/images/{image_id}/{kind}", headers={"If-None-Match": old.headers["ETag"]})
        assert r.status_code == 200 and r.headers["ETag"] != old.headers["ETag"] and r.data != old.data, kind


@pytest.mark.parametrize("root", ["/", "", "pics", "/.."])
def test_pictures_are_never_served_from_a_root_that_is_relative_or_the_filesystem(site, root, monkeypatch):
    """Was: a root of '/' or '' (relative: the server's cwd) in the database made any picture servable."""
    from clipdex.library.schema import RootRow

    lib, pics, ids, _, client = site
    monkeypatch.chdir(pics.parent)  # where "pics" would resolve to the real folder
    with lib.session() as s:
        saved = [r.path for r in s.query(RootRow)]
        s.query(RootRow).delete()
        s.add(RootRow(path=root))
        s.commit()
    try:
        body = assert_json_error(client.get(f"/api/images/{ids['plain.jpg']}/file"), 404)
        assert body["message"] == f"picture {ids['plain.jpg']} is not inside an indexed folder"
    finally:
        with lib.session() as s:
            s.query(RootRow).delete()
            s.add_all(RootRow(path=p) for p in saved)
            s.commit()
    assert client.get(f"/api/images/{ids['plain.jpg']}/file").status_code == 200


def test_odd_urls_get_json_answers(site):
    """Was: double slashes gave werkzeug's HTML 308 redirects, OPTIONS an empty text/html 200,
    and ids took any Unicode digit ("/api/images/\\u0663" was picture 3)."""
    _, _, ids, _, client = site
    image_id = ids["plain.jpg"]
    for url in ("/api//health", f"/api/images//{image_id}", f"/api/images/{image_id}//file",
                "/api/images/%D9%A3", f"/api/images/{image_id}%D9%A3/file", "/api/images/%EF%BC%93"):
        body = assert_json_error(client.get(url), 404)
        assert body["message"].startswith("nothing here: ")
    assert client.get(f"/api/images/{image_id}").get_json()["id"] == image_id
    for url in ("/api/health", f"/api/images/{image_id}/thumbnail", "/api/search", "/"):
        r = client.options(url)
        assert r.status_code == 204 and r.data == b"" and "Content-Type" not in r.headers, url
        assert "GET" in r.headers["Allow"] and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "POST" in client.options("/api/search").headers["Allow"]
    assert_json_error(client.options("/api/nothing"), 404)
