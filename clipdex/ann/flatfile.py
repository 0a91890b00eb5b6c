"""Checking a flat index file (``IndexIDMap2(IndexFlatIP)``) before FAISS reads it.

FAISS allocates whatever sizes a file claims (a 15 KB file could make it allocate
gigabytes), so a file is read only when it is a regular file whose header describes
exactly the layout we write, for the library's dimension, and whose size agrees.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from clipdex.atomicfile import open_regular

# The layout FAISS writes for an IndexIDMap2(IndexFlatIP(d)) holding n vectors (little-endian):
# "IxM2" d:i32 n:i64 dummy:i64 dummy:i64 trained:u8 metric:i32 | "IxFI" d n dummy dummy trained metric |
# floats:u64 (n*d) codes (n*d*4 bytes) | ids_count:u64 ids (n*8).
_HEADER = struct.Struct("<4siqqqBi4siqqqBiQ")
_METRIC_IP = 0


def expected_size(n: int, dim: int) -> int:
    """The size of a flat index file holding ``n`` vectors of ``dim``."""
    return _HEADER.size + n * dim * 4 + 8 + n * 8


def check_flat_file(path: Path, dim: int) -> int | None:
    """How many vectors a flat index file laid out as ours for ``dim`` holds, or None (missing, not a
    regular file, or a header that disagrees with the file's size: damaged or hostile).

    Only the header and the id count are read (the file may be gigabytes; FAISS reads it once
    after this). Opened without blocking, so a FIFO or device placed under the name is refused,
    not waited on.
    """
    with open_regular(path) as opened:
        if opened is None or opened[1].st_size < _HEADER.size:
            return None
        try:
            return _count(opened[0], opened[1].st_size, dim)
        except OSError:
            return None


def _count(fd: int, size: int, dim: int) -> int | None:
    """The vector count of the open file ``fd`` of ``size`` bytes if its header and id count agree."""
    head = os.pread(fd, _HEADER.size, 0)
    if len(head) < _HEADER.size:
        return None
    (magic, d, n, _, _, _, metric, inner, inner_d, inner_n, _, _, _, inner_metric, codes) = _HEADER.unpack(head)
    if (magic, inner) != (b"IxM2", b"IxFI") or d != dim or inner_d != dim or metric != _METRIC_IP \
            or inner_metric != _METRIC_IP or n < 0 or inner_n != n or codes != n * dim:
        return None
    if size != expected_size(n, dim):
        return None
    count = os.pread(fd, 8, _HEADER.size + codes * 4)
    return n if len(count) == 8 and struct.unpack("<Q", count)[0] == n else None
