"""Measure zero-shot classifiers (prompt sets x template sets) on a labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipdex.classify.datasets import Dataset
from clipdex.classify.tagging import check_templates, label_vectors, parse_label_prompt, softmax
from clipdex.errors import UsageError
from clipdex.models import Encoder

TEMPLATE_SETS = ("plain", "photo", "imagenet")


def template_set(name: str) -> list[str]:
    """Built-in template ensembles: ``plain`` ({}), ``photo`` (a photo of a {}.), ``imagenet`` (CLIP's 80)."""
    if name == "plain":
        return ["{}"]
    if name == "photo":
        return ["a photo of a {}."]
    if name == "imagenet":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    raise UsageError(f"unknown template set {name!r} (built in: {', '.join(TEMPLATE_SETS)})")


def parse_prompts(spec: str, classes: list[str]) -> dict[str, str]:
    """``"a|b"`` (class names) or ``"a=text for a|b=text for b"`` -> class -> prompt text.

    Every class of the dataset must get exactly one prompt, and no other label may appear.
    """
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in spec.split("|")):
        if not part:
            continue
        try:
            label, text = parse_label_prompt(part)
        except UsageError as exc:
            raise UsageError(f"prompt set {spec!r}: {exc}") from None
        if label in mapping:
            raise UsageError(f"prompt set {spec!r} names class {label!r} twice")
        mapping[label] = text
    unknown = [label for label in mapping if label not in classes]
    if unknown:
        raise UsageError(
            f"prompt set {spec!r}: {unknown[0]!r} is not a class of the dataset (classes: {', '.join(classes)}); "
            "write CLASS=PROMPT to phrase a class differently"
        )
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise UsageError(f"prompt set {spec!r} has no prompt for class {missing[0]!r}")
    return {c: mapping[c] for c in classes}


@dataclass
class Metrics:
    """How one classifier did on one set of pictures."""

    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "per_class": self.per_class, "confusion": self.confusion}


def metrics(truth: np.ndarray, predicted: np.ndarray, classes: list[str]) -> Metrics:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion (rows: truth)."""
    n = len(classes)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = {}
    recalls = []
    for i, name in enumerate(classes):
        tp = confusion[i, i]
        support = confusion[i].sum()
        precision = tp / confusion[:, i].sum() if confusion[:, i].sum() else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(support)}
        if support:
            recalls.append(recall)
    return Metrics(float(np.mean(truth == predicted)), float(np.mean(recalls)), per_class, confusion.tolist())


def worst_mistakes(data: Dataset, probs: np.ndarray, limit: int = 10) -> list[dict]:
    """Wrongly classified pictures, most confidently wrong first."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != data.labels)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:limit]
    return [{"path": data.paths[i], "truth": data.classes[data.labels[i]],
             "predicted": data.classes[predicted[i]], "p_predicted": float(probs[i, predicted[i]]),
             "p_truth": float(probs[i, data.labels[i]])} for i in wrong]


def zero_shot(data: Dataset, encoder: Encoder, prompts: dict[str, str], templates: list[str]) -> np.ndarray:
    """``N x C`` probabilities for ``data`` with one prompt per class, ensembled over templates."""
    label_vecs = label_vectors(encoder, [prompts[c] for c in data.classes], check_templates(templates))
    return softmax(encoder.logit_scale * data.vectors @ label_vecs.T)


def evaluate(
    data: Dataset, encoder: Encoder, prompt_sets: list[dict[str, str]], template_sets: list[list[str]],
    template_names: list[str], mistakes: int = 10,
) -> list[dict]:
    """Every prompt set (see :func:`parse_prompts`; default: the class names) x template set, on the whole dataset."""
    results = []
    for prompts in prompt_sets or [{c: c for c in data.classes}]:
        for name, templates in zip(template_names, template_sets):
            probs = zero_shot(data, encoder, prompts, templates)
            m = metrics(data.labels, probs.argmax(axis=1), data.classes)
            results.append({"prompts": prompts, "templates": name, "n_templates": len(templates), **m.as_dict(),
                            "mistakes": worst_mistakes(data, probs, mistakes)})
    return results
