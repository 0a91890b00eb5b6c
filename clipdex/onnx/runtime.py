"""Encode pictures and texts with onnxruntime from an export folder: no torch, no open_clip.

:class:`OnnxEncoder` offers what the rest of clipdex uses of :class:`clipdex.models.Encoder`
(``image_size``, ``resize_mode``, ``logit_scale``, ``dim``, ``encode_pixels``, ``encode_texts``).
Everything it needs at query time comes from the folder's ``meta.json``, the two graphs, the
token-embedding table and the BPE merges file. Each tower's session is created on first use, so
a text search never loads the image tower. Session settings were chosen by measurement on a 2-core
CPU (``benchmarks/bench_backends.py``): all graph optimisations, one inter-op thread, intra-op
threads = the cores this process may use, and no spinning of idle threads (spinning cost more CPU
and was slower whenever anything else ran: the decode workers, a server's other requests).
I/O binding gained nothing on the CPU provider and is not used.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipdex.onnx import BackendUnavailable
from clipdex.onnx.cache import CacheKey, ExportSettings, cache_root, find, key_for_spec, read_meta, refusal
from clipdex.onnx.tokenizer import ClipTokenizer

#: File of a cut text graph's token-embedding table (see :mod:`clipdex.onnx.towers`).
TOKEN_TABLE = "token_embedding.npy"


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class SessionOptions:
    """onnxruntime settings; ``threads=None`` means :func:`usable_cores`."""

    threads: int | None = None
    optimization: str = "all"  # "disable", "basic", "extended" or "all"
    spinning: bool = False
    #: Towers whose weights are re-laid for faster matrix products when the session starts. It pays
    #: only for the text tower of a process that encodes many queries (a query is a few rows: ~13 ms
    #: instead of ~21 ms for ViT-B-32); the session then starts ~4x later (0.26 s instead of 0.07 s) and
    #: holds a second copy of the weights. Batches of pictures are hundreds of rows, where packing on
    #: the fly costs nothing measurable, so the image tower never pre-packs (0.6 s and 350 MB saved).
    prepack: tuple[str, ...] = ("text",)


def make_session(path: Path, options: SessionOptions = SessionOptions(), prepack: bool = True) -> Any:
    """An onnxruntime CPU session for one graph."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable(str(path.parent.name), "onnxruntime cannot be imported", transient=True) from None
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[options.optimization]
    so.intra_op_num_threads = options.threads or usable_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4  # fatal only: clipdex reports a failing graph in one line of its own
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    if not prepack:
        so.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


class OnnxEncoder:
    """The two towers of one exported model; thread-safe, sessions created on first use."""

    backend = "onnx"

    def __init__(self, folder: Path, options: SessionOptions = SessionOptions()):
        meta = read_meta(folder)
        if meta is None:
            raise BackendUnavailable(folder.name, f"no readable export in {folder}")
        self.folder, self.meta, self.options = folder, meta, options
        self.identity: str = meta["identity"]
        self._lock = threading.Lock()  # tokenizer and token table
        self._tower_locks = {"image": threading.Lock(), "text": threading.Lock()}  # one tower loading never
        self._sessions: dict[str, Any] = {}  # blocks the other's queries
        self._tokenizer: ClipTokenizer | None = None
        self._table: np.ndarray | None = None

    @classmethod
    def from_cache(cls, spec: Any, settings: ExportSettings | None = None, root: Path | None = None,
                   options: SessionOptions = SessionOptions()) -> OnnxEncoder:
        """The cached export of ``spec`` (a :class:`clipdex.models.ModelSpec`); raises
        :class:`BackendUnavailable` when there is none yet or the model was refused."""
        return cls.from_key(key_for_spec(spec, settings), root, options)

    @classmethod
    def from_key(cls, key: CacheKey, root: Path | None = None,
                 options: SessionOptions = SessionOptions()) -> OnnxEncoder:
        folder = find(key, root)
        if folder is None:
            reason = refusal(key, root)
            raise BackendUnavailable(key.identity, reason or f"not exported yet (cache {root or cache_root()})")
        return cls(folder, options)

    # --- facts from meta.json: no session needed
    @property
    def image_size(self) -> int:
        """Side in pixels of the square the model sees."""
        return int(self.meta["image"]["size"])

    @property
    def resize_mode(self) -> str:
        return self.meta["image"]["resize_mode"]

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature, for zero-shot softmax."""
        return float(self.meta["logit_scale"])

    @property
    def dim(self) -> int:
        """Length of the embedding vectors."""
        return int(self.meta["dim"])

    @property
    def context_length(self) -> int:
        return int(self.meta["text"]["context_length"])

    def session(self, tower: str) -> Any:
        """The onnxruntime session of ``image`` or ``text``, created on first use."""
        with self._tower_locks[tower]:
            if tower not in self._sessions:
                try:
                    self._sessions[tower] = make_session(self.folder / self.meta[tower]["file"], self.options,
                                                         prepack=tower in self.options.prepack)
                except BackendUnavailable:
                    raise
                except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class
                    raise self._damaged(tower, exc) from None
            return self._sessions[tower]

    @property
    def tokenizer(self) -> ClipTokenizer:
        with self._lock:
            if self._tokenizer is None:
                tok = self.meta["tokenizer"]
                try:
                    self._tokenizer = ClipTokenizer(self.folder / tok["file"], tok["context_length"], tok["clean"],
                                                    tok["additional_special_tokens"])
                except (OSError, ValueError, KeyError) as exc:
                    raise self._damaged("tokenizer of the text", exc) from None
            return self._tokenizer

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a ``N x S x S x 3`` uint8 batch (see :func:`clipdex.imaging.fit_square`) to unit float32 rows."""
        s = self.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
            raise ValueError(f"expected pixels of shape (N, {s}, {s}, 3), got {tuple(pixels.shape)}")
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        x = np.ascontiguousarray(pixels, dtype=np.uint8)
        if self.meta["image"]["layout"] == "float-nchw":
            x = x.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        return self._run("image", x)

    def encode_tokens(self, tokens: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Encode ``N x context_length`` int64 token ids to unit float32 rows.

        When the graph allows it (``text.cut`` in meta.json, see :mod:`clipdex.onnx.towers`), sequences
        are cut after their end-of-text token (the highest id in a row): texts are run in chunks of
        similar length, each chunk only as long as its longest text.
        """
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if len(tokens) == 0:
            return np.zeros((0, self.dim), np.float32)
        if not self.meta["text"].get("cut"):
            return self._run("text", tokens)
        ends = tokens.argmax(axis=1)
        order = np.argsort(ends, kind="stable")
        out = np.empty((len(tokens), self.dim), np.float32)
        table = self.token_table()
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]
            cut = tokens[rows, :int(ends[rows].max()) + 1]
            try:
                embedded = np.ascontiguousarray(table[cut], dtype=np.float32)
            except IndexError as exc:  # a table shorter than the vocabulary
                raise self._damaged("token table of the text", exc) from None
            out[rows] = self._run("text", embedded, ends[rows])
        return out

    def token_table(self) -> np.ndarray:
        """The token-embedding table of a cut text graph, memory-mapped: a query reads only its rows."""
        with self._lock:
            if self._table is None:
                try:
                    table = np.load(self.folder / self.meta["text"]["token_table"], mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise self._damaged("token table of the text", exc) from None
                if table.ndim != 2 or table.dtype != np.float32:
                    raise self._damaged("token table of the text", ValueError(f"{table.dtype} {table.shape}"))
                self._table = table
            return self._table

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Encode a list of strings to unit float32 rows."""
        return self.encode_tokens(self.tokenizer(list(texts)))

    def _damaged(self, tower: str, exc: BaseException) -> BackendUnavailable:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return BackendUnavailable(self.identity, f"its {tower} tower in {self.folder} cannot be used ({first}); "
                                                 "delete that folder and it is exported again")

    def _run(self, tower: str, *inputs: np.ndarray) -> np.ndarray:
        session = self.session(tower)
        try:
            (out,) = session.run(None, dict(zip(self.meta[tower]["inputs"], inputs)))
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise self._damaged(tower, exc) from None
        out = np.asarray(out, dtype=np.float32)  # the graph ends in the L2 normalisation
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise self._damaged(tower, ValueError(f"it gave vectors of shape {out.shape}, not {self.dim}-long"))
        if not np.isfinite(out).all():
            raise self._damaged(tower, ValueError("it gave vectors that are not finite"))
        return out
