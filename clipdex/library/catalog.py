"""Read queries over the library's pictures and tags, for search and the web layer.

The only place outside the library package that needs the schema is here, so callers
(``search``, ``web``) deal in ids, plain rows and dicts, never in SQL.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from sqlalchemy import String, func, select, type_coerce

from clipdex.library.schema import ImageRow, TagRow
from clipdex.library.storage import DamagedLibrary

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library


@dataclass(frozen=True)
class Picture:
    """One indexed picture's facts as stored (size and mtime are the file's when it was indexed)."""

    id: int
    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int
    captured_at: dt.datetime | None
    indexed_at: dt.datetime


class HitRow(NamedTuple):
    """What a search result shows of a picture."""

    id: int
    path: str
    width: int
    height: int
    captured_at: dt.datetime | None


#: Row ids are SQLite INTEGERs; a larger number cannot be an id (and SQLite refuses to bind it).
MAX_ID = 2**63 - 1

# Dates are read as the text SQLite holds and parsed here, so a damaged one names its picture
# instead of failing inside SQLAlchemy's result processing.
_CAPTURED = type_coerce(ImageRow.captured_at, String)
_INDEXED = type_coerce(ImageRow.indexed_at, String)


def _damaged(image_id: object, what: str) -> DamagedLibrary:
    return DamagedLibrary(f"picture {image_id} is damaged in the database ({what:.200}); index it again")


def _date(image_id: int, column: str, value: object, optional: bool = True) -> dt.datetime | None:
    if value is None and optional:
        return None
    if isinstance(value, dt.datetime):  # a server's timestamp column (SQLite holds text)
        return value
    try:
        return dt.datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _damaged(image_id, f"its {column} is {value!r}, not a date") from None


def _check(image_id: int, **columns: tuple[object, type | tuple[type, ...]]) -> None:
    """Each value is of its type (one isinstance per column: no real cost on large answers)."""
    for column, (value, kind) in columns.items():
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _damaged(image_id, f"its {column} is {value!r:.60}")


def picture(lib: Library, image_id: int) -> Picture | None:
    """One picture's facts, or None when the id is unknown (or cannot be an id).

    A row whose values cannot be what clipdex stored is :class:`DamagedLibrary` naming the picture.
    """
    if not 0 <= image_id <= MAX_ID:
        return None
    with lib.session() as s:
        row = s.execute(select(ImageRow.id, ImageRow.path, ImageRow.size, ImageRow.mtime, ImageRow.content_hash,
                               ImageRow.width, ImageRow.height, _CAPTURED, _INDEXED)
                        .where(ImageRow.id == image_id)).first()
    if row is None:
        return None
    i, path, size, mtime, content_hash, width, height, captured, indexed = row
    _check(i, path=(path, str), size=(size, int), mtime=(mtime, (int, float)), content_hash=(content_hash, str),
           width=(width, int), height=(height, int))
    return Picture(i, lib.places.local(path), size, float(mtime), content_hash, width, height,
                   _date(i, "capture date", captured), _date(i, "indexing date", indexed, optional=False))


def picture_tags(lib: Library, image_id: int) -> list[dict]:
    """A picture's tags, most probable first: ``{"label", "probability", "source"}``."""
    with lib.session() as s:
        rows = s.execute(select(TagRow.label, TagRow.probability, TagRow.source)
                         .where(TagRow.image_id == image_id).order_by(TagRow.probability.desc())).all()
    return [{"label": r.label, "probability": round(r.probability, 4), "source": r.source} for r in rows]


def tag_counts(lib: Library) -> list[tuple[str, int]]:
    """``(label, pictures)`` for every label, the most used first."""
    pictures = func.count(func.distinct(TagRow.image_id))
    with lib.session() as s:
        return [tuple(r) for r in s.execute(select(TagRow.label, pictures).group_by(TagRow.label)
                                            .order_by(pictures.desc(), TagRow.label)).all()]


def folder_prefix(folder: str) -> str:
    """The absolute path prefix (ending in a separator) that pictures under ``folder`` start with."""
    return os.path.abspath(os.path.expanduser(folder)).rstrip(os.sep) + os.sep


def allowed_ids(
    lib: Library,
    tag: str | None = None,
    folder: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> np.ndarray | None:
    """Ids passing the filters (tag, folder, capture date range), or None when none apply.

    A date filter keeps only pictures with a capture date; ``until`` is exclusive.
    """
    if tag is None and folder is None and since is None and until is None:
        return None
    stmt = select(ImageRow.id)
    if tag is not None:
        stmt = stmt.where(ImageRow.id.in_(select(TagRow.image_id).where(TagRow.label == tag)))
    if folder is not None:
        escaped = lib.places.folder(folder_prefix(folder)).replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_")
        stmt = stmt.where(ImageRow.path.like(escaped + "%", escape="\\"))
    if since is not None:
        stmt = stmt.where(ImageRow.captured_at >= since)
    if until is not None:
        stmt = stmt.where(ImageRow.captured_at < until)
    with lib.session() as s:
        return np.fromiter(s.scalars(stmt), dtype=np.int64)


def hit_rows(lib: Library, ids: list[int]) -> dict[int, HitRow]:
    """id -> :class:`HitRow` for search results; a damaged row is :class:`DamagedLibrary` naming it."""
    with lib.session() as s:
        rows = s.execute(select(ImageRow.id, ImageRow.path, ImageRow.width, ImageRow.height, _CAPTURED)
                         .where(ImageRow.id.in_(ids))).all()
    out = {}
    for i, path, width, height, captured in rows:
        _check(i, path=(path, str), width=(width, int), height=(height, int))
        out[i] = HitRow(i, lib.places.local(path), width, height, _date(i, "capture date", captured))
    return out


def ids_at_paths(lib: Library, paths: list[str]) -> set[int]:
    """Ids of the pictures indexed at any of ``paths`` (absolute, as the indexer stores them)."""
    with lib.session() as s:
        return set(s.scalars(select(ImageRow.id).where(ImageRow.path.in_([lib.places.stored(p) for p in paths]))))


def count_pictures(lib: Library, tag: str | None = None, folder: str | None = None, undated: bool = False) -> int:
    """How many pictures carry ``tag``, lie under ``folder`` and (with ``undated``) have no capture date."""
    stmt = select(func.count(ImageRow.id))
    if tag is not None:
        stmt = stmt.where(ImageRow.id.in_(select(TagRow.image_id).where(TagRow.label == tag)))
    if folder is not None:
        escaped = lib.places.folder(folder_prefix(folder)).replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_")
        stmt = stmt.where(ImageRow.path.like(escaped + "%", escape="\\"))
    if undated:
        stmt = stmt.where(ImageRow.captured_at.is_(None))
    with lib.session() as s:
        return s.scalar(stmt) or 0


def capture_span(lib: Library) -> tuple[dt.datetime, dt.datetime] | None:
    """The earliest and latest capture dates in the library, or None when no picture has one."""
    with lib.session() as s:
        first, last = s.execute(select(func.min(_CAPTURED), func.max(_CAPTURED))).one()
        if first is None:
            return None
        if isinstance(first, dt.datetime):  # a server's timestamp column (SQLite holds text)
            return first, last
        try:
            return dt.datetime.fromisoformat(first), dt.datetime.fromisoformat(last)
        except (TypeError, ValueError):
            bad = first if not _parses(first) else last
            image_id = s.scalar(select(ImageRow.id).where(_CAPTURED == bad).limit(1))
            raise _damaged(image_id, f"its capture date is {bad!r}, not a date") from None


def _parses(value: object) -> bool:
    try:
        dt.datetime.fromisoformat(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
