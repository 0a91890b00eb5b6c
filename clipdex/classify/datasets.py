"""Labelled picture sets, as people keep them, turned into embeddings.

Two forms: a folder with one sub-folder per class, or a CSV of ``path,label`` (paths
relative to the CSV). Pictures already in the library reuse their stored vectors (same
path, size and mtime) when the library was built with the model asked for; the others are
decoded and encoded like the indexer does. No library is needed at all.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipdex.decodepool import DecodePool
from clipdex.errors import UsageError
from clipdex.imaging import is_image_path
from clipdex.library import Library
from clipdex.library.tags import vectors_by_path
from clipdex.models import Encoder


@dataclass
class Dataset:
    """Pictures with class labels; ``vectors`` filled by :func:`embed`."""

    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    vectors: np.ndarray | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    reused: int = 0
    encoded: int = 0

    def subset(self, idx: np.ndarray) -> Dataset:
        return Dataset(self.classes, [self.paths[i] for i in idx], self.labels[idx],
                       None if self.vectors is None else self.vectors[idx])


def load_dataset(source: str | Path) -> Dataset:
    """Read a class-per-folder tree or a ``path,label`` CSV; at least two classes."""
    source = Path(source).expanduser()
    if not source.exists():
        raise UsageError(f"dataset not found: {source}")
    pairs: list[tuple[str, str]] = []
    if source.is_dir():
        for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for root, dirs, files in os.walk(sub):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                pairs += [(os.path.join(root, f), sub.name) for f in sorted(files) if is_image_path(f)]
    else:
        not_a_dataset = UsageError(f"{source} is neither a folder of class folders nor a CSV of path,label")
        if is_image_path(source.name):
            raise not_a_dataset
        try:
            with open(source, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
        except UnicodeDecodeError:
            raise not_a_dataset from None
        except (OSError, csv.Error) as exc:
            raise UsageError(f"cannot read dataset {source}: {getattr(exc, 'strerror', None) or exc}") from None
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
            rows = rows[1:]
        for n, row in enumerate(rows, 1):
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise UsageError(f"{source}: row {n} is not 'path,label': {','.join(row)[:80]!r}")
            pairs.append((str((source.parent / row[0].strip()).resolve()), row[1].strip()))
    classes = sorted({label for _, label in pairs})
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise UsageError(f"dataset {source} needs at least two classes with pictures, found {found}")
    index = {c: i for i, c in enumerate(classes)}
    return Dataset(classes, [os.path.abspath(p) for p, _ in pairs], np.array([index[c] for _, c in pairs]))


def embed(data: Dataset, encoder: Encoder, lib: Library | None = None, workers: int | None = None) -> Dataset:
    """Fill ``data.vectors``: stored vectors where ``lib`` (built with ``encoder``'s model) has the
    file unchanged, else encode.

    Unreadable pictures are dropped (listed in ``skipped``); a class left empty is an error.
    """
    same_model = lib is not None and lib.get_meta("model_identity") == encoder.spec.identity
    stored = vectors_by_path(lib, data.paths) if same_model else {}
    vectors: dict[str, np.ndarray] = {}
    todo = []
    for path in data.paths:
        row = stored.get(path)
        try:
            st = os.stat(path)
        except OSError:
            data.skipped[path] = "file not found"
            continue
        if row is not None and row[:2] == (st.st_size, st.st_mtime):
            vectors[path] = np.frombuffer(row[2], np.float32)
        else:
            todo.append(path)
    data.reused = len(vectors)
    if todo:
        for chunk in DecodePool(workers).run(todo, encoder.image_size, encoder.resize_mode, chunk=64):
            good = [d for d in chunk if not d.error]
            data.skipped.update({d.path: d.error or "" for d in chunk if d.error})
            if good:
                encoded = encoder.encode_pixels(np.stack([d.pixels for d in good]))
                vectors.update({d.path: v for d, v in zip(good, encoded)})
                data.encoded += len(good)
    keep = np.array([i for i, p in enumerate(data.paths) if p in vectors], dtype=np.int64)
    counts = np.bincount(data.labels[keep], minlength=len(data.classes)) if len(keep) else np.zeros(len(data.classes))
    empty = [c for c, n in zip(data.classes, counts) if n == 0]
    if empty:
        raise UsageError(f"class {empty[0]!r} has no readable pictures")
    data.paths = [data.paths[i] for i in keep]
    data.labels = data.labels[keep]
    data.vectors = np.stack([vectors[p] for p in data.paths]).astype(np.float32)
    return data
