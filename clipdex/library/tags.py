"""Tags, tagging passes and probes in the database: the SQL behind :mod:`clipdex.classify`.

Every tag belongs to a *pass*: one classifier run over the library, identified by its
key (a name given with ``tag --set NAME``, else the zero-shot label set, or a probe's
name). Writing a pass replaces only the tags that same pass gave the same pictures
before, and says what moved: tags added, changed (another label, or another probability)
and removed. Other passes are never touched, nor are a person's tags (the ``person``
pass, :mod:`clipdex.library.persontags`); a label a person took off a picture
(``tag_rejections``) is never given back by a pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from clipdex.errors import ModelMismatch, UsageError
from clipdex.library.names import check_name, check_text
from clipdex.library.schema import ImageRow, ProbeRow, TagPassRow, TagRejectionRow, TagRow, utcnow
from clipdex.library.writes import CHUNK, delete_in_chunks
from clipdex.models import ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

ZERO_SHOT = "zero-shot"
#: Key (and name) of the pass the 0.1.0 upgrade made from its zero-shot tags, whose label set was not kept.
LEGACY_ZERO_SHOT = "zero-shot"
NAME_LENGTH = 48
#: Key, name and kind of the pass holding the tags people gave (never written by a classifier).
PERSON = "person"
SAME = 1e-3  # probabilities closer than this count as unchanged (and keep their stored value): a
# change a person cannot see in the 3 decimals shown is no change


def _chunks(items: list) -> Iterator[list]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


@dataclass(frozen=True)
class PassSpec:
    """What a tagging pass is: its kind, its classes in the classifier's order, and how it ran."""

    kind: str  # "zero-shot" or "probe:NAME"
    labels: tuple[str, ...]
    prompts: dict[str, str] | None = None
    templates: tuple[str, ...] | None = None
    model_identity: str | None = None
    multi_label: bool = False
    threshold: float | None = None
    name: str | None = None  # chosen with ``tag --set NAME``: the pass is this name, whatever it runs

    def __post_init__(self) -> None:
        for label in self.labels:
            check_text(label)
        if self.name is not None:
            object.__setattr__(self, "name", named(self.name))

    @property
    def key(self) -> str:
        """A named pass is its name; a probe's pass is the probe; a zero-shot pass is its label set, in any order."""
        if self.name is not None:
            return f"set:{self.name}"
        if self.kind.startswith("probe:"):
            return self.kind
        digest = hashlib.sha256(json.dumps(sorted(self.labels), ensure_ascii=False).encode()).hexdigest()
        return f"{self.kind}:{digest[:16]}"

    def default_name(self) -> str:
        """A readable name: the one chosen, the probe's, or the labels (shortened when long)."""
        if self.name is not None:
            return self.name
        if self.kind.startswith("probe:"):
            return self.kind
        name = ", ".join(self.labels)
        if len(name) <= NAME_LENGTH:
            return name
        shown: list[str] = []
        for label in self.labels:
            if len(", ".join([*shown, label])) > NAME_LENGTH - 12:
                break
            shown.append(label)
        return f"{', '.join(shown)} +{len(self.labels) - len(shown)} more"


@dataclass
class TagStats:
    """What a pass did (or, in a dry run, would do) to the pictures it tagged."""

    images: int = 0
    tags_written: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)
    pass_key: str = ""
    pass_name: str = ""
    dry_run: bool = False
    held_back: int = 0  # tags not given because a person took that label off that picture

    def as_dict(self) -> dict:
        return {"pass": {"key": self.pass_key, "name": self.pass_name}, "dry_run": self.dry_run,
                "images": self.images, "tags_written": self.tags_written, "added": self.added,
                "changed": self.changed, "removed": self.removed, "unchanged": self.unchanged,
                "held_back": self.held_back, "counts": self.counts, "examples": self.examples}


def named(name: str) -> str:
    """A pass name for ``tag --set``: checked, and never the person's pass nor a probe's."""
    name = check_name(name)
    if name == PERSON:
        raise UsageError(f'"{PERSON}" holds the tags people gave; choose another name for a tagging pass')
    if name.lower().startswith("probe:"):
        raise UsageError(f"{name!r}: names starting with probe: are the passes probes give (tag --probe NAME); "
                         "choose another name")
    return name


def _tag(label_p: tuple[str, float] | None) -> dict | None:
    return None if label_p is None else {"label": label_p[0], "probability": round(label_p[1], 6)}


def compare(before: dict[str, float], after: list[tuple[str, float]]) -> tuple[list[dict], int]:
    """One picture's changes (``added``/``changed``/``removed``) and how many tags stayed as they were.

    A label kept with another probability is a change; a label replaced by another one is
    a change too (the picture's tag moved), and what is left over is added or removed.
    """
    now = dict(after)
    changes: list[dict] = []
    unchanged = 0
    for label in [label for label, _ in after if label in before]:
        if abs(before[label] - now[label]) > SAME:
            changes.append({"change": "changed", "before": _tag((label, before[label])),
                            "after": _tag((label, now[label]))})
        else:
            unchanged += 1
    gone = sorted((label for label in before if label not in now), key=lambda lb: (-before[lb], lb))
    new = [label for label, _ in after if label not in before]
    for i in range(max(len(gone), len(new))):
        old = (gone[i], before[gone[i]]) if i < len(gone) else None
        fresh = (new[i], now[new[i]]) if i < len(new) else None
        kind = "changed" if old and fresh else "added" if fresh else "removed"
        changes.append({"change": kind, "before": _tag(old), "after": _tag(fresh)})
    return changes, unchanged


def _find_pass(s: Session, spec: PassSpec) -> TagPassRow | None:
    """The pass named ``spec.name``; else the one with ``spec``'s key; else the upgraded 0.1.0 zero-shot pass,
    if ``spec`` covers its labels."""
    if spec.name is not None:
        row = s.scalar(select(TagPassRow).where(TagPassRow.name == spec.name))
        if row is not None:
            return row
    row = s.scalar(select(TagPassRow).where(TagPassRow.key == spec.key))
    if row is None and spec.kind == ZERO_SHOT and spec.name is None:
        legacy = s.scalar(select(TagPassRow).where(TagPassRow.key == LEGACY_ZERO_SHOT))
        if legacy is not None and set(json.loads(legacy.labels)) <= set(spec.labels):
            row = legacy
    return row


def _free_name(s: Session, wanted: str, own_id: int | None) -> str:
    taken = {n for i, n in s.execute(select(TagPassRow.id, TagPassRow.name)).all() if i != own_id}
    name, n = wanted, 2
    while name in taken:
        name, n = f"{wanted} #{n}", n + 1
    return name


def _save_pass(s: Session, row: TagPassRow | None, spec: PassSpec) -> TagPassRow:
    """Create the pass, or record this run's settings on it (adopting a 0.1.0 pass gives it the new key)."""
    now = utcnow()
    if row is None or row.key != spec.key:
        name = spec.name if spec.name is not None else _free_name(s, spec.default_name(), row.id if row else None)
        row = row or TagPassRow(created_at=now)
        row.key, row.name = spec.key, name
    row.kind, row.labels = spec.kind, json.dumps(list(spec.labels), ensure_ascii=False)
    row.prompts = None if spec.prompts is None else json.dumps(spec.prompts, ensure_ascii=False)
    row.templates = None if spec.templates is None else json.dumps(list(spec.templates), ensure_ascii=False)
    row.model_identity, row.multi_label, row.threshold = spec.model_identity, spec.multi_label, spec.threshold
    row.updated_at = now
    s.add(row)
    s.flush()
    return row


#: Returns picture ids and, per picture, the ``(label, probability)`` tags to give it.
Tagger = Callable[[], tuple[list[int], list[list[tuple[str, float]]]]]


def write_pass(lib: Library, spec: PassSpec, tagger: Tagger, *, dry_run: bool = False, examples: int = 3) -> TagStats:
    """Tag pictures as pass ``spec`` with what ``tagger()`` says, in one transaction.

    ``tagger`` runs while the library's write lock is held, so no picture changes between
    reading its vector and storing its tags. Only this pass's earlier tags of these pictures
    are replaced. With ``dry_run`` nothing is written (and no lock taken), and the answer
    says what would change. ``examples`` per kind of change are kept for people to look at.
    """
    lock = contextlib.nullcontext() if dry_run else lib.write_lock(exclusive=True)  # no picture changes meanwhile
    with lock, lib.session() as s:
        ids, kept = tagger()
        stats = TagStats(images=len(ids), pass_key=spec.key, dry_run=dry_run)
        kept, stats.held_back = _without_rejected(s, ids, kept)
        row = _find_pass(s, spec)
        wanted = set(ids)
        before: dict[int, dict[str, float]] = {}
        if row is not None:
            for image_id, label, p in s.execute(select(TagRow.image_id, TagRow.label, TagRow.probability)
                                                .where(TagRow.pass_id == row.id)):
                if image_id in wanted:
                    before.setdefault(image_id, {})[label] = p
        rewrite: list[int] = []
        shown: dict[tuple[str, bool], list[tuple[int, dict]]] = {}
        for image_id, tags in zip(ids, kept):
            changes, unchanged = compare(before.get(image_id, {}), tags)
            stats.unchanged += unchanged
            if changes:
                rewrite.append(image_id)
            for c in changes:
                setattr(stats, c["change"], getattr(stats, c["change"]) + 1)
                moved = bool(c["before"] and c["after"] and c["before"]["label"] != c["after"]["label"])
                bucket = shown.setdefault((c["change"], moved), [])
                if len(bucket) < examples:
                    bucket.append((image_id, c))
            for label, _ in tags:
                stats.counts[label] = stats.counts.get(label, 0) + 1
                stats.tags_written += 1
        if spec.name is not None or (row is not None and row.key == spec.key):
            stats.pass_name = spec.name or row.name
        else:
            stats.pass_name = _free_name(s, spec.default_name(), row.id if row else None)
        if not dry_run:
            row = _save_pass(s, row, spec)
            by_id = dict(zip(ids, kept))
            now = utcnow()
            delete_in_chunks(s, TagRow.image_id, rewrite, TagRow.pass_id == row.id)
            rows = [{"image_id": i, "label": label, "pass_id": row.id, "source": spec.kind, "probability": p,
                     "tagged_at": now} for i in rewrite for label, p in by_id[i]]
            if rows:
                s.execute(insert(TagRow), rows)
            s.commit()
    stats.examples = _examples(lib, shown, examples)
    return stats


def _without_rejected(s: Session, ids: list[int], kept: list[list[tuple[str, float]]]
                      ) -> tuple[list[list[tuple[str, float]]], int]:
    """``kept`` less the labels a person took off those pictures, and how many were held back."""
    rejected = {(i, label) for i, label in s.execute(select(TagRejectionRow.image_id, TagRejectionRow.label))}
    if not rejected:
        return kept, 0
    out, held = [], 0
    for image_id, tags in zip(ids, kept):
        mine = [(label, p) for label, p in tags if (image_id, label) not in rejected]
        held += len(tags) - len(mine)
        out.append(mine)
    return out, held


def _examples(lib: Library, shown: dict[tuple[str, bool], list[tuple[int, dict]]], per_kind: int) -> list[dict]:
    """Up to ``per_kind`` examples of each change, label moves before mere probability moves, with paths."""
    picked = []
    for kind in ("changed", "added", "removed"):
        picked += (shown.get((kind, True), []) + shown.get((kind, False), []))[:per_kind]
    if not picked:
        return []
    with lib.session() as s:
        paths = dict(s.execute(select(ImageRow.id, ImageRow.path)
                               .where(ImageRow.id.in_([i for i, _ in picked]))).all())
    return [{"path": lib.places.local(paths.get(i, "")), **c} for i, c in picked]


def export_rows(lib: Library) -> list[dict]:
    """Every tag with its picture and pass, by path, most probable first."""
    with lib.session() as s:
        rows = s.execute(
            select(ImageRow.id, ImageRow.path, TagRow.label, TagRow.probability, TagRow.source,
                   TagPassRow.name)
            .join(TagRow, TagRow.image_id == ImageRow.id)
            .join(TagPassRow, TagPassRow.id == TagRow.pass_id)
            .order_by(ImageRow.path, TagRow.probability.desc(), TagRow.label)
        ).all()
    return [{"id": r.id, "path": lib.places.local(r.path), "label": r.label, "probability": round(r.probability, 6),
             "source": r.source, "pass": r.name} for r in rows]


def pass_rows(lib: Library) -> list[dict]:
    """Every pass with what it ran and how many tags it holds, by name."""
    with lib.session() as s:
        counts = {i: n for i, n in s.execute(select(TagRow.pass_id, func.count()).group_by(TagRow.pass_id))}
        rows = list(s.scalars(select(TagPassRow).order_by(TagPassRow.name)))
    return [{"name": r.name, "kind": r.kind, "labels": json.loads(r.labels),
             "templates": None if r.templates is None else json.loads(r.templates),
             "model": r.model_identity, "tags": counts.get(r.id, 0),
             "updated_at": r.updated_at.isoformat()} for r in rows]


def drop_pass(lib: Library, name: str) -> int:
    """Remove pass ``name`` and every tag it gave; returns how many tags went.

    The person's pass is refused (its tags go one by one with ``tags remove``), and so is a
    name no pass has, with the names there are.
    """
    if name == PERSON:
        raise UsageError(f'"{PERSON}" holds the tags people gave, not a tagging pass: take them off with '
                         "tags remove")
    with lib.write_lock(), lib.session() as s:
        row = s.scalar(select(TagPassRow).where(TagPassRow.name == name))
        if row is None:
            known = ", ".join(repr(n) for n in s.scalars(select(TagPassRow.name).where(TagPassRow.key != PERSON)
                                                         .order_by(TagPassRow.name)))
            raise UsageError(f"no tagging pass is named {name[:100]!r} (there are: {known or 'none'})")
        gone = delete_in_chunks(s, TagRow.pass_id, [row.id])
        s.delete(row)
        s.commit()
    return gone


def vectors_by_path(lib: Library, paths: list[str]) -> dict[str, tuple[int, float, bytes]]:
    """Stored ``(size, mtime, vector bytes)`` of the given paths that the library holds."""
    out = {}
    stored = [lib.places.stored(p) for p in paths]
    with lib.session() as s:
        for chunk in _chunks(stored):
            for r in s.execute(select(ImageRow.path, ImageRow.size, ImageRow.mtime, ImageRow.vector)
                               .where(ImageRow.path.in_(chunk))):
                out[lib.places.local(r.path)] = (r.size, r.mtime, r.vector)
    return out


# -- probes ---------------------------------------------------------------------
def save_probe(lib: Library, name: str, spec: ModelSpec, dim: int, classes: list[str], weights: bytes,
               bias: bytes, metrics: dict) -> None:
    """Store (or replace) probe ``name``; a library bound to no model yet is bound to ``spec``."""
    with lib.write_lock(), lib.session() as s:
        current = lib.get_meta("model_identity")
        if current is None:
            lib.bind_model(s, spec, dim)
        elif current != spec.identity:
            raise ModelMismatch(f"library {lib.location} was built with model {lib.model_spec}, not {spec}: "
                                "a probe must read the library's own embeddings", requested=str(spec))
        s.merge(ProbeRow(name=name, model_identity=spec.identity, classes=json.dumps(classes), weights=weights,
                         bias=bias, metrics=json.dumps(metrics), created_at=utcnow()))
        s.commit()


def probe_row(lib: Library, name: str) -> ProbeRow | None:
    with lib.session() as s:
        return s.get(ProbeRow, name)


def probe_rows(lib: Library) -> list[ProbeRow]:
    """Every stored probe, by name."""
    with lib.session() as s:
        return list(s.scalars(select(ProbeRow).order_by(ProbeRow.name)))
