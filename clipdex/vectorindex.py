"""The FAISS inner-product index, keyed by database ids, saved atomically.

Vectors are L2-normalised, so inner product is cosine similarity. The file name carries
the database generation it was written for (``index.<generation>.faiss``); a file from
any other generation is stale, and one whose ids disagree with the database (by
:func:`ids_checksum`) is wrong; either way the index is rebuilt from the vectors in SQLite.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from clipdex.atomicfile import read_regular, write_atomic

_FILE_RE = re.compile(r"^index\.(\d+)\.faiss$")
INDEX_TYPE = "IndexIDMap2(IndexFlatIP)"
#: Libraries at least this large get a half-precision scan copy when a long-lived process asks for it.
FAST_SCAN_FROM = 20_000


class IdsChecksum(NamedTuple):
    """How many ids, their sum, and the sum of a 32-bit multiplicative hash of each.

    Cheap to compute both in SQL and here, and changed by any id added, missing or
    replaced, so a FAISS file that does not hold exactly the database's pictures is caught.
    """

    count: int
    total: int
    mixed: int


def ids_checksum(ids: np.ndarray) -> IdsChecksum:
    """:class:`IdsChecksum` of ``ids`` (its SQL twin is in ``Library._snapshot``)."""
    ids = np.asarray(ids, dtype=np.int64)
    mixed = (ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)
    return IdsChecksum(len(ids), int(ids.sum()), int(mixed.sum()))


class VectorIndex:
    """Exact inner-product search over ``(id, vector)`` pairs."""

    def __init__(self, dim: int, index: faiss.Index | None = None):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._scan: tuple[faiss.Index, np.ndarray] | None = None  # see prepare_fast_scan

    def prepare_fast_scan(self, minimum: int = FAST_SCAN_FROM) -> bool:
        """Keep a half-precision copy of the vectors to scan (for a server: built once, ~0.1 s per
        100,000 vectors, half the float32 index's memory more).

        A single query over a flat index is bound by memory traffic: at 100,000 x 512 on 2 cores
        FAISS scans float32 in ~19 ms and float16 in ~6 ms. Unfiltered searches then take the best
        candidates of the fp16 scan, with a margin, and score those exactly in float32, so results
        and scores stay exact unless dozens of pictures tie within ~1e-4 of the k-th score.
        Changes (add, remove) drop the copy; False when the index is smaller than ``minimum``.
        """
        if self._scan is not None:
            return True
        n = self.ntotal
        if n < max(1, minimum):
            return False
        scan = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        scan.add(self._stored())
        self._scan = (scan, self.ids())
        return True

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids held, in insertion order."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._scan = None
        self.index.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim),
            np.asarray(ids, dtype=np.int64),
        )

    def remove(self, ids: np.ndarray | list[int]) -> None:
        if len(ids) == 0:
            return
        self._scan = None
        self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def vector(self, image_id: int) -> np.ndarray:
        """The stored vector of one id (``KeyError`` if absent)."""
        try:
            return self.index.reconstruct(int(image_id))
        except RuntimeError:
            raise KeyError(image_id) from None

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top ``k`` ``(id, score)`` for one query vector, optionally only among ``allowed`` ids."""
        if self.ntotal == 0 or k <= 0:
            return []
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        scan = self._scan
        if scan is not None and allowed is None:
            return self._search_scan(scan, q, k)
        params = None
        if allowed is not None:
            if len(allowed) == 0:
                return []
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(np.asarray(allowed, dtype=np.int64)))
        scores, ids = self.index.search(q, min(k, self.ntotal), params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    def _stored(self) -> np.ndarray:
        """The float32 vectors in storage order (the order of :meth:`ids`), as a view without a copy."""
        n = self.ntotal
        flat = faiss.downcast_index(self.index.index)
        return faiss.rev_swig_ptr(flat.get_xb(), n * self.dim).reshape(n, self.dim)

    def _search_scan(self, scan: tuple[faiss.Index, np.ndarray], q: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Candidates from the fp16 copy, scored exactly against the float32 vectors."""
        index, ids = scan
        want = min(len(ids), 2 * k + 32)
        _, rows = index.search(q, want)
        rows = rows[0][rows[0] >= 0]
        exact = self._stored()[rows] @ q[0]
        best = np.argsort(-exact, kind="stable")[:k]
        return [(int(ids[rows[i]]), float(exact[i])) for i in best]

    # -- persistence ---------------------------------------------------------------
    def save(self, folder: Path, generation: int) -> Path:
        """Write ``index.<generation>.faiss`` atomically and delete older files."""
        target = folder / f"index.{generation}.faiss"
        for leftover in folder.glob(".index*.tmp"):  # from a run killed while saving
            leftover.unlink(missing_ok=True)
        write_atomic(target, faiss.serialize_index(self.index), durable=True)
        for old in index_files(folder):
            if old != target:
                old.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, folder: Path, generation: int, dim: int, expected: IdsChecksum | None = None) -> VectorIndex | None:
        """The saved index for exactly ``generation``, or None when missing, stale or unreadable.

        With ``expected`` (the database's :class:`IdsChecksum`), a file holding other ids is
        None too: it was saved wrongly or belongs to another database.
        """
        data = read_index_file(folder / f"index.{generation}.faiss", dim)
        if data is None or (expected is not None and _header_count(data) != expected.count):
            return None
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (RuntimeError, ValueError, MemoryError):  # damaged in a way the header check let through
            return None
        if index.d != dim or not isinstance(index, faiss.IndexIDMap2):
            return None
        loaded = cls(dim, index)
        if expected is not None and ids_checksum(loaded.ids()) != expected:
            return None
        return loaded


# The layout FAISS writes for an IndexIDMap2(IndexFlatIP(d)) holding n vectors (little-endian):
# "IxM2" d:i32 n:i64 dummy:i64 dummy:i64 trained:u8 metric:i32 | "IxFI" d n dummy dummy trained metric |
# floats:u64 (n*d) codes (n*d*4 bytes) | ids_count:u64 ids (n*8). Checked before FAISS sees the file, since FAISS
# allocates whatever sizes a file claims (a 15 KB file could make it allocate gigabytes).
_HEADER = struct.Struct("<4siqqqBi4siqqqBiQ")
_METRIC_IP = 0


def _expected_size(n: int, dim: int) -> int:
    return _HEADER.size + n * dim * 4 + 8 + n * 8


def _header_count(data: bytes) -> int:
    return _HEADER.unpack_from(data)[2]


def read_index_file(path: Path, dim: int) -> bytes | None:
    """The bytes of an index file laid out as ours for ``dim``, or None (missing, not a regular file,
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
    if len(data) != _expected_size(n, dim) or struct.unpack_from("<Q", data, _HEADER.size + codes * 4)[0] != n:
        return None
    return data


def index_files(folder: Path) -> list[Path]:
    """The index files present in a library folder."""
    return [p for p in folder.iterdir() if _FILE_RE.match(p.name)] if folder.is_dir() else []
