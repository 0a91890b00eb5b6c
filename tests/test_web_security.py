"""The server's defences, on a real library: originals typed by their bytes, pictures that
changed on disk refused, Host / Origin checks, security headers on every answer, and one
JSON error shape for every error, including those waitress produces itself (raw sockets
against a real waitress server on loopback)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest

from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library.catalog import picture
from clipdex.synthetic import Sample, draw
from clipdex.web import create_app
from clipdex.web.security import CSP
from clipdex.web.server import make_server
from tests.conftest import BOTH, new_location

BACKENDS = BOTH  # every test on the small library runs on SQLite and on PostgreSQL

HTML = b"<html><body><script>alert(document.domain)</script></body></html>"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(document.domain)</script></svg>'


@pytest.fixture(scope="module")
def site(tmp_path_factory, encoder, backend, request):
    """A small library: pictures under pics/fixed, plus pics/changing (re-indexed by one test)."""
    base = tmp_path_factory.mktemp("secure")
    fixed, changing = base / "pics" / "fixed", base / "pics" / "changing"
    fixed.mkdir(parents=True)
    changing.mkdir()
    for i, name in enumerate(["ok.jpg", "xss-html.jpg", "xss-svg.jpg", "vanishing.jpg"]):
        draw(Sample(["red", "blue", "green", "yellow"][i], "circle")).save(fixed / name)
    draw(Sample("purple", "star")).save(fixed / "really-a-png.jpg", "PNG")  # mislabelled, as cameras' exports are
    draw(Sample("orange", "square")).save(changing / "edited.jpg")
    lib = Library.create(new_location(backend, request, base / "lib"))
    Indexer(lib, encoder, workers=1).run([str(fixed), str(changing)])
    client = create_app({"LIBRARY": lib.location, "WARM_UP": False}).test_client()
    ids = {Path(r["path"]).name: r["id"] for r in client.get("/api/search?q=a+shape&k=50").get_json()["results"]}
    return lib, fixed, changing, ids, client


def assert_error(r, status: int, message: str | None = None) -> None:
    """The one error shape, with the security headers."""
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"status", "message"} and body["status"] == status and body["message"], body
    if message is not None:
        assert body["message"] == message
    assert r.headers["Content-Security-Policy"] == CSP and r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name,payload,ext", [("xss-html.jpg", HTML, ".html"), ("xss-svg.jpg", SVG, ".svg")])
def test_a_picture_swapped_for_a_symlink_to_a_page_is_never_served_as_one(site, name, payload, ext):
    """Was: the symlink's target was served as text/html or image/svg+xml (stored XSS on the server's origin)."""
    lib, fixed, _, ids, client = site
    image_id, original = ids[name], fixed / name
    st = original.stat()
    evil = fixed / f"evil{ext}"
    evil.write_bytes(payload)
    original.unlink()
    os.symlink(evil, original)
    for kind in ("file", "thumbnail", "preview"):
        assert_error(client.get(f"/api/images/{image_id}/{kind}"), 409,
                     f"picture {image_id} changed on disk since it was indexed; index its folder again to show it")
    # Even with the indexed size and mtime faked, the bytes decide: not an image, not served.
    evil.write_bytes(payload.ljust(st.st_size, b" "))
    os.utime(evil, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert_error(client.get(f"/api/images/{image_id}/file"), 415,
                 f"picture {image_id} is no longer in an image format clipdex serves")
    assert_error(client.get(f"/api/images/{image_id}/thumbnail"), 422,
                 f"picture {image_id} cannot be decoded: not a recognised image format")


def test_originals_are_typed_by_their_bytes(site):
    """Was: the type came from the name (a PNG named .jpg went out as image/jpeg), without nosniff."""
    _, _, _, ids, client = site
    r = client.get(f"/api/images/{ids['really-a-png.jpg']}/file")
    assert r.status_code == 200 and r.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert r.headers["Content-Type"] == "image/png"
    assert r.headers["Content-Disposition"] == "inline; filename=really-a-png.jpg"
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["Content-Security-Policy"] == CSP
    assert r.headers["Cache-Control"] == "no-cache, private" and r.headers["ETag"]
    assert int(r.headers["Content-Length"]) == len(r.data)
    assert client.get(f"/api/images/{ids['ok.jpg']}/file").headers["Content-Type"] == "image/jpeg"


def test_an_edited_picture_is_refused_until_indexed_again_then_served_fresh(site, encoder):
    """Was: the cached thumbnail (keyed on the old hash) and the file under its old ETag were served."""
    lib, _, changing, ids, client = site
    image_id, path = ids["edited.jpg"], changing / "edited.jpg"
    before = {kind: client.get(f"/api/images/{image_id}/{kind}") for kind in ("thumbnail", "file")}
    assert all(r.status_code == 200 for r in before.values())
    draw(Sample("blue", "triangle")).save(path)  # edited in place: same path, new content
    message = f"picture {image_id} changed on disk since it was indexed; index its folder again to show it"
    for kind in ("thumbnail", "preview", "file"):
        assert_error(client.get(f"/api/images/{image_id}/{kind}"), 409, message)
    Indexer(Library.open(lib.location), encoder, workers=1).run([str(changing)])
    assert picture(lib, image_id).size == path.stat().st_size  # same id, new facts
    for kind, old in before.items():
        r = client.get(f"/api/images/{image_id}/{kind}", headers={"If-None-Match": old.headers["ETag"]})
        assert r.status_code == 200 and r.headers["ETag"] != old.headers["ETag"] and r.data != old.data, kind
    assert len(list((lib.path / "thumbs").glob(f"{image_id}-*-320.jpg"))) == 1  # the stale one is gone
    assert client.get(f"/api/images/{image_id}/file", headers={"If-None-Match": r.headers["ETag"]}).status_code == 304


def test_a_vanished_picture_is_not_served_from_the_cache(site):
    _, fixed, _, ids, client = site
    image_id = ids["vanishing.jpg"]
    assert client.get(f"/api/images/{image_id}/thumbnail").status_code == 200
    (fixed / "vanishing.jpg").unlink()
    for kind in ("thumbnail", "preview", "file"):
        assert_error(client.get(f"/api/images/{image_id}/{kind}"), 404, f"picture {image_id} is no longer on disk")


def test_every_answer_carries_the_security_headers(site):
    _, _, _, ids, client = site
    urls = ["/", "/static/app.js", "/static/app.css", "/api/info", "/api/search?q=a+red+circle",
            f"/api/images/{ids['ok.jpg']}/thumbnail", f"/api/images/{ids['ok.jpg']}", "/api/nowhere", "/nowhere"]
    for url in urls:
        r = client.get(url)
        assert r.headers["Content-Security-Policy"] == CSP, url
        assert r.headers["X-Content-Type-Options"] == "nosniff", url
        assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Referrer-Policy"] == "no-referrer", url
    page = client.get("/").get_data(as_text=True)
    # the policy allows no inline code: the page must have none
    assert not re.search(r"<script(?![^>]*\bsrc=)", page) and "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)


@pytest.mark.parametrize("bind,extra,host,allowed", [
    ("127.0.0.1", (), "localhost", True),
    ("127.0.0.1", (), "127.0.0.1:8000", True),
    ("127.0.0.1", (), "[::1]:8000", True),
    ("127.0.0.1", (), "LOCALHOST.:8000", True),
    ("127.0.0.1", (), "evil.example", False),           # DNS rebinding: an outside name resolving to 127.0.0.1
    ("127.0.0.1", (), "evil.example:8000", False),
    ("127.0.0.1", (), "localhost.evil.example", False),
    ("127.0.0.1", (), "192.168.1.20", False),
    ("127.0.0.1", (), "a:b:c", False),
    ("127.0.0.1", ("photos.lan",), "photos.lan:8000", True),
    ("0.0.0.0", (), "192.168.1.20:8000", True),         # all interfaces: any address literal
    ("0.0.0.0", (), "[fe80::1]:8000", True),
    ("0.0.0.0", (), socket.gethostname(), True),
    ("0.0.0.0", (), "evil.example", False),
    ("192.168.1.20", (), "192.168.1.20:8000", True),
    ("192.168.1.20", (), "localhost", False),
])
def test_requests_must_be_addressed_to_the_server(site, bind, extra, host, allowed):
    lib = site[0]
    app = create_app({"LIBRARY": lib.location, "WARM_UP": False, "BIND_HOST": bind, "ALLOWED_HOSTS": extra})
    client = app.test_client()
    for url in ("/api/info", "/"):
        r = client.get(url, headers={"Host": host})
        if allowed:
            assert r.status_code == 200, (url, r.get_json())
        else:
            assert_error(r, 400)
            assert r.get_json()["message"].startswith("this server answers only to ")
            assert f"(the request was addressed to {host!r})" in r.get_json()["message"]


def test_cross_origin_writes_are_refused(site):
    client = site[4]
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "http://localhost:3000"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        r = client.post("/api/search", data={}, headers=headers)
        assert_error(r, 403)
        assert re.fullmatch(r"cross-(origin|site) POST refused.*", r.get_json()["message"]), r.get_json()
        assert_error(client.delete("/api/search", headers=headers), 403)
    for headers in ({}, {"Origin": "http://localhost"}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}):
        assert_error(client.post("/api/search", data={}, headers=headers), 400,
                     "send the picture as a multipart form field named 'image'")
    # Reads too: another site cannot read the answer (no CORS headers), but <img src=.../preview>
    # would still make the server decode pictures for it (test_web_hostile has the details).
    assert_error(client.get("/api/info", headers={"Sec-Fetch-Site": "cross-site"}), 403,
                 "cross-site GET refused (/api/info)")
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # a link to the page


BIG_IDS = [2**63 - 1, 2**63, 2**64, 99999999999999999999]


def test_every_api_route_and_error_has_the_one_json_shape(site):
    """Datasette-style: every /api route, every method, bad ids and parameters; each error is
    ``{"status", "message"}`` with a matching status and the security headers."""
    lib, _, _, ids, client = site
    app = client.application
    rules = [r for r in app.url_map.iter_rules() if r.rule.startswith("/api")]
    assert len(rules) >= 7
    seen = set()
    for rule in rules:
        urls = []
        for bad in [0, 987654, *BIG_IDS] if "image_id" in rule.arguments else [None]:
            url = rule.rule.replace("<int:image_id>", str(bad))
            url = re.sub(r"<any\(([a-z]+),[^>]*>", r"\1", url)
            urls.append(url)
        for url in urls:
            for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                r = client.open(url, method=method, data={} if method == "POST" else None)
                if r.status_code >= 400:
                    assert_error(r, r.status_code)
                    seen.add(r.status_code)
                    if r.status_code == 405:
                        assert r.headers["Allow"] and method not in r.headers["Allow"]
    for url in ["/api", "/api/", "/api/images", "/api/images/-1", "/api/images/1x", "/api/images/1/unknown",
                "/api/search?q=cat&to=10000-01-01", "/api/search?q=cat&from=0000-01-01", "/api/search?q=cat&k=1e3",
                "/nowhere", "/static/nothing.js", "/static/../clipdex.db"]:
        r = client.get(url)
        assert_error(r, r.status_code)
        seen.add(r.status_code)
    assert {400, 404, 405} <= seen
    for big in BIG_IDS:  # were 500s: SQLite cannot bind integers past 2**63 - 1
        for kind in ("", "/similar", "/thumbnail", "/preview", "/file"):
            assert_error(client.get(f"/api/images/{big}{kind}"), 404, f"no picture with id {big}")
    r = client.get("/api/search?q=a+red+circle&to=9999-12-31")  # was a 500: the day after overflowed
    assert r.status_code == 200 and r.get_json()["results"] == []  # no picture here has a capture date
    assert_error(client.get("/api/images/1/thumbnail", headers={"Host": "evil.example"}), 400)


# -- the real server: waitress's own answers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(site):
    lib = site[0]
    app = create_app({"LIBRARY": lib.location, "WARM_UP": False, "MAX_CONTENT_LENGTH": 100_000})
    srv = make_server(app, "127.0.0.1", 0, threads=2)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    yield int(srv.effective_port)
    srv.close()


def exchange(port: int, raw: bytes, read_all: bool = True) -> tuple[int, dict[str, str], dict]:
    """Send ``raw`` bytes, read one HTTP answer: status, headers (lower-case names), JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers["content-length"]):
            chunk = sock.recv(65536)
            assert chunk
            body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_waitress_answers_in_the_same_json_shape(server):
    host = f"Host: 127.0.0.1:{server}\r\n"
    cases = [
        # a body over the limit is refused on its announced length, before it is sent or read
        (f"POST /api/search HTTP/1.1\r\n{host}Content-Length: 1000000000\r\n\r\n".encode(), 413,
         "upload too large (limit 0.1 MB)"),
        (f"POST /api/search HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n".encode()
         + b"".join(b"%x\r\n%s\r\n" % (50_000, b"x" * 50_000) for _ in range(3)), 413,
         "upload too large (limit 0.1 MB)"),
        (f"GET /api/info HTTP/1.1\r\n{host}X-Big: {'a' * 70_000}\r\n\r\n".encode(), 431,
         "request headers too large (limit 64 KB)"),
        (b"GET /api/info HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, None),
        (b"NONSENSE\r\n\r\n", 400, None),
        (f"POST /api/search HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\n".encode(), 501, None),
        (f"GET /api HTTP/1.1\r\n{host}\r\n".encode(), 404, "nothing here: /api"),
        (f"GET /api/images/1/file HTTP/1.1\r\nHost: evil.example:{server}\r\n\r\n".encode(), 400, None),
        (f"DELETE /api/tags HTTP/1.1\r\n{host}\r\n".encode(), 405, "DELETE is not allowed here (allowed: GET, HEAD, "
                                                                   "OPTIONS)"),
    ]
    for raw, status, message in cases:
        got, headers, body = exchange(server, raw)
        assert (got, set(body), body["status"]) == (status, {"status", "message"}, status), (raw[:60], body)
        assert headers["content-type"] == "application/json", raw[:60]
        assert headers["content-security-policy"] == CSP and headers["x-content-type-options"] == "nosniff"
        if message:
            assert body["message"] == message
    assert exchange(server, f"GET /api/health HTTP/1.1\r\n{host}\r\n".encode())[0] == 200


def test_flask_and_waitress_limits_agree(server, site):
    """A body one byte under the limit reaches the app; at the limit waitress refuses it before
    reading it (behind waitress, Flask would refuse it too, after waitress had buffered it all)."""
    lib = site[0]
    host = f"Host: 127.0.0.1:{server}\r\n"
    boundary = "xyz"
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    filler = b"x" * (100_000 - 1 - len(part) - len(tail))
    for extra, status in ((b"", 422), (b"x", 413)):
        body = part + filler + extra + tail
        raw = (f"POST /api/search HTTP/1.1\r\n{host}Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        got, headers, answer = exchange(server, raw)
        assert got == status, answer
        assert (headers.get("connection") == "close") == (status == 413)  # waitress's own answer
    small = create_app({"LIBRARY": lib.location, "WARM_UP": False, "MAX_CONTENT_LENGTH": 100_000}).test_client()
    r = small.post("/api/search", data=part + filler + b"xx" + tail,
                   content_type=f"multipart/form-data; boundary={boundary}")
    assert_error(r, 413, "upload too large (limit 0.1 MB)")


@pytest.mark.sqlite_only  # a damaged SQLite file, then the library's files copied in
def test_a_damaged_library_answers_503_and_recovers_without_a_restart(tmp_path, library):
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir()
    (lib_dir / "clipdex.db").write_bytes(b"this is not a database, it is a damaged file" * 100)
    client = create_app({"LIBRARY": lib_dir, "WARM_UP": True}).test_client()  # warm-up must not raise
    message = client.get("/api/info").get_json()["message"]
    assert str(lib_dir) in message and "file is not a database" in message, message
    for url in ("/api/search?q=a+cat", "/api/info", "/api/tags", "/api/images/1/thumbnail"):
        assert_error(client.get(url), 503, message)
    assert html.escape(message) in client.get("/").get_data(as_text=True)
    shutil.rmtree(lib_dir)
    r = client.get("/api/info")
    assert_error(r, 503, f"no library at {lib_dir} yet: index a folder of pictures into it; this server picks it "
                         "up without a restart")
    assert "--" not in r.get_json()["message"]  # words, not command-line flags
    shutil.copytree(library.path, lib_dir)  # as `clipdex index` would create it
    r = client.get("/api/search?q=a+red+circle&k=3")
    assert r.status_code == 200 and len(r.get_json()["results"]) == 3
    assert client.get("/api/info").get_json()["images"] == 120
