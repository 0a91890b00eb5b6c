"""Zero-shot tagging of a library against a label set (the CLIP recipe).

Each label is written into every prompt template ("a photo of a {}."), the template
embeddings are averaged and renormalised, and a picture's probabilities are the softmax
of its cosine similarities to the labels times the model's logit scale.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete, select

from clipdex.errors import UsageError
from clipdex.library import Library
from clipdex.library.catalog import allowed_ids
from clipdex.library.schema import ImageRow, TagRow, utcnow
from clipdex.models import Encoder

DEFAULT_TEMPLATES = ("a photo of a {}.",)
ZERO_SHOT = "zero-shot"


def parse_labels(labels: str | None = None, labels_file: str | Path | None = None) -> list[str]:
    """Labels from ``"a,b,c"`` or a file with one label per line (``#`` starts a comment)."""
    if (labels is None) == (labels_file is None):
        raise UsageError("give exactly one of --labels or --labels-file")
    if labels_file is not None:
        try:
            text = Path(labels_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read labels file {labels_file}: {exc.strerror}") from None
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


def softmax_probs(image_vectors: np.ndarray, label_vecs: np.ndarray, logit_scale: float) -> np.ndarray:
    """``N x L`` probabilities: softmax over ``logit_scale * cosine``."""
    logits = logit_scale * image_vectors @ label_vecs.T
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class TagStats:
    images: int = 0
    tags_written: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"images": self.images, "tags_written": self.tags_written, "counts": self.counts}


def choose(probs: np.ndarray, labels: list[str], multi_label: bool, threshold: float) -> list[list[tuple[str, float]]]:
    """Per picture, the labels kept: the top one, or all at or above ``threshold``."""
    kept = []
    for row in probs:
        if multi_label:
            kept.append([(labels[j], float(row[j])) for j in np.argsort(-row) if row[j] >= threshold])
        else:
            j = int(np.argmax(row))
            kept.append([(labels[j], float(row[j]))])
    return kept


def store_tags(lib: Library, ids: np.ndarray, kept: list[list[tuple[str, float]]], source: str) -> TagStats:
    """Replace ``source``'s tags of the given pictures with ``kept``, in one transaction."""
    stats = TagStats(images=len(ids))
    now = utcnow()
    with lib.write_lock(), lib.session() as s:
        id_list = ids.tolist()
        for start in range(0, len(id_list), 500):
            chunk = id_list[start:start + 500]
            s.execute(delete(TagRow).where(TagRow.source == source, TagRow.image_id.in_(chunk)))
        s.add_all(
            TagRow(image_id=i, label=label, source=source, probability=p, tagged_at=now)
            for i, tags in zip(id_list, kept)
            for label, p in tags
        )
        s.commit()
    for tags in kept:
        for label, _ in tags:
            stats.counts[label] = stats.counts.get(label, 0) + 1
            stats.tags_written += 1
    return stats


def apply_classifier(
    lib: Library,
    classify: Callable[[np.ndarray], np.ndarray],
    labels: list[str],
    source: str,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    folder: str | None = None,
) -> TagStats:
    """Tag every picture (or those under ``folder``) with ``classify(vectors) -> N x L probabilities``."""
    if multi_label and not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be in (0, 1], got {threshold}")
    subset = allowed_ids(lib, folder=folder)
    ids, vectors = lib.load_vectors(None if subset is None else subset.tolist())
    if len(ids) == 0:
        return TagStats()
    return store_tags(lib, ids, choose(classify(vectors), labels, multi_label, threshold), source)


def tag_library(
    lib: Library,
    encoder: Encoder,
    labels: list[str],
    templates: list[str] | None = None,
    *,
    multi_label: bool = False,
    threshold: float = 0.5,
    folder: str | None = None,
) -> TagStats:
    """Tag every picture (or those under ``folder``) with zero-shot probabilities.

    A label may be written ``LABEL=PROMPT``: the tag is LABEL, the text encoded is PROMPT.
    """
    names = [label.partition("=")[0].strip() for label in labels]
    prompts = [label.partition("=")[2].strip() or name for label, name in zip(labels, names)]
    label_vecs = label_vectors(encoder, prompts, check_templates(templates))
    scale = encoder.logit_scale
    return apply_classifier(lib, lambda vectors: softmax_probs(vectors, label_vecs, scale), names, ZERO_SHOT,
                            multi_label=multi_label, threshold=threshold, folder=folder)


def export_tags(lib: Library, fmt: str) -> str:
    """All tags as CSV (path,label,probability,source) or a JSON list."""
    with lib.session() as s:
        rows = s.execute(
            select(ImageRow.id, ImageRow.path, TagRow.label, TagRow.probability, TagRow.source)
            .join(TagRow, TagRow.image_id == ImageRow.id)
            .order_by(ImageRow.path, TagRow.probability.desc())
        ).all()
    records = [
        {"id": r.id, "path": r.path, "label": r.label, "probability": round(r.probability, 6), "source": r.source}
        for r in rows
    ]
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["id", "path", "label", "probability", "source"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue()
    raise UsageError(f"unknown export format {fmt!r} (use csv or json)")
