"""Checking a flat index file (``IndexIDMap2(IndexFlatIP)``) before FAISS reads it.

FAISS allocates whatever sizes a file claims (a 15 KB file could make it allocate
gigabytes), so a file is read only when it is a regular file whose header describes
exactly the layout we write, for the library's dimension, and whose size agrees.
"""

from __future__ import annotations

import struct
from pathlib import Path

from clipdex.atomicfile import read_regular

# The layout FAISS writes for an IndexIDMap2(IndexFlatIP(d)) holding n vectors (little-endian):
# "IxM2" d:i32 n:i64 dummy:i64 dummy:i64 trained:u8 metric:i32 | "IxFI" d n dummy dummy trained metric |
# floats:u64 (n*d) codes (n*d*4 bytes) | ids_count:u64 ids (n*8).
_HEADER = struct.Struct("<4siqqqBi4siqqqBiQ")
_METRIC_IP = 0


def expected_size(n: int, dim: int) -> int:
    """The size of a flat index file holding ``n`` vectors of ``dim``."""
    return _HEADER.size + n * dim * 4 + 8 + n * 8


def header_count(data: bytes) -> int:
    """How many vectors a checked file holds."""
    return _HEADER.unpack_from(data)[2]


def read_flat_file(path: Path, dim: int) -> bytes | None:
    """The bytes of a flat index file laid out as ours for ``dim``, or None (missing, not a regular file,
    or a header that disagrees with the file's size: damaged or hostile).

    Read by :func:`clipdex.atomicfile.read_regular`: a FIFO or device placed under the name is
    refused, not waited on, and nothing larger than the file itself is ever allocated.
    """
    data = read_regular(path, 1 << 62)
    if data is None or len(data) < _HEADER.size:
        return None
    (magic, d, n, _, _, _, metric, inner, inner_d, inner_n, _, _, _, inner_metric,
     codes) = _HEADER.unpack_from(data)
    if (magic, inner) != (b"IxM2", b"IxFI") or d != dim or inner_d != dim or metric != _METRIC_IP \
            or inner_metric != _METRIC_IP or n < 0 or inner_n != n or codes != n * dim:
        return None
    if len(data) != expected_size(n, dim) or struct.unpack_from("<Q", data, _HEADER.size + codes * 4)[0] != n:
        return None
    return data
