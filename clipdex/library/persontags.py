"""Tags people give and take off: the ``person`` pass and the labels no pass may give back.

A person's tags live in the pass keyed ``person`` (probability 1, source ``person``), which
no classifier writes, so re-running or dropping a tagging pass never changes them. Taking
a label off a picture removes it whatever gave it (a pass or a person) and records the
refusal in ``tag_rejections``: later passes hold that label back for that picture (see
:func:`clipdex.library.tags.write_pass`). Adding the label back lifts the refusal. Taking
off a label none of the pictures has nor had taken off is refused (a typo, most likely), with
the labels they do have: nothing is held back for a label nothing gave.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from clipdex.errors import UsageError
from clipdex.indexer.scan import displayable, is_utf8
from clipdex.library import dialect
from clipdex.library.catalog import allowed_ids, ids_at_paths
from clipdex.library.schema import ImageRow, TagPassRow, TagRejectionRow, TagRow, utcnow
from clipdex.library.tags import PERSON, check_name
from clipdex.library.writes import CHUNK, delete_in_chunks

if TYPE_CHECKING:  # pragma: no cover
    from sqlalchemy.orm import Session

    from clipdex.library import Library


@dataclass
class PersonEdit:
    """What ``tags add`` or ``tags remove`` did to the pictures named."""

    action: str  # "add" or "remove"
    label: str
    pictures: int = 0
    changed: int = 0  # pictures that got the tag (add) or lost at least one tag (remove)
    tags_removed: dict[str, int] = field(default_factory=dict)  # pass name -> tags taken off (remove)
    rejections: int = 0  # refusals recorded (remove) or lifted (add)

    def as_dict(self) -> dict:
        return {"action": self.action, "label": self.label, "pictures": self.pictures, "changed": self.changed,
                "tags_removed": self.tags_removed, "rejections": self.rejections}


def picture_ids(lib: Library, paths: list[str]) -> list[int]:
    """The ids of the pictures at ``paths``: a picture, or every picture under a folder.

    A path that is neither an indexed picture nor a folder holding some is a :class:`UsageError`.
    """
    if not paths:
        raise UsageError("name at least one picture or folder")
    found: dict[int, None] = {}  # in the order named, each once
    for raw in paths:
        path = os.path.abspath(os.path.expanduser(raw))
        if not is_utf8(path):  # SQL cannot even look such a name up: the indexer never stores one
            raise UsageError(f"{displayable(raw)} is not in the library (its name is not valid UTF-8, and the "
                             "library holds no such name)")
        ids = sorted(ids_at_paths(lib, [path]))
        if not ids:
            under = allowed_ids(lib, folder=path)
            ids = [] if under is None else sorted(int(i) for i in under)
        if not ids:
            raise UsageError(f"{raw} is not in the library (no indexed picture there, nor under it)")
        found.update(dict.fromkeys(ids))
    return list(found)


def _person_pass(s: Session) -> TagPassRow:
    row = s.scalar(select(TagPassRow).where(TagPassRow.key == PERSON))
    if row is None:
        taken = s.scalar(select(TagPassRow).where(TagPassRow.name == PERSON))
        if taken is not None:  # a pass from before person tags existed: it keeps its tags under a new name
            taken.name = f"{PERSON} (pass #{taken.id})"
            s.flush()
        now = utcnow()
        row = TagPassRow(key=PERSON, name=PERSON, kind=PERSON, labels="[]", created_at=now, updated_at=now)
        s.add(row)
        s.flush()
    return row


def _existing(s: Session, model: type, ids: list[int], label: str, *where) -> list:
    out = []
    for start in range(0, len(ids), CHUNK):
        out += s.scalars(select(model).where(model.image_id.in_(ids[start:start + CHUNK]), model.label == label,
                                             *where)).all()
    return out


def add_tag(lib: Library, ids: list[int], label: str) -> PersonEdit:
    """Give ``label`` to the pictures ``ids`` as a person's tag, lifting any refusal of it there."""
    label = check_name(label, "label")
    edit = PersonEdit("add", label, pictures=len(ids))
    with lib.write_lock(), lib.session() as s:
        dialect.lock_person_tags(s)
        person = _person_pass(s)
        have = {t.image_id for t in _existing(s, TagRow, ids, label, TagRow.pass_id == person.id)}
        now = utcnow()
        for image_id in ids:
            if image_id not in have:
                s.add(TagRow(image_id=image_id, label=label, pass_id=person.id, source=PERSON, probability=1.0,
                             tagged_at=now))
                edit.changed += 1
        edit.rejections = delete_in_chunks(s, TagRejectionRow.image_id, ids, TagRejectionRow.label == label)
        person.updated_at = now
        s.commit()
    return edit


def remove_tag(lib: Library, ids: list[int], label: str) -> PersonEdit:
    """Take ``label`` off the pictures ``ids``, whatever gave it, and keep every pass from giving it back."""
    label = check_name(label, "label")
    edit = PersonEdit("remove", label, pictures=len(ids))
    with lib.write_lock(), lib.session() as s:
        dialect.lock_person_tags(s)
        names = {i: name for i, name in s.execute(select(TagPassRow.id, TagPassRow.name))}
        given = _existing(s, TagRow, ids, label)
        refused = {r.image_id for r in _existing(s, TagRejectionRow, ids, label)}
        if not given and not refused:  # a typo, most likely: nothing is taken off, nothing held back
            raise UsageError(_not_there(s, ids, label))
        touched: set[int] = set()
        for tag in given:
            name = names.get(tag.pass_id, "?")
            edit.tags_removed[name] = edit.tags_removed.get(name, 0) + 1
            touched.add(tag.image_id)
            s.delete(tag)
        edit.changed = len(touched)
        now = utcnow()
        for image_id in ids:
            if image_id not in refused:
                s.add(TagRejectionRow(image_id=image_id, label=label, rejected_at=now))
                edit.rejections += 1
        s.commit()
    return edit


def _not_there(s: Session, ids: list[int], label: str, shown: int = 12) -> str:
    """Why removing ``label`` from ``ids`` does nothing, with the labels those pictures do have."""
    counts: dict[str, int] = {}
    for start in range(0, len(ids), CHUNK):
        for have, n in s.execute(select(TagRow.label, func.count(func.distinct(TagRow.image_id)))
                                 .where(TagRow.image_id.in_(ids[start:start + CHUNK])).group_by(TagRow.label)):
            counts[have] = counts.get(have, 0) + n
    labels = sorted(counts, key=lambda k: (-counts[k], k))
    one = len(ids) == 1
    listed = ", ".join(labels[:shown]) + (f", +{len(labels) - shown} more" if len(labels) > shown else "")
    tags = f"{'its' if one else 'their'} tags: {listed}" if labels else f"{'it has' if one else 'they have'} no tags"
    what = f"the picture has no tag {label!r}" if one else f"no picture there has the tag {label!r}"
    return f"{what}, so nothing was taken off ({tags})"


def rejections(lib: Library) -> list[dict]:
    """Every label a person took off a picture, by path."""
    with lib.session() as s:
        rows = s.execute(select(ImageRow.path, TagRejectionRow.label, TagRejectionRow.rejected_at)
                         .join(ImageRow, ImageRow.id == TagRejectionRow.image_id)
                         .order_by(ImageRow.path, TagRejectionRow.label)).all()
    return [{"path": lib.places.local(r.path), "label": r.label, "rejected_at": r.rejected_at.isoformat()}
            for r in rows]


def tags_of(lib: Library, image_id: int) -> list[dict]:
    """A picture's tags with where each came from (``source`` and ``pass``), the person's first, then most probable."""
    with lib.session() as s:
        rows = s.execute(select(TagRow.label, TagRow.probability, TagRow.source, TagPassRow.name)
                         .join(TagPassRow, TagPassRow.id == TagRow.pass_id)
                         .where(TagRow.image_id == image_id)
                         .order_by((TagRow.source != PERSON), TagRow.probability.desc(), TagRow.label)).all()
    return [{"label": r.label, "probability": round(r.probability, 4), "source": r.source, "pass": r.name}
            for r in rows]
