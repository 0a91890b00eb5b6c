"""Decode real-world image files into what the model sees.

Shared by the indexer, search-by-example and the tiny model's training script so
that every picture takes the same path: EXIF orientation applied, alpha composited
on white, odd modes (CMYK, 16-bit, palette, greyscale) converted, first frame of
animations, decompression bombs refused, and large JPEGs decoded at reduced size.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

try:  # HEIC/HEIF/AVIF support is optional at import time, required by the package.
    import pillow_heif

    pillow_heif.register_heif_opener()
    if hasattr(pillow_heif, "register_avif_opener"):
        pillow_heif.register_avif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pass

from clipdex.errors import DecodeError

#: Pictures above this many pixels are refused as likely decompression bombs.
DEFAULT_MAX_PIXELS = 180_000_000
# open_image checks the header size itself (with a clearer message and a configurable
# limit) before any pixel is decoded, so Pillow's own global check is switched off.
Image.MAX_IMAGE_PIXELS = None

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

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


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def open_image(
    path: str | Path, target_size: int = 224, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DecodedImage:
    """Decode one file to an upright RGB picture, at least ``target_size`` on its short side.

    Raises :class:`DecodeError` with a short human reason on any failure.
    """
    try:
        with Image.open(path) as im:
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
            rgb = _to_rgb(upright)
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
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
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
    path: str | Path, size: int, mode: str = "shortest", max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, DecodedImage]:
    """Decode ``path`` and return the model-sized pixels with the decoded facts."""
    decoded = open_image(path, size, max_pixels)
    return fit_square(decoded.image, size, mode), decoded
