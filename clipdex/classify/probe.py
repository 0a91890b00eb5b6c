"""Linear probes: multinomial logistic regression on stored embeddings (as in the CLIP paper).

The L2 strength is chosen on a validation split; the reported accuracy is on a test split
the probe never saw, next to zero-shot accuracy for the same class names on the same split.
Probes are stored in the library with the identity of the model whose embeddings they read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from clipdex.classify.datasets import Dataset
from clipdex.classify.evaluate import metrics, zero_shot
from clipdex.classify.tagging import DEFAULT_TEMPLATES, apply_classifier, softmax
from clipdex.errors import ModelMismatch, UsageError
from clipdex.library import Library
from clipdex.library import tags as stored
from clipdex.library.held import held_spec
from clipdex.library.tags import PassSpec, TagStats
from clipdex.models import Encoder

L2_GRID = tuple(10.0 ** e for e in range(-6, 1))
#: One picture each to train, validate and test on.
MIN_PER_CLASS = 3


def check_name(name: str) -> str:
    """A probe name: letters, digits, - and _ (it is also part of the tags' source)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"probe name {name!r} must be letters, digits, - or _")
    return name


def check_sizes(data: Dataset) -> None:
    """Every class needs :data:`MIN_PER_CLASS` pictures; say which one has too few, by name."""
    counts = np.bincount(data.labels, minlength=len(data.classes))
    for name, n in zip(data.classes, counts):
        if n < MIN_PER_CLASS:
            raise UsageError(f"class {name!r} needs at least {MIN_PER_CLASS} pictures to train, validate and test "
                             f"a probe; it has {n}")


def split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: about ``fraction`` of each class (at least one) goes to the second part.

    Each class needs two pictures here (one per part); :func:`check_sizes` says so by name first.
    """
    first, second = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise UsageError(f"class {c} has {len(idx)} picture(s) left to split, needs 2")
        cut = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
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
    """``N x C`` class probabilities of a probe."""
    return softmax(x @ w + b)


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


@dataclass
class TrainedProbe:
    """A fitted probe and how it did, before it is stored."""

    report: ProbeReport
    weights: np.ndarray  # d x C
    bias: np.ndarray  # C


def train_probe(encoder: Encoder, data: Dataset, name: str, seed: int = 0) -> TrainedProbe:
    """Fit, select L2 on validation, refit on train+validation, score on test (nothing is stored)."""
    check_name(name)
    check_sizes(data)
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
    return TrainedProbe(report, w.astype(np.float32), b.astype(np.float32))


def save_probe(lib: Library, encoder: Encoder, probe: TrainedProbe) -> None:
    """Store ``probe`` under its name (replacing one of that name); binds a library without a model to it."""
    r = probe.report
    stored.save_probe(lib, r.name, encoder.spec, encoder.dim, r.classes, probe.weights.tobytes(),
                      probe.bias.tobytes(), r.as_dict())


def load_probe(lib: Library, name: str) -> tuple[list[str], np.ndarray, np.ndarray, str]:
    """A stored probe's classes, weights, bias and model; refuses one made for another model."""
    row = stored.probe_row(lib, name)
    if row is None:
        names = [r.name for r in stored.probe_rows(lib)]
        raise UsageError(f"no probe named {name!r} (probes: {', '.join(names) or 'none'})")
    current = lib.get_meta("model_identity")
    if row.model_identity != current and held_spec(lib, row.model_identity) is None:  # a held model's vectors do
        raise ModelMismatch(f"probe {name!r} was trained on embeddings of model {row.model_identity}, "
                            f"but this library now uses {current}: train it again")
    classes = json.loads(row.classes)
    w = np.frombuffer(row.weights, np.float32).reshape(-1, len(classes))
    return classes, w, np.frombuffer(row.bias, np.float32), row.model_identity


def list_probes(lib: Library) -> list[dict]:
    """Every stored probe: name, classes, model and held-out accuracy."""
    return [{"name": r.name, "classes": json.loads(r.classes), "model": r.model_identity,
             "test_accuracy": json.loads(r.metrics)["probe_accuracy"]} for r in stored.probe_rows(lib)]


def tag_with_probe(lib: Library, name: str, *, multi_label: bool = False, threshold: float = 0.5,
                   folder: str | None = None, dry_run: bool = False, set_name: str | None = None) -> TagStats:
    """Tag the library (or a folder of it) with a stored probe, as the pass ``probe:NAME`` (or ``set_name``)."""
    classes, w, b, model = load_probe(lib, name)
    spec = PassSpec(f"probe:{name}", tuple(classes), model_identity=model, multi_label=multi_label,
                    threshold=threshold if multi_label else None, name=set_name)
    return apply_classifier(lib, lambda vectors: predict(vectors, w, b), spec, folder=folder, dry_run=dry_run)
