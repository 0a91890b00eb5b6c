"""Building a base index from vectors streamed out of the database, and measuring its recall.

Vectors arrive in chunks (never the whole library in one array). An IVF is trained on a
random sample (or reuses an earlier training while it is not stale), filled chunk by
chunk, and its ``nprobe`` is tuned on held-out queries whose exact top 10 is computed in
the same pass, so the recall@10 it reaches is measured, not assumed, and stored with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from clipdex.ann import gpu, policy
from clipdex.ann.base import FLAT, IVF, Base, flat_index
from clipdex.ann.live import Fetch

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
Sample = Callable[[int], tuple[np.ndarray, np.ndarray]]
Say = Callable[[str], None]


@dataclass
class BuildReport:
    """What was built, as stored in the library and shown by ``clipdex info``."""

    kind: str
    generation: int
    count: int
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float | None = None
    trained_on: int = 0
    seconds: float = 0.0
    on_gpu: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def tuning_queries(held_out: np.ndarray, seed: int = 0) -> np.ndarray:
    """Queries like a person's, from held-out vectors: half are a picture moved well away from itself
    (cosine ≈ 0.7 to it), half the blend of three pictures (a concept several pictures share)."""
    rng = np.random.default_rng(seed)
    n, dim = held_out.shape
    half = n // 2
    noise = _unit(rng.standard_normal((half, dim)).astype(np.float32))
    moved = _unit(held_out[:half] + 1.0 * noise)
    blends = _unit(held_out[rng.integers(0, n, (n - half, 3))].sum(axis=1))
    return np.concatenate([moved, blends]).astype(np.float32)


class _ExactTop:
    """The exact top 10 of each query, kept up to date chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int = 10):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        every = np.concatenate([self.ids, np.broadcast_to(ids, (len(self.queries), len(ids)))], axis=1)
        if scores.shape[1] > self.k:
            top = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            scores, every = np.take_along_axis(scores, top, 1), np.take_along_axis(every, top, 1)
        self.scores, self.ids = scores, every


def _recall(index: faiss.Index, nprobe: int, queries: np.ndarray, exact: np.ndarray, fetch: Fetch) -> float:
    """recall@10 of the search readers run (IVF candidates re-scored exactly) at ``nprobe``."""
    index.nprobe = nprobe
    _, candidates = index.search(queries, 52)
    ids, vectors = fetch(np.unique(candidates[candidates >= 0]))
    row = {int(i): n for n, i in enumerate(ids)}
    hits = 0
    for q, cands, truth in zip(queries, candidates, exact):
        known = [c for c in cands if c in row]
        scores = vectors[[row[c] for c in known]] @ q if known else np.zeros(0)
        found = {known[i] for i in np.argsort(-scores)[:10]}
        hits += len(found.intersection(truth.tolist()))
    return hits / exact.size


def tune_nprobe(index: faiss.Index, queries: np.ndarray, exact: np.ndarray, fetch: Fetch) -> tuple[int, float]:
    """The smallest nprobe reaching :data:`policy.TUNE_TARGET` (doubling, then bisecting between the
    last two tried), and the recall it reached."""
    nlist, tried = int(index.nlist), {}

    def passes(nprobe: int) -> bool:
        if nprobe not in tried:
            tried[nprobe] = _recall(index, nprobe, queries, exact, fetch)
        return tried[nprobe] >= policy.TUNE_TARGET

    high = 1
    while not passes(high) and high < nlist:
        high = min(nlist, high * 2)
    low = high // 2  # fails (or is 0)
    while high - low > max(1, high // 16):  # to within about 6 %
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return high, tried[high]


def trained_ivf(dim: int, count: int, sample: np.ndarray) -> tuple[faiss.Index, bool]:
    """An empty IVF-SQ8 (inner product) trained on ``sample``; whether a GPU trained it."""
    nlist = max(1, min(policy.nlist_for(count), len(sample) // 39))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234
    index.cp.min_points_per_centroid = 1  # nlist_for keeps 39+ a list where there are that many; no warning below
    on_gpu = gpu.use_for_training(index)
    index.train(np.ascontiguousarray(sample, np.float32))
    gpu.done_training(index)
    return index, on_gpu


def build(kind: str, dim: int, generation: int, count: int, chunks: Chunks, sample: Sample, fetch: Fetch,
          trained: faiss.Index | None = None, trained_on: int = 0, say: Say | None = None) -> tuple[Base, BuildReport]:
    """A new base of ``kind`` holding what ``chunks`` yields (``count`` vectors, as of ``generation``).

    For an IVF, ``trained`` (an empty trained index, trained on ``trained_on`` vectors) is reused;
    otherwise one is trained on a sample. The report says what was built and how long it took.
    """
    began = time.monotonic()
    report = BuildReport(kind, generation, count)
    if kind == FLAT:
        index = flat_index(dim)
        for ids, vectors in chunks():
            index.add_with_ids(vectors, ids)
        base = Base(FLAT, generation, index, np.sort(np.asarray(faiss.vector_to_array(index.id_map), np.int64)))
        report.seconds = time.monotonic() - began
        return base, report
    quiet = say or (lambda _message: None)
    if trained is None:
        nlist = policy.nlist_for(count)
        want = policy.sample_size(count, nlist)
        _, drawn = sample(want + policy.TUNE_QUERIES)
        held_out, training = drawn[:policy.TUNE_QUERIES], drawn[policy.TUNE_QUERIES:]
        quiet(f"training the index on {len(training):,} of {count:,} vectors ({nlist} lists) …")
        index, report.on_gpu = trained_ivf(dim, count, training if len(training) else held_out)
        report.trained_on = count
    else:
        index, report.trained_on = trained, trained_on
        _, held_out = sample(policy.TUNE_QUERIES)
    queries = tuning_queries(held_out) if len(held_out) else np.zeros((0, dim), np.float32)
    exact = _ExactTop(queries)
    kept = []
    for ids, vectors in chunks():
        index.add_with_ids(vectors, ids)
        exact.add(ids, vectors)
        kept.append(ids)
    report.nlist = int(index.nlist)
    if len(queries) and index.ntotal:
        quiet(f"measuring recall on {len(queries)} held-out queries …")
        report.nprobe, report.recall_at_10 = tune_nprobe(index, queries, exact.ids, fetch)
    else:
        report.nprobe = 1
    index.nprobe = report.nprobe
    all_ids = np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    report.seconds = time.monotonic() - began
    return Base(IVF, generation, index, all_ids, report.nprobe), report
