"""Synthetic vectors shaped like CLIP embeddings, for testing and benchmarking approximate search.

Uniform random unit vectors are the wrong test for an IVF index: they have no clusters, every
list is equally likely and nearest neighbours are barely nearer than anything else. CLIP image
embeddings instead sit in a narrow cone, on a low effective rank, in clusters of very uneven
size, with exact and near-exact copies. :func:`clip_like_vectors` draws

    x = normalise(1.2·mean + centre[c] + 0.55·(z ⊙ spectrum)·B + 0.3·u)

- ``B``: ``rank`` (96 at 512-d) orthonormal directions with a power-law spectrum (k^-0.6), the
  low effective rank; ``mean``: a common direction, the cone;
- ``centre[c]``: one of ``clusters`` unit centres on that subspace, ``c`` drawn with Zipf-like
  probabilities (the k-th largest ∝ k^-0.8: at 3,000 clusters the largest holds 5 % of the
  pictures, the largest tenth 55 %, the smallest half 16 %);
- ``z ⊙ spectrum``: the spread within a cluster, on the same subspace; ``u``: isotropic noise in all
  ``dim`` directions (uniform, unit variance per coordinate over √dim: as good as Gaussian after
  normalising, and four times cheaper to draw);
- ``near_duplicates`` of the rows are copies of another row of their block with tiny noise (cos > 0.99).

:func:`clip_like_queries` makes text-like queries: a concept (a cluster centre with spread, like an
image), offset by a fixed *modality gap* direction (CLIP's text vectors sit apart from its image
vectors) plus text noise, so their best cosine with the images is low, as with real CLIP.

Measured (512-d, 3,000 clusters, seed 0; ``python -m clipdex.ann.synthetic 100000 1000000``):
pairwise cosine mean 0.41 (sd 0.17); nearest-neighbour cosine median 0.85 at 100,000 vectors,
0.87 at 1M (near-duplicates and their sources, 4–6 % of rows, excluded: theirs is > 0.99);
queries' best cosine with the images median 0.36 at 100,000 (5–95 %: 0.33–0.39), 0.37 at 1M.
1M vectors in 8–9 s on two busy cores.

Rows are drawn in blocks of :data:`BLOCK`, each from its own generator seeded by ``(seed, block)``,
and re-cut into chunks: the stream is the same whatever ``chunk`` is, the first ``n`` vectors are
the same whatever the total is, and any stretch of it can be drawn alone (``start``).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

BLOCK = 8192


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@lru_cache(maxsize=4)
def _model(dim: int, seed: int, clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(0.55·spectrum·basis, 1.2·mean + centres, cumulative cluster probabilities, gap)`` of one ``seed``."""
    rng = np.random.default_rng([seed, 0])
    rank = min(96, dim)
    basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # rank x dim
    spectrum = np.arange(1, rank + 1, dtype=np.float32) ** -0.6
    mean = _unit(rng.standard_normal((1, dim)).astype(np.float32))[0]
    centres = _unit((rng.standard_normal((clusters, rank)).astype(np.float32) * spectrum) @ basis)
    sizes = rng.permutation(np.arange(1, clusters + 1, dtype=np.float64) ** -0.8)
    gap = rng.standard_normal(dim).astype(np.float32)
    gap -= basis.T @ (basis @ gap) + mean * (mean @ gap)  # away from the images' subspace and cone
    gap /= np.linalg.norm(gap)
    return 0.55 * spectrum[:, None] * basis, 1.2 * mean + centres, np.cumsum(sizes / sizes.sum()), gap


def _block(dim: int, seed: int, clusters: int, near_duplicates: float, b: int) -> np.ndarray:
    """The ``b``-th block of :data:`BLOCK` image-like vectors."""
    spread, centres, cumulative, _ = _model(dim, seed, clusters)
    rng = np.random.default_rng([seed, 1, b])
    c = np.minimum(np.searchsorted(cumulative, rng.random(BLOCK)), clusters - 1)
    x = rng.random((BLOCK, dim), dtype=np.float32)
    x -= 0.5
    x *= 0.3 * np.sqrt(12.0 / dim)  # uniform noise, variance 0.09 / dim per coordinate
    x += rng.standard_normal((BLOCK, len(spread)), dtype=np.float32) @ spread
    x += centres[c]
    _unit(x)
    copies = np.flatnonzero(rng.random(BLOCK) < near_duplicates)
    if len(copies):
        sources = (copies + rng.integers(1, BLOCK, len(copies))) % BLOCK
        noise = rng.standard_normal((len(copies), dim), dtype=np.float32)
        noise *= rng.uniform(0.02, 0.12, (len(copies), 1)).astype(np.float32) / np.sqrt(dim)
        x[copies] = _unit(x[sources] + noise)
    return x


def clip_like_vectors(n: int, dim: int = 512, *, seed: int = 0, clusters: int = 3000,
                      near_duplicates: float = 0.02, chunk: int = 100_000, start: int = 0) -> Iterator[np.ndarray]:
    """Rows ``start`` to ``start + n`` of the stream of CLIP-image-like float32 unit vectors, in arrays of
    ``chunk`` rows (the last may be shorter)."""
    end, parts, held = start + n, [], 0
    last = (end - 1) // BLOCK
    for b in range(start // BLOCK, last + 1 if n > 0 else 0):
        offset = b * BLOCK
        parts.append(_block(dim, seed, clusters, near_duplicates, b)[max(start, offset) - offset:end - offset])
        held += len(parts[-1])
        while held >= chunk or (b == last and held):
            joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
            yield joined[:chunk]
            parts = [joined[chunk:]] if held > chunk else []
            held = max(0, held - chunk)


def clip_like_queries(n_queries: int, dim: int = 512, seed: int = 0, *, clusters: int = 3000) -> np.ndarray:
    """``n_queries`` text-like unit queries for the vectors of the same ``dim``, ``seed`` and ``clusters``:
    each aims at a cluster (drawn by size, as people search for what they photograph) and is offset
    by the modality gap."""
    spread, centres, cumulative, gap = _model(dim, seed, clusters)
    rng = np.random.default_rng([seed, 2])
    c = np.minimum(np.searchsorted(cumulative, rng.random(n_queries)), clusters - 1)
    concept = centres[c] + rng.standard_normal((n_queries, len(spread)), dtype=np.float32) @ spread
    noise = rng.standard_normal((n_queries, dim), dtype=np.float32) * np.float32(0.6 / np.sqrt(dim))
    q = _unit(concept) + noise + 2.0 * gap
    return _unit(q.astype(np.float32))


def _statistics(n: int, dim: int = 512, seed: int = 0) -> dict[str, float]:
    """The figures the module docstring quotes, measured on ``n`` vectors."""
    x = np.concatenate(list(clip_like_vectors(n, dim, seed=seed)))
    rng = np.random.default_rng(7)
    sample = x[rng.choice(n, 2000, replace=False)]
    pairs = (sample @ sample.T)[np.triu_indices(len(sample), 1)]
    probe = rng.choice(n, 500, replace=False)
    sims = x[probe] @ x.T
    sims[np.arange(len(probe)), probe] = -2
    nearest = sims.max(axis=1)
    best = (clip_like_queries(500, dim, seed) @ x.T).max(axis=1)
    return {"pairwise_mean": float(pairs.mean()), "pairwise_sd": float(pairs.std()),
            "nn_median": float(np.median(nearest[nearest < 0.99])), "nn_dup_share": float((nearest >= 0.99).mean()),
            "query_best_median": float(np.median(best)), "query_best_p5": float(np.percentile(best, 5)),
            "query_best_p95": float(np.percentile(best, 95))}


if __name__ == "__main__":
    import sys
    import time

    for size in [int(a) for a in sys.argv[1:]] or [100_000]:
        began = time.perf_counter()
        for _ in clip_like_vectors(size):
            pass
        print(f"{size:,}: generated in {time.perf_counter() - began:.1f}s", _statistics(size))
