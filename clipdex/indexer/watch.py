"""Keep a library current: watch folders and index what changes in them, as it changes.

A watchdog observer (inotify on Linux; polling where inotify cannot be used) reports file
events. They are gathered until the watched folders have been quiet for ``quiet`` seconds
and no file they name was modified within that time (a file still being written waits), then
one incremental :class:`~clipdex.indexer.run.Indexer` pass sweeps every watched folder the
events touched. One pass covering both the old and the new place of a renamed folder is
what turns it into moves: the pass pairs vanished pictures with new files by content hash,
so nothing is re-encoded, and nothing is deleted first.

The pass is the one ``clipdex index`` runs (same skip reasons, one transaction per batch, at
most the batch in flight lost when killed), over whole watched folders: restricting it to the
changed sub-folders would record each of them as an indexed folder, and a sweep that only
stats files costs little (see ``benchmarks/bench_watch.py``). A watched folder that goes away
(an unmounted drive) is never swept: its pictures stay, and it is swept again when it comes
back. A picture whose deletion was *seen* (an event, under a folder still there) is removed
even where the indexer alone would keep it (the last picture of a folder).

``clipdex serve --watch`` runs this as a child process: :mod:`clipdex.indexer.watch_process`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.events import (
    EVENT_TYPE_CLOSED_NO_WRITE,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_EVENTS_LOST,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    EVENT_TYPE_OPENED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from clipdex.errors import ClipdexError, LibraryBusy, LibraryError, ModelMismatch, UsageError
from clipdex.imaging import is_image_path
from clipdex.indexer.run import Indexer, IndexStats
from clipdex.indexer.scan import Scan, normalise_roots
from clipdex.library import Library, writes
from clipdex.library.paths import under
from clipdex.library.storage import DiskFull

#: What the watcher tells its caller: ``(kind, details)``; see :class:`Watcher`.
Notify = Callable[[str, dict], None]


@dataclass
class PassReport:
    """One pass: the folders swept, the file events it answers, what the indexer did."""

    roots: list[str]
    events: int
    stats: IndexStats
    forgotten: int = 0  # pictures removed because their deletion was seen (beyond what the sweep removed)
    waited: float = 0.0  # seconds from the first event of the batch to the start of the pass

    def as_dict(self) -> dict:
        return {"roots": self.roots, "events": self.events, "forgotten": self.forgotten,
                "waited": round(self.waited, 3), **self.stats.as_dict()}

    def summary(self) -> str:
        s = self.stats
        removed = s.removed + self.forgotten
        what = f"{self.events} file event{'' if self.events == 1 else 's'} in" if self.events else "swept"
        return (f"{what} {', '.join(self.roots)}: indexed {s.indexed} (encoded {s.encoded}) · "
                f"moved {s.moved} · removed {removed} · skipped {s.skipped} · unchanged {s.unchanged} "
                f"({s.seconds:.1f}s)")


@dataclass
class _Batch:
    """Events gathered since the last pass."""

    roots: set[str] = field(default_factory=set)    # watched folders to sweep
    files: set[str] = field(default_factory=set)    # files created or written: each must be still
    gone: set[str] = field(default_factory=set)     # paths seen deleted or moved away
    events: int = 0
    first: float = 0.0
    last: float = 0.0


def _hidden(path: str, root: str) -> bool:
    """True when a part of ``path`` below ``root`` starts with a dot (the scan leaves those out)."""
    rel = os.path.relpath(path, root)
    return any(part.startswith(".") for part in rel.split(os.sep) if part not in ("", "."))


def passes_by_itself(exc: ClipdexError) -> bool:
    """True for a failed pass worth trying again as it is: the library busy with another writer, or its
    disk full (space may be freed). Anything else (a bad or missing model, another model's library,
    a damaged, read-only or vanished library) stays until someone acts: ``clipdex index`` stops on it,
    and so does the watcher."""
    return isinstance(exc, (DiskFull, LibraryBusy))


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, root: str):
        self.watcher, self.root = watcher, root

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher._event(self.root, event)


def _key(path: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the folder at ``path``; None when there is none (gone, unmounted, a file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


class Watcher:
    """Follow ``roots`` (None: every folder ``library`` was indexed from, re-read as it grows).

    ``quiet``: seconds without events (and without a named file modified) before a pass; over
    0.5 s, a move between two watched folders lands in one pass (watchdog reports the side a
    file left 0.5 s later, waiting for the other half of the move);
    ``max_wait``: a pass runs after this long even while events keep coming; ``recheck``:
    how often the folders themselves are checked (gone, back, remounted); ``retry``: seconds
    before a failed pass (library busy with another writer, disk full) is tried again; any other
    :class:`ClipdexError` of a pass (see :func:`passes_by_itself`) stops :meth:`run`, raised as
    ``clipdex index`` would raise it;
    ``poll``: use the polling observer (every ``poll_interval`` seconds) instead of inotify,
    which is also used where inotify cannot watch a folder. ``notify(kind, details)`` hears
    ``watching``, ``pass`` (details: :meth:`PassReport.as_dict`, and ``report``), ``offline``,
    ``back``, ``error`` and ``stopped``, each with a ``message`` for a person. ``indexer``
    options go to :class:`Indexer` (``say`` there hears its progress lines).
    """

    def __init__(self, library: Library, roots: list[str] | None = None, model: str | None = None, *,
                 quiet: float = 1.0, max_wait: float = 30.0, recheck: float = 2.0, retry: float = 5.0,
                 poll: bool = False, poll_interval: float = 2.0, notify: Notify | None = None,
                 device: str | None = None, backend: str | None = None, **indexer: object):
        self.lib = library
        self.follow_library = roots is None
        self.roots = normalise_roots(roots) if roots is not None else []
        files = [r for r in self.roots if os.path.isfile(r)]
        if files:
            raise UsageError(f"watch follows folders, and {files[0]} is a file: watch the folder holding it")
        self.model, self.device, self.backend = model, device, backend
        self.quiet, self.max_wait, self.recheck, self.retry = quiet, max_wait, recheck, retry
        self.poll, self.poll_interval = poll, poll_interval
        self.notify = notify or (lambda _kind, _details: None)
        self.indexer_options = {"progress": False, **indexer}
        self._indexer: Indexer | None = None
        self.reports: list[PassReport] = []
        self._lock = threading.Lock()
        self._batch = _Batch()
        self._watches: dict[str, tuple[BaseObserver, ObservedWatch, tuple[int, int]]] = {}
        self._observers: dict[str, BaseObserver] = {}
        self._not_before = 0.0  # no pass before this (monotonic): after a failure
        self._checked = 0.0
        self._failure: str | None = None
        self._offline: set[str] = set()  # folders seen gone, waited for

    # -- events (watchdog threads) ------------------------------------------------------------
    def _event(self, root: str, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in (EVENT_TYPE_OPENED, EVENT_TYPE_CLOSED_NO_WRITE) or (kind == EVENT_TYPE_MODIFIED
                                                                        and event.is_directory):
            return  # reads, and a folder's own mtime changing with what it holds
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if kind == EVENT_TYPE_MOVED else ""
        library = str(self.lib.path)
        now = time.monotonic()
        with self._lock:
            b = self._batch
            if kind == EVENT_TYPE_EVENTS_LOST:  # the kernel's queue overflowed: sweep everything
                b.roots.update(list(self._watches))
            else:
                wanted = [p for p in (src, dest) if p and under(p, root) and not under(p, library)
                          and not _hidden(p, root) and (event.is_directory or is_image_path(p))]
                if not wanted:
                    return
                b.roots.add(root)
                if kind in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED) and src in wanted and src != root:
                    b.gone.add(src)
                if not event.is_directory and kind != EVENT_TYPE_DELETED:
                    b.files.add(dest or src)
            b.events += 1
            b.first = b.first or now
            b.last = now

    # -- the folders -----------------------------------------------------------------------------
    def _observer(self, polling: bool) -> BaseObserver:
        name = "polling" if polling else "inotify"
        if name not in self._observers:
            observer = PollingObserver(timeout=self.poll_interval) if polling else Observer()
            observer.daemon = True
            observer.start()
            self._observers[name] = observer
        return self._observers[name]

    def _watch(self, root: str, key: tuple[int, int]) -> None:
        """Start watching ``root`` (inotify, else polling); say how."""
        how, note = "polling", ""
        if not self.poll:
            try:
                observer = self._observer(False)
                watch = observer.schedule(_Handler(self, root), root, recursive=True)
                self._watches[root] = (observer, watch, key)
                self.notify("watching", {"root": root, "method": "inotify",
                                         "message": f"watching {root}"})
                return
            except OSError as exc:  # no inotify here, or its watch limit reached
                note = f" (inotify cannot watch it: {exc.strerror or exc}; see fs.inotify.max_user_watches)"
        observer = self._observer(True)
        watch = observer.schedule(_Handler(self, root), root, recursive=True)
        self._watches[root] = (observer, watch, key)
        self.notify("watching", {"root": root, "method": how,
                                 "message": f"watching {root} by polling every {self.poll_interval:g}s{note}"})

    def _unwatch(self, root: str) -> None:
        observer, watch, _ = self._watches.pop(root)
        try:
            observer.unschedule(watch)
        except (KeyError, OSError):
            pass

    def _check_roots(self, now: float) -> None:
        """Notice folders that went away, came back or were replaced (remounted); pick up new library roots."""
        self._checked = now
        if self.follow_library:
            self.roots.extend(r for r in self.lib.roots() if r not in self.roots and not os.path.isfile(r))
        for root in self.roots:
            if any(under(root, other) for other in self.roots if other != root):
                if root in self._watches:  # a folder around it is watched now
                    self._unwatch(root)
                continue
            key = _key(root)
            watched = self._watches.get(root)
            if watched is not None and watched[2] == key:
                continue
            if watched is not None:
                self._unwatch(root)
                with self._lock:  # paths the old watch reported say nothing of what is there now
                    self._batch.gone = {g for g in self._batch.gone if not under(g, root)}
            if key is None:
                if watched is not None or root not in self._offline:
                    self._offline.add(root)
                    kept = len(writes.known_rows(self.lib, Scan([root]).covers))
                    self.notify("offline", {"root": root, "kept": kept, "message":
                                f"{root} is gone (an unmounted drive?): its {kept} pictures stay in the library; "
                                "it is swept again when it comes back"})
                continue
            came_back = root in self._offline
            self._offline.discard(root)
            self._watch(root, key)
            if came_back:
                self.notify("back", {"root": root, "message": f"{root} is back: sweeping it"})
            with self._lock:
                self._batch.roots.add(root)
                self._batch.first = self._batch.first or now
                self._batch.last = max(self._batch.last, now - self.quiet)  # sweep now, no need to wait

    # -- passes ----------------------------------------------------------------------------------
    def _ready(self, now: float) -> bool:
        b = self._batch
        if not b.roots or now < self._not_before:
            return False
        if now - b.first >= self.max_wait:
            return True
        if now - b.last < self.quiet:
            return False
        wall = time.time()
        for path in b.files:  # a file written within ``quiet`` seconds may still be being written
            try:
                age = wall - os.stat(path).st_mtime
            except OSError:
                continue
            if 0 <= age < self.quiet:
                return False
        return True

    def _take(self, now: float) -> _Batch | None:
        with self._lock:
            if not self._ready(now):
                return None
            batch, self._batch = self._batch, _Batch()
            return batch

    def _put_back(self, batch: _Batch) -> None:
        with self._lock:
            b = self._batch
            b.roots |= batch.roots
            b.files |= batch.files
            b.gone |= batch.gone
            b.events += batch.events
            b.first = min(b.first or batch.first, batch.first)
            b.last = max(b.last, batch.last)

    def indexer(self) -> Indexer:
        """The indexer of every pass, with the model loaded once (again if the library switches models)."""
        if self._indexer is None:
            encoder = self.lib.encoder_for(self.model, self.device, backend=self.backend, bulk=True)
            self._indexer = Indexer(self.lib, encoder, **self.indexer_options)  # type: ignore[arg-type]
        return self._indexer

    def run_pass(self, batch: _Batch, now: float) -> PassReport | None:
        """Sweep the batch's folders that are there, then forget pictures seen deleted; None if none is there."""
        roots = sorted(r for r in batch.roots if r in self._watches and _key(r) is not None)
        if not roots:
            return None
        try:
            stats = self.indexer().run(roots)
        except ModelMismatch:
            if self.model is not None:
                raise
            self._indexer = None  # the library switched models: follow it
            stats = self.indexer().run(roots)
        report = PassReport(roots, batch.events, stats, waited=now - batch.first if batch.first else 0.0)
        report.forgotten = self._forget(batch.gone, roots)
        return report

    def _forget(self, gone: set[str], roots: list[str]) -> int:
        """Remove pictures at or under ``gone`` paths (never a watched folder itself) that are not on disk."""
        seen = sorted(g for g in gone if any(under(g, r) and g != r for r in roots) and not os.path.lexists(g))
        if not seen:
            return 0
        with self.lib.write_lock():
            ids = [r.id for r in writes.known_rows(self.lib, Scan(seen).covers) if not os.path.lexists(r.path)]
            writes.apply_moves_and_removals(self.lib, [], ids)
        return len(ids)

    def _step(self, now: float) -> None:
        if now - self._checked >= self.recheck:
            self._check_roots(now)
        batch = self._take(now)
        if batch is None:
            return
        if not self.lib.server and not os.path.isdir(self.lib.path):  # its lock would say "No such file"
            raise LibraryError(f"the library folder {self.lib.path} is gone (deleted, or on a drive no longer "
                               "mounted): nothing more can be indexed into it")
        try:
            report = self.run_pass(batch, now)
        except ClipdexError as exc:
            if not passes_by_itself(exc):
                raise  # a bad model, a damaged library: waiting will not mend it
            self._put_back(batch)
            self._not_before = time.monotonic() + self.retry
            if str(exc) != self._failure:
                self._failure = str(exc)
                self.notify("error", {"message": f"{exc} (trying again every {self.retry:g}s)"})
            return
        self._failure = None
        if report is not None:
            self.reports.append(report)
            self.notify("pass", {**report.as_dict(), "report": report, "message": report.summary()})

    def run(self, stop: threading.Event | None = None, tick: float = 0.05) -> None:
        """Watch until ``stop`` is set (or Ctrl-C: KeyboardInterrupt comes through, the observers stopped).

        The folders are swept once first, to catch up with what changed while nobody watched.
        """
        stop = stop or threading.Event()
        self.indexer()  # a malformed model spec, a missing model folder, another model's library: before watching
        try:
            self._check_roots(time.monotonic())
            if not self._watches and not self._offline:
                raise ClipdexError("there is no folder to watch: the library was not indexed from any yet")
            while not stop.is_set():
                self._step(time.monotonic())
                stop.wait(tick)
        finally:
            for observer in self._observers.values():
                observer.stop()
            for observer in self._observers.values():
                observer.join(timeout=5)
            self._observers.clear()
            self._watches.clear()
        self.notify("stopped", {"message": "stopped watching"})
