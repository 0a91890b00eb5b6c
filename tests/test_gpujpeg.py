"""Batch JPEG decoding with torchvision (clipdex.gpujpeg) gives the pixels and vectors the CPU path gives.

The decode, orientation and resize steps are device-independent torch code, so they are checked
for real on the CPU here; only nvJPEG itself needs a GPU (the last test).
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps

import clipdex.gpujpeg
from clipdex.gpujpeg import _orient, decode_jpegs, gpu_jpeg_available, jpeg_frame
from clipdex.imaging import load_for_model
from clipdex.models import parse_model_spec
from clipdex.synthetic import all_samples, draw
from clipdex.torchclip import TorchEncoder

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


def jpeg(im: Image.Image, orientation: int = 1, **kw) -> bytes:
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
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
    code = "import sys, clipdex.gpujpeg; sys.exit('torch' in sys.modules or 'torchvision' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


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
