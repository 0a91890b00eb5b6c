"""Decode uploaded pictures in separate processes, under CPU-time and memory limits.

An upload is a stranger's file: decoding it in the server process let one 328 KB PNG
(13000 x 13000, 16-bit) hold a request thread for 21 s and take the server from 0.9 to
5 GB. Here each upload is decoded the way the indexer decodes files, but in a worker
process whose address space is capped (``RLIMIT_AS``) and whose CPU time per picture is
capped (``RLIMIT_CPU``; the parent also kills it when the wall-clock limit passes). Uploads
have a lower pixel limit than indexing, only the image formats clipdex indexes are tried,
and at most ``workers`` uploads are decoded at once: beyond that the caller is told the
server is busy (``DecoderBusy``) instead of queueing without bound.

Workers start with the ``spawn`` method (no copy of the server's memory or threads), are
reused while they stay small, and are replaced after a crash, a limit or a big picture.
The same workers make the JPEG renditions (thumbnails, previews) of indexed pictures: the
server passes the opened, checked file descriptor over the pipe and gets JPEG bytes back,
so a huge picture in an indexed folder costs a worker's limits, not the server's memory.
Renditions wait a while for a free worker (a page asks for many thumbnails at once);
uploads do not. This module imports nothing from Flask: it is what the worker processes load.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

import numpy as np

from clipdex.decodepool import start_worker
from clipdex.errors import ClipdexError, DecodeError
from clipdex.imaging import DEFAULT_MAX_PIXELS, IMAGE_FORMATS, load_for_model, open_image

#: Uploads above this many pixels are refused (indexing allows 180 MP): 50 MP is a
#: 8660 x 5773 picture, more than any camera's full-size JPEG needs.
UPLOAD_MAX_PIXELS = 50_000_000
#: CPU seconds one upload may take to decode.
CPU_SECONDS = 10
#: Address space a worker may add to what it holds after start-up (50 MP of RGBA and its
#: RGB copy need about 350 MB; the rest is headroom for the decoders).
MEMORY_BYTES = 1024 * 1024 * 1024
#: Uploads decoded at once; more at the same time are answered "busy".
WORKERS = 2
#: A worker whose resident memory grew past this after a picture is replaced by a fresh one.
RECYCLE_RSS = 300 * 1024 * 1024
START_SECONDS = 60  # a worker that has not started by then never will
#: Renditions of indexed pictures take the indexing pixel limit (any indexed picture gets a
#: thumbnail); the worker's ``RLIMIT_AS`` is what bounds the memory one of them may take.
RENDER_MAX_PIXELS = DEFAULT_MAX_PIXELS
#: How long a rendition waits for a free worker before the answer is "busy".
RENDER_WAIT_SECONDS = 20.0


class DecoderBusy(ClipdexError):
    """No upload decoder is free (all at work, or one could not start): try again in a moment."""


def _statm(field: int) -> int:
    """Field of ``/proc/self/statm`` in bytes (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _limit(kind: int, soft: int) -> None:
    """Lower the soft limit of ``kind`` to ``soft`` (never above the hard limit)."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(kind, (soft, hard))


def decode_upload(data: bytes, size: int, mode: str, max_pixels: int) -> np.ndarray:
    """Model pixels of an uploaded picture, as the indexer decodes files (formats it indexes only)."""
    return load_for_model(io.BytesIO(data), size, mode, max_pixels, IMAGE_FORMATS)[0]


DecodeFn = Callable[[bytes, int, str, int], np.ndarray]


def render_jpeg(fd: int, size: int, max_pixels: int, quality: int = 85) -> bytes:
    """An upright JPEG, at most ``size`` px on its long side, of the picture open on ``fd``
    (as :func:`clipdex.imaging.write_thumbnail` makes them, formats clipdex indexes only)."""
    from PIL import Image

    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(fd, "rb") as fh:
        image = open_image(fh, target_size=size, max_pixels=max_pixels, formats=IMAGE_FORMATS).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=quality, optimize=True)
    return jpeg.getvalue()


def _worker(conn: Connection, memory_bytes: int, decode: DecodeFn) -> None:
    """Worker process: run ``(job, data, size, mode, max_pixels, cpu_seconds)`` tasks until told to stop.

    ``job`` is "decode" (model pixels of ``data``) or "render" (JPEG bytes of the file whose
    descriptor follows the task on the pipe)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server handles Ctrl-C (blocked since birth: start_worker)
    if memory_bytes:
        _limit(resource.RLIMIT_AS, _statm(0) + memory_bytes)
    try:
        conn.send("ready")
    except OSError:  # the server was stopped (SIGTERM) while this worker was starting: nothing to say
        return
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        job, data, size, mode, max_pixels, cpu_seconds = task
        try:
            fd = recv_handle(conn) if job == "render" else None
        except (EOFError, OSError):
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _limit(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime) + 1 + cpu_seconds)  # SIGXCPU past it
        try:
            if fd is not None:
                reply: tuple = ("ok", render_jpeg(fd, size, max_pixels))
            else:
                reply = ("ok", decode(data, size, mode, max_pixels))
        except DecodeError as exc:
            reply = ("error", str(exc))
        except MemoryError:
            reply = ("error", "cannot decode: not enough memory")
        except Exception as exc:  # noqa: BLE001 - a decoder bug costs this upload only
            reply = ("error", f"cannot decode: {type(exc).__name__}")
        del data, task
        conn.send((*reply, _statm(1)))


@dataclass
class _Process:
    proc: mp.process.BaseProcess
    conn: Connection
    ready: bool = False

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()

    def died(self) -> str:
        """Why the process is gone, in words."""
        self.proc.join(timeout=5)
        code = self.proc.exitcode
        if code == -signal.SIGXCPU:
            return "cpu"
        return f"signal {-code}" if code and code < 0 else f"exit code {code}"


class UploadDecoder:
    """Decode uploads to model pixels in at most ``workers`` limited worker processes at a time."""

    def __init__(
        self,
        workers: int = WORKERS,
        cpu_seconds: int = CPU_SECONDS,
        memory_bytes: int = MEMORY_BYTES,
        max_pixels: int = UPLOAD_MAX_PIXELS,
        wall_seconds: float | None = None,
        decode_fn: DecodeFn = decode_upload,
    ):
        self.workers = workers
        self.cpu_seconds = cpu_seconds
        self.memory_bytes = memory_bytes
        self.max_pixels = max_pixels
        self.wall_seconds = wall_seconds or 3.0 * max(cpu_seconds, 1)
        self.decode_fn = decode_fn
        self.slots = threading.BoundedSemaphore(workers)
        self._idle: list[_Process] = []
        self._lock = threading.Lock()
        self._ctx = mp.get_context("spawn")

    def _spawn(self) -> _Process:
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(target=_worker, args=(child, self.memory_bytes, self.decode_fn), daemon=True,
                                 name="clipdex-upload-decoder")
        start_worker(proc)
        child.close()
        return _Process(proc, parent)

    def warm_up(self) -> None:
        """Start the workers now (each takes a moment to import), so the first upload need not wait."""
        with self._lock:
            while len(self._idle) < self.workers:
                self._idle.append(self._spawn())

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def decode(self, data: bytes, size: int, mode: str = "shortest") -> np.ndarray:
        """``size x size x 3`` model pixels of the picture in ``data``.

        Raises :class:`DecoderBusy` when ``workers`` uploads are being decoded already, and
        :class:`DecodeError` when the picture is unusable or breaks a limit.
        """
        if not self.slots.acquire(blocking=False):
            raise DecoderBusy("the server is busy decoding other uploads; try again in a moment")
        try:
            return self._run(self._take(), ("decode", data, size, mode, self.max_pixels, self.cpu_seconds))
        finally:
            self.slots.release()

    def render(self, fd: int, size: int, wait: float = RENDER_WAIT_SECONDS,
               max_pixels: int = RENDER_MAX_PIXELS) -> bytes:
        """JPEG bytes of the picture open on ``fd``, at most ``size`` px, made in a worker.

        Waits up to ``wait`` seconds for a free worker (then :class:`DecoderBusy`); raises
        :class:`DecodeError` when the picture is unusable or breaks a limit.
        """
        if not self.slots.acquire(timeout=wait):
            raise DecoderBusy("the server is busy making other pictures' previews; try again in a moment")
        try:
            return self._run(self._take(), ("render", None, size, "", max_pixels, self.cpu_seconds), fd)
        finally:
            self.slots.release()

    def _take(self) -> _Process:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        return worker or self._spawn()

    def _run(self, worker: _Process, task: tuple, fd: int | None = None):
        keep = False
        try:
            if not worker.ready:
                if not worker.conn.poll(START_SECONDS):
                    raise DecoderBusy("the picture decoder could not start; try again in a moment")
                worker.conn.recv()
                worker.ready = True
            worker.conn.send(task)
            if fd is not None:
                send_handle(worker.conn, fd, worker.proc.pid)
            if not worker.conn.poll(self.wall_seconds):
                raise DecodeError(f"decoding took longer than {self.wall_seconds:g} s")
            status, value, rss = worker.conn.recv()
        except (EOFError, OSError):
            why = worker.died()
            if why == "cpu":
                raise DecodeError(f"decoding needed more than {self.cpu_seconds} s of CPU time") from None
            raise DecodeError(f"the decoder crashed ({why})") from None
        else:
            keep = rss < RECYCLE_RSS
            if status != "ok":
                raise DecodeError(value)
            return value
        finally:
            if keep:
                with self._lock:
                    self._idle.append(worker)
            else:
                worker.kill()
