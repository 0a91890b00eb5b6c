"""The pixel-level signal that confirms two similar vectors are one photo, not two of one subject.

CLIP vectors of two shots of the same subject are as close as those of a photo and its
resized copy, so vectors only propose candidates; the pixels decide. Each picture is decoded
upright (EXIF orientation applied, alpha on white, any mode) and reduced to a small thumbnail,
seen through 81 crop windows (0, 3 or 6 % trimmed off each side). Its *signature* holds, per
window, two things:

* the *structure*: the grey window at 32 x 32, normalised to zero mean and unit variance (so a
  copy's light and contrast changes do not count);
* the *colour*: the window's RGB at 8 x 8, as it is (not normalised), in grey levels.

Two pictures are aligned on structure: one's whole frame against the other's windows, both ways,
the best pair wins. They differ by the mean absolute structure difference there (:func:`difference`)
and by the mean absolute colour difference of the same pair of windows (:func:`colour_difference`).
A copy resized, recompressed, converted between PNG and JPEG or cropped by up to ~6 % a side lines
up with its original on both (structure ≤ 0.1, colour ≤ 2.3 levels in ``benchmarks/bench_duplicates.py``);
a second photo of the subject, with things moved or other light, does not (structure ≥ 0.3, colour ≥ 12).
Colour is what tells flat pictures apart: a purple and a blue square on a light background, or two
drawings of a blue square with other tints, have nearly the same normalised grey (0.01-0.16) but
differ by 6.5 levels of colour and more (the 72 pictures of ``clipdex demo``).
A plain DCT perceptual hash was measured too and dropped: an uneven light crop moved it as far as
a second shot did.

Files are decoded by :func:`signature_file` in :class:`clipdex.decodepool.DecodePool` worker
processes (regular files only, opened without blocking, the image formats clipdex indexes only,
each under a time limit), never in the caller's process: a FIFO or a decoder stuck on a hostile
file costs that file, not a server thread.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from clipdex.errors import DecodeError

SIDE = 32
COLOUR_SIDE = 8
THUMB = 128
TRIMS = (0.0, 0.03, 0.06)
#: Structure differences up to this are the same picture (copies measure ≤ 0.1, second shots ≥ 0.3).
MAX_DIFFERENCE = 0.18
#: Colour differences (grey levels, 0-255) up to this are the same picture (copies ≤ 2.3, the demo's
#: different pictures ≥ 6.5, second shots ≥ 12).
MAX_COLOUR_DIFFERENCE = 4.0
_WINDOWS = list(itertools.product(TRIMS, repeat=4))  # left, top, right, bottom; the first is the whole frame
_GREY = SIDE * SIDE


def signature(image: Image.Image) -> np.ndarray:
    """The picture's windows, ``(81, 32*32 + 8*8*3)`` float16: normalised grey, then colour (module docstring)."""
    rgb = image.convert("RGB")
    rgb.thumbnail((THUMB, THUMB), Image.Resampling.BOX)
    grey = rgb.convert("L")
    w, h = grey.size
    out = np.empty((len(_WINDOWS), _GREY + COLOUR_SIDE * COLOUR_SIDE * 3), np.float32)
    for n, (left, top, right, bottom) in enumerate(_WINDOWS):
        box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
        out[n, :_GREY] = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX, box=box), np.float32).ravel()
        out[n, _GREY:] = np.asarray(rgb.resize((COLOUR_SIDE, COLOUR_SIDE), Image.Resampling.BOX, box=box),
                                    np.float32).ravel()
    structure = out[:, :_GREY]
    structure -= structure.mean(axis=1, keepdims=True)
    structure /= structure.std(axis=1, keepdims=True) + 1.0  # + 1 grey level: a flat picture stays flat, not noise
    return out.astype(np.float16)


def signature_of_file(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """:func:`signature` of the regular file ``path``, in this process (:class:`DecodeError` if unreadable)."""
    from clipdex.decoding import NotARegularFile, open_regular
    from clipdex.imaging import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, open_image

    try:
        fh, _st = open_regular(str(path))
    except NotARegularFile:
        raise DecodeError("not a regular file") from None
    except OSError as exc:
        raise DecodeError(f"cannot read: {exc.strerror or exc}") from None
    with fh:
        image = open_image(fh, target_size=THUMB, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                           formats=IMAGE_FORMATS).image
    return signature(image)


def signature_file(path: str, size: int, mode: str, max_pixels: int, **_: object):
    """A :class:`clipdex.decodepool.DecodePool` decode function: the file's signature as ``pixels``."""
    from clipdex.decoding import Decoded

    try:
        return Decoded(path, signature_of_file(path, max_pixels))
    except DecodeError as exc:
        return Decoded(path, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - a decoder bug costs this file only
        return Decoded(path, error=f"cannot decode: {type(exc).__name__}")


def _best(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The best-aligned pair of windows: its structure difference, and the two windows."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    one_way = np.abs(a32[:, :_GREY] - b32[0, :_GREY]).mean(axis=1)
    other_way = np.abs(b32[:, :_GREY] - a32[0, :_GREY]).mean(axis=1)
    i, j = int(one_way.argmin()), int(other_way.argmin())
    if one_way[i] <= other_way[j]:
        return float(one_way[i]), a32[i], b32[0]
    return float(other_way[j]), a32[0], b32[j]


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two signatures' structures are at their best alignment (0: the same pixels)."""
    return _best(a, b)[0]


def colour_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute colour difference (grey levels) of the two signatures' best-aligned windows."""
    _, x, y = _best(a, b)
    return float(np.abs(x[_GREY:] - y[_GREY:]).mean())


def same_picture(a: np.ndarray, b: np.ndarray, max_difference: float = MAX_DIFFERENCE,
                 max_colour: float = MAX_COLOUR_DIFFERENCE) -> bool:
    """True when two signatures are one picture: structure and colour both within their limits."""
    structure, x, y = _best(a, b)
    return structure <= max_difference and float(np.abs(x[_GREY:] - y[_GREY:]).mean()) <= max_colour
