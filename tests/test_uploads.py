"""Decoding pictures from strangers: bounded memory for wide pictures, uploads decoded in
limited worker processes, thumbnails written without leftovers."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import DecodeError
from clipdex.imaging import DEFAULT_MAX_PIXELS, open_image, write_thumbnail
from clipdex.synthetic import Sample, draw
from clipdex.web import create_app
from clipdex.web.uploads import UPLOAD_MAX_PIXELS, UploadDecoder, decode_upload
from tests.conftest import BOTH

BACKENDS = BOTH  # the tests searching a library run on SQLite and on PostgreSQL


def test_16_bit_pictures_decode_without_float_copies(tmp_path):
    """A 9 MP 16-bit PNG once took 24 bytes of numpy memory per pixel (float64 copies); a
    13000 x 13000 one (328 KB on disk) took 5 GB. Now: one uint8 copy and a band."""
    arr = np.zeros((3000, 3000), np.uint16)
    arr[:, :1500] = 40000
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    tracemalloc.start()
    try:
        decoded = open_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * arr.size, f"{peak / 1e6:.0f} MB of numpy memory for a {arr.size / 1e6:.0f} MP picture"
    assert (decoded.width, decoded.height) == (3000, 3000)
    assert min(decoded.image.size) >= 3 * 224  # reduced, still more than the model needs
    pixels = np.asarray(decoded.image)
    assert tuple(pixels[5, 2]) == (155, 155, 155) and tuple(pixels[5, -2]) == (0, 0, 0)  # 40000/65535*255


def test_a_thumbnail_that_cannot_be_written_leaves_no_file_behind(tmp_path):
    """Disk full in the middle of a save (a real file size limit, RLIMIT_FSIZE, in a child
    process) once left a zero-byte .tmp file in the cache for every failed rendition."""
    source = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (1200, 1200, 3), np.uint8)).save(source)
    cache = tmp_path / "thumbs"
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from clipdex.imaging import write_thumbnail\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "try:\n"
        "    write_thumbnail(sys.argv[1], Path(sys.argv[2]) / 'x-1600.jpg', 1600)\n"
        "except OSError as exc:\n"
        "    print('failed:', exc.strerror)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(source), str(cache)], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "failed: File too large", done.stderr
    assert [p.name for p in cache.iterdir()] == []
    write_thumbnail(source, cache / "x-320.jpg", 320)  # without the limit: the JPEG alone
    assert [p.name for p in cache.iterdir()] == ["x-320.jpg"]
    assert Image.open(cache / "x-320.jpg").size == (320, 320)


# -- uploads, decoded in limited worker processes ----------------------------------------------------------


def png_header_only(width: int, height: int, depth: int = 16) -> bytes:
    """A 60-byte greyscale PNG whose header claims ``width x height`` pixels (no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def blank_png(width: int, height: int) -> bytes:
    """An all-white RGB PNG, made quickly (rows of one colour compress to almost nothing)."""
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (255, 255, 255)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def faulty_decode(data: bytes, size: int, mode: str, max_pixels: int) -> np.ndarray:
    """Runs in the worker: a decoder stuck in a loop, blocked, or crashing, as the bytes say."""
    if data == b"spin":
        while True:
            pass
    if data == b"hang":
        time.sleep(3600)
    if data == b"crash":
        os.abort()
    return decode_upload(data, size, mode, max_pixels)


def post(client, data: bytes, name: str = "upload.png"):
    return client.post("/api/search", data={"image": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def assert_refused(r, status: int, message: str) -> None:
    assert (r.status_code, r.get_json()) == (status, {"status": status, "message": message})


def test_uploads_have_a_lower_pixel_limit_than_indexing(library):
    """Was: a 13000 x 13000 16-bit PNG (169 MP, under indexing's 180 MP) was decoded in the
    request thread: 21 s and 0.9 -> 5 GB of server memory for 328 KB posted."""
    client = create_app({"LIBRARY": library.location}).test_client()
    assert_refused(post(client, png_header_only(13000, 13000)), 422,
                   "cannot use the uploaded file: refused: 13000x13000 pixels exceeds the 50,000,000 pixel limit "
                   "(possible decompression bomb)")
    assert UPLOAD_MAX_PIXELS == 50_000_000 < DEFAULT_MAX_PIXELS


def test_an_upload_needing_more_memory_than_allowed_is_refused_and_the_next_one_works(library):
    client = create_app({"LIBRARY": library.location, "UPLOAD_DECODER": {"memory_bytes": 16 << 20}}).test_client()
    assert_refused(post(client, blank_png(4000, 3000)), 422,  # 36 MB of RGB pixels
                   "cannot use the uploaded file: cannot decode: not enough memory")
    buf = io.BytesIO()
    draw(Sample("yellow", "star"), (200, 200)).save(buf, "PNG")
    r = post(client, buf.getvalue())
    assert r.status_code == 200 and "/yellow/star-" in r.get_json()["results"][0]["path"]


def test_a_decoder_that_spins_crashes_or_hangs_costs_that_upload_only():
    decoder = UploadDecoder(workers=1, cpu_seconds=1, wall_seconds=600, decode_fn=faulty_decode)
    try:
        with pytest.raises(DecodeError, match=r"^decoding needed more than 1 s of CPU time$"):  # RLIMIT_CPU
            decoder.decode(b"spin", 224)
        with pytest.raises(DecodeError, match=r"^the decoder crashed \(signal 6\)$"):
            decoder.decode(b"crash", 224)
        decoder.wall_seconds = 0.5  # blocked without using CPU: the wall clock ends it
        with pytest.raises(DecodeError, match=r"^decoding took longer than 0.5 s$"):
            decoder.decode(b"hang", 224)
        decoder.wall_seconds = 600
        assert decoder.decode(blank_png(300, 300), 224).shape == (224, 224, 3)
    finally:
        decoder.close()


def test_when_every_decoder_is_busy_the_answer_is_503_with_retry_after(library):
    app = create_app({"LIBRARY": library.location})
    decoder = app.extensions["clipdex_uploads"]
    assert decoder.workers == 2
    for _ in range(decoder.workers):  # two uploads being decoded
        assert decoder.slots.acquire(blocking=False)
    try:
        r = post(app.test_client(), blank_png(300, 300))
        assert_refused(r, 503, "the server is busy decoding other uploads; try again in a moment")
        assert r.headers["Retry-After"] == "2"
    finally:
        for _ in range(decoder.workers):
            decoder.slots.release()
    assert post(app.test_client(), blank_png(300, 300)).status_code == 200


def test_a_worker_whose_server_stopped_while_it_started_exits_quietly(capfd):
    """Was: ``clipdex serve`` stopped (SIGTERM) while its upload workers were still importing left each of them
    to print a BrokenPipeError traceback on the terminal when it said it was ready."""
    decoder = UploadDecoder(workers=1)
    decoder.warm_up()
    (worker,) = decoder._idle
    worker.conn.close()  # the server is gone; the worker is still starting its interpreter
    worker.proc.join(timeout=60)
    assert worker.proc.exitcode == 0
    assert capfd.readouterr().err == ""
