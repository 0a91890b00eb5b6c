"""A base index: the vectors of one generation, in a FAISS index that is never changed once built.

Two kinds, chosen by :mod:`clipdex.ann.policy`:

- ``flat``: ``IndexIDMap2(IndexFlatIP)``, exact, held in memory (small libraries);
- ``ivf``: ``IndexIVFScalarQuantizer`` (8-bit codes, inner product) whose inverted lists are
  memory-mapped from its file, so a library larger than RAM still serves; its scores are
  approximate and are re-scored exactly by the caller (:class:`clipdex.ann.live.LiveIndex`).

Files are ``index.<generation>.faiss`` (flat) and ``index.<generation>.ivf``, replaced
atomically, and checked before FAISS reads them (:mod:`clipdex.ann.flatfile`,
:mod:`clipdex.ann.ivffile`); the ids a file holds are then compared with what the
database says it must hold (:class:`IdsChecksum`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

from clipdex.ann import gpu
from clipdex.ann.flatfile import check_flat_file, expected_size
from clipdex.ann.ivffile import check_ivf_file
from clipdex.atomicfile import write_atomic_with

FLAT, IVF = "flat", "ivf"
_SUFFIX = {FLAT: "faiss", IVF: "ivf"}
_FILE_RE = re.compile(r"^index\.(\d+)\.(faiss|ivf)$")
_TEMPORARY_RE = re.compile(r"^\.index\.\d+\.(faiss|ivf)\..+\.tmp$")  # what a save killed mid-way leaves


class IdsChecksum(NamedTuple):
    """How many ids, their sum, and the sum of a 32-bit multiplicative hash of each.

    Cheap to compute both in SQL and here, and changed by any id added, missing or
    replaced, so a FAISS file that does not hold exactly the database's pictures is caught.
    """

    count: int
    total: int
    mixed: int


def ids_checksum(ids: np.ndarray) -> IdsChecksum:
    """:class:`IdsChecksum` of ``ids`` (its SQL twin is in :meth:`clipdex.library.Library.ids_checksum`)."""
    ids = np.asarray(ids, dtype=np.int64)
    total = mixed = 0
    for start in range(0, len(ids), 1 << 16):  # small temporaries: a process near its memory limit checks too
        part = ids[start:start + (1 << 16)]
        total += (int((part >> 32).sum()) << 32) + int((part & 0xFFFF_FFFF).sum())  # exact whatever the ids
        mixed += int(((part.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)).sum())
    return IdsChecksum(len(ids), total, mixed)


@dataclass(frozen=True)
class Base:
    """An immutable index of one generation's vectors; ``ids`` sorted, for membership and checksums."""

    kind: str
    generation: int
    index: faiss.Index
    ids: np.ndarray
    nprobe: int = 0
    on_device: faiss.Index | None = None  # a GPU copy for unfiltered searches (see clipdex.ann.gpu)
    fingerprint: str = ""  # of the file it was loaded from (see :func:`fingerprint`)

    @property
    def count(self) -> int:
        return len(self.ids)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist) if self.kind == IVF else 0

    def holding(self, ids: np.ndarray) -> int:
        """How many of ``ids`` (unique) this base holds (a binary search each: no pass over the base)."""
        if not len(ids) or not self.count:
            return 0
        at = np.minimum(np.searchsorted(self.ids, ids), self.count - 1)
        return int((self.ids[at] == ids).sum())

    def search(self, query: np.ndarray, k: int, selector: faiss.IDSelector | None = None,
               fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of the best ``k`` (fewer if fewer pass ``selector``), best first.

        ``fraction``: the share of the base the selector lets through. An IVF search then visits
        ``nprobe / fraction`` lists (all of them when the filter is selective), so about as many
        allowed vectors are compared as without a filter: a filter never makes results worse.
        """
        k = min(k, self.count)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        q = query.reshape(1, -1)
        if self.kind == FLAT:
            plain = faiss.SearchParameters(sel=selector) if selector is not None else None
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # one query scans a flat index twice as fast on one core (measured)
            try:
                return _found(*self.index.search(q, k, params=plain))
            finally:
                faiss.omp_set_num_threads(threads)  # the setting is this thread's: builds keep every core
        nprobe = self.nlist if fraction <= 0 else min(self.nlist, math.ceil(self.nprobe / fraction))
        params = faiss.SearchParametersIVF(nprobe=max(1, nprobe))
        if selector is None and self.on_device is not None:
            with gpu.search_lock:
                return _found(*self.on_device.search(q, k, params=params))
        if selector is not None:
            params.sel = selector
        return _found(*self.index.search(q, k, params=params))

    def range_search(self, queries: np.ndarray, threshold: float, selector: faiss.IDSelector | None = None,
                     nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every vector scoring above ``threshold`` with each query, FAISS style: ``(lims, ids, scores)``,
        query ``i``'s hits at ``lims[i]:lims[i + 1]``. An IVF's scores are approximate (8-bit codes) and it
        visits ``nprobe`` lists (default: the tuned one) around each query."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.index.d)
        if self.kind == FLAT:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        else:
            params = faiss.SearchParametersIVF(nprobe=max(1, min(self.nlist, nprobe or self.nprobe)))
            if selector is not None:
                params.sel = selector
        lims, scores, ids = self.index.range_search(q, float(threshold), params=params)
        return lims.astype(np.int64), ids.astype(np.int64), scores

    # -- files --------------------------------------------------------------------------
    def path_in(self, folder: Path) -> Path:
        return folder / f"index.{self.generation}.{_SUFFIX[self.kind]}"

    def save(self, folder: Path) -> tuple[Path, str]:
        """Write this base's file atomically (fsynced before the rename); its path and :func:`fingerprint`.
        Other index files stay."""
        target = self.path_in(folder)
        tidy(folder)  # what a save killed mid-way left
        make_room(target)
        write_atomic_with(target, lambda tmp: faiss.write_index(self.index, str(tmp)), durable=True)
        return target, fingerprint(target, self.index.d) or ""


def make_room(target: Path) -> None:
    """Clear the way for an index file at ``target``: a symlink, FIFO, socket or device under its name is removed; a
    directory there (never one of ours) is renamed aside, to ``<name>.moved-aside`` (``.1``, ``.2`` … if taken), with
    whatever it holds. A regular file stays, to be replaced atomically."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        return
    if not stat.S_ISDIR(mode):
        target.unlink(missing_ok=True)
        return
    n = 0
    while os.path.lexists(aside := target.with_name(f"{target.name}.moved-aside{f'.{n}' if n else ''}")):
        n += 1
    os.rename(target, aside)


def tidy(folder: Path, keep: str | None = None) -> list[Path]:
    """Remove what earlier saves left in ``folder``, holding the lock index files are written under: temporary
    files of saves killed mid-way (``.index.<generation>.<kind>.<random>.tmp``) and, when ``keep`` names the
    recorded file, every other ``index.<generation>.<kind>`` (a symlink or FIFO under such a name too). Anything
    else, and a directory under any of those names, stays. Never raises; returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for path in entries:
        if not (_TEMPORARY_RE.match(path.name) or (keep is not None and _FILE_RE.match(path.name)
                                                    and path.name != keep)):
            continue
        try:
            if stat.S_ISDIR(path.lstat().st_mode):
                continue
            path.unlink()  # a reader that mapped it keeps it until it lets go
        except OSError:
            continue
        removed.append(path)
    return removed


def _found(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = ids[0] >= 0
    return ids[0][keep].astype(np.int64), scores[0][keep]


def _digest(path: Path, size: int) -> str | None:
    """A hash of the first ``size`` bytes of ``path``, read through one 1 MB buffer (a process serving a
    memory-mapped IVF larger than its memory still checks it); None if it has fewer."""
    digest, left, buffer = hashlib.blake2b(digest_size=16), size, memoryview(bytearray(1 << 20))
    with open(path, "rb", buffering=0) as fh:
        while left:
            got = fh.readinto(buffer[:min(left, len(buffer))])
            if not got:
                return None
            digest.update(buffer[:got])
            left -= got
    return digest.hexdigest()


def fingerprint(path: Path, dim: int) -> str | None:
    """What tells one index file from another with the same ids, and a damaged file from a sound one: a
    hash of all its bytes (an IVF's lists too: codes damaged or ids moved between lists would quietly lose
    results), read 1 MB at a time. None when the file is not a sound one of ours."""
    try:
        if path.suffix == ".faiss":
            count = check_flat_file(path, dim)
            return None if count is None else _digest(path, expected_size(count, dim))
        layout = check_ivf_file(path, dim)
        return None if layout is None else _digest(path, layout.file_size)
    except OSError:
        return None


def empty_copy(index: faiss.Index) -> faiss.Index:
    """An empty IVF trained as ``index`` is (same centroids and quantiser ranges), to fill again
    without training: ``index`` may be memory-mapped, so nothing else of it is copied."""
    quantizer = faiss.IndexFlatIP(index.d)
    quantizer.add(faiss.downcast_index(index.quantizer).reconstruct_n(0, index.nlist))
    empty = faiss.IndexIVFScalarQuantizer(quantizer, index.d, index.nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    empty.own_fields = True
    quantizer.this.disown()
    faiss.copy_array_to_vector(faiss.vector_to_array(index.sq.trained), empty.sq.trained)
    empty.is_trained = True
    return empty


def flat_index(dim: int) -> faiss.Index:
    """An empty exact index keyed by picture ids."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def flat_ids(index: faiss.Index) -> np.ndarray:
    return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))


def ivf_ids(index: faiss.Index) -> np.ndarray:
    """Every id in an IVF index's lists (read from the mapped file: 8 bytes a vector)."""
    lists = index.invlists
    parts = []
    for i in range(index.nlist):
        n = lists.list_size(i)
        if n:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(i), n).copy())
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def load(path: Path, dim: int) -> Base | None:
    """The base in ``path`` (its kind and generation from the name), or None if missing, damaged or not ours."""
    match = _FILE_RE.match(path.name)
    if match is None:
        return None
    generation, kind = int(match[1]), (FLAT if match[2] == "faiss" else IVF)
    try:
        mark = fingerprint(path, dim)  # checks the layout first
        if mark is None:
            return None
        if kind == FLAT:
            index = faiss.read_index(str(path))
            if index.d != dim or not isinstance(index, faiss.IndexIDMap2):
                return None
            return Base(FLAT, generation, index, flat_ids(index), fingerprint=mark)
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        if index.d != dim or not isinstance(index, faiss.IndexIVFScalarQuantizer):
            return None
        return Base(IVF, generation, index, ivf_ids(index), nprobe=max(1, int(index.nprobe)),
                    on_device=gpu.to_device(index), fingerprint=mark)
    except (RuntimeError, ValueError, MemoryError, OSError):  # damaged in a way the checks let through
        return None


def is_index_name(name: str) -> bool:
    return _FILE_RE.match(name) is not None


def index_files(folder: Path) -> list[Path]:
    """The index files present in a library folder, newest generation first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _FILE_RE.match(p.name)]
    return sorted(found, key=lambda p: -int(_FILE_RE.match(p.name)[1]))
