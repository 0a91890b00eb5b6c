"""Decode real-world image files into what the model sees.

Shared by the indexer, search-by-example and the tiny model's training script so
that every picture takes the same path: EXIF orientation applied, alpha composited
on white, odd modes (CMYK, 16-bit, palette, greyscale) converted, first frame of
animations, decompression bombs refused, and large JPEGs decoded at reduced size.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

try:  # HEIC/HEIF/AVIF support is optional at import time, required by the package.
    import pillow_heif

    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

from clipdex.atomicfile import write_atomic
from clipdex.errors import DecodeError

#: Pictures above this many pixels are refused as likely decompression bombs.
DEFAULT_MAX_PIXELS = 180_000_000
# open_image checks the header size itself (with a clearer message and a configurable
# limit) before any pixel is decoded, so Pillow's own global check is switched off.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: The Pillow formats of those files, with the content type each is served as. Decoding
#: files from strangers (uploads, served originals) is limited to these, so no other Pillow
#: plugin (EPS through Ghostscript, for one) ever sees their bytes.
IMAGE_FORMATS = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a camera JPEG with extra pictures inside (Pillow opens it as JPEG)
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
    "HEIF": "image/heif",
    "AVIF": "image/avif",
}

_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL = 36867
_DATETIME_DIGITIZED = 36868
_DATETIME = 306


@dataclass(frozen=True)
class DecodedImage:
    """An RGB picture ready to be resized, with the facts the database keeps."""

    image: Image.Image
    width: int
    height: int
    captured_at: dt.datetime | None


def is_image_path(path: str | Path) -> bool:
    """True when the file name has one of the supported extensions (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _capture_date(exif: Image.Exif) -> dt.datetime | None:
    values = []
    try:
        sub = exif.get_ifd(_EXIF_IFD)
        values += [sub.get(_DATETIME_ORIGINAL), sub.get(_DATETIME_DIGITIZED)]
    except Exception:  # noqa: BLE001 - broken EXIF must not cost the picture
        pass
    values.append(exif.get(_DATETIME))
    for value in values:
        if isinstance(value, bytes):
            value = value.decode("ascii", "ignore")
        if not isinstance(value, str):
            continue
        try:
            return dt.datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
        except ValueError:
            continue
    return None


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_BAND_ROWS = 256


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float greyscale to 8-bit ``L``, scaled as before (x / 65535 * 255, or
    x itself when an ``I``/``F`` picture holds 8-bit values).

    Works a band of rows at a time, so the extra memory is one uint8 copy of the picture plus
    one band, never a full-size float64 copy (a 13000 x 13000 16-bit PNG once took 5 GB).
    """
    if im.mode.startswith("I;16"):
        hi = 65535
    else:
        hi = 65535 if im.getextrema()[1] > 255 else 255
    width, height = im.size
    out = np.empty((height, width), np.uint8)
    for top in range(0, height, _BAND_ROWS):
        band = np.asarray(im.crop((0, top, width, min(height, top + _BAND_ROWS))))
        if band.dtype.kind == "f":
            out[top:top + len(band)] = np.clip(band.astype(np.float64) / hi * 255.0, 0, 255)
        else:
            out[top:top + len(band)] = np.clip(band.astype(np.int64), 0, hi) * 255 // hi
    return Image.fromarray(out)


def _to_rgb(im: Image.Image, target_size: int | None = None) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white.

    Wide greyscale pictures (16-bit, 32-bit, float) much larger than ``target_size`` are
    also reduced once they are 8-bit (to at least 3x ``target_size`` on the short side, as
    the final resize would), so the RGB copy stays small.
    """
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        grey = _wide_to_l(im)
        factor = min(grey.size) // (3 * target_size) if target_size else 1
        if factor >= 2:
            grey = grey.reduce(factor)
        return grey.convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def _registered(formats: Iterable[str] | None) -> list[str] | None:
    """``formats`` limited to those Pillow can open here (it fails on unknown names)."""
    if formats is None:
        return None
    Image.init()
    return [f for f in formats if f in Image.OPEN]


def open_image(
    path: str | Path | BinaryIO,
    target_size: int = 224,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Iterable[str] | None = None,
) -> DecodedImage:
    """Decode one file to an upright RGB picture, at least ``target_size`` on its short side.

    ``formats`` limits which Pillow formats are tried (e.g. :data:`IMAGE_FORMATS`); by
    default every format Pillow knows. Raises :class:`DecodeError` with a short human
    reason on any failure.
    """
    try:
        with Image.open(path, formats=_registered(formats)) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DecodeError(
                    f"refused: {width}x{height} pixels exceeds the {max_pixels:,} pixel limit "
                    "(possible decompression bomb)"
                )
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            exif = im.getexif()
            orientation = exif.get(0x0112, 1)
            if im.format == "JPEG" and min(width, height) > 2 * target_size:
                im.draft("RGB", (target_size, target_size))
            im.load()
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            captured = _capture_date(exif)
            upright = ImageOps.exif_transpose(im) if orientation != 1 else im
            rgb = _to_rgb(upright, target_size)
            if rgb is im:
                rgb = im.copy()
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused: {exc}") from exc
    except PermissionError:
        raise DecodeError("permission denied") from None
    except FileNotFoundError:
        raise DecodeError("file disappeared") from None
    except IsADirectoryError:
        raise DecodeError("is a directory") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except MemoryError:
        raise DecodeError("cannot decode: not enough memory") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(f"cannot decode: {exc}".strip()) from None
    return DecodedImage(rgb, width, height, captured)


def fit_square(image: Image.Image, size: int, mode: str = "shortest") -> np.ndarray:
    """Resize the short side to ``size`` (bicubic) and centre-crop: open_clip's eval transform.

    ``mode="squash"`` resizes to the square without cropping, as some models expect.
    Returns a ``size x size x 3`` uint8 array.
    """
    if mode == "squash":
        squashed = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(squashed, dtype=np.uint8)
    w, h = image.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_for_model(
    path: str | Path | BinaryIO,
    size: int,
    mode: str = "shortest",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: Iterable[str] | None = None,
) -> tuple[np.ndarray, DecodedImage]:
    """Decode ``path`` and return the model-sized pixels with the decoded facts."""
    decoded = open_image(path, size, max_pixels, formats)
    return fit_square(decoded.image, size, mode), decoded


def image_type(fh: BinaryIO) -> str | None:
    """The content type of the picture in ``fh`` judged from its bytes (never its name), or
    None when it is not one of :data:`IMAGE_FORMATS`. Reads the header only; rewinds ``fh``."""
    try:
        with Image.open(fh, formats=_registered(IMAGE_FORMATS)) as im:
            kind = IMAGE_FORMATS.get(im.format or "")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        kind = None
    fh.seek(0)
    return kind


def write_thumbnail(source: str | Path | BinaryIO, target: Path, size: int, quality: int = 85,
                    formats: Iterable[str] | None = None) -> None:
    """Write an upright JPEG of ``source``, at most ``size`` px on its long side, to ``target``.

    The one thumbnail maker (web renditions, report pictures). The JPEG is made in memory
    (Pillow's encoder writing to a file ignores a short write, so a full disk gave a cut-off
    JPEG), written to a temporary file beside ``target`` and renamed into place; the
    temporary file is removed whatever happens, so a cache never holds a partial or empty
    file. Raises :class:`DecodeError` (source unusable) or :class:`OSError` (not writable).
    """
    image = open_image(source, target_size=size, formats=formats).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=quality, optimize=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(target, jpeg.getbuffer())
