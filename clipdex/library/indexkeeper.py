"""Keeping a library's search index current: readers catch up by delta, writers keep the base file fresh.

The database is the truth. The index is a *base* file (:mod:`clipdex.ann.base`), recorded in
``meta.index_file`` with the generation it holds, the checksum of its ids and the file's
fingerprint (another library's file with the same ids is told apart), plus the
change log since (:mod:`clipdex.library.changes`). A reader loads the recorded base (checked
against the record: a damaged, swapped or hostile file is never used) and applies the log;
then, after each commit, only the ids that changed. Writers (``index``) replace the base when
:mod:`clipdex.ann.policy` says so: another kind, a stale training, or too many changes.

Crash safety: the new file is written and renamed first, then the record (and the log
pruning) committed in one transaction, then old files deleted. Killed at any point, the
record names a complete file or the previous one, and the log still covers it.

On a database server each machine keeps its own base file in its cache folder, so each has
its own record (``index_file@<machine>``), and the log is pruned only up to the oldest
generation any machine's record holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from clipdex.ann import base as bases
from clipdex.ann import policy
from clipdex.ann.build import BuildReport, Say, build
from clipdex.ann.live import LiveIndex
from clipdex.errors import LibraryError
from clipdex.library import changes, dialect, places
from clipdex.library.schema import Meta

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.library import Library

RECORD, SETTING = "index_file", "index_type"
CHUNK = 50_000
#: A machine whose index file is older than this no longer holds the change log back (a machine gone for
#: good would keep it forever); should it come back, it loads its index afresh instead of by delta.
STALE_S = 14 * 24 * 3600
#: How long a search that built the index waits to record it while a writer holds the database (it then
#: keeps the index in memory, and the next search or writer records one).
READER_WAIT_S = 0.5


class IndexKeeper:
    """One library's live index (:meth:`current`) and its upkeep (:meth:`maintain`)."""

    def __init__(self, lib: Library):
        self.lib = lib
        self._live: LiveIndex | None = None
        self._lock = threading.Lock()
        if lib.server:  # this machine's cache folder
            machine = hashlib.sha256(f"{places.machine()}:{lib.path}".encode()).hexdigest()[:16]
            self.record_key = f"{RECORD}@{machine}"
        else:
            self.record_key = RECORD

    # -- readers --------------------------------------------------------------------
    def current(self) -> LiveIndex:
        """The index at the library's current generation.

        While one thread catches up, others keep searching the snapshot they had (at most one
        commit old) instead of waiting; only a process's very first load makes them wait.
        """
        live = self._live
        if live is not None and live.generation == self.lib.generation:
            return live
        if not self._lock.acquire(blocking=live is None):
            return live
        try:
            live = self._live
            if live is None or live.generation != self.lib.generation:
                live = self._catch_up(live) if live is not None else None
                self._live = live if live is not None else self._load()
            return self._live
        finally:
            self._lock.release()

    def forget(self) -> None:
        """Drop the loaded index (the next search loads afresh)."""
        with self._lock:
            self._live = None

    def _catch_up(self, live: LiveIndex) -> LiveIndex | None:
        """``live`` moved to the current generation by the change log; None when a fresh load is needed."""
        if live.dim != self.lib.dim:
            return None
        delta = changes.read_delta(self.lib, live.generation, limit=1 << 62)
        if delta is None:
            return None
        live = live.with_delta(delta.generation, delta.touched, delta.ids, delta.vectors)
        record = self.record()
        newer = record is not None and live.base is not None and record["generation"] > live.base.generation
        if newer and policy.compaction_due(live.pending, live.base.count):
            return None  # a writer wrote a fresher base: switch to it rather than grow the overlay
        return live

    def _load(self, attempts: int = 3) -> LiveIndex:
        dim = self.lib.dim
        if dim is None:
            raise LibraryError(f"library at {self.lib.location} is empty")
        live = self._from_record(dim)
        if live is None and self.lib.get_meta(self.record_key) is None:  # never another library's file
            live = self._from_legacy_file(dim)
        if live is not None and self._agrees(live):
            return live
        distrust = live is not None  # a sound base and the log disagree with the database: the log lost changes
        base, report = self._build(dim, self._kind())
        if self._save_if_unlocked(base, report, distrust):
            base = self._reopened(base)
        live = self._with_log(base, dim)
        if live is None:  # the log was restarted while we built (a model switch), or it is damaged
            if attempts <= 1:
                raise LibraryError(f"the change log of library {self.lib.location} is damaged (meta "
                                   f"{changes.CHANGES_FROM!r}): run clipdex index on it to repair it")
            return self._load(attempts - 1)
        return live

    def _agrees(self, live: LiveIndex) -> bool:
        """Whether ``live`` holds exactly the database's ids (when both are at the same generation: a commit
        in between leaves it to the next load)."""
        generation, expected = self.lib.ids_snapshot()
        ids = live.base.ids if live.base is not None and not live.pending else live.ids()
        return generation != live.generation or tuple(bases.ids_checksum(ids)) == tuple(expected)

    def _with_log(self, base: bases.Base, dim: int) -> LiveIndex | None:
        live = LiveIndex(dim, base.generation, base, self._fetch(dim))
        delta = changes.read_delta(self.lib, base.generation, limit=1 << 62)
        if delta is None:
            return None
        return live.with_delta(delta.generation, delta.touched, delta.ids, delta.vectors)

    def _from_record(self, dim: int) -> LiveIndex | None:
        record = self.record()
        base = self._verified(record, dim) if record is not None else None
        return self._with_log(base, dim) if base is not None else None

    def _from_legacy_file(self, dim: int) -> LiveIndex | None:
        """A flat file written by clipdex before the change log, valid if it holds the current generation's ids."""
        for path in bases.index_files(self.lib.path):
            base = bases.load(path, dim)
            if base is None or base.kind != bases.FLAT:
                continue
            generation, expected = self.lib.ids_snapshot()
            if base.generation == generation and bases.ids_checksum(base.ids) == expected:
                return LiveIndex(dim, generation, base, self._fetch(dim))
        return None

    def _fetch(self, dim: int):  # noqa: ANN202 - a Fetch
        return lambda ids: self.lib.vectors_of(ids, dim)

    # -- building -------------------------------------------------------------------
    def _kind(self, count: int | None = None) -> str:
        count = self.lib.count() if count is None else count
        return policy.choose_kind(count, self.lib.get_meta(SETTING, policy.AUTO))

    def _build(self, dim: int, kind: str, trained: object = None, trained_on: int = 0,
               say: Say | None = None) -> tuple[bases.Base, BuildReport]:
        generation, count = self.lib.generation, self.lib.count()  # read before streaming: the log covers after
        return build(kind, dim, generation, count, lambda: self.lib.stream_vectors(CHUNK), self.lib.sample_vectors,
                     self.lib.vectors_of, trained, trained_on, say)

    def _reopened(self, base: bases.Base) -> bases.Base:
        """The saved file in place of an in-memory IVF (its lists then stay on disk, not in memory)."""
        if base.kind != bases.IVF:
            return base
        return bases.load(base.path_in(self.lib.path), base.index.d) or base

    def _save_if_unlocked(self, base: bases.Base, report: BuildReport, distrust: bool = False) -> bool:
        try:
            with self.lib.index_lock():
                self._install(base, report, distrust, wait_s=READER_WAIT_S)
            return True
        except (LibraryError, OSError):
            return False  # a writer is busy (it keeps its own) or the folder is read-only: keep it in memory

    def _install(self, base: bases.Base, report: BuildReport, distrust: bool = False,
                 wait_s: float = dialect.LOCK_TIMEOUT_S) -> None:
        """Save ``base``, record it, prune the log the previous base needed no more, delete older files.
        ``distrust``: the log before ``base`` missed changes, so it is cut there. ``wait_s``: how long the
        record may wait for another writer's locks (a search saving what it built must not wait long)."""
        previous = self.record()
        path, fingerprint = base.save(self.lib.path)
        record = {**report.as_dict(), "file": path.name, "checksum": list(bases.ids_checksum(base.ids)),
                  "fingerprint": fingerprint, "built_at": time.time()}
        with self.lib.session() as s:
            dialect.limit_lock_waits(s, wait_s)
            self.lib.set_meta(s, self.record_key, json.dumps(record))
            if previous is not None and previous["generation"] < base.generation:
                changes.prune(s, self._prunable(s, previous["generation"]))
            (changes.distrust if distrust else changes.heal)(s, base.generation)
            s.commit()
        bases.tidy(self.lib.path, keep=path.name)  # older files, and any left by a rewrite killed part-way

    def _prunable(self, session, upto: int) -> int:  # noqa: ANN001 - a Session
        """How far the change log may be pruned: ``upto``, or on a server the oldest generation any
        machine's index file still needs (machines whose file is older than :data:`STALE_S` aside)."""
        if not self.lib.server:
            return upto
        now = time.time()
        for raw in session.scalars(select(Meta.value).where(Meta.key.like(RECORD + "@%"))):
            try:
                record = json.loads(raw)
                # a date in the future (a clock far ahead, damage) would hold the log back forever too
                if now - STALE_S <= float(record.get("built_at", now)) <= now + 24 * 3600:
                    upto = min(upto, int(record["generation"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return upto

    # -- writers --------------------------------------------------------------------
    def maintain(self, say: Say | None = None, final: bool = False) -> BuildReport | None:
        """Replace the base file if the policy says so (the caller holds the write lock); what was built.

        Cheap when nothing is due (a few small queries: it runs after every batch). ``final`` (the end
        of a run) also checks the recorded file itself, and brings a flat base fully up to date.
        A process on this machine already replacing it (a writer, or a server saving what it rebuilt) is left to it.
        """
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self.lib.index_lock())
            except LibraryError:
                return None
            return self._maintain(say, final)

    def _maintain(self, say: Say | None, final: bool) -> BuildReport | None:
        if final:  # the end of a run: what a killed rewrite left goes, even when nothing is due
            record = self.record()
            bases.tidy(self.lib.path, keep=record["file"] if record is not None else None)
        dim, count = self.lib.dim, self.lib.count()
        if dim is None or count == 0:
            return None
        kind, record = self._kind(count), self.record()
        pending = changes.count_since(self.lib, record["generation"]) if record is not None else None
        stale = pending is None or record["kind"] != kind or (
            kind == bases.IVF and policy.retrain_due(count, record["trained_on"]))
        due = stale or policy.compaction_due(pending, record["count"]) or (final and kind == bases.FLAT and pending)
        if not due and not final:
            return None
        current = None if stale else self._verified(record, dim)
        lost = False  # the recorded base and the log disagree with the database: the log missed changes
        if current is not None and final and not due:
            live = self._with_log(current, dim)
            lost = live is not None and not self._agrees(live)
        if current is None or lost:
            stale = True
        elif not due:
            return None
        trained = bases.empty_copy(current.index) if current is not None and kind == bases.IVF else None
        base, report = self._build(dim, kind, trained, record["trained_on"] if trained is not None else 0, say)
        self._install(base, report, distrust=lost or pending is None)
        return report

    def _verified(self, record: dict, dim: int) -> bases.Base | None:
        """The recorded base file, if it is sound and holds what the record says."""
        base = bases.load(self.lib.path / record["file"], dim)
        if base is None or (base.generation, base.kind, base.fingerprint) != (
                record["generation"], record["kind"], record["fingerprint"]):
            return None
        return base if tuple(bases.ids_checksum(base.ids)) == tuple(record["checksum"]) else None

    def set_kind(self, kind: str) -> None:
        """Record the user's choice (``auto``, ``flat`` or ``ivf``); the next :meth:`maintain` follows it."""
        if kind not in policy.KINDS:
            raise LibraryError(f"index type must be one of {', '.join(policy.KINDS)}, not {kind!r}")
        with self.lib.session() as s:
            s.merge(Meta(key=SETTING, value=kind))
            s.commit()

    def record(self) -> dict | None:
        """The recorded base file's facts, or None (none yet, or a record this clipdex cannot read)."""
        raw = self.lib.get_meta(self.record_key)
        try:
            record = json.loads(raw) if raw else None
            if not isinstance(record, dict) or record.get("kind") not in (bases.FLAT, bases.IVF):
                return None
            for key in ("generation", "trained_on", "count"):
                record[key] = int(record[key])
            checksum = [int(x) for x in record["checksum"]]
            if len(checksum) != 3 or not isinstance(record["file"], str) or not bases.is_index_name(record["file"]) \
                    or not isinstance(record["fingerprint"], str):
                return None
            return {**record, "checksum": checksum}
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> dict:
        """What ``clipdex info`` shows of the index: the setting, and the recorded base's facts."""
        record = self.record() or {}
        facts = {"index_setting": self.lib.get_meta(SETTING, policy.AUTO), "index_type": record.get("kind")}
        for key in ("nlist", "nprobe", "recall_at_10", "trained_on", "generation"):
            if record.get(key) is not None and (key == "generation" or record.get("kind") == bases.IVF):
                facts[f"index_{key}"] = record[key]
        return facts

