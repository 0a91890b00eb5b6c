"""Checking an IVF index file (``IndexIVFScalarQuantizer``, 8-bit, inner product) before FAISS reads it.

FAISS allocates whatever sizes a file's header claims: an 82 KB file whose quantizer claims
400 million floats made ``faiss.read_index`` allocate 1.5 GB before failing, and one claiming
a huge ``ntotal`` loads without complaint. The file can be hundreds of MB, so only its headers
and its table of list sizes are read (never more than :data:`_CHUNK` entries at a time), and it
is accepted only when everything agrees with the layout we write and with the file's size.

What ``faiss.read_index(path, faiss.IO_FLAG_MMAP)`` (faiss 1.15) does by itself, found by
experiment: a file cut short anywhere raises RuntimeError (headers by short reads, lists by its
check of each list's end against the mapped size); bytes appended after the last list are
ignored and the file loads. Once mapped, a file truncated in place makes the next search that
touches the lost pages die of SIGBUS; a file replaced by rename (as we write them) is harmless,
since the mapping keeps the old inode.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from clipdex.atomicfile import open_regular

# The layout faiss.write_index gives an IndexIVFScalarQuantizer (faiss/impl/index_write.cpp; little-endian,
# size_t as u64, idx_t as i64). Index header: d:i32 ntotal:i64 dummy:i64 dummy:i64 is_trained:u8 metric:i32.
#   "IwSq" header nlist:u64 nprobe:u64 | quantizer "IxFI" header floats:u64 (nlist*d) then the centroids |
#   direct map: type:u8 array:u64 (count, then as many i64) | scalar quantizer: qtype:i32 rangestat:i32
#   rangestat_arg:f32 d:u64 code_size:u64 trained:u64 (count, then as many f32) | code_size:u64
#   by_residual:u8 | "ilar" nlist:u64 code_size:u64, list sizes: "full" then u64 count (nlist) and a size a
#   list, or "sprs" then u64 count (2 per non-empty list) and (list, size) pairs | for each non-empty list in
#   order, size*code_size bytes of codes then size i64 ids.
_HEAD = struct.Struct("<4siqqqBiQQ4siqqqBiQ")  # "IwSq" ... up to the quantizer's float count
_DIRECT_MAP = struct.Struct("<BQ")
_SQ = struct.Struct("<iifQQQ")
_LISTS = struct.Struct("<QB4sQQ4sQ")  # code_size, by_residual, "ilar" nlist code_size, encoding, count
_METRIC_IP = 0
_QT_8BIT = 0
_CHUNK = 1 << 16  # list-size entries read at a time (512 KB); even, so sparse pairs never straddle chunks
_MAX_NTOTAL = 1 << 40  # far beyond any library, and keeps sums of list sizes well inside 64 bits


class IvfLayout(NamedTuple):
    """What a checked IVF file holds, and where its inverted lists begin."""

    dim: int
    ntotal: int
    nlist: int
    nprobe: int
    code_size: int
    sparse_sizes: bool  # list sizes stored as (list, size) pairs: FAISS does so when most lists are empty
    lists_offset: int
    file_size: int


class _Refused(Exception):
    """The file disagrees with the layout we write."""


def _need(ok: bool) -> None:
    if not ok:
        raise _Refused


class _Reader:
    """Reads forward through a file of known size, refusing any read or skip past its end."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size, self.pos = fd, size, 0

    def skip(self, n: int) -> None:
        _need(0 <= n <= self.size - self.pos)
        self.pos += n

    def read(self, n: int) -> bytes:
        start = self.pos
        self.skip(n)
        data = b""
        while len(data) < n:
            part = os.pread(self.fd, n - len(data), start + len(data))
            _need(bool(part))  # the file shrank under us
            data += part
        return data

    def unpack(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.read(layout.size))


def _list_sizes_total(reader: _Reader, sparse: bool, count: int, nlist: int, ntotal: int) -> int:
    """The sum of the list sizes in the table at ``reader`` (``count`` u64 entries), read in bounded chunks."""
    _need((count % 2 == 0 and count <= 2 * nlist) if sparse else count == nlist)
    _need(count * 8 <= reader.size - reader.pos)
    total, previous = 0, -1
    for start in range(0, count, _CHUNK):
        values = np.frombuffer(reader.read(8 * min(_CHUNK, count - start)), dtype="<u8")
        sizes = values
        if sparse:  # non-empty lists only, in increasing order, as FAISS writes them
            lists, sizes = values[0::2], values[1::2]
            _need(int(lists[0]) > previous and int(lists[-1]) < nlist and bool(np.all(lists[1:] > lists[:-1])))
            _need(int(sizes.min()) > 0)
            previous = int(lists[-1])
        _need(int(sizes.max()) <= ntotal)
        total += int(sizes.sum())
    return total


def _check(reader: _Reader, dim: int) -> IvfLayout:
    (magic, d, ntotal, _, _, trained, metric, nlist, nprobe,
     q_magic, q_d, q_ntotal, _, _, q_trained, q_metric, floats) = reader.unpack(_HEAD)
    _need(dim > 0 and magic == b"IwSq" and d == dim and trained == 1 and metric == _METRIC_IP)
    _need(0 <= ntotal <= min(_MAX_NTOTAL, reader.size // (dim + 8)) and 1 <= nprobe <= nlist)
    _need(q_magic == b"IxFI" and q_d == dim and q_ntotal == nlist and q_trained == 1 and q_metric == _METRIC_IP)
    _need(floats == nlist * dim)
    reader.skip(4 * floats)  # the centroids; bounds nlist by the file's size
    _need(reader.unpack(_DIRECT_MAP) == (0, 0))
    qtype, _, _, sq_d, sq_code_size, trained_floats = reader.unpack(_SQ)
    # A trained QT_8bit quantizer keeps a minimum and a range per dimension (FAISS 1.15 checks the same).
    _need(qtype == _QT_8BIT and sq_d == dim and sq_code_size == dim and trained_floats == 2 * dim)
    reader.skip(4 * trained_floats)
    code_size, by_residual, kind, lists_nlist, lists_code_size, encoding, count = reader.unpack(_LISTS)
    _need(code_size == dim and by_residual in (0, 1) and kind == b"ilar")
    _need(lists_nlist == nlist and lists_code_size == code_size and encoding in (b"full", b"sprs"))
    sparse = encoding == b"sprs"
    _need(_list_sizes_total(reader, sparse, count, nlist, ntotal) == ntotal)
    lists_offset = reader.pos
    _need(reader.size == lists_offset + ntotal * (code_size + 8))
    return IvfLayout(dim, ntotal, nlist, nprobe, code_size, sparse, lists_offset, reader.size)


def check_ivf_file(path: Path, dim: int) -> IvfLayout | None:
    """The layout of an IVF-SQ8 inner-product index file as ``faiss.write_index`` writes ours for ``dim``,
    or None: missing, not a regular file, or anything in it disagreeing (magic numbers, dimension, metric,
    quantizer, scalar quantizer, a direct map, inverted lists, or a size other than where the last list ends).

    Opened without blocking, so a FIFO or device planted under the name is refused, not waited on; only
    headers and the list-size table are read, never more than a few MB whatever the file claims.
    """
    with open_regular(path) as opened:
        if opened is None:
            return None
        try:
            return _check(_Reader(opened[0], opened[1].st_size), dim)
        except (OSError, _Refused):
            return None
