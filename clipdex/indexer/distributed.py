"""Decoding and encoding on a Ray cluster (``clipdex index --ray``), through Ray Data.

The driver (the ``clipdex index`` process) scans, plans and stores exactly as a local run
does (:class:`clipdex.indexer.run.Indexer`): only the files to decode and encode go to the
cluster. :class:`RaySource` stands in for the local :class:`clipdex.decodepool.DecodePool`:

* reading and decoding run in Ray CPU tasks, each decoding its files in a worker process as
  the local pool does (same ``decode_fn``, time limit and crash isolation): the same skip reasons;
* encoding runs in an actor pool, one model per actor (one GPU per actor when the cluster
  has GPUs); Ray Data restarts an actor that dies and retries its batch, and a CPU task
  whose worker dies is retried (Ray's default ``max_retries``), so a lost worker costs a retry;
* results stream back (``iter_batches``) and the driver commits each batch through the same
  store path as a local run: one transaction a batch, so a driver killed mid-run loses at
  most the batch in flight and a new run continues from what was committed.

Every path handed to the cluster must be readable at the same path on every node (a shared
filesystem mounted alike everywhere). Ray is imported only here, and only with ``--ray``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import multiprocessing
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipdex.decodepool import DecodeFn, DecodePool
from clipdex.decoding import Decoded
from clipdex.errors import ClipdexError, UsageError
from clipdex.imaging import DEFAULT_MAX_PIXELS
from clipdex.models import Encoder, ModelSpec

#: How to get Ray, said by ``--ray`` when it is missing.
RAY_INSTALL = "pip install 'clipdex[ray]'"
#: ``--ray`` with no value: start a Ray instance on this machine for the run.
LOCAL = "local"
#: Environment variables the driver passes on to the cluster's workers: only where models and their caches are and
#: how to fetch them. Never the library (``CLIPDEX_LIBRARY``, whose URL may hold the database password: workers never
#: open it), nor tokens: Ray writes a job's runtime env into its logs (world-readable) and shows it to anyone who can
#: reach the cluster. The values are still checked by :func:`worker_env`.
PASSED_ENV = ("CLIPDEX_BACKEND", "CLIPDEX_ONNX_CACHE", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT",
              "TRANSFORMERS_OFFLINE", "TORCH_HOME", "XDG_CACHE_HOME")
_CREDENTIALS = re.compile(r"://[^/@\s]*@")  # a URL with a user (and maybe a password) in it
#: Files a decoding task takes, then one encoder call: Ray Data costs ~0.4 s a block on 2 busy cores (a blank
#: decoder and the tiny model ran 25-34 pictures/s in blocks of 32, 38-48/s in blocks of 75), so blocks are large;
#: the driver still commits ``batch_size`` at a time, and a run is cut into at least 4 blocks.
_BLOCK = 128
_DECODE_MEMORY = 256 << 20  # bytes a decoding task may take (a 180-megapixel picture is refused before that)
_CONNECT_TIMEOUT = 5.0  # seconds for the cluster's port to accept a connection
_GCS_TIMEOUT = 15.0  # seconds for Ray there to answer (ray.init itself tries for many minutes)
_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")


def worker_env(environ: dict[str, str] | os._Environ[str] | None = None) -> dict[str, str]:
    """What of ``environ`` (this process's environment) goes to the workers: the :data:`PASSED_ENV` variables that are
    set, except a value naming a user in a URL (``https://user:secret@host``), which stays here."""
    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in PASSED_ENV if environ.get(k) and not _CREDENTIALS.search(environ[k])}


def looks_like_address(value: str) -> bool:
    """True for what ``--ray`` takes: ``auto``, ``local``, ``ray://HOST:PORT`` or ``HOST:PORT``."""
    return bool(_ADDRESS.match(value))


@dataclass(frozen=True)
class RayOptions:
    """Where to encode: ``address`` as ``ray.init`` takes it (:data:`LOCAL` starts one here, ``auto``
    joins the cluster this machine belongs to); ``actors``: encoder actors [default: one per GPU of the
    cluster, else one per node]."""

    address: str = LOCAL
    actors: int | None = None
    decode_cpus: float | None = None  # CPUs a decoding task reserves [default: 1 with GPUs, else 0.5: see _plan]

    def __post_init__(self) -> None:
        if not looks_like_address(self.address):
            raise UsageError(f"--ray takes auto, a cluster address (HOST:PORT or ray://HOST:PORT) or nothing, "
                             f"not {self.address!r}")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line :class:`UsageError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra that brings it (pandas, pyarrow) may be missing
    except ImportError:
        raise UsageError(f"--ray needs Ray Data, which is not installed: {RAY_INSTALL}") from None
    return ray


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _reason(exc: BaseException) -> str:
    """One line for what failed on the cluster: the innermost cause Ray wrapped, without colours."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    name, text = type(exc).__name__, lines[-1] if lines else ""
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class _quiet_stderr:
    """File descriptor 2 goes to /dev/null meanwhile (what C++ code writes there too)."""

    def __enter__(self) -> None:
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc: object) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)


# --- what runs on the cluster -------------------------------------------------------------


class _ForkedPool(DecodePool):
    """A :class:`DecodePool` whose worker forks from a ``forkserver`` that outlives the task (a Ray worker
    runs many): a decoder that crashes or hangs on a file costs that file, as on one machine, and a task
    pays ~25 ms to start its worker instead of a fresh interpreter's ~0.3 s. The resource tracker is kept
    for the next task (it exits with the Ray worker), not stopped after each as a command's pool does."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        multiprocessing.set_forkserver_preload(["clipdex.decodepool"])
        self._ctx = multiprocessing.get_context("forkserver")

    def _release(self) -> None:
        pass


def decode_block(batch: dict[str, np.ndarray], size: int, mode: str, max_pixels: int, timeout: float,
                 decode_fn: DecodeFn) -> dict[str, np.ndarray]:
    """A Ray Data CPU task: decode ``batch["path"]`` with ``decode_fn`` in one worker process, each file under
    the ``timeout`` of a local run; failures keep their reason (the local run's, crashes and time-outs too).

    Columns out: ``path``, ``error`` ("" when decoded), ``width``, ``height``, ``captured``
    (ISO date or ""), ``hash`` and ``pixels`` (``N x size x size x 3``, zeros for failures).
    """
    paths = [str(p) for p in batch["path"]]
    pool = _ForkedPool(1, timeout, max_pixels, decode_fn=decode_fn)
    got = {d.path: d for chunk in pool.run(paths, size, mode, chunk=len(paths)) for d in chunk}
    done = [got[p] for p in paths]
    pixels = np.zeros((len(done), size, size, 3), np.uint8)
    for i, d in enumerate(done):
        if not d.error and d.pixels is not None:
            pixels[i] = d.pixels
    return {
        "path": np.array(paths, dtype=object),
        "error": np.array([d.error or ("" if d.pixels is not None else "cannot decode") for d in done], dtype=object),
        "width": np.array([d.width for d in done], np.int64),
        "height": np.array([d.height for d in done], np.int64),
        "captured": np.array([d.captured_at.isoformat() if d.captured_at else "" for d in done], dtype=object),
        "hash": np.array([d.content_hash for d in done], dtype=object),
        "pixels": pixels,
    }


class EncodeActor:
    """A Ray Data actor holding one loaded model: encodes the decoded rows of each batch it is given."""

    def __init__(self, spec: ModelSpec, backend: str | None, device: str | None, batch_size: int):
        self.encoder = Encoder(spec, device=device, backend=backend, bulk=True).load()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("pixels")
        ok = np.flatnonzero([not e for e in batch["error"]])
        vectors = np.zeros((len(pixels), self.encoder.dim), np.float32)
        for first in range(0, len(ok), self.batch_size):  # the model sees --batch-size pictures at a time
            rows = ok[first:first + self.batch_size]
            vectors[rows] = self.encoder.encode_pixels(pixels[rows])
        batch["vector"] = vectors
        return batch


# --- the driver's side ------------------------------------------------------------------------


class RaySource:
    """What :meth:`clipdex.indexer.run.Indexer.encode_stream` reads instead of a local decode pool.

    :meth:`run` yields lists of :class:`Decoded` (no pixels: they stayed on the cluster) and
    keeps each list's vectors for :meth:`encode_batch`, which hands them over instead of
    encoding on the driver. A Ray it started itself is shut down by :meth:`close`.
    """

    def __init__(self, options: RayOptions, encoder: Encoder, decode_fn: DecodeFn, batch_size: int, timeout: float,
                 say: Callable[[str], None], max_pixels: int = DEFAULT_MAX_PIXELS):
        self.options, self.encoder, self.decode_fn, self.timeout = options, encoder, decode_fn, timeout
        self.batch_size, self.say, self.max_pixels = batch_size, say, max_pixels
        self.ray = import_ray()
        self._started = False
        self._vectors: dict[str, np.ndarray] = {}

    def start(self, count: int | None = None) -> RaySource:
        """Connect to the cluster (or start a local Ray), unless this process is connected already."""
        ray = self.ray
        if not ray.is_initialized():
            env = worker_env()
            where = "a local Ray" if self.options.address == LOCAL else f"the Ray cluster at {self.options.address}"
            self.say(f"connecting to {where} …")
            self._probe()
            try:
                ray.init(address=self.options.address, include_dashboard=False, logging_level=logging.ERROR,
                         log_to_driver=False, runtime_env={"env_vars": env} if env else None)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClipdexError(f"cannot connect to the Ray cluster at {self.options.address}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            self._started = True
        from ray.data import DataContext

        context = DataContext.get_current()
        context.enable_progress_bars = False  # the indexer's own bar shows the run
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        return self

    def _probe(self) -> None:
        """Fail in one line, within seconds, where ``ray.init`` would retry for many minutes: nothing listening at
        the cluster's address, no Ray answering there, or a cluster that wants another authentication token."""
        address = self.options.address
        if address == LOCAL:
            return
        client = address.startswith("ray://")
        target: str | None = address.removeprefix("ray://")
        if target == "auto":
            try:  # RAY_ADDRESS, else the cluster `ray start` made on this machine (ray.init says if there is none)
                target = self.ray._private.services.canonicalize_bootstrap_address("auto")
            except Exception:  # noqa: BLE001 - ray.init reports it
                return
            if not target:
                return
        assert target is not None
        host, _, port = target.rpartition(":")
        fail = f"cannot connect to the Ray cluster at {address}"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT).close()
        except (OSError, ValueError) as exc:
            why = "no answer within 5 s" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
            raise ClipdexError(f"{fail}: nothing answers at {target} ({why})") from None
        if client or address == "auto":
            return  # a Ray Client server, or a cluster found on this machine (ray.init reads its token itself)
        from ray._raylet import GcsClient

        got: dict[str, BaseException | None] = {}

        def ask() -> None:
            try:
                GcsClient(address=target)
                got["error"] = None
            except BaseException as exc:  # noqa: BLE001 - reported below
                got["error"] = exc

        asking = threading.Thread(target=ask, name="ray-probe", daemon=True)
        with _quiet_stderr():  # Ray's C++ core logs each failed attempt itself
            asking.start()
            asking.join(_GCS_TIMEOUT)
        if "error" not in got:
            raise ClipdexError(f"{fail}: something listens at {target}, but no Ray answered within "
                               f"{_GCS_TIMEOUT:.0f} s (give the head node's GCS port, `ray start --head --port`, "
                               "6379 by default)")
        error = got["error"]
        if isinstance(error, self.ray.exceptions.AuthenticationError):
            raise ClipdexError(f"{fail}: the cluster refused this machine's Ray authentication token (none, or "
                               "another one): put the cluster's token (its ~/.ray/auth_token) in RAY_AUTH_TOKEN or "
                               "~/.ray/auth_token here, and set RAY_AUTH_MODE=token") from None
        if error is not None:
            raise ClipdexError(f"{fail}: {_reason(error)}") from None

    def _plan(self) -> tuple[int, float, float]:
        """How many encoder actors, how many GPUs each takes, and the CPUs a decoding task reserves.

        On CPUs only, the model's threads share the cores with the decoders (as on one machine, where
        the decoders run at low priority beside the model), so a decoding task reserves half a CPU.
        """
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if self.options.actors:
            actors, per_actor = self.options.actors, 1.0 if gpus >= self.options.actors else 0.0
        elif gpus:
            actors, per_actor = gpus, 1.0
        else:
            actors, per_actor = max(1, sum(1 for node in self.ray.nodes() if node.get("Alive"))), 0.0
        decode_cpus = self.options.decode_cpus or (1.0 if per_actor else 0.5)
        return actors, per_actor, decode_cpus

    def run(self, paths: list[str], size: int, mode: str = "shortest", chunk: int = 32,
            jpeg_bytes: bool = False) -> Iterator[list[Decoded]]:
        """Decode and encode ``paths`` on the cluster; yield lists of up to ``chunk`` results as they come.

        ``jpeg_bytes`` is ignored: the CPU tasks decode every file (GPU JPEG decoding is local only).
        """
        if not paths:
            return
        self.start()
        import ray.data

        actors, gpus, decode_cpus = self._plan()
        self.say(f"encoding {len(paths)} pictures on Ray: {actors} encoder actor{'s' * (actors != 1)}"
                 + (" (1 GPU each)" if gpus else " (CPU)") + " …")
        # One block of files is one decoding task and then one encoding call whose vectors come back at
        # once: no batch_size on either stage, so Ray Data never gathers several blocks into one call
        # (an actor call's rows come back only when it ends: the driver would wait for many batches).
        block = max(1, min(_BLOCK, math.ceil(len(paths) / 4)))
        ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=math.ceil(len(paths) / block))
        # The two stages differ in what they reserve, so Ray Data never fuses decoding into the encoder actors.
        ds = ds.map_batches(decode_block, batch_size=None, batch_format="numpy", zero_copy_batch=False,
                            num_cpus=decode_cpus, memory=_DECODE_MEMORY,
                            fn_kwargs={"size": size, "mode": mode, "max_pixels": self.max_pixels,
                                       "timeout": self.timeout, "decode_fn": self.decode_fn})
        ds = ds.map_batches(EncodeActor, batch_size=None, batch_format="numpy", zero_copy_batch=False,
                            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=gpus or None,
                            fn_constructor_kwargs={"spec": self.encoder.spec, "backend": self.encoder.requested_backend,
                                                   "device": None, "batch_size": self.batch_size})
        # Each block as it comes (a batch size here would wait for the next block to fill a batch).
        batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except self.ray.exceptions.RayError as exc:  # a task that failed every retry, a lost cluster
                raise ClipdexError(f"the Ray cluster could not finish the run ({_reason(exc)}); what was "
                                   "committed stays: run the same indexing again to continue from there") from None
            for first in range(0, len(batch["path"]), chunk):
                yield self._take(batch, range(first, min(len(batch["path"]), first + chunk)))

    def _take(self, batch: dict[str, np.ndarray], rows: range) -> list[Decoded]:
        """Rows of a block the cluster sent back, as :class:`Decoded`; their vectors wait for :meth:`encode_batch`."""
        items, self._vectors = [], {}
        for i in rows:
            path, error, captured = str(batch["path"][i]), str(batch["error"][i]), str(batch["captured"][i])
            items.append(Decoded(path, None, int(batch["width"][i]), int(batch["height"][i]),
                                 dt.datetime.fromisoformat(captured) if captured else None,
                                 str(batch["hash"][i]), error or None))
            if not error:
                self._vectors[path] = np.asarray(batch["vector"][i], np.float32)
        return items

    def encode_batch(self, todo: list[Decoded]) -> tuple[list[tuple[Decoded, np.ndarray]], list[Decoded]]:
        """The vectors the cluster made for ``todo`` (files of the batch :meth:`run` just yielded)."""
        return [(d, self._vectors[d.path]) for d in todo], []

    def close(self) -> None:
        """Shut down the Ray this source started (a cluster joined stays up; only this driver leaves)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
