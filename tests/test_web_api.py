"""The JSON API through app.test_client() on a real library (tiny model, SQLite, FAISS)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from clipdex.classify.tagging import tag_library
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.models import TINY_MODEL, tiny_model_dir
from clipdex.synthetic import COLORS, Sample, draw
from clipdex.web import create_app
from tests.conftest import BOTH, copy_library

BACKENDS = BOTH  # every test here runs on SQLite and on PostgreSQL


def dated(path: Path, sample: Sample, when: str, orientation: int = 1) -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = when
    if orientation != 1:
        exif[0x0112] = orientation
    draw(sample, (320, 240)).save(path, exif=exif, quality=92)


@pytest.fixture(scope="module")
def web_library(tmp_path_factory, library, collection, encoder, request):
    """The shared library copied, plus dated pictures, tagged by colour."""
    dest = copy_library(library, tmp_path_factory.mktemp("weblib") / "lib", request)
    extra = tmp_path_factory.mktemp("dated")
    dated(extra / "old-red-circle.jpg", Sample("red", "circle"), "2019:05:01 10:00:00")
    dated(extra / "mid-red-circle.jpg", Sample("red", "circle"), "2021:06:15 12:00:00", orientation=6)
    dated(extra / "new-blue-square.jpg", Sample("blue", "square"), "2023:03:03 09:30:00")
    lib = Library.open(dest)
    Indexer(lib, TINY_MODEL, workers=1).run([str(extra)])
    tag_library(lib, encoder, list(COLORS))
    lib.extra = extra
    lib.root = next(iter(collection)).parent.parent
    return lib


@pytest.fixture(scope="module")
def client(web_library):
    app = create_app({"LIBRARY": web_library.location, "TESTING": True})
    return app.test_client()


def names(response) -> list[str]:
    return [Path(r["path"]).parent.name + "/" + Path(r["path"]).name for r in response.get_json()["results"]]


def test_text_search_relevance(client):
    r = client.get("/api/search", query_string={"q": "a red circle", "k": 5})
    assert r.status_code == 200
    assert all("red/circle-" in n or "red-circle" in n for n in names(r))
    assert "search;dur=" in r.headers["Server-Timing"] and "encode;dur=" in r.headers["Server-Timing"]


def test_pagination(client):
    ten = client.get("/api/search?q=a+star&k=10").get_json()
    first = client.get("/api/search?q=a+star&k=5").get_json()
    second = client.get("/api/search?q=a+star&k=5&offset=5").get_json()
    assert [r["id"] for r in first["results"] + second["results"]] == [r["id"] for r in ten["results"]]
    assert first["has_more"] is True and (first["k"], second["offset"]) == (5, 5)
    last = client.get("/api/search?q=a+star&k=10&offset=118").get_json()
    assert len(last["results"]) == 5 and last["has_more"] is False


def test_tag_folder_and_date_filters(client, web_library):
    r = client.get("/api/search", query_string={"q": "a circle", "tag": "green", "k": 10})
    assert names(r) and all(n.startswith("green/") for n in names(r))
    r = client.get("/api/search", query_string={"q": "a red circle", "folder": str(web_library.root / "blue")})
    assert names(r) and all(n.startswith("blue/") for n in names(r))
    r = client.get("/api/search", query_string={"q": "a red circle", "from": "2020-01-01", "to": "2022-12-31"})
    assert [Path(n).name for n in names(r)] == ["mid-red-circle.jpg"]
    r = client.get("/api/search", query_string={"q": "a red circle", "to": "2021-06-15"})
    assert sorted(Path(n).name for n in names(r)) == ["mid-red-circle.jpg", "old-red-circle.jpg"]
    r = client.get("/api/search", query_string={"q": "a red circle", "from": "2020-01-01", "to": "9999-12-31"})
    assert sorted(Path(n).name for n in names(r)) == ["mid-red-circle.jpg", "new-blue-square.jpg"]  # was a 500


def test_search_by_uploaded_picture(client):
    buf = io.BytesIO()
    draw(Sample("yellow", "star"), (200, 200)).save(buf, "PNG")
    r = client.post("/api/search", data={"image": (io.BytesIO(buf.getvalue()), "query.png"), "k": "4"},
                    content_type="multipart/form-data")
    assert r.status_code == 200
    assert all(n.startswith("yellow/star-") for n in names(r))


def test_similar_excludes_the_picture_itself(client, web_library):
    target = client.get("/api/search?q=a+purple+triangle&k=1").get_json()["results"][0]
    r = client.get(f"/api/images/{target['id']}/similar?k=4")
    ids = [x["id"] for x in r.get_json()["results"]]
    assert target["id"] not in ids and len(ids) == 4
    assert all(n.startswith("purple/triangle-") for n in names(r))


def test_image_metadata_with_tags(client):
    hit = client.get("/api/search?q=a+red+circle&from=2021-01-01&to=2021-12-31").get_json()["results"][0]
    info = client.get(f"/api/images/{hit['id']}").get_json()
    assert info["name"] == "mid-red-circle.jpg"
    assert (info["width"], info["height"]) == (240, 320)  # EXIF orientation 6: stored landscape, shown portrait
    assert info["captured_at"] == "2021-06-15T12:00:00"
    assert info["tags"][0]["label"] == "red" and 0 < info["tags"][0]["probability"] <= 1


def test_thumbnail_is_oriented_cached_and_revalidated(client, web_library):
    hit = client.get("/api/search?q=a+red+circle&from=2021-01-01&to=2021-12-31").get_json()["results"][0]
    r = client.get(f"/api/images/{hit['id']}/thumbnail")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert r.headers["Cache-Control"] == "max-age=604800, private"
    thumb = Image.open(io.BytesIO(r.data))
    assert thumb.size[1] > thumb.size[0]  # portrait, as the camera meant it
    assert list((web_library.path / "thumbs").glob(f"{hit['id']}-*-320.jpg"))
    again = client.get(f"/api/images/{hit['id']}/thumbnail", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304
    preview = client.get(f"/api/images/{hit['id']}/preview")
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.data)).size == (240, 320)
    original = client.get(f"/api/images/{hit['id']}/file")
    assert original.status_code == 200 and original.data[:2] == b"\xff\xd8"


def test_tags_info_health(client):
    tags = client.get("/api/tags").get_json()["tags"]
    assert {t["label"] for t in tags} == set(COLORS) and sum(t["count"] for t in tags) == 123
    info = client.get("/api/info").get_json()
    assert info["images"] == 123 and info["model"] == "tiny"
    health = client.get("/api/health").get_json()
    assert health["status"] == "ok" and health["backend"] == "onnx"  # the tiny model's verified export


def test_page_is_self_contained(client):
    html = client.get("/").get_data(as_text=True)
    assert "123 pictures" in html
    assert 'src="http' not in html and 'href="http' not in html and "//cdn" not in html
    js = client.get("/static/app.js").get_data(as_text=True)
    assert "innerHTML" not in js and "http" not in js


def error_cases(web_library, big_id: int):
    huge = "x" * 501
    return [
        ("get", "/api/search", {}, 400, "q is required (the text to search for)"),
        ("get", f"/api/search?q={huge}", {}, 400, "q is too long (501 characters, limit 500)"),
        ("get", "/api/search?q=cat&k=0", {}, 400, "k must be between 1 and 100, got 0"),
        ("get", "/api/search?q=cat&k=1000", {}, 400, "k must be between 1 and 100, got 1000"),
        ("get", "/api/search?q=cat&k=ten", {}, 400, "k must be an integer, got 'ten'"),
        ("get", "/api/search?q=cat&offset=99999", {}, 400, "offset must be between 0 and 10000, got 99999"),
        ("get", "/api/search?q=cat&from=yesterday", {}, 400, "from must be a date like 2024-07-31, got 'yesterday'"),
        ("post", "/api/search", {"data": {}}, 400, "send the picture as a multipart form field named 'image'"),
        ("post", "/api/search", {"data": {"image": (io.BytesIO(b"not a picture"), "x.jpg")},
                                 "content_type": "multipart/form-data"},
         422, "cannot use the uploaded file: not a recognised image format"),
        ("get", f"/api/images/{big_id}", {}, 404, f"no picture with id {big_id}"),
        ("get", f"/api/images/{big_id}/thumbnail", {}, 404, f"no picture with id {big_id}"),
        ("get", f"/api/images/{big_id}/preview", {}, 404, f"no picture with id {big_id}"),
        ("get", f"/api/images/{big_id}/file", {}, 404, f"no picture with id {big_id}"),
        ("get", f"/api/images/{big_id}/similar", {}, 404, f"no picture with id {big_id}"),
        ("get", "/api/images/-1", {}, 404, None),
        ("get", "/api/nothing-here", {}, 404, None),
        ("delete", "/api/search", {}, 405, None),
        ("put", "/api/tags", {}, 405, None),
    ]


def test_every_api_error_has_one_shape(client, web_library):
    for method, url, kwargs, status, message in error_cases(web_library, 999_999):
        r = getattr(client, method)(url, **kwargs)
        body = r.get_json()
        assert r.status_code == status, (url, r.status_code, body)
        assert set(body) == {"status", "message"} and body["status"] == status, (url, body)
        assert isinstance(body["message"], str) and body["message"]
        if message:
            assert body["message"] == message, (url, body)


def test_upload_limit_is_413_in_the_same_shape(web_library):
    small = create_app({"LIBRARY": web_library.location, "MAX_CONTENT_LENGTH": 10_000}).test_client()
    r = small.post("/api/search", data={"image": (io.BytesIO(b"\0" * 20_000), "big.png")},
                   content_type="multipart/form-data")
    assert r.status_code == 413
    assert r.get_json() == {"status": 413, "message": "upload too large (limit 0.01 MB)"}


def test_upload_bomb_is_refused(client):
    import tempfile

    from tests.test_bad_files import bomb_png

    with tempfile.TemporaryDirectory() as tmp:
        bomb_png(Path(tmp) / "b.png")
        data = (Path(tmp) / "b.png").read_bytes()
    r = client.post("/api/search", data={"image": (io.BytesIO(data), "b.png")}, content_type="multipart/form-data")
    assert r.status_code == 422 and "possible decompression bomb" in r.get_json()["message"]


def test_no_library_yet(tmp_path):
    client = create_app({"LIBRARY": tmp_path / "none"}).test_client()
    r = client.get("/api/search?q=cat")
    assert r.status_code == 503 and set(r.get_json()) == {"status", "message"}
    assert r.get_json()["message"].startswith(f"no library at {tmp_path / 'none'}")
    assert client.get("/api/health").status_code == 503
    assert "No library yet" in client.get("/").get_data(as_text=True)


def test_files_only_by_id_and_only_inside_the_collection(library_at, tmp_path, encoder):
    pics = tmp_path / "pics"
    pics.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    draw(Sample("red", "circle")).save(outside / "secret.jpg")
    draw(Sample("red", "circle")).save(pics / "ok.jpg")
    draw(Sample("blue", "circle")).save(pics / "swapped.jpg")
    os.symlink(outside / "secret.jpg", pics / "link-out.jpg")  # a symlink leading out of the collection
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    client = create_app({"LIBRARY": lib.location}).test_client()
    ids = {Path(r["path"]).name: r["id"] for r in client.get("/api/search?q=a+circle&k=10").get_json()["results"]}
    assert client.get(f"/api/images/{ids['ok.jpg']}/file").status_code == 200
    r = client.get(f"/api/images/{ids['link-out.jpg']}/file")
    assert r.status_code == 404
    assert r.get_json()["message"] == f"picture {ids['link-out.jpg']} is not inside an indexed folder"
    (pics / "swapped.jpg").unlink()
    os.symlink("/etc/passwd", pics / "swapped.jpg")  # replaced after indexing
    for kind in ("file", "thumbnail", "preview"):
        assert client.get(f"/api/images/{ids['swapped.jpg']}/{kind}").status_code == 404
    for url in ("/api/images/../../etc/passwd", "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                "/api/images/1%2f..%2f..%2fetc%2fpasswd/file", "/api/images/..%5c..%5cetc/file",
                "/static/../clipdex.db", "/static/%2e%2e/%2e%2e/clipdex.db", "/api/images/1/file?path=/etc/passwd"):
        r = client.get(url)
        assert b"root:" not in r.data and b"SQLite" not in r.data, url
        assert r.status_code in (200, 404) and (r.status_code == 404 or url.endswith("?path=/etc/passwd")), url


def one_picture_library(tmp_path: Path, sample: Sample, library_at: str) -> tuple[Path, Library]:
    """``tmp_path/pics/a.jpg`` showing ``sample``, indexed into ``tmp_path/lib`` with the tiny model."""
    pics = tmp_path / "pics"
    pics.mkdir()
    draw(sample).save(pics / "a.jpg")
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(pics)])
    return pics, lib


def test_new_pictures_appear_without_a_restart(library_at, tmp_path):
    pics, lib = one_picture_library(tmp_path, Sample("blue", "square"), library_at)
    client = create_app({"LIBRARY": lib.location}).test_client()
    assert names(client.get("/api/search?q=a+green+star&k=5")) == ["pics/a.jpg"]
    draw(Sample("green", "star")).save(pics / "b.jpg")
    Indexer(Library.open(lib.location), TINY_MODEL, workers=1).run([str(pics)])  # as `clipdex index` would
    assert names(client.get("/api/search?q=a+green+star&k=5"))[0] == "pics/b.jpg"


def test_a_rebuild_with_another_model_switches_the_server_to_it(library_at, tmp_path):
    pics, lib = one_picture_library(tmp_path, Sample("green", "star"), library_at)
    app = create_app({"LIBRARY": lib.location})
    assert names(app.test_client().get("/api/search?q=a+green+star")) == ["pics/a.jpg"]
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir(), other)
    Indexer(Library.open(lib.location), f"local-dir:{other}", workers=1).run([str(pics)], rebuild=True)
    assert names(app.test_client().get("/api/search?q=a+green+star")) == ["pics/a.jpg"]
    assert app.extensions["clipdex"].encoder().spec.identity == f"local-dir:{other}"  # queries use the new model


def test_server_keeps_answering_while_an_index_run_writes(library_at, tmp_path):
    import subprocess
    import sys
    import time

    from clipdex.synthetic import write_collection

    first = tmp_path / "pics" / "first"
    first.mkdir(parents=True)
    draw(Sample("blue", "square")).save(first / "a.jpg")
    lib = Library.create(library_at)
    Indexer(lib, TINY_MODEL, workers=1).run([str(first)])
    client = create_app({"LIBRARY": lib.location}).test_client()
    write_collection(tmp_path / "pics" / "more", per_class=8, seed=8, samples=[Sample("green", "star")])
    proc = subprocess.Popen([sys.executable, "-m", "clipdex", "index", str(tmp_path / "pics"), "--library",
                             lib.location, "--batch-size", "2", "--workers", "1", "--json"],  # 4 commits
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    answered_during_run = 0
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        r = client.get("/api/images/1/similar?k=3")  # follows every commit, without encoding text
        assert r.status_code == 200, r.get_json()
        answered_during_run += 1
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert answered_during_run >= 3
    after = names(client.get("/api/search?q=a+green+star&k=8"))
    assert sorted(after) == [f"green/star-{i:03d}.jpg" for i in range(8)]  # searchable, no restart
