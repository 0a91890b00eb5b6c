"""FAISS on a GPU when there is one (the ``gpu`` extra installs ``faiss-gpu``); the CPU otherwise.

Unverified here (no GPU on the machines this was written on): the code follows FAISS's
documented use — the k-means of an IVF's training runs on ``clustering_index``, a GPU flat
index; a loaded IVF is copied to the GPU (``index_cpu_to_gpu``) for searches without a
selector (FAISS's GPU indexes take none: filtered searches, and those hiding changed
pictures, stay on the CPU) — and falls back to the CPU whenever FAISS has no GPU support,
sees no device or runs out of its memory. ``CLIPDEX_FAISS_GPU=0`` turns it off.
"""

from __future__ import annotations

import os
import threading

import faiss


def available() -> bool:
    """Whether FAISS was built with GPU support and sees a device."""
    if os.environ.get("CLIPDEX_FAISS_GPU", "1") == "0" or not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        return faiss.get_num_gpus() > 0
    except (AttributeError, RuntimeError):
        return False


def use_for_training(index: faiss.Index) -> bool:
    """Make ``index.train`` run its k-means on the GPU (when there is one); True if it will."""
    if not available():
        return False
    flat = faiss.IndexFlatIP(index.d)
    index.clustering_index = faiss.index_cpu_to_all_gpus(flat)
    return True


def done_training(index: faiss.Index) -> None:
    """Drop the GPU clustering index once trained (the centroids are in the CPU quantizer)."""
    if getattr(index, "clustering_index", None) is not None:
        index.clustering_index = None


_resources = None
#: FAISS's GPU indexes share one set of resources, which is not safe for concurrent searches.
search_lock = threading.Lock()


def to_device(index: faiss.Index) -> faiss.Index | None:
    """A copy of an IVF on the first GPU for unfiltered searches, or None (no GPU, or it does not fit)."""
    global _resources
    if not available():
        return None
    try:
        if _resources is None:
            _resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(_resources, 0, index)
    except (RuntimeError, MemoryError):
        return None
