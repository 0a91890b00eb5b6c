"""The half-precision scan copy a server keeps of a large index: same results, exact scores."""

from __future__ import annotations

import numpy as np

from clipdex.vectorindex import VectorIndex


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_fast_scan_gives_the_exact_results_and_scores():
    rng = np.random.default_rng(3)
    vectors = _unit(rng, 5000, 64)
    # near-duplicates (a burst of photos): ranks among them depend on differences fp16 cannot hold
    vectors[100:130] = _unit(rng, 1, 64) + rng.normal(0, 1e-3, (30, 64)).astype(np.float32)
    vectors[100:130] /= np.linalg.norm(vectors[100:130], axis=1, keepdims=True)
    ids = np.arange(10, 10 + 3 * len(vectors), 3)  # ids are not positions
    plain, fast = VectorIndex(64), VectorIndex(64)
    plain.add(ids, vectors)
    fast.add(ids, vectors)
    assert not fast.prepare_fast_scan()  # below the default size: not worth it
    assert fast.prepare_fast_scan(minimum=1)
    queries = np.concatenate([_unit(rng, 40, 64), vectors[100:110]])
    by_id = dict(zip(ids.tolist(), vectors))
    for q in queries:
        want, got = plain.search(q, 20), fast.search(q, 20)
        # the same scores in the same order; ids may differ only among ties of float32 rounding
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
        assert all(abs(float(by_id[i] @ q) - s) < 1e-6 for i, s in got)
        distinct = {i for i, s in want if all(abs(s - t) > 1e-5 for j, t in want if j != i)}
        assert distinct <= {i for i, _ in got}
    # a filtered search goes through FAISS as before
    allowed = ids[::7]
    assert fast.search(queries[0], 5, allowed) == plain.search(queries[0], 5, allowed)


def test_changes_drop_the_copy_and_results_follow_them():
    rng = np.random.default_rng(4)
    vectors = _unit(rng, 300, 32)
    index = VectorIndex(32)
    index.add(np.arange(300), vectors)
    assert index.prepare_fast_scan(minimum=1)
    top = index.search(vectors[7], 1)[0][0]
    index.remove([top])
    assert index.search(vectors[7], 1)[0][0] != top  # not from a stale copy
    index.add([1000], vectors[7:8])
    assert index.search(vectors[7], 1) == [(1000, index.search(vectors[7], 1)[0][1])]
    assert index.prepare_fast_scan(minimum=1)
    assert index.search(vectors[7], 1)[0][0] == 1000
    assert index.search(vectors[7], 500)[-1][0] in set(range(300)) | {1000}
    assert len(index.search(vectors[7], 500)) == 300
