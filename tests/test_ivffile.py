"""clipdex.ann.ivffile: IVF-SQ8 files FAISS writes are accepted as laid out, anything else refused cheaply."""

from __future__ import annotations

import os
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import faiss
import numpy as np
import pytest

from clipdex.ann import ivffile
from clipdex.ann.ivffile import IvfLayout, check_ivf_file

D, NLIST, N, NPROBE = 32, 16, 2000, 5


def _vectors(n: int, d: int = D, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def _ivf(nlist: int = NLIST, add: int = N, d: int = D, qtype: int = faiss.ScalarQuantizer.QT_8bit,
         metric: int = faiss.METRIC_INNER_PRODUCT) -> faiss.IndexIVFScalarQuantizer:
    """An index shaped as clipdex builds them, trained on 39 vectors a list, holding ``add`` of them."""
    quantizer = faiss.IndexFlatIP(d) if metric == faiss.METRIC_INNER_PRODUCT else faiss.IndexFlatL2(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qtype, metric)
    train = _vectors(max(add, 39 * nlist), d)
    index.train(train)
    index.add_with_ids(train[:add], np.arange(add, dtype=np.int64) * 3 + 7)
    index.nprobe = min(NPROBE, nlist)
    return index


def _write(index: faiss.Index, path: Path) -> Path:
    faiss.write_index(index, str(path))
    return path


def _offsets(d: int = D, nlist: int = NLIST) -> dict[str, int]:
    """Where fields sit in a file, worked out here independently of the module (see its layout comment)."""
    quantizer = 4 + 33 + 16
    direct_map = quantizer + 4 + 33 + 8 + nlist * d * 4
    sq = direct_map + 9
    ilar = sq + 36 + 8 * d + 9
    return {"ntotal": 8, "trained": 32, "metric": 33, "nlist": 37, "nprobe": 45, "quantizer_ntotal": quantizer + 8,
            "quantizer_trained": quantizer + 32, "quantizer_metric": quantizer + 33,
            "quantizer_floats": quantizer + 37, "direct_map": direct_map, "direct_map_count": direct_map + 1,
            "sq_trained": sq + 28, "ilar": ilar, "ilar_nlist": ilar + 4, "encoding": ilar + 20,
            "table_count": ilar + 24, "table": ilar + 32}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[faiss.IndexIVFScalarQuantizer, Path, bytes]:
    index = _ivf()
    path = _write(index, tmp_path_factory.mktemp("ivf") / "index.1.ivf")
    return index, path, path.read_bytes()


def _patched(tmp_path: Path, data: bytes, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(data)
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / "patched.ivf"
    path.write_bytes(data)
    return path


def _same_search(index: faiss.Index, path: Path) -> None:
    mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    queries = _vectors(20, index.d, seed=1)
    expected, got = index.search(queries, 10), mapped.search(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_real_file_round_trips(base):
    index, path, data = base
    layout = check_ivf_file(path, D)
    assert layout == IvfLayout(D, N, NLIST, NPROBE, D, False, _offsets()["table"] + 8 * NLIST, len(data))
    assert layout.lists_offset + N * (D + 8) == len(data) == os.path.getsize(path)
    assert data[_offsets()["encoding"]:][:4] == b"full"
    _same_search(index, path)


def test_sparse_list_sizes(tmp_path):
    index = _ivf(nlist=64, add=20)  # at most 20 of 64 lists used: FAISS stores the sizes as (list, size) pairs
    path = _write(index, tmp_path / "sparse.ivf")
    data = path.read_bytes()
    offsets = _offsets(nlist=64)
    assert data[offsets["encoding"]:][:4] == b"sprs"
    count = struct.unpack_from("<Q", data, offsets["table_count"])[0]
    assert count == 2 * sum(index.invlists.list_size(i) > 0 for i in range(64))
    assert check_ivf_file(path, D) == IvfLayout(D, 20, 64, NPROBE, D, True, offsets["table"] + 8 * count, len(data))
    _same_search(index, path)
    first, second = offsets["table"], offsets["table"] + 16
    assert check_ivf_file(_patched(tmp_path, data, first, "<Q", 64), D) is None  # a list past nlist
    assert check_ivf_file(_patched(tmp_path, data, second, "<Q", struct.unpack_from("<Q", data, first)[0]), D) is None
    sizes = struct.unpack_from("<QQQQ", data, first)  # one list's vectors moved to the next: an empty list listed
    moved = bytearray(data)
    struct.pack_into("<QQQQ", moved, first, sizes[0], 0, sizes[2], sizes[1] + sizes[3])
    (tmp_path / "moved.ivf").write_bytes(moved)
    assert check_ivf_file(tmp_path / "moved.ivf", D) is None


def test_list_sizes_read_in_small_chunks(tmp_path, monkeypatch, base):
    """Chunk boundaries (and the increasing-list rule across them) work as with one chunk."""
    monkeypatch.setattr(ivffile, "_CHUNK", 4)
    assert check_ivf_file(base[1], D).ntotal == N
    index = _ivf(nlist=64, add=20)
    path = _write(index, tmp_path / "sparse.ivf")
    assert check_ivf_file(path, D).ntotal == 20
    data = path.read_bytes()
    table = _offsets(nlist=64)["table"]
    pairs = struct.unpack_from("<8Q", data, table)  # make the 3rd pair's list repeat the 2nd's (across a chunk)
    assert check_ivf_file(_patched(tmp_path, data, table + 32, "<Q", pairs[2]), D) is None


def test_empty_trained_index(tmp_path):
    index = _ivf(nlist=8, add=0)
    path = _write(index, tmp_path / "empty.ivf")
    layout = check_ivf_file(path, D)
    assert layout == IvfLayout(D, 0, 8, NPROBE, D, True, _offsets(nlist=8)["table"], path.stat().st_size)
    mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    assert mapped.ntotal == 0
    assert (mapped.search(_vectors(2), 3)[1] == -1).all()


@pytest.mark.parametrize("dim", [D - 1, D + 1, 2 * D, 0])
def test_wrong_dimension(base, dim):
    assert check_ivf_file(base[1], dim) is None


def _flat_ip():
    index = faiss.IndexFlatIP(D)
    index.add(_vectors(100))
    return index


def _id_map():
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(D))
    index.add_with_ids(_vectors(100), np.arange(100, dtype=np.int64))
    return index


def _ivf_flat():
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(D), D, NLIST, faiss.METRIC_INNER_PRODUCT)
    index.train(_vectors(39 * NLIST))
    index.add_with_ids(_vectors(200), np.arange(200, dtype=np.int64))
    return index


def _with_direct_map():
    index = _ivf()
    index.set_direct_map_type(faiss.DirectMap.Hashtable)  # ids are not sequential, so not an array map
    return index


def _untrained():
    return faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(D), D, NLIST, faiss.ScalarQuantizer.QT_8bit,
                                         faiss.METRIC_INNER_PRODUCT)


@pytest.mark.parametrize("make", [
    lambda: _ivf(metric=faiss.METRIC_L2),
    lambda: _ivf(qtype=faiss.ScalarQuantizer.QT_fp16),
    lambda: _ivf(qtype=faiss.ScalarQuantizer.QT_8bit_uniform),
    _flat_ip, _id_map, _ivf_flat, _with_direct_map, _untrained,
], ids=["l2", "fp16", "8bit-uniform", "flat", "idmap-flat", "ivf-flat", "direct-map", "untrained"])
def test_other_index_kinds_refused(tmp_path, make):
    path = _write(make(), tmp_path / "other.ivf")
    assert faiss.read_index(str(path)).d == D  # a valid FAISS file, just not ours
    assert check_ivf_file(path, D) is None


def test_truncated_anywhere(tmp_path, base):
    _, _, data = base
    offsets = _offsets()
    lists = offsets["table"] + 8 * NLIST
    cuts = [0, 1, 4, 12, 37, 45, 53, 60, 98, 1000, offsets["direct_map"] + 4, offsets["sq_trained"] - 4,
            offsets["sq_trained"] + 100, offsets["ilar"], offsets["ilar"] + 10, offsets["table_count"] + 4,
            offsets["table"] + 20, lists, lists + 1, lists + 1000, len(data) // 2, len(data) - 8, len(data) - 1]
    path = tmp_path / "cut.ivf"
    for cut in cuts:
        path.write_bytes(data[:cut])
        assert check_ivf_file(path, D) is None, cut


@pytest.mark.parametrize("extra", [b"\0", b"x" * 8, bytes(D + 8)])
def test_appended_bytes(tmp_path, base, extra):
    path = tmp_path / "longer.ivf"
    path.write_bytes(base[2] + extra)
    assert check_ivf_file(path, D) is None


@pytest.mark.parametrize("field, fmt, value", [
    ("ntotal", "<q", 1 << 62), ("ntotal", "<q", N + 1), ("ntotal", "<q", -1), ("trained", "<B", 0),
    ("metric", "<i", faiss.METRIC_L2), ("quantizer_trained", "<B", 0), ("quantizer_metric", "<i", faiss.METRIC_L2),
    ("nlist", "<Q", 10**12),
    ("nlist", "<Q", NLIST + 1), ("nprobe", "<Q", 0), ("nprobe", "<Q", NLIST + 1),
    ("quantizer_ntotal", "<q", 10**12), ("quantizer_floats", "<Q", 4 * 10**8), ("direct_map", "<B", 1),
    ("direct_map_count", "<Q", 2 * 10**8), ("sq_trained", "<Q", 10**10), ("ilar_nlist", "<Q", 10**12),
    ("table_count", "<Q", 10**12), ("table_count", "<Q", NLIST + 1), ("table", "<Q", 10**12),
    ("table", "<Q", 1 << 63), ("encoding", "<I", int.from_bytes(b"spr\0", "little")),
])
def test_hostile_header_refused_without_allocating(tmp_path, base, field, fmt, value):
    path = _patched(tmp_path, base[2], _offsets()[field], fmt, value)
    tracemalloc.start()
    try:
        started = time.monotonic()
        assert check_ivf_file(path, D) is None
        assert time.monotonic() - started < 1
        assert tracemalloc.get_traced_memory()[1] < 4 << 20
    finally:
        tracemalloc.stop()


def test_list_sizes_wrapping_around_64_bits(tmp_path, base):
    """Two sizes of 2**63 more than written: their sum modulo 2**64 is the real total."""
    data = bytearray(base[2])
    table = _offsets()["table"]
    first, second = struct.unpack_from("<QQ", data, table)
    struct.pack_into("<QQ", data, table, first + (1 << 63), second + (1 << 63))
    (tmp_path / "wrapped.ivf").write_bytes(data)
    assert check_ivf_file(tmp_path / "wrapped.ivf", D) is None


def test_scalar_quantizer_trained_on_fewer_floats(tmp_path, base):
    """A consistent file whose 8-bit quantizer keeps one float fewer than 2 per dimension."""
    data = bytearray(base[2])
    at = _offsets()["sq_trained"]
    struct.pack_into("<Q", data, at, 2 * D - 1)
    del data[at + 8:at + 12]
    (tmp_path / "short.ivf").write_bytes(data)
    assert check_ivf_file(tmp_path / "short.ivf", D) is None


def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "index.1.ivf"
    os.mkfifo(fifo)
    result: list[object] = []
    reader = threading.Thread(target=lambda: result.append(check_ivf_file(fifo, D)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive() and result == [None]


def test_not_regular_or_missing(tmp_path):
    (tmp_path / "folder.ivf").mkdir()
    (tmp_path / "zero.ivf").symlink_to("/dev/zero")
    (tmp_path / "dangling.ivf").symlink_to(tmp_path / "nowhere")
    for name in ["folder.ivf", "zero.ivf", "dangling.ivf", "missing.ivf"]:
        assert check_ivf_file(tmp_path / name, D) is None, name


def test_faiss_mmap_reader_alone(tmp_path, base):
    """What the module's docstring says FAISS does by itself: cuts raise, appended bytes load."""
    _, _, data = base
    path = tmp_path / "raw.ivf"
    for cut in [10, 100, _offsets()["table"] + 8, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(RuntimeError):
            faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    path.write_bytes(data + b"junk")
    assert faiss.read_index(str(path), faiss.IO_FLAG_MMAP).ntotal == N
