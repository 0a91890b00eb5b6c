"""Decode JPEG batches with torchvision straight into model pixels: nvJPEG on a GPU, libjpeg elsewhere.

On a GPU machine decoding JPEGs on the CPU, not the model, limits indexing. The pixels must match
:func:`clipdex.imaging.load_for_model`'s (or vectors would depend on the machine), so its steps are
repeated with torch ops: Pillow's JPEG draft (imitated by a box average), the EXIF orientation, the
``reducing_gap`` reduction, Pillow's antialiased bicubic resize and :func:`~clipdex.imaging.fit_square`'s
crop. Anything but a plain 8-bit grey or YCbCr JPEG (CMYK, 12-bit, lossless, truncated, broken) is
reported by index, never raised: the caller decodes those on the CPU. :func:`read_plain_jpeg` is what
a decode worker runs instead of decoding, to hand a JPEG over as bytes. torch is imported lazily.
torchvision 0.29 deprecates its image decoders for TorchCodec; a torchvision without them makes
:func:`gpu_jpeg_available` say False, and the indexer keeps the CPU path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Start-of-frame markers torchvision (libjpeg and nvJPEG) decodes: baseline, extended, progressive.
_PLAIN_SOF = (0xC0, 0xC1, 0xC2)
#: Any other start-of-frame (lossless, hierarchical, arithmetic coding): left to Pillow.
_OTHER_SOF = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Pillow's ``Image.resize(..., reducing_gap=3.0)`` as used by ``fit_square``.
_REDUCING_GAP = 3.0
#: Pixels decoded in one torchvision call (~400 MB of RGB), so a batch of huge pictures fits the GPU.
_CHUNK_PIXELS = 128_000_000


class JpegBatch(NamedTuple):
    """Model pixels of the pictures that decoded, and the indices of those that did not."""

    pixels: torch.Tensor  # len(ok) x 3 x S x S uint8 on the device, in input order
    ok: list[int]  # index in the input of each row of ``pixels``
    failed: list[int]  # decode these on the CPU (clipdex.decoding.decode_file)


class PlainJpeg(NamedTuple):
    """A JPEG file for :func:`decode_jpegs`, with the facts :func:`clipdex.imaging.open_image` would give."""

    data: bytes  # the whole file
    orientation: int  # EXIF orientation, 1 when absent
    width: int  # upright: swapped for orientations 5-8, as open_image does
    height: int
    captured_at: dt.datetime | None


#: Larger JPEGs are decoded by the CPU decoder in a worker (with its time and memory limits): the GPU
#: path decodes at full size in the indexing process, and a 13000 x 13000 picture took 5 GB there.
GPU_MAX_PIXELS = 50_000_000


def read_plain_jpeg(fh: BinaryIO, max_pixels: int) -> PlainJpeg | None:
    """The bytes and facts of a JPEG this module decodes like Pillow, read from ``fh``; else None.

    Pillow reads the header only: format ``JPEG`` (not ``MPO``), mode ``RGB`` or ``L``, at most
    ``max_pixels``; then :func:`jpeg_frame` checks the bytes. Anything else, or any error on the
    way, is None: the CPU decoder then takes the file and says what is wrong with it. ``fh`` is
    left at its start.
    """
    from PIL import Image

    from clipdex.imaging import _capture_date

    try:
        with Image.open(fh, formats=["JPEG"]) as im:
            width, height = im.size
            if im.format != "JPEG" or im.mode not in ("RGB", "L") or width * height > min(max_pixels, GPU_MAX_PIXELS):
                return None
            exif = im.getexif()
            orientation, captured = exif.get(0x0112, 1), _capture_date(exif)
        if not isinstance(orientation, int):
            return None
        fh.seek(0)
        data = fh.read()
        if jpeg_frame(data) is None:
            return None
    except Exception:  # noqa: BLE001 - whatever fails here, the CPU decoder reports it
        return None
    finally:
        with contextlib.suppress(OSError):  # then the CPU decoder fails on it, and says why
            fh.seek(0)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return PlainJpeg(data, orientation, width, height, captured)


def jpeg_frame(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG torchvision can decode like Pillow, else None.

    Reads the markers up to the start of frame: 8-bit samples, 1 (grey) or 3 (YCbCr)
    components, baseline or progressive, and the data must end with the end-of-image marker
    (a cut-off file is not always an error to nvJPEG, while Pillow refuses it).
    """
    if data[:2] != b"\xff\xd8" or not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _PLAIN_SOF:
            if pos + 10 > len(data):
                return None
            precision, components = data[pos + 4], data[pos + 9]
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            if precision != 8 or components not in (1, 3) or not width or not height:
                return None
            return width, height
        if marker in _OTHER_SOF or marker == 0xDA:  # an unusual frame, or scan data before any frame
            return None
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return None


def _box(x: torch.Tensor, fy: int, fx: int) -> torch.Tensor:
    """Average ``fy x fx`` blocks (partial edge blocks over their own pixels), rounded as uint8 would be."""
    import torch.nn.functional as F

    if fy == 1 and fx == 1:
        return x
    return F.avg_pool2d(x, (fy, fx), ceil_mode=True, count_include_pad=False).round_()


#: EXIF orientation (2-8) -> the torch ops of ``ImageOps.exif_transpose`` on a ``... x H x W`` tensor.
_ORIENT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    2: lambda x: x.flip(-1),
    3: lambda x: x.flip(-2, -1),
    4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1),
    6: lambda x: x.rot90(-1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1),
    8: lambda x: x.rot90(1, (-2, -1)),
}


def _orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """``x`` turned upright for an EXIF orientation; 1 (or any unknown value) leaves it as it is, as Pillow does."""
    turn = _ORIENT.get(orientation)
    return turn(x) if turn else x


def _fit(image: torch.Tensor, orientation: int, size: int, mode: str) -> torch.Tensor:
    """One decoded ``3 x H x W`` uint8 picture to the model's ``3 x S x S`` uint8 square."""
    import torch.nn.functional as F

    x = image.unsqueeze(0).float()
    h, w = x.shape[-2:]
    if min(w, h) > 2 * size:  # open_image's JPEG draft: 1/2, 1/4 or 1/8 scale, at least S a side
        factor = next(s for s in (8, 4, 2) if min(w // size, h // size) >= s)
        x = _box(x, factor, factor)
    x = _orient(x, orientation)
    h, w = x.shape[-2:]
    if mode == "squash":
        new_w, new_h = size, size
    else:  # fit_square treats every other mode as "shortest"
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    fy, fx = int(h / new_h / _REDUCING_GAP) or 1, int(w / new_w / _REDUCING_GAP) or 1
    x = _box(x, fy, fx)
    if h % fy or w % fx:  # Pillow then resamples the box (w / fx, h / fy), a fraction short of the reduced picture
        x = F.interpolate(x, scale_factor=(new_h * fy / h, new_w * fx / w), mode="bicubic", antialias=True,
                          recompute_scale_factor=False)[..., :new_h, :new_w]
    elif x.shape[-2:] != (new_h, new_w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    x = x[..., top:top + size, left:left + size]
    return x.round_().clamp_(0, 255).to(image.dtype).squeeze(0)


def _decode(datas: list[bytes], device: str) -> list[torch.Tensor | None]:
    """torchvision's decode of each JPEG as ``3 x H x W`` uint8 on ``device``, None where it fails.

    The batch goes in one call (nvJPEG's batched decode); if that raises, one at a time.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if not tensors:
        return []
    try:
        return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
    except Exception:  # noqa: BLE001 - one bad picture fails the whole call: find it below
        pass
    out: list[torch.Tensor | None] = []
    for t in tensors:
        try:
            out.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except Exception:  # noqa: BLE001 - whatever the decoder raises costs this picture only
            out.append(None)
    return out


def decode_jpegs(datas: list[bytes], orientations: list[int], size: int, mode: str = "shortest",
                 device: str = "cpu") -> JpegBatch:
    """Decode JPEG files (their bytes) to the model's ``size x size`` squares on ``device``.

    ``datas`` should be files Pillow opens as format ``JPEG`` (it reads an ``MPO`` with no
    draft, so those differ a little more); ``orientations`` are their EXIF orientation tags
    (1 when absent); ``mode`` is the model's resize mode, as for :func:`clipdex.imaging.fit_square`.
    Pictures this path cannot take are listed in ``failed``, never raised: decode them on the CPU.
    Needs torchvision >= 0.19 (batched ``decode_jpeg``); :func:`gpu_jpeg_available` checks.
    """
    import torch

    if len(datas) != len(orientations):
        raise ValueError("one orientation per picture")
    chunks: list[list[int]] = [[]]
    pixels_in_chunk = 0
    for i, data in enumerate(datas):
        frame = jpeg_frame(data)
        if frame:
            if chunks[-1] and pixels_in_chunk + frame[0] * frame[1] > _CHUNK_PIXELS:
                chunks.append([])
                pixels_in_chunk = 0
            chunks[-1].append(i)
            pixels_in_chunk += frame[0] * frame[1]
    ok: list[int] = []
    rows: list[torch.Tensor] = []
    with torch.inference_mode():
        for chunk in chunks:
            for i, image in zip(chunk, _decode([datas[i] for i in chunk], device)):
                try:
                    if image is not None:
                        rows.append(_fit(image, orientations[i], size, mode))
                        ok.append(i)
                except Exception:  # noqa: BLE001 - out of GPU memory for one huge picture, say
                    pass
        pixels = torch.stack(rows) if rows else torch.empty((0, 3, size, size), dtype=torch.uint8, device=device)
    failed = sorted(set(range(len(datas))) - set(ok))
    return JpegBatch(pixels, ok, failed)


@functools.cache
def gpu_jpeg_available(device: str = "cuda") -> bool:
    """True on a CUDA device where torchvision's nvJPEG decode works (tried once on a 1-pixel JPEG)."""
    if not device.startswith("cuda"):
        return False
    try:
        import io

        import torch
        from PIL import Image

        if not torch.cuda.is_available():
            return False
        buf = io.BytesIO()
        Image.new("RGB", (1, 1), (200, 100, 50)).save(buf, "JPEG")
        batch = decode_jpegs([buf.getvalue()], [1], 1, device=device)
        return not batch.failed and batch.pixels.device.type == "cuda"
    except Exception:  # noqa: BLE001 - no CUDA build, no nvJPEG, a driver error: all mean "no"
        return False
