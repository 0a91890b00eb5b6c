"""Decoding pictures from strangers: bounded memory for wide pictures, uploads decoded in
limited worker processes, thumbnails written without leftovers."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
from PIL import Image

from clipdex.imaging import open_image, write_thumbnail


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
