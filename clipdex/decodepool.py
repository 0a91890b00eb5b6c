"""Decode image files in worker processes, each file under a time limit.

A decoder that crashes (segfault, abort) or hangs on one file costs that file, not the
run: the worker is killed, the file is reported with a reason, a fresh worker takes its
place and carries on with the rest. Each worker has its own pipe, so killing one never
corrupts a queue the others share. When a pool is done (finished, failed or
interrupted) no process it started is left: neither workers nor the resource tracker
that ``multiprocessing`` starts beside them.

What a worker does with one file (read, decode, hash) is :mod:`clipdex.decoding`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from clipdex.decoding import Decoded, decode_file
from clipdex.errors import ClipdexError
from clipdex.imaging import DEFAULT_MAX_PIXELS

#: ``fn(path, size, mode, max_pixels)`` like :func:`clipdex.decoding.decode_file`; asked for ``jpeg_bytes=True`` too
#: when JPEGs are decoded on the GPU (``DecodePool.run(..., jpeg_bytes=True)``).
DecodeFn = Callable[..., Decoded]


def _worker(conn: Connection, fn: DecodeFn, max_pixels: int, niceness: int) -> None:
    # The parent handles Ctrl-C. SIGINT was blocked from this process's birth (see
    # start_worker); ignoring it drops one that came while it started, unseen.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness and hasattr(os, "nice"):
        os.nice(niceness)
    try:
        conn.send(("ready", None))
    except OSError:  # the parent went away while this worker started (stopped, killed): nothing to do
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        task_id, path, size, mode, jpeg_bytes = task
        options = {"jpeg_bytes": True} if jpeg_bytes else {}
        conn.send((task_id, fn(path, size, mode, max_pixels, **options)))


def start_worker(proc: mp.process.BaseProcess) -> None:
    """Start a worker process that is born with SIGINT blocked; it ignores the signal once running.

    Ctrl-C goes to the whole foreground process group. A worker it reached while still
    importing would print a KeyboardInterrupt traceback; blocked (a signal mask survives
    fork and exec), the signal waits until the worker ignores it, and is dropped unseen.
    Unlike ignoring it here, this loses nothing for the parent: the kernel hands it to
    another thread, or delivers it when this one unblocks. ``multiprocessing`` starts its
    own resource tracker the same way, and unblocks SIGINT when done: it is started first.
    """
    if not hasattr(signal, "pthread_sigmask"):
        proc.start()
        return
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time a process has used (Linux ``/proc``); None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _tracker_running() -> bool:
    from multiprocessing import resource_tracker

    return getattr(resource_tracker._resource_tracker, "_fd", None) is not None


def _stop_tracker() -> None:
    """Stop the resource tracker process that spawning workers started, and reap it.

    It would otherwise outlive the command for a moment (it exits when it notices its
    parent is gone), seen from outside as a leftover process. The pools use pipes only, so
    it tracks nothing of theirs; the next pool starts it again if needed.
    """
    from multiprocessing import resource_tracker

    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        try:
            stop()
        except (OSError, ChildProcessError):
            pass


@dataclass
class _Slot:
    proc: mp.process.BaseProcess
    conn: Connection
    inflight: deque
    started: float = 0.0
    cpu_started: float | None = None
    ready: bool = False

    def begin(self) -> None:
        """The head task starts now: note the clocks its time limit is measured on."""
        self.started = time.monotonic()
        self.cpu_started = _cpu_seconds(self.proc.pid)

    def overdue(self, limit: float) -> bool:
        """True when the head task has used ``limit`` s of CPU, or been stuck 10x that long.

        CPU time is the measure, as low-priority workers may wait long for a core while the
        model runs; the wall-clock cap catches a decoder blocked without using CPU.
        """
        wall = time.monotonic() - self.started
        cpu_now = _cpu_seconds(self.proc.pid)
        if cpu_now is None or self.cpu_started is None:
            return wall > limit
        return cpu_now - self.cpu_started > limit or wall > 10 * limit


class DecodePool:
    """Decode many files in ``workers`` processes; iterate :meth:`run` for results.

    ``timeout`` bounds the CPU seconds one file may take (see :meth:`_Slot.overdue`).
    Workers run at low priority (``niceness``): on a CPU-only machine the model's threads
    then keep their cores while they encode (an oversubscribed OpenMP pool loses ~40%),
    and the decoders fill the gaps between batches; on a GPU machine the CPU is theirs.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 60.0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decode_fn: DecodeFn = decode_file,
        prefetch: int = 2,
        buffer: int = 256,
        niceness: int = 19,
    ):
        self.max_pixels = max_pixels
        self.niceness = niceness
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout = timeout
        self.decode_fn = decode_fn
        self.prefetch = prefetch
        self.buffer = buffer
        self._ctx = mp.get_context("spawn")
        self._slots: list[_Slot] | None = None
        self._owns_tracker = False  # this pool started the resource tracker: it stops it when done

    def _spawn(self) -> _Slot:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=_worker,
            args=(child, self.decode_fn, self.max_pixels, self.niceness),
            daemon=True,
        )
        start_worker(proc)
        child.close()
        return _Slot(proc, parent, deque())

    @staticmethod
    def _kill(slot: _Slot) -> None:
        if slot.proc.is_alive():
            slot.proc.kill()
        slot.proc.join(timeout=5)
        slot.conn.close()

    def start(self, count: int | None = None) -> DecodePool:
        """Spawn the workers now (they take a moment to import), e.g. while the model loads."""
        if self._slots is None:
            self._owns_tracker = self._owns_tracker or not _tracker_running()
            self._slots = []
            for _ in range(min(self.workers, count or self.workers)):
                self._slots.append(self._spawn())
        return self

    def close(self) -> None:
        """Stop workers started by :meth:`start` that no :meth:`run` took over, and what came with them."""
        slots, self._slots = self._slots or [], None
        for slot in slots:
            self._kill(slot)
        self._release()

    def _release(self) -> None:
        if self._owns_tracker and self._slots is None:
            self._owns_tracker = False
            _stop_tracker()

    def run(
        self, paths: Iterable[str], size: int, mode: str = "shortest", chunk: int = 1, jpeg_bytes: bool = False
    ) -> Iterator[list[Decoded]]:
        """Decode ``paths`` to ``size`` pixels; yield lists of what is ready, up to ``chunk`` each.

        Lists are full (``chunk`` long) but for the last; results come in completion order.
        ``jpeg_bytes`` (see :func:`decode_file`): whole files come back, so at most two lists wait.
        """
        todo = deque((i, p, size, mode, jpeg_bytes) for i, p in enumerate(paths))
        buffer = min(self.buffer, 2 * chunk) if jpeg_bytes else self.buffer
        if not todo:
            return
        self.start(len(todo))
        slots, self._slots = self._slots, None
        out: queue.Queue = queue.Queue()
        stop = threading.Event()
        errors: list[BaseException] = []

        def manage() -> None:
            try:
                self._manage(slots, todo, out, stop, buffer)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                errors.append(exc)
            finally:
                for slot in slots:
                    try:
                        slot.conn.send(None)
                    except OSError:
                        pass
                for slot in slots:
                    slot.proc.join(timeout=1)
                    self._kill(slot)
                out.put(None)

        thread = threading.Thread(target=manage, name="clipdex-decode", daemon=True)
        thread.start()
        items: list[Decoded] = []
        try:
            while True:
                item = out.get()
                if item is None:
                    break
                items.append(item)
                if len(items) >= chunk:
                    yield items
                    items = []
            if items:
                yield items
        finally:
            stop.set()
            thread.join()
            self._release()
        if errors:
            raise errors[0]

    def _manage(self, slots: list[_Slot], todo: deque, out: queue.Queue, stop: threading.Event, buffer: int) -> None:
        startup_failures = 0

        def send(slot: _Slot) -> None:
            while slot.ready and todo and len(slot.inflight) < self.prefetch and out.qsize() < buffer:
                task = todo.popleft()
                if not slot.inflight:
                    slot.begin()
                try:
                    slot.conn.send(task)
                except OSError:  # the worker died; the liveness check below replaces it
                    todo.appendleft(task)
                    return
                slot.inflight.append(task)

        def replace(i: int, reason: str) -> None:
            nonlocal startup_failures
            slot = slots[i]
            self._kill(slot)
            if not slot.ready:
                startup_failures += 1
                if startup_failures >= 3:
                    raise ClipdexError(f"decoder worker processes cannot start ({reason})")
            elif slot.inflight:
                path = slot.inflight.popleft()[1]
                out.put(Decoded(path, error=reason))
                todo.extendleft(reversed(slot.inflight))
            slots[i] = self._spawn()

        while not stop.is_set() and (todo or any(s.inflight for s in slots)):
            for slot in slots:
                send(slot)
            by_conn = {s.conn: i for i, s in enumerate(slots) if s.inflight or not s.ready}
            if not by_conn:  # the consumer is behind: let it catch up
                time.sleep(0.01)
                continue
            for conn in wait(list(by_conn), timeout=0.05):
                i = by_conn[conn]
                slot = slots[i]
                try:
                    tag, result = conn.recv()
                except (EOFError, OSError):
                    continue  # the liveness check below reports it
                if tag == "ready":
                    slot.ready = True
                    continue
                slot.inflight.popleft()
                slot.begin()
                out.put(result)
            for i, slot in enumerate(slots):
                if not slot.proc.is_alive():
                    code = slot.proc.exitcode
                    why = f"signal {-code}" if code and code < 0 else f"exit code {code}"
                    replace(i, f"decoder crashed ({why})")
                elif slot.inflight and slot.overdue(self.timeout):
                    replace(i, f"decoder timed out after {self.timeout:g}s")
