"""Pictures served by id only: the original file, and cached JPEG renditions.

A file is served only if its id is indexed, its real path (symlinks resolved) lies inside a
folder that was given to ``clipdex index``, and it is still the file that was indexed (same
size and modification time). An original is served with the content type of the image
format its bytes hold, never one guessed from a name, and only for the formats clipdex
indexes: a picture replaced by (or a symlink turned to) an HTML or SVG file is never served
as a page. No request parameter is ever a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from clipdex.atomicfile import write_atomic
from clipdex.errors import DecodeError
from clipdex.imaging import image_type, is_image_path
from clipdex.library import Library
from clipdex.library.catalog import Picture, picture
from clipdex.library.paths import under
from clipdex.web.errors import APIError
from clipdex.web.uploads import DecoderBusy, UploadDecoder

SIZES = {"thumbnail": 320, "preview": 1600}


def image_row(lib: Library, image_id: int) -> Picture:
    """The picture with this id; 404 when there is none (any integer, however large, is only a miss)."""
    row = picture(lib, image_id)
    if row is None:
        raise APIError(404, f"no picture with id {image_id}")
    return row


@dataclass
class Source:
    """An indexed picture's file, opened and checked to be the one that was indexed."""

    file: BinaryIO
    size: int
    mtime: float
    version: str  # changes whenever the content may have: see version_of

    def close(self) -> None:
        self.file.close()


def _inside(real: str, roots: list[str]) -> bool:
    for root in roots:
        if not root or not os.path.isabs(root):  # a relative root would depend on the server's cwd
            continue
        root_real = os.path.realpath(root)
        if root_real == os.path.realpath(os.sep):  # the whole filesystem is no picture folder
            continue
        if under(real, root_real):
            return True
    return False


def version_of(row: Picture, st: os.stat_result) -> str:
    """A short key for this content: part of rendition file names and of ETags.

    Besides the indexed hash, it takes the file as opened now: size, mtime, and the inode
    and ctime, which no one can set back (rewriting a file with other bytes of the same
    size and resetting its mtime changes its ctime).
    """
    key = f"{row.content_hash}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_dev}:{st.st_ino}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def open_source(lib: Library, row: Picture) -> Source:
    """Open the file behind ``row`` if it may be served and is unchanged since it was indexed.

    404 when it lies outside the indexed folders or is gone, 409 when it changed. The checks
    are made on the opened file itself, so what is served is what was checked.
    """
    roots = lib.roots()
    real = os.path.realpath(row.path)
    if not _inside(real, roots):
        raise APIError(404, f"picture {row.id} {lib.places.elsewhere(row.path) or 'is not inside an indexed folder'}")
    try:  # never blocks (a FIFO put in a picture's place), never follows a link swapped in since realpath
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise APIError(404, f"picture {row.id} is no longer on disk") from None
    except PermissionError:
        raise APIError(404, f"picture {row.id} cannot be read (permission denied)") from None
    except OSError:  # ELOOP (a symlink swapped in), ENXIO (a socket), ...
        raise APIError(404, f"picture {row.id} is no longer a file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise APIError(404, f"picture {row.id} is no longer a file")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    try:
        opened = os.path.realpath(f"/proc/self/fd/{fh.fileno()}") if os.path.isdir("/proc/self/fd") else real
        if not _inside(opened, roots):  # swapped between the path check and the open
            raise APIError(404, f"picture {row.id} is not inside an indexed folder")
        if (st.st_size, st.st_mtime) != (row.size, row.mtime):
            raise APIError(409, f"picture {row.id} changed on disk since it was indexed; index its folder "
                                "again to show it")
    except BaseException:
        fh.close()
        raise
    return Source(fh, st.st_size, st.st_mtime, version_of(row, st))


def original(lib: Library, row: Picture) -> tuple[Source, str]:
    """The checked source file and its content type, judged from its bytes (415 if not an indexed format)."""
    source = open_source(lib, row)
    mimetype = image_type(source.file)
    if mimetype is None:
        source.close()
        raise APIError(415, f"picture {row.id} is no longer in an image format clipdex serves")
    return source, mimetype


def safe_name(name: str) -> str:
    """``name`` with control characters (newlines, tabs, ...) replaced by ``_``: they cannot go in a header."""
    return "".join("_" if unicodedata.category(c) in ("Cc", "Cs") or c in "\u2028\u2029" else c for c in name)


def download_name(row: Picture, mimetype: str) -> str:
    """The file name offered for an original: its own, with a fitting extension if it has none."""
    name = safe_name(os.path.basename(row.path))
    if is_image_path(name):
        return name
    return f"{name}.{mimetype.split('/')[1]}"


class KeyedLocks:
    """One lock per key, alive while someone holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, list] = {}  # key -> [lock, holders and waiters]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]


_making = KeyedLocks()  # concurrent first requests for one rendition: one decode, the others wait for it


def rendition(lib: Library, row: Picture, kind: str, renderer: UploadDecoder) -> tuple[Path, str]:
    """An upright JPEG of at most ``SIZES[kind]`` px and its version, made on first request and cached.

    The cache file is named after the source's content version, and the source is checked
    on every request, so a rendition of a file that changed or vanished is never served.
    The picture is decoded in one of ``renderer``'s limited worker processes, never in the
    server, and only once when several requests for it arrive together.
    """
    size = SIZES[kind]
    source = open_source(lib, row)
    try:
        cache = lib.path / "thumbs"
        target = cache / f"{row.id}-{source.version}-{size}.jpg"
        if target.is_file():
            return target, source.version
        with _making.hold(str(target)):
            if target.is_file():  # made while this request waited
                return target, source.version
            try:
                jpeg = renderer.render(source.file.fileno(), size)
            except DecoderBusy as exc:
                raise APIError(503, str(exc), {"Retry-After": "2"}) from None
            except DecodeError as exc:
                raise APIError(422, f"picture {row.id} cannot be decoded: {exc}") from None
            try:
                cache.mkdir(parents=True, exist_ok=True)
                write_atomic(target, jpeg)
            except OSError as exc:
                raise APIError(503, f"cannot write the {kind} of picture {row.id}: {exc.strerror or exc}") from None
    finally:
        source.close()
    for old in cache.glob(f"{row.id}-*-{size}.jpg"):  # renditions of earlier versions
        if old != target:
            old.unlink(missing_ok=True)
    return target, source.version
