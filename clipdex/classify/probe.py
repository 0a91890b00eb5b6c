"""Linear probes: multinomial logistic regression on stored embeddings (as in the CLIP paper).

The L2 strength is chosen on a validation split; the reported accuracy is on a test split
the probe never saw, next to zero-shot accuracy for the same class names on the same split.
Probes are stored in the library with the identity of the model whose embeddings they read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from clipdex.classify.datasets import Dataset
from clipdex.classify.evaluate import metrics, zero_shot
from clipdex.classify.tagging import DEFAULT_TEMPLATES, TagStats, apply_classifier
from clipdex.errors import ModelMismatch, UsageError
from clipdex.library import Library
from clipdex.library.schema import ProbeRow, utcnow
from clipdex.models import Encoder

L2_GRID = tuple(10.0 ** e for e in range(-6, 1))


def split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: about ``fraction`` of each class (at least one) goes to the second part."""
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 3:
            raise UsageError(f"class {c} needs at least 3 pictures to train, validate and test a probe")
        cut = max(1, round(len(idx) * fraction))
        second += idx[:cut].tolist()
        first += idx[cut:].tolist()
    return np.array(sorted(first)), np.array(sorted(second))


def fit(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, steps: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``d x C`` and bias ``C`` minimising cross-entropy + ``l2 * |W|^2`` (full-batch L-BFGS)."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def predict(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ProbeReport:
    name: str
    classes: list[str]
    l2: float
    train: int
    validation: int
    test: int
    probe_accuracy: float
    zero_shot_accuracy: float
    probe_metrics: dict
    zero_shot_metrics: dict

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def train_probe(lib: Library, encoder: Encoder, data: Dataset, name: str, seed: int = 0) -> ProbeReport:
    """Fit, select L2 on validation, refit on train+validation, score on test, store as ``name``."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"probe name {name!r} must be letters, digits, - or _")
    rng = np.random.default_rng(seed)
    rest, test = split(data.labels, 0.25, rng)
    train_idx, val_idx = split(data.labels[rest], 0.25, rng)
    train_idx, val_idx = rest[train_idx], rest[val_idx]
    x, y, c = data.vectors, data.labels, len(data.classes)
    scores = []
    for l2 in L2_GRID:
        w, b = fit(x[train_idx], y[train_idx], c, l2)
        scores.append((float(np.mean(predict(x[val_idx], w, b).argmax(1) == y[val_idx])), l2))
    best = max(l2 for acc, l2 in scores if acc == max(scores)[0])  # ties: the stronger regularisation
    w, b = fit(x[rest], y[rest], c, best)
    probe_m = metrics(y[test], predict(x[test], w, b).argmax(1), data.classes)
    zs = zero_shot(data.subset(test), encoder, {k: k for k in data.classes}, list(DEFAULT_TEMPLATES))
    zs_m = metrics(y[test], zs.argmax(1), data.classes)
    report = ProbeReport(name, data.classes, best, len(train_idx), len(val_idx), len(test), probe_m.accuracy,
                         zs_m.accuracy, probe_m.as_dict(), zs_m.as_dict())
    with lib.write_lock(), lib.session() as s:
        s.merge(ProbeRow(name=name, model_identity=encoder.spec.identity, classes=json.dumps(data.classes),
                         weights=w.astype(np.float32).tobytes(), bias=b.astype(np.float32).tobytes(),
                         metrics=json.dumps(report.as_dict()), created_at=utcnow()))
        s.commit()
    return report


def load_probe(lib: Library, name: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A stored probe's classes, weights and bias; refuses one made for another model."""
    with lib.session() as s:
        row = s.get(ProbeRow, name)
        names = list(s.scalars(select(ProbeRow.name)))
    if row is None:
        raise UsageError(f"no probe named {name!r} (probes: {', '.join(names) or 'none'})")
    current = lib.get_meta("model_identity")
    if row.model_identity != current:
        raise ModelMismatch(f"probe {name!r} was trained on embeddings of model {row.model_identity}, "
                            f"but this library now uses {current}: train it again")
    classes = json.loads(row.classes)
    w = np.frombuffer(row.weights, np.float32).reshape(-1, len(classes))
    return classes, w, np.frombuffer(row.bias, np.float32)


def list_probes(lib: Library) -> list[dict]:
    with lib.session() as s:
        rows = s.scalars(select(ProbeRow).order_by(ProbeRow.name)).all()
    return [{"name": r.name, "classes": json.loads(r.classes), "model": r.model_identity,
             "test_accuracy": json.loads(r.metrics)["probe_accuracy"]} for r in rows]


def tag_with_probe(lib: Library, name: str, *, multi_label: bool = False, threshold: float = 0.5,
                   folder: str | None = None) -> TagStats:
    """Tag the library (or a folder of it) with a stored probe; tags' source is ``probe:NAME``."""
    classes, w, b = load_probe(lib, name)
    return apply_classifier(lib, lambda vectors: predict(vectors, w, b), classes, f"probe:{name}",
                            multi_label=multi_label, threshold=threshold, folder=folder)
