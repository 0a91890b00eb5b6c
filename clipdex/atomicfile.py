"""Files written so readers see the old content or the whole new one, and read without trusting them.

The bytes go to a temporary file beside the target (same filesystem), which is renamed
over it; the temporary file is removed whatever happens, so a full disk or a crash leaves
no partial or empty file under the target's name and no ``.tmp`` litter. Files clipdex
reads back (index files, the ONNX cache) may have been replaced by anything: see
:func:`read_regular`.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def write_atomic(target: Path, data: bytes | bytearray | memoryview, *, durable: bool = False) -> Path:
    """Replace ``target`` with ``data`` atomically; ``durable`` also fsyncs before the rename."""
    return write_atomic_with(target, lambda tmp: tmp.write_bytes(data), durable=durable)


def write_atomic_with(target: Path, write: Callable[[Path], None], *, durable: bool = False) -> Path:
    """Replace ``target`` atomically with what ``write(temporary_path)`` writes (for writers that want a
    path, such as ``faiss.write_index``, so a large file never sits in memory as one bytes object)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[tuple[int, os.stat_result] | None]:
    """``(fd, stat)`` of ``path`` opened for reading if it is a regular file, else None (missing too).

    Opened without blocking, so a FIFO or device planted under the name is refused, not waited
    on; the descriptor is closed on leaving.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        yield None
        return
    try:
        info = os.fstat(fd)
        yield (fd, info) if stat.S_ISREG(info.st_mode) else None
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else None (missing too).

    Nothing larger than the file itself (or ``limit``) is ever read; see :func:`open_regular`.
    """
    with open_regular(path) as opened:
        if opened is None or opened[1].st_size > limit:
            return None
        try:
            with os.fdopen(os.dup(opened[0]), "rb") as fh:
                data = fh.read(opened[1].st_size + 1)
        except OSError:
            return None
    return data if len(data) <= limit else None
