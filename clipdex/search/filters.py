"""Search filters from user input (capture-date ranges), and why a filtered search found nothing.

Both front ends use these: the dates follow the same rule everywhere (``YYYY-MM-DD``, both
ends inclusive), and :func:`why_empty` returns its findings as data so the CLI and the web
can each word them their own way.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from clipdex.errors import UsageError
from clipdex.library import Library
from clipdex.library.catalog import allowed_ids, capture_span, count_pictures, folder_prefix, tag_counts
from clipdex.suggest import similar_names


def parse_day(raw: str | None, name: str) -> dt.date | None:
    """``YYYY-MM-DD`` as a date (None for no value); :class:`UsageError` naming ``name`` otherwise."""
    if raw is None or not raw.strip():
        return None
    try:
        return dt.date.fromisoformat(raw.strip())
    except ValueError:
        raise UsageError(f"{name} must be a date like 2024-07-31, got {raw[:40]!r}") from None


def day_range(first: dt.date | None, last: dt.date | None) -> tuple[dt.datetime | None, dt.datetime | None]:
    """``(since, until)`` for :func:`clipdex.search.search`: from the start of ``first`` to the end of ``last``.

    ``last`` is inclusive: ``until`` is the start of the next day, or the end of time after 9999-12-31.
    """
    since = dt.datetime.combine(first, dt.time()) if first else None
    until = None
    if last:
        until = dt.datetime.max if last == dt.date.max else dt.datetime.combine(last + dt.timedelta(days=1), dt.time())
    return since, until


@dataclass(frozen=True)
class EmptyReason:
    """One reason a search found nothing.

    ``kind`` is one of:

    - ``empty_library``: the library holds no pictures;
    - ``unknown_tag``: no picture has ``tag``; ``known`` lists the labels in use, the closest first;
    - ``empty_folder``: no indexed picture lies under ``folder`` (absolute);
    - ``empty_date_range``: the range ends before it starts;
    - ``none_in_date_range``: no picture was taken in the range; ``first``/``last`` span the capture dates;
    - ``undated``: ``count`` pictures that pass the other filters have no capture date, so date filters
      leave them out;
    - ``no_overlap``: every filter matches some pictures, but none matches all of them.
    """

    kind: str
    tag: str | None = None
    known: tuple[str, ...] = ()
    folder: str | None = None
    count: int = 0
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def as_dict(self) -> dict:
        """The kind and the fields that apply to it, JSON-ready."""
        out: dict = {"kind": self.kind}
        if self.kind == "unknown_tag":
            out.update(tag=self.tag, known=list(self.known))
        elif self.kind == "empty_folder":
            out["folder"] = self.folder
        elif self.kind == "undated":
            out["count"] = self.count
        elif self.kind == "none_in_date_range":
            out.update(first=self.first.isoformat(), last=self.last.isoformat())
        return out


def _closest_first(wanted: str, labels: list[str]) -> tuple[str, ...]:
    close = similar_names(wanted, labels)
    return tuple(close + [label for label in labels if label not in close])


def why_empty(
    lib: Library,
    *,
    tag: str | None = None,
    folder: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[EmptyReason]:
    """Why a search with these filters finds nothing (``since`` inclusive, ``until`` exclusive).

    Call it after a search came back empty. Filters that find nothing on their own are named;
    when each finds something, the answer is ``no_overlap``. Pictures without a capture date
    that a date filter drops are counted whenever a date filter is given. The answer is empty
    when neither the library nor the filters explain it: the filters keep some pictures (say,
    none of them matches an ``--only-matches`` query, or the only match was left out).
    """
    if count_pictures(lib) == 0:
        return [EmptyReason("empty_library")]
    if tag is None and folder is None and since is None and until is None:
        return []
    if len(allowed_ids(lib, tag, folder, since, until)):  # the filters keep pictures: not the reason
        return []
    reasons: list[EmptyReason] = []
    if tag is not None:
        labels = [label for label, _ in tag_counts(lib)]
        if tag not in labels:
            reasons.append(EmptyReason("unknown_tag", tag=tag, known=_closest_first(tag, labels)))
    if folder is not None and count_pictures(lib, folder=folder) == 0:
        reasons.append(EmptyReason("empty_folder", folder=folder_prefix(folder).rstrip(os.sep) or os.sep))
    if since is not None or until is not None:
        if since is not None and until is not None and since >= until:
            reasons.append(EmptyReason("empty_date_range"))
        else:
            span = capture_span(lib)
            if span is not None and len(allowed_ids(lib, since=since, until=until)) == 0:
                reasons.append(EmptyReason("none_in_date_range", first=span[0], last=span[1]))
            undated = count_pictures(lib, tag=tag, folder=folder, undated=True)
            if undated:
                reasons.append(EmptyReason("undated", count=undated))
    return reasons or [EmptyReason("no_overlap")]
