"""Which index a library gets, how it is shaped, and when it is rebuilt: the numbers, in one place.

The figures behind them were measured with ``benchmarks/bench_scale.py`` on CLIP-like
vectors (512-d, 2 cores); see the README's "Large libraries" section.

- **Flat up to** :data:`IVF_FROM` **vectors.** An exact scan costs ~0.22 ms per 1,000 vectors
  (512-d float32, memory bound; p50 measured 4.1 ms at 20,000, 12.0 ms at 50,000, 21 ms at
  100,000), so it stays under 10 ms up to about 40,000. Beyond that an IVF answers in 1–5 ms
  at a measured recall@10 ≥ 0.95, and costs a k-means training (seconds) to build.
- **IVF shape.** ``nlist`` is the power of two nearest √n (FAISS's guideline is 4–16·√n for
  billions of vectors, where list scans dominate; at 10^5–10^7 on a CPU the coarse quantiser
  is scanned too, and √n balances both): 1,024 lists at 1M. Trained on
  :data:`TRAIN_PER_LIST` vectors a list (FAISS warns below 39). Codes are 8-bit scalar
  quantised (``QT_8bit``, 512 bytes a vector: 1M pictures in ~520 MB), re-scored exactly.
- **nprobe** is the smallest that reaches :data:`TUNE_TARGET` recall@10 against exact search
  on :data:`TUNE_QUERIES` held-out queries, measured at build time and stored. The queries
  (:func:`clipdex.ann.build.tuning_queries`) are made harder than a person's on purpose (a
  picture pushed away by noise across all 512 dimensions, blends of three unrelated pictures):
  measured on 1M CLIP-like vectors, where they reach 0.95 text-like queries reach ~0.97.
- **Retrain** when the library has doubled or halved since training (the coarse quantiser then
  describes a collection that is no longer there, and lists grow past the latency budget).
- **Compact** (write a new base file, prune the change log) when what changed since the base
  exceeds :data:`COMPACT_SHARE` of it (at least :data:`COMPACT_MIN`): readers re-score the
  changed vectors exactly from memory, which stays cheap while it is small.
"""

from __future__ import annotations

import math
import os

from clipdex.ann.base import FLAT, IVF

AUTO = "auto"
KINDS = (AUTO, FLAT, IVF)
IVF_FROM = int(os.environ.get("CLIPDEX_IVF_FROM", "40000"))
TRAIN_PER_LIST = 64
RECALL_TARGET = 0.95
TUNE_TARGET = 0.95
TUNE_QUERIES = 200
COMPACT_SHARE = 0.10
COMPACT_MIN = 2000


def choose_kind(count: int, requested: str | None) -> str:
    """``flat`` or ``ivf`` for a library of ``count`` vectors, given the user's setting (``auto`` if None)."""
    if requested in (FLAT, IVF):
        return requested
    return IVF if count >= IVF_FROM else FLAT


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: the power of two nearest √count, never more than the
    training sample can support (39 vectors a list), at least 1."""
    if count < 2:
        return 1
    nearest = 2 ** round(math.log2(math.sqrt(count)))
    return max(1, min(nearest, count // 39))


def sample_size(count: int, nlist: int) -> int:
    return min(count, TRAIN_PER_LIST * nlist)


def retrain_due(count: int, trained_on: int) -> bool:
    """Whether an IVF trained on ``trained_on`` vectors is stale for ``count``."""
    return count > 2 * trained_on or 2 * count < trained_on


def compaction_due(changed: int, base_count: int) -> bool:
    """Whether ``changed`` ids since the base warrant writing a new one."""
    return changed > max(COMPACT_MIN, COMPACT_SHARE * base_count)
