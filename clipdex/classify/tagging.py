"""Zero-shot tagging of a library against a label set (the CLIP recipe), in passes that add up.

Each label is written into every prompt template ("a photo of a {}."), the template
embeddings are averaged and renormalised, and a picture's probabilities are the softmax
of its cosine similarities to the labels times the model's logit scale.

A run is a *pass* (see :mod:`clipdex.library.tags`): running another label set adds its
tags next to the earlier ones; running the same label set again replaces only its own.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clipdex.errors import UsageError
from clipdex.library import Library
from clipdex.library.catalog import allowed_ids
from clipdex.library.tags import ZERO_SHOT, PassSpec, TagStats, export_rows, write_pass
from clipdex.models import Encoder

DEFAULT_TEMPLATES = ("a photo of a {}.",)
EXPORT_FIELDS = ["id", "path", "label", "probability", "source", "pass"]


def parse_labels(labels: str | None = None, labels_file: str | Path | None = None) -> list[str]:
    """Labels from ``"a,b,c"`` or a file with one label per line (``#`` starts a comment).

    Exactly one of the two must be given (the CLI says which options that means).
    """
    if (labels is None) == (labels_file is None):
        raise UsageError("give the labels either inline or in a file, not both or neither")
    if labels_file is not None:
        try:
            text = Path(labels_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read labels file {labels_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"labels file {labels_file} is not UTF-8 text") from None
        items = [line.split("#", 1)[0] for line in text.splitlines()]
    else:
        items = labels.split(",")
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    if len(out) < 2:
        raise UsageError(f"need at least two distinct labels to choose between, got {len(out)}")
    return out


def parse_label_prompt(item: str) -> tuple[str, str]:
    """``"LABEL"`` -> (LABEL, LABEL); ``"LABEL=PROMPT"`` -> (LABEL, PROMPT): the tag stored, the text encoded."""
    label, sep, prompt = item.partition("=")
    label, prompt = label.strip(), prompt.strip()
    if not label:
        raise UsageError(f"{item.strip()!r} has no label before '='")
    if sep and not prompt:
        raise UsageError(f"label {label!r} has an empty prompt after '='")
    return label, prompt if sep else label


def label_prompts(items: list[str]) -> dict[str, str]:
    """Label -> text to encode, in the given order; a label given twice is an error."""
    out: dict[str, str] = {}
    for item in items:
        label, prompt = parse_label_prompt(item)
        if label in out:
            raise UsageError(f"label {label!r} is given twice")
        out[label] = prompt
    return out


def check_templates(templates: list[str] | tuple[str, ...] | None) -> list[str]:
    """Templates as given, or the default; each must hold one ``{}``."""
    templates = list(templates or DEFAULT_TEMPLATES)
    for t in templates:
        if t.count("{}") != 1:
            raise UsageError(f"template {t!r} must contain exactly one {{}} where the label goes")
    return templates


def label_vectors(encoder: Encoder, labels: list[str], templates: list[str]) -> np.ndarray:
    """One unit vector per label: the mean of its template embeddings, renormalised."""
    prompts = [t.format(label) for label in labels for t in templates]
    emb = encoder.encode_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)
    return (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of an ``N x C`` array (shifted by the row maximum, so it never overflows)."""
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def choose(probs: np.ndarray, labels: list[str], multi_label: bool, threshold: float) -> list[list[tuple[str, float]]]:
    """Per picture, the labels kept: the top one, or all at or above ``threshold``."""
    kept = []
    for row in probs:
        if multi_label:
            kept.append([(labels[j], float(row[j])) for j in np.argsort(-row, kind="stable") if row[j] >= threshold])
        else:
            j = int(np.argmax(row))
            kept.append([(labels[j], float(row[j]))])
    return kept


def apply_classifier(
    lib: Library,
    classify: Callable[[np.ndarray], np.ndarray],
    spec: PassSpec,
    *,
    folder: str | None = None,
    dry_run: bool = False,
) -> TagStats:
    """Tag every picture (or those under ``folder``) with ``classify(vectors) -> N x L probabilities``.

    The result is stored as pass ``spec`` (``spec.labels`` name the columns), replacing only
    that pass's earlier tags of these pictures; with ``dry_run`` nothing is written.
    """
    threshold = spec.threshold if spec.threshold is not None else 0.5
    if spec.multi_label and not 0.0 < threshold <= 1.0:
        raise UsageError(f"the probability threshold must be above 0 and at most 1, got {threshold:g}")

    def tagger() -> tuple[list[int], list[list[tuple[str, float]]]]:
        subset = allowed_ids(lib, folder=folder)
        ids, vectors = lib.load_vectors(None if subset is None else subset.tolist(), model=spec.model_identity)
        kept = choose(classify(vectors), list(spec.labels), spec.multi_label, threshold) if len(ids) else []
        return ids.tolist(), kept

    return write_pass(lib, spec, tagger, dry_run=dry_run)


def tag_library(
    lib: Library,
    encoder: Encoder,
    labels: list[str],
    templates: list[str] | None = None,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    folder: str | None = None,
    dry_run: bool = False,
    set_name: str | None = None,
) -> TagStats:
    """Tag every picture (or those under ``folder``) with zero-shot probabilities, as this label set's pass.

    A label may be written ``LABEL=PROMPT``: the tag is LABEL, the text encoded is PROMPT.
    With ``set_name`` the pass is the one of that name, whatever labels it ran before.
    """
    prompts = label_prompts(labels)
    if len(prompts) < 2:
        raise UsageError(f"need at least two distinct labels to choose between, got {len(prompts)}")
    templates = check_templates(templates)
    names = list(prompts)
    spec = PassSpec(ZERO_SHOT, tuple(names), prompts, tuple(templates), encoder.spec.identity, multi_label,
                    threshold if multi_label else None, name=set_name)
    label_vecs = label_vectors(encoder, [prompts[n] for n in names], templates)
    scale = encoder.logit_scale
    return apply_classifier(lib, lambda vectors: softmax(scale * vectors @ label_vecs.T), spec, folder=folder,
                            dry_run=dry_run)


def export_tags(lib: Library, fmt: str) -> str:
    """All tags as CSV (id,path,label,probability,source,pass) or a JSON list."""
    records = export_rows(lib)
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue()
    raise UsageError(f"unknown export format {fmt!r} (use csv or json)")
