"""Batch JPEG decoding with torchvision (clipdex.gpujpeg) gives the pixels and vectors the CPU path gives.

The decode, orientation and resize steps are device-independent torch code, so they are checked
for real on the CPU here; so is the indexer's plumbing (workers handing JPEG bytes over, GPU
failures decoded again on the CPU), with ``Indexer(gpu_jpeg=True)`` and a PyTorch model on the
CPU. Only nvJPEG itself needs a GPU (the last test).
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

import clipdex.gpujpeg
import clipdex.indexer.gpu
import clipdex.indexer.run
from clipdex.decoding import decode_file
from clipdex.errors import UsageError
from clipdex.gpujpeg import _orient, decode_jpegs, gpu_jpeg_available, jpeg_frame
from clipdex.imaging import load_for_model
from clipdex.indexer import Indexer
from clipdex.library import Library
from clipdex.library.schema import ImageRow
from clipdex.models import Encoder, parse_model_spec
from clipdex.synthetic import all_samples, draw, write_collection
from clipdex.torchclip import TorchEncoder
from tests.faulty import hang_or_crash

# torchvision 0.29 deprecates its image decoders (see the module's docstring); the warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

#: Mean absolute difference (levels of 255) allowed between this path and load_for_model. Measured
#: worst case 0.91 (a noisy 300 x 200 picture at 64 px, where Pillow decodes at half scale in the DCT
#: domain and this path box-averages the full decode); pictures with no draft differ by ~0.2 (rounding).
PIXEL_BOUND = 1.5
#: Sizes covering every step: upscaling, no draft, draft 1/2, 1/4 and 1/8 at 64 px, and a panorama
#: whose squash takes Pillow's reducing_gap reduction with a fractional box (3020 / 4 / 3).
SIZES = [(40, 30), (100, 150), (300, 200), (200, 333), (600, 400), (1200, 900), (3020, 300)]


def photo(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like picture: smooth colour fields, sharp-edged discs, sensor-like noise."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    pen = ImageDraw.Draw(base)
    for _ in range(12):
        x, y, r = rng.integers(0, w), rng.integers(0, h), int(rng.integers(2, max(3, min(w, h) // 4)))
        pen.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    noisy = np.asarray(base).astype(float) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def jpeg(im: Image.Image, orientation: int = 1, taken: str | None = None, **kw) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    if taken:
        exif.get_ifd(0x8769)[36867] = taken  # DateTimeOriginal
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, exif=exif.tobytes(), **kw)
    return buf.getvalue()


def orientation_of(data: bytes) -> int:
    """The EXIF orientation, read the way a decode worker would (header only)."""
    with Image.open(io.BytesIO(data)) as im:
        return int(im.getexif().get(0x0112, 1))


def cpu_pixels(data: bytes, size: int, mode: str) -> np.ndarray:
    return load_for_model(io.BytesIO(data), size, mode)[0]


def as_hwc(pixels: torch.Tensor) -> np.ndarray:
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


@pytest.fixture(scope="module")
def tiny() -> TorchEncoder:
    return TorchEncoder(parse_model_spec("tiny"), device="cpu").load()


def test_orientation_matches_exif_transpose():
    """The 8 EXIF cases with torch ops give exactly Pillow's exif_transpose."""
    arr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        im = Image.fromarray(arr)
        exif = im.getexif()
        exif[0x0112] = orientation
        im.info["exif"] = exif.tobytes()
        want = np.asarray(ImageOps.exif_transpose(im))
        got = _orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        assert np.array_equal(got, want), orientation


@pytest.mark.parametrize("size", [64, 224])
@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_pixels_match_cpu_path(size, mode):
    """Each size in all 8 orientations, one batch per size: close to load_for_model, in input order."""
    worst = 0.0
    for w, h in SIZES:
        im = photo(w, h, seed=w * h)
        datas = [jpeg(im, o) for o in range(1, 9)]
        batch = decode_jpegs(datas, [orientation_of(d) for d in datas], size, mode, "cpu")
        assert batch.failed == [] and batch.ok == list(range(8))
        assert batch.pixels.shape == (8, 3, size, size) and batch.pixels.dtype == torch.uint8
        for data, got in zip(datas, as_hwc(batch.pixels)):
            diff = np.abs(got.astype(int) - cpu_pixels(data, size, mode)).mean()
            assert diff < PIXEL_BOUND, (w, h, mode, size, orientation_of(data), diff)
            worst = max(worst, diff)
    print(f"worst mean abs difference at {size} px, {mode}: {worst:.3f}")


def test_chunks_keep_the_order(monkeypatch):
    """Big batches go to the decoder in chunks of bounded pixels; the rows still follow the input."""
    datas = [jpeg(photo(w, h, seed=w), o) for (w, h), o in zip(SIZES, range(2, 9))] + [b"junk"]
    orientations = [orientation_of(d) for d in datas[:-1]] + [1]
    whole = decode_jpegs(datas, orientations, 64, "shortest", "cpu")
    monkeypatch.setattr(clipdex.gpujpeg, "_CHUNK_PIXELS", 100_000)
    chunked = decode_jpegs(datas, orientations, 64, "shortest", "cpu")
    assert chunked.ok == whole.ok == list(range(len(SIZES))) and chunked.failed == [len(SIZES)]
    assert torch.equal(chunked.pixels, whole.pixels)


def test_greyscale_and_progressive_match():
    im = photo(400, 300, seed=3)
    datas = [jpeg(im.convert("L"), 6), jpeg(im, 3, progressive=True), jpeg(im, 1, subsampling=0)]
    batch = decode_jpegs(datas, [6, 3, 1], 64, "shortest", "cpu")
    assert batch.failed == []
    for data, got in zip(datas, as_hwc(batch.pixels)):
        assert np.abs(got.astype(int) - cpu_pixels(data, 64, "shortest")).mean() < PIXEL_BOUND


def test_vectors_match_cpu_path(tiny):
    """Tiny-model vectors from this path against the CPU path's: cosine >= 0.99 for every picture."""
    size, mode = tiny.image_size, tiny.resize_mode
    pictures = [draw(s, (w, h)) for s, (w, h) in zip(all_samples()[:8], [(256, 256), (640, 480), (300, 500)] * 3)]
    pictures += [photo(w, h, seed=w + h) for w, h in SIZES]
    datas = [jpeg(im, 1 + i % 8) for i, im in enumerate(pictures)]
    batch = decode_jpegs(datas, [orientation_of(d) for d in datas], size, mode, "cpu")
    assert batch.failed == []
    gpu_path = tiny.encode_pixel_tensor(batch.pixels)
    cpu_path = tiny.encode_pixels(np.stack([cpu_pixels(d, size, mode) for d in datas]))
    cosines = (gpu_path * cpu_path).sum(axis=1)
    print(f"cosine min {cosines.min():.5f}, mean {cosines.mean():.5f}")
    assert cosines.min() >= 0.99


def test_encode_pixel_tensor_is_encode_pixels(tiny):
    """The two entry points share one normalisation: same pixels, same vectors."""
    pixels = np.random.default_rng(1).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    a = tiny.encode_pixels(pixels)
    b = tiny.encode_pixel_tensor(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert np.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError):
        tiny.encode_pixel_tensor(torch.zeros((1, 64, 64, 3), dtype=torch.uint8))


def _unusual(data: bytes, offset: int, value: int) -> bytes:
    """``data`` with one byte of its start-of-frame segment changed."""
    out = bytearray(data)
    out[out.index(b"\xff\xc0") + offset] = value
    return bytes(out)


def test_unusual_and_broken_jpegs_are_reported_not_raised():
    im = photo(120, 90, seed=5)
    good = jpeg(im)
    cmyk = jpeg(im.convert("CMYK"))
    truncated = good[: len(good) // 2]
    twelve_bit = _unusual(good, 4, 12)
    lossless = _unusual(good, 1, 0xC3)
    missing_table = _unusual(good, 12, 3)  # passes the header check; the decoder itself refuses it
    datas = [cmyk, good, truncated, b"", b"not a picture", twelve_bit, lossless, missing_table, jpeg(im, 8)]
    batch = decode_jpegs(datas, [1, 1, 1, 1, 1, 1, 1, 1, 8], 64, "shortest", "cpu")
    assert batch.ok == [1, 8]
    assert batch.failed == [0, 2, 3, 4, 5, 6, 7]
    for i, got in zip(batch.ok, as_hwc(batch.pixels)):
        assert np.abs(got.astype(int) - cpu_pixels(datas[i], 64, "shortest")).mean() < PIXEL_BOUND
    assert [jpeg_frame(d) for d in (good, cmyk, truncated, twelve_bit)] == [(120, 90), None, None, None]
    empty = decode_jpegs([truncated], [1], 64)
    assert empty.ok == [] and empty.failed == [0] and empty.pixels.shape == (0, 3, 64, 64)


def test_gpu_unavailable_off_cuda_and_import_is_cheap():
    assert gpu_jpeg_available("cpu") is False
    if not torch.cuda.is_available():
        assert gpu_jpeg_available("cuda") is False
    code = ("import sys, clipdex.gpujpeg, clipdex.decodepool, clipdex.indexer; "
            "sys.exit('torch' in sys.modules or 'torchvision' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- the indexer's GPU path, run on the CPU (Indexer(gpu_jpeg=True), PyTorch model on the CPU)

#: A JPEG comment marking the pictures the fake GPU decoder below refuses (they go back to the CPU decoder).
REFUSE = b"gpu-refuses"


def _mpo(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "MPO", save_all=True, append_images=[photo(200, 150, seed=11)])
    return buf.getvalue()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """24 generated JPEGs with a capture date, and what a camera roll holds besides."""
    root = tmp_path_factory.mktemp("mixed")
    write_collection(root / "shapes", per_class=1, seed=4, taken=dt.datetime(2021, 6, 1, 12, 30))
    odd = root / "odd"
    odd.mkdir()
    im = photo(360, 240, seed=7)
    files = {f"orient{o}.jpg": jpeg(photo(360, 240, seed=o), o, f"2020:01:0{o} 10:00:00") for o in range(1, 9)}
    good = jpeg(im)
    files |= {
        "big.jpg": jpeg(photo(1500, 1000, seed=9), 6),  # JPEG draft at 1/8 in the CPU path
        "grey.jpg": jpeg(im.convert("L"), 8),
        "progressive.jpg": jpeg(im, 3, progressive=True),
        "cmyk.jpg": jpeg(im.convert("CMYK")),  # the workers decode it
        "camera.mpo.jpg": _mpo(im),  # likewise (Pillow reads an MPO with no draft)
        "truncated.jpg": good[: len(good) // 2],  # refused by the workers' frame check: CPU, skipped
        "missing-table.jpg": _unusual(good, 12, 3),  # passes every check, torchvision and Pillow refuse it
        "refused.jpg": jpeg(photo(300, 400, seed=12), 6, comment=REFUSE),  # fails on the "GPU", fine on the CPU
        "empty.jpg": b"",
        "text.jpg": b"not a picture at all",
    }
    buf = io.BytesIO()
    im.save(buf, "PNG")
    files["picture.png"] = buf.getvalue()
    for name, data in files.items():
        (odd / name).write_bytes(data)
    shutil.copy(root / "shapes" / "red" / "circle-000.jpg", odd / "copy-of-red-circle.jpg")
    return root


@pytest.fixture
def refusing_gpu(monkeypatch) -> dict[str, int]:
    """torchvision's decode refuses the pictures marked :data:`REFUSE`; counts what each path did."""
    seen = {"jpegs": 0, "redecoded": 0}
    real_decode, real_redecoder = clipdex.gpujpeg._decode, clipdex.indexer.gpu.cpu_redecoder

    def decode(datas, device):
        seen["jpegs"] += len(datas)
        return [None if REFUSE in d else t for d, t in zip(datas, real_decode(datas, device))]

    def redecoder(*args):
        redecode = real_redecoder(*args)

        def counted(paths):
            seen["redecoded"] += len(paths)
            return redecode(paths)
        return counted

    monkeypatch.setattr(clipdex.gpujpeg, "_decode", decode)
    monkeypatch.setattr(clipdex.indexer.run, "cpu_redecoder", redecoder)
    return seen


def _contents(lib: Library) -> dict[str, tuple]:
    with lib.session() as s:
        return {r.path: (r.id, r.width, r.height, r.captured_at, r.content_hash, r.vector_array().copy())
                for r in s.query(ImageRow)}


def _counts(stats) -> tuple:
    return stats.indexed, stats.encoded, stats.reused, stats.skipped, stats.processed


def test_decode_file_hands_plain_jpegs_over_as_bytes(mixed):
    """With jpeg_bytes, a plain JPEG comes back undecoded with the facts the CPU path gives; the rest as ever."""
    kinds = {}
    for path in sorted(mixed.rglob("*")):
        if not path.is_file():
            continue
        got, cpu = decode_file(str(path), 64, "shortest", 10**8, jpeg_bytes=True), decode_file(str(path), 64,
                                                                                               "shortest", 10**8)
        kinds[path.name] = "bytes" if got.data is not None else "pixels" if got.pixels is not None else "error"
        if got.data is not None:
            assert got.pixels is None and got.data == path.read_bytes()
            assert got.orientation == orientation_of(got.data)
            assert (got.width, got.height, got.captured_at, got.content_hash) == (
                cpu.width, cpu.height, cpu.captured_at, cpu.content_hash) or path.name == "missing-table.jpg"
        else:
            assert got.orientation == 1 and (got.error, got.width, got.height, got.content_hash) == (
                cpu.error, cpu.width, cpu.height, cpu.content_hash)
            assert got.pixels is None or np.array_equal(got.pixels, cpu.pixels)
    assert kinds["orient6.jpg"] == kinds["grey.jpg"] == kinds["missing-table.jpg"] == kinds["circle-000.jpg"] == "bytes"
    assert kinds["cmyk.jpg"] == kinds["camera.mpo.jpg"] == kinds["picture.png"] == "pixels"
    assert kinds["truncated.jpg"] == kinds["empty.jpg"] == kinds["text.jpg"] == "error"


def test_gpu_path_indexes_like_the_cpu_path(mixed, tmp_path, refusing_gpu):
    """Same ids, paths, sizes, dates, hashes, skip reasons and counts; vectors within a cosine of 0.99.

    One worker, so both runs see the files in the same order (ids follow it); batches of 8, so
    the copy of a picture reuses its vector from an earlier batch in both.
    """
    encoder = Encoder("tiny", backend="torch").load()
    assert encoder.gpu_jpeg is False  # no CUDA here: only the override turns the path on
    gpu_lib, cpu_lib = Library.create(tmp_path / "gpu"), Library.create(tmp_path / "cpu")
    said: list[str] = []
    gpu = Indexer(gpu_lib, encoder, workers=1, batch_size=8, gpu_jpeg=True, say=said.append).run([str(mixed)])
    seen = dict(refusing_gpu)
    cpu = Indexer(cpu_lib, encoder, workers=1, batch_size=8).run([str(mixed)])
    assert refusing_gpu == seen  # the normal run never touched the GPU path
    assert not any("GPU" in line for line in said)  # that note is for a real GPU
    # 24 shapes + 8 orientations + big, grey, progressive, refused and missing-table went as bytes
    # (the copy reuses its original's vector unread); refused and missing-table went back to the CPU.
    assert seen == {"jpegs": 37, "redecoded": 2}
    assert _counts(gpu) == _counts(cpu)
    assert (gpu.indexed, gpu.reused, gpu.skipped) == (40, 1, 4)
    assert gpu_lib.skipped() == cpu_lib.skipped()
    assert {Path(p).name for p, _ in gpu_lib.skipped()} == {"truncated.jpg", "missing-table.jpg", "empty.jpg",
                                                             "text.jpg"}
    rows, want = _contents(gpu_lib), _contents(cpu_lib)
    assert rows.keys() == want.keys() and len(rows) == 40
    cosines = {}
    for path, (*facts, vector) in rows.items():
        assert tuple(facts) == want[path][:-1], path
        cosines[Path(path).name] = float(vector @ want[path][-1])
    print(f"cosine min {min(cosines.values()):.5f} ({min(cosines, key=cosines.get)})")
    assert min(cosines.values()) >= 0.99
    assert cosines["refused.jpg"] > 0.99999 and cosines["cmyk.jpg"] > 0.99999  # decoded on the CPU in both
    assert rows[str(mixed / "odd" / "orient6.jpg")][3] == dt.datetime(2020, 1, 6, 10)
    assert rows[str(mixed / "odd" / "big.jpg")][1:3] == (1000, 1500)
    index = gpu_lib.index()
    assert index.ntotal == 40 and all(np.array_equal(index.vector(r[0]), r[-1]) for r in rows.values())


def test_gpu_path_reruns_reuse_and_retry(mixed, tmp_path, refusing_gpu):
    """Incremental runs on the GPU path: unchanged files unread, a copy reuses its vector, a changed
    file is encoded again, a skipped file that changed is tried again."""
    encoder = Encoder("tiny", backend="torch").load()
    root = tmp_path / "pics"
    shutil.copytree(mixed / "odd", root)
    lib = Library.create(tmp_path / "lib")
    first = Indexer(lib, encoder, workers=2, batch_size=4, gpu_jpeg=True).run([str(root)])
    assert first.indexed + first.skipped == first.processed == 20 and first.reused == 0
    shutil.copy(root / "orient3.jpg", root / "copy.jpg")
    (root / "grey.jpg").write_bytes(jpeg(photo(200, 300, seed=99), 5))
    (root / "truncated.jpg").write_bytes(jpeg(photo(300, 200, seed=98)))  # a skipped file, now whole
    again = Indexer(lib, encoder, workers=2, batch_size=4, gpu_jpeg=True).run([str(root)])
    assert (again.indexed, again.encoded, again.reused, again.unchanged, again.skipped) == (3, 2, 1, 15, 0)
    assert len(lib.skipped()) == 3
    vectors = {Path(p).name: v for p, (*_f, v) in _contents(lib).items()}
    assert np.array_equal(vectors["copy.jpg"], vectors["orient3.jpg"])
    fresh = encoder.encode_pixels(cpu_pixels((root / "grey.jpg").read_bytes(), 64, "shortest")[None])[0]
    assert float(vectors["grey.jpg"] @ fresh) >= 0.99
    rebuilt = Indexer(lib, encoder, workers=2, batch_size=4, gpu_jpeg=True).run([str(root)], rebuild=True)
    assert rebuilt.rebuilt and (rebuilt.indexed, rebuilt.skipped) == (18, 3)
    # the copy reuses its original's new vector unless both were in one batch (two workers: either)
    assert rebuilt.encoded + rebuilt.reused == 18 and rebuilt.reused <= 1
    after = {Path(p).name: v for p, (*_f, v) in _contents(lib).items()}
    assert after.keys() == vectors.keys() and min(float(after[n] @ vectors[n]) for n in after) > 0.99999


def test_gpu_path_needs_torch_and_a_decoder_taking_bytes(tmp_path):
    """Automatic: off for a decode_fn that cannot hand bytes over; forced: refused with a reason."""
    encoder = Encoder("tiny", backend="torch").load()
    lib = Library.create(tmp_path / "lib")
    assert Indexer(lib, encoder, decode_fn=hang_or_crash).decodes_jpegs_on_device(encoder) is False
    assert Indexer(lib, encoder, gpu_jpeg=True).decodes_jpegs_on_device(encoder) is True
    assert Indexer(lib, encoder).decodes_jpegs_on_device(encoder) is False  # a CPU: ~7x slower than Pillow
    with pytest.raises(UsageError, match="jpeg_bytes"):
        Indexer(lib, encoder, gpu_jpeg=True, decode_fn=hang_or_crash).decodes_jpegs_on_device(encoder)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU here: the nvJPEG path is unverified on this machine")
def test_cuda_nvjpeg_matches_cpu_path():
    """The real nvJPEG path: pixels and tiny-model vectors (fp16 on CUDA) against the CPU path."""
    assert gpu_jpeg_available("cuda")
    cuda = TorchEncoder(parse_model_spec("tiny"), device="cuda").load()
    size, mode = cuda.image_size, cuda.resize_mode
    pictures = [photo(w, h, seed=w * h) for w, h in SIZES] + [draw(s, (640, 480)) for s in all_samples()[:6]]
    datas = [jpeg(im, 1 + i % 8) for i, im in enumerate(pictures)] + [jpeg(pictures[0].convert("CMYK")), b"junk"]
    batch = decode_jpegs(datas, [orientation_of(d) for d in datas[:-1]] + [1], size, mode, "cuda")
    assert batch.pixels.device.type == "cuda"
    assert batch.failed == [len(datas) - 2, len(datas) - 1]
    cpu = np.stack([cpu_pixels(datas[i], size, mode) for i in batch.ok])
    diffs = np.abs(as_hwc(batch.pixels).astype(int) - cpu).mean(axis=(1, 2, 3))
    print(f"nvJPEG mean abs differences: {np.round(diffs, 3).tolist()}")
    assert diffs.max() < 3  # nvJPEG's IDCT and chroma upsampling may differ from libjpeg's
    cosines = (cuda.encode_pixel_tensor(batch.pixels) * cuda.encode_pixels(cpu)).sum(axis=1)
    print(f"nvJPEG cosine min {cosines.min():.5f}")
    assert cosines.min() >= 0.99


def test_a_huge_jpeg_is_left_to_the_cpu_decoder(tmp_path):
    """The GPU path decodes at full size in the indexing process; past GPU_MAX_PIXELS a JPEG is decoded
    in a worker, with its time and memory limits, as on the CPU path."""
    width = 8000
    height = clipdex.gpujpeg.GPU_MAX_PIXELS // width + 8  # just over the limit
    huge = tmp_path / "huge.jpg"
    Image.new("RGB", (width, height), (200, 40, 30)).save(huge, quality=50)
    got = decode_file(str(huge), 64, "shortest", 10**9, jpeg_bytes=True)
    assert got.data is None and got.pixels is not None and (got.width, got.height) == (width, height)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (width, 100), (200, 40, 30)).save(small, quality=50)
    assert decode_file(str(small), 64, "shortest", 10**9, jpeg_bytes=True).data is not None
