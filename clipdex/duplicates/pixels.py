"""The pixel-level signal that confirms two similar vectors are one photo, not two of one subject.

CLIP vectors of two shots of the same subject are as close as those of a photo and its
resized copy, so vectors only propose candidates; the pixels decide. Each picture is decoded
upright by :func:`clipdex.imaging.open_image` (EXIF orientation applied, alpha on white, any
mode) and reduced to a small grey thumbnail. Its *signature* is that thumbnail seen through
81 crop windows (0, 3 or 6 % trimmed off each side), each resized to 32 x 32 and normalised to
zero mean and unit variance (so light and contrast changes of a copy do not count).

Two pictures differ by the mean absolute difference of the best-aligned pair: one's whole
frame against the other's windows, both ways. A copy resized, recompressed, converted between
PNG and JPEG or cropped by up to ~6 % a side lines up with its original (difference ≤ 0.09 in
``benchmarks/bench_duplicates.py``); a second photo of the subject, with things moved or other
light, does not (≥ 0.3). A plain DCT perceptual hash was measured too and dropped: an uneven
light crop moved it as far as a second shot did.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from clipdex.imaging import open_image

SIDE = 32
THUMB = 128
TRIMS = (0.0, 0.03, 0.06)
#: Differences up to this are the same picture (copies measure ≤ 0.09, second shots ≥ 0.3).
MAX_DIFFERENCE = 0.18
_WINDOWS = list(itertools.product(TRIMS, repeat=4))  # left, top, right, bottom; the first is the whole frame


def signature(image: Image.Image) -> np.ndarray:
    """The picture's windows, ``(81, 32, 32)`` float16, each normalised (see the module docstring)."""
    grey = image.convert("L")
    grey.thumbnail((THUMB, THUMB), Image.Resampling.BOX)
    w, h = grey.size
    out = np.empty((len(_WINDOWS), SIDE, SIDE), np.float32)
    for n, (left, top, right, bottom) in enumerate(_WINDOWS):
        box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
        out[n] = np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BOX, box=box), np.float32)
    out -= out.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1.0  # + 1 grey level: a flat picture stays flat, not noise
    return out.astype(np.float16)


def signature_of_file(path: str | Path) -> np.ndarray:
    """:func:`signature` of the picture in ``path`` (:class:`clipdex.errors.DecodeError` if unreadable)."""
    return signature(open_image(path, target_size=THUMB).image)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two signatures are at their best alignment (0: the same pixels)."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    one_way = np.abs(a32 - b32[0]).mean(axis=(1, 2)).min()
    other_way = np.abs(b32 - a32[0]).mean(axis=(1, 2)).min()
    return float(min(one_way, other_way))
