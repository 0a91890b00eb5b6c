"""Read, decode and hash one image file: what a decode worker does with each path it is given.

A file is opened non-blocking and checked to be a regular file before a byte is read (a FIFO or
device never hangs a reader), refused unread when larger than any picture within the pixel limit,
decoded to model pixels (or, for the GPU, kept as JPEG bytes) and hashed in chunks from the same
open file. Failures come back as a :class:`Decoded` with a reason, never as an exception. The
worker processes that run this, each file under a time limit, are :mod:`clipdex.decodepool`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from clipdex.errors import DecodeError
from clipdex.gpujpeg import read_plain_jpeg
from clipdex.imaging import load_for_model


@dataclass
class Decoded:
    """A file decoded to model pixels (or, for the GPU, a JPEG's bytes), or the reason it could not be."""

    path: str
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    captured_at: object = None
    content_hash: str = ""
    error: str | None = None
    data: bytes | None = None  # a JPEG left undecoded (``jpeg_bytes``): the file, pixels None
    orientation: int = 1  # its EXIF orientation


#: Read without blocking: opening a FIFO or a device must never hang a worker (or the planner).
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_READ_FLAGS = os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_CHUNK = 1 << 20


class NotARegularFile(OSError):
    """The path is a FIFO, device, socket or folder, not a file to read."""


def max_file_bytes(max_pixels: int) -> int:
    """Largest file accepted: ``max_pixels`` uncompressed at 8 bytes a pixel (16-bit RGBA), plus 64 MiB of metadata.

    No picture within the pixel limit needs more (1.5 GB at the default limit), so a bigger
    file is refused before a byte of it is read: hashing a multi-gigabyte file that turns
    out not to be a picture would cost minutes of disk time for nothing.
    """
    return max_pixels * 8 + (64 << 20)


def open_regular(path: str) -> tuple[BinaryIO, os.stat_result]:
    """Open ``path`` for reading, with its ``fstat``; raises :class:`NotARegularFile` for anything but a file.

    Opened non-blocking, so a FIFO swapped in for a picture (or a device) costs nothing;
    the check is on the opened file itself, so no swap can slip between check and read.
    """
    fd = os.open(path, _READ_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", path)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def hash_bytes(data: bytes) -> str:
    """Content hash used to recognise moved and duplicate files."""
    return hashlib.sha256(data).hexdigest()


def _hash_open(fh: BinaryIO) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    for chunk in iter(lambda: fh.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def hash_file(path: str) -> str:
    """:func:`hash_bytes` of a regular file, read in chunks (anything else raises :class:`OSError`)."""
    fh, _st = open_regular(path)
    with fh:
        return _hash_open(fh)


def decode_file(path: str, size: int, mode: str, max_pixels: int, jpeg_bytes: bool = False) -> Decoded:
    """Decode ``path`` to ``size x size`` pixels and hash its content.

    Never holds the whole file in memory: the decoder reads what it needs (a file that is
    no picture fails on its header), then a decoded picture is hashed in chunks from the
    same open file. Anything not a regular file, or too large, is refused unread.
    With ``jpeg_bytes``, a JPEG :func:`clipdex.gpujpeg.decode_jpegs` can take is read whole
    and not decoded: ``data`` and ``orientation`` instead of ``pixels``, the rest as usual.
    """
    try:
        fh, st = open_regular(path)
    except NotARegularFile:
        return Decoded(path, error="not a regular file")
    except PermissionError:
        return Decoded(path, error="permission denied")
    except FileNotFoundError:
        return Decoded(path, error="file disappeared")
    except OSError as exc:
        return Decoded(path, error=f"cannot read: {exc.strerror or exc}")
    with fh:
        if not st.st_size:
            return Decoded(path, error="empty file")
        limit = max_file_bytes(max_pixels)
        if st.st_size > limit:
            return Decoded(path, error=f"file too large ({st.st_size / 1e9:.1f} GB, limit {limit / 1e9:.1f} GB)")
        jpeg = read_plain_jpeg(fh, max_pixels) if jpeg_bytes else None
        if jpeg is not None:
            return Decoded(path, None, jpeg.width, jpeg.height, jpeg.captured_at, hash_bytes(jpeg.data),
                           data=jpeg.data, orientation=jpeg.orientation)
        try:
            pixels, dec = load_for_model(fh, size, mode, max_pixels)
        except DecodeError as exc:
            return Decoded(path, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a decoder bug costs this file only
            return Decoded(path, error=f"cannot decode: {type(exc).__name__}: {exc}")
        try:
            content_hash = _hash_open(fh)
        except OSError as exc:
            return Decoded(path, error=f"cannot read: {exc.strerror or exc}")
    return Decoded(path, pixels, dec.width, dec.height, dec.captured_at, content_hash)
