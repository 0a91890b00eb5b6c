"""Model specs, and the :class:`Encoder` that turns pictures and texts into vectors.

An encoder runs one of two backends, chosen when it loads (see :meth:`Encoder.load`):
ONNX Runtime (:mod:`clipdex.onnx`, no torch at all once the model is exported) or PyTorch
(:mod:`clipdex.torchclip`). Their vectors are interchangeable: the export is verified
against PyTorch, and a library records only the model, never the backend.

Importing this module is cheap: torch, open_clip and onnxruntime are imported only when an
encoder loads, so ``clipdex --help`` stays instant.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from clipdex.errors import ModelUnavailable, UsageError
from clipdex.suggest import similar_names

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Alias of the tiny model that ships with clipdex (trained on generated shapes).
TINY_MODEL = "tiny"
#: Default for real photo collections; see README "Choosing a model".
DEFAULT_MODEL = "ViT-B-32:datacomp_xl_s13b_b90k"

#: How to print every architecture open_clip knows, from a shell (this interpreter's open_clip).
LIST_MODELS_COMMAND = f'{shlex.quote(sys.executable)} -c "import open_clip; print(open_clip.list_models())"'


def tiny_model_dir() -> Path:
    """Folder of the tiny model shipped as package data."""
    return Path(str(resources.files("clipdex") / "data" / "tiny-shapes"))


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value.

    ``kind`` is one of ``builtin`` (``ARCH:TAG``), ``hf-hub``, ``local-dir`` or ``tiny``.
    """

    kind: str
    name: str
    tag: str | None = None

    @property
    def identity(self) -> str:
        """What a library records to recognise the model later."""
        if self.kind == "builtin":
            return f"{self.name}:{self.tag}"
        if self.kind == "tiny":
            return "clipdex:tiny-shapes"
        return f"{self.kind}:{self.name}"

    @property
    def open_clip_name(self) -> str:
        if self.kind == "builtin":
            return self.name
        if self.kind == "tiny":
            return f"local-dir:{tiny_model_dir()}"
        return f"{self.kind}:{self.name}"

    @property
    def folder(self) -> Path | None:
        """The model folder of ``local-dir:`` and ``tiny`` models, else None."""
        return Path(self.open_clip_name[len("local-dir:"):]) if self.kind in ("local-dir", "tiny") else None

    def __str__(self) -> str:
        return TINY_MODEL if self.kind == "tiny" else self.identity


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``ARCH:TAG``, ``hf-hub:org/repo``, ``local-dir:/path`` or ``tiny``."""
    spec = spec.strip()
    if spec == TINY_MODEL:
        return ModelSpec("tiny", TINY_MODEL)
    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:"):]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ModelUnavailable(f"bad model spec {spec!r}: expected hf-hub:ORG/REPO")
        return ModelSpec("hf-hub", repo)
    if spec.startswith("local-dir:"):
        path = spec[len("local-dir:"):]
        if not path:
            raise ModelUnavailable(f"bad model spec {spec!r}: expected local-dir:/path/to/folder")
        return ModelSpec("local-dir", str(Path(path).expanduser().resolve()))
    arch, sep, tag = spec.partition(":")
    if not sep or not arch or not tag:
        raise ModelUnavailable(
            f"bad model spec {spec!r}: expected ARCH:PRETRAINED_TAG (e.g. {DEFAULT_MODEL}), "
            "hf-hub:ORG/REPO, local-dir:/path or tiny"
        )
    return ModelSpec("builtin", arch, tag)


def _architectures() -> list[str]:
    """open_clip's built-in architecture names, read from its config files without importing it (or torch)."""
    found = importlib.util.find_spec("open_clip")
    for location in (found.submodule_search_locations or []) if found else []:
        folder = Path(location) / "model_configs"
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.json"))
    return []


def check_locally(spec: ModelSpec) -> None:
    """What can be checked without importing open_clip or torch: a model folder, an architecture name.

    Those mistakes then fail in a fraction of a second, not after seconds of imports.
    """
    folder = spec.folder
    if folder is not None:
        if not folder.is_dir():
            raise ModelUnavailable(f"model folder not found: {folder}")
        if not (folder / "open_clip_config.json").is_file():
            raise ModelUnavailable(f"model folder {folder} has no open_clip_config.json")
        if not any(any(folder.glob(pat)) for pat in ("*.safetensors", "*.bin", "*.pth")):  # what open_clip reads
            raise ModelUnavailable(f"model folder {folder} has no weights (*.safetensors, *.bin, *.pth)")
    elif spec.kind == "builtin":
        names = _architectures()
        if names and spec.name not in names:
            raise ModelUnavailable(unknown_architecture_message(spec.name, names))


def unknown_architecture_message(name: str, known: list[str]) -> str:
    """One line for an architecture open_clip does not know: the nearest names, and how to list them all."""
    close = similar_names(name, known)
    similar = f"similar: {', '.join(close)}; " if close else ""
    return f"unknown model architecture {name!r} ({similar}list them all with: {LIST_MODELS_COMMAND})"




def weights_stamp(spec: ModelSpec) -> tuple:
    """For a model folder, its files' names, sizes and mtimes (changed weights load afresh); else ()."""
    from clipdex.onnx.cache import model_files_stamp

    return model_files_stamp(spec.folder) if spec.folder is not None else ()


#: How many single-text encodings an :class:`Encoder` remembers.
RECENT_QUERIES = 256
#: ``--backend`` values; ``auto`` is ONNX Runtime on the CPU when the model exports and verifies.
BACKENDS = ("auto", "onnx", "torch")
#: Environment variable giving the backend when none is asked for.
BACKEND_ENV = "CLIPDEX_BACKEND"

Say = Callable[[str], None]
#: How the one-time export announces itself through ``say`` (front ends may show it when they show nothing else).
EXPORTING = "exporting model"


class JpegVectors(NamedTuple):
    """What :meth:`Encoder.encode_jpegs` made of a list of JPEG files."""

    vectors: np.ndarray  # one unit row per index in ``ok``
    ok: list[int]  # indices of the pictures encoded, in input order
    failed: list[int]  # indices of those torchvision could not take: decode them on the CPU


def _quiet(_line: str) -> None:
    pass


class Encoder:
    """A model that encodes pictures and texts to unit vectors, loaded on first use.

    ``backend``: ``onnx`` (ONNX Runtime on the CPU: exported once per model, then no torch),
    ``torch`` (PyTorch; fp16 on CUDA), or ``auto`` (the default, or ``$CLIPDEX_BACKEND``):
    ONNX Runtime on the CPU when the model's export verifies against PyTorch, else PyTorch with
    a note saying why; for ``bulk`` work (indexing, tagging a library) PyTorch on a GPU when
    there is one. A model already exported loads without importing torch. ``quick_start`` suits a
    process that encodes a query or two and exits: ONNX sessions start sooner and run a little slower.
    """

    def __init__(self, spec: ModelSpec | str, device: str | None = None, precision: str | None = None,
                 backend: str | None = None, bulk: bool = False, quick_start: bool = False):
        self.spec = parse_model_spec(spec) if isinstance(spec, str) else spec
        self.requested_backend = (backend or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
        if self.requested_backend not in BACKENDS:
            where = "" if backend else f" in {BACKEND_ENV}"
            raise UsageError(f"unknown backend {self.requested_backend!r}{where} (choose from {', '.join(BACKENDS)})")
        self._device, self._precision, self.bulk, self.quick_start = device, precision, bulk, quick_start
        self._lock = threading.Lock()
        self._impl: Any = None
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()
        #: Why ``auto`` did not use ONNX Runtime, when it did not (one line), else None.
        self.note: str | None = None

    def load(self, say: Say | None = None) -> Encoder:
        """Choose the backend and load the model now (idempotent); ``say`` hears one-line progress
        ("exporting …"); :attr:`note` tells why ``auto`` fell back to PyTorch, if it did. Raises
        :class:`ModelUnavailable`, or :class:`clipdex.onnx.BackendUnavailable` when ``onnx`` was asked
        for and cannot be had."""
        with self._lock:
            if self._impl is None:
                self._impl = self._choose(say or _quiet)
        return self

    @property
    def is_loaded(self) -> bool:
        return self._impl is not None

    @property
    def backend(self) -> str:
        """``onnx`` or ``torch``: the backend in use (loads the model)."""
        return self.load()._impl.backend

    def _choose(self, say: Say) -> Any:
        from clipdex.onnx import BackendUnavailable
        from clipdex.torchclip import TorchEncoder

        check_locally(self.spec)
        wanted, device = self.requested_backend, self._device
        if wanted == "torch":
            return TorchEncoder(self.spec, device, self._precision).load()
        if wanted == "auto" and device is None and self.bulk and gpu_present():
            return TorchEncoder(self.spec, None, self._precision).load()
        reason = None
        if device is not None and device.split(":")[0] != "cpu":
            reason = f"it runs on the CPU, not on {device} (use --backend torch there)"
        elif self._precision not in (None, "fp32"):
            reason = f"it runs in fp32, not {self._precision}"
        if reason is None:
            try:
                return self._onnx(say)
            except BackendUnavailable as exc:
                if wanted == "onnx":
                    raise
                reason = exc.reason
        elif wanted == "onnx":
            raise BackendUnavailable(str(self.spec), reason)
        self.note = f"ONNX Runtime cannot run {self.spec} ({reason}): using PyTorch"
        return TorchEncoder(self.spec, device, self._precision).load()

    def _onnx(self, say: Say) -> Any:
        """The cached export, or a new one (which needs torch); raises BackendUnavailable."""
        from clipdex.onnx import BackendUnavailable
        from clipdex.onnx.cache import find, key_for_spec, refusal
        from clipdex.onnx.runtime import OnnxEncoder, SessionOptions

        options = SessionOptions(prepack=() if self.quick_start else ("text",))
        key = key_for_spec(self.spec)
        folder = find(key)
        if folder is not None:
            return OnnxEncoder(folder, options)
        refused = refusal(key)
        if refused:
            raise BackendUnavailable(str(self.spec), refused)
        from clipdex.onnx.cache import cache_root, writable_root
        from clipdex.onnx.export import export_to_cache, torch_parts
        from clipdex.torchclip import preflight

        preflight(self.spec)  # the weights are here (or a clear error) before any word of exporting
        root = cache_root()
        problem = writable_root(root)
        if problem:
            raise BackendUnavailable(str(self.spec), problem)
        say(f"{EXPORTING} {self.spec} to ONNX in {root} (once per model; later runs load it without PyTorch) …")
        try:
            folder = export_to_cache(key, lambda: torch_parts(self.spec), root)
        except OSError as exc:  # a full disk, a cache that became unwritable: not the model's fault, not remembered
            raise BackendUnavailable(str(self.spec), f"cannot write its export to {root} "
                                     f"({exc.strerror or exc}; CLIPDEX_ONNX_CACHE chooses another folder)") from None
        return OnnxEncoder(folder, options)

    def warm_up(self, text: bool = True, image: bool = True) -> None:
        """Load what a first query needs and run each tower once, so that query is not slow."""
        if text:
            self.encode_texts(["a photo"])
        if image:
            self.encode_pixels(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    # --- what the rest of clipdex uses, from whichever backend loaded
    @property
    def image_size(self) -> int:
        """Side in pixels of the square the model sees."""
        return self.load()._impl.image_size

    @property
    def resize_mode(self) -> str:
        return self.load()._impl.resize_mode

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (100 for CLIP), used for zero-shot softmax."""
        return self.load()._impl.logit_scale

    @property
    def dim(self) -> int:
        """Length of the embedding vectors."""
        return self.load()._impl.dim

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a ``N x S x S x 3`` uint8 batch (see :func:`clipdex.imaging.fit_square`) to unit float32 rows."""
        return self.load()._impl.encode_pixels(pixels)

    @property
    def gpu_jpeg(self) -> bool:
        """True when JPEGs can be decoded where the model runs: PyTorch on a CUDA device whose
        nvJPEG decode works (:func:`clipdex.gpujpeg.gpu_jpeg_available`). Loads the model."""
        impl = self.load()._impl
        if impl.backend != "torch" or not impl.device.startswith("cuda"):
            return False
        from clipdex.gpujpeg import gpu_jpeg_available

        return gpu_jpeg_available(impl.device)

    def _torch(self, what: str) -> Any:
        impl = self.load()._impl
        if impl.backend != "torch":
            raise UsageError(f"{what} needs the PyTorch backend, not {impl.backend}")
        return impl

    def encode_jpegs(self, datas: list[bytes], orientations: list[int]) -> JpegVectors:
        """Decode JPEG files (their bytes and EXIF orientations) with torchvision on the model's device
        (:func:`clipdex.gpujpeg.decode_jpegs`) and encode them; pictures it cannot take are listed in
        ``failed``, never raised. PyTorch backend only (nvJPEG when it runs on CUDA: see :attr:`gpu_jpeg`)."""
        from clipdex.gpujpeg import decode_jpegs

        impl = self._torch("decoding JPEGs with torchvision")
        batch = decode_jpegs(datas, orientations, impl.image_size, impl.resize_mode, impl.device)
        vectors = impl.encode_pixel_tensor(batch.pixels) if batch.ok else np.empty((0, impl.dim), np.float32)
        return JpegVectors(vectors, batch.ok, batch.failed)

    def encode_pixel_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Encode a ``N x 3 x S x S`` uint8 tensor on the model's device to unit float32 rows (PyTorch backend)."""
        return self._torch("encoding a tensor").encode_pixel_tensor(x)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Encode a list of strings to unit float32 rows. A single text (a query) is remembered: the
        :data:`RECENT_QUERIES` latest are answered without the model (pages of one search, a query
        run again with other filters)."""
        texts = list(texts)
        if len(texts) != 1:
            return self.load()._impl.encode_texts(texts)
        with self._lock:
            hit = self._recent.get(texts[0])
            if hit is not None:
                self._recent.move_to_end(texts[0])
                return hit.copy()
        vector = self.load()._impl.encode_texts(texts)
        with self._lock:
            self._recent[texts[0]] = vector.copy()
            while len(self._recent) > RECENT_QUERIES:
                self._recent.popitem(last=False)
        return vector


def gpu_present() -> bool:
    """A CUDA GPU torch can use. Looks for the NVIDIA driver first, so machines without one never
    import torch for the question."""
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidiactl").exists()):
        return False
    from clipdex.torchclip import pick_device

    return pick_device() != "cpu"
