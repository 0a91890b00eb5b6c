"""Loading open_clip models into PyTorch, and encoding with them.

The only module besides the ONNX export that imports torch and open_clip, and only inside
functions: importing it is cheap. :class:`clipdex.models.Encoder` decides when it is used.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from clipdex.errors import ModelUnavailable
from clipdex.models import ModelSpec, check_locally, unknown_architecture_message, weights_stamp

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check of the Hugging Face endpoint, so an offline machine fails in seconds."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def preflight(spec: ModelSpec) -> None:
    """Make sure the weights are on disk, failing with one actionable line if not."""
    check_locally(spec)
    if spec.kind in ("local-dir", "tiny"):
        return
    import open_clip
    from open_clip import pretrained

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    cfg = None
    if spec.kind == "builtin":  # names are checked before any network access: a typo fails at once
        if spec.name not in open_clip.list_models():
            raise ModelUnavailable(unknown_architecture_message(spec.name, open_clip.list_models()))
        cfg = pretrained.get_pretrained_cfg(spec.name, spec.tag)
        if not cfg:
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.name)) or "none"
            raise ModelUnavailable(f"unknown pretrained tag {spec.tag!r} for {spec.name} (known: {tags})")
    from huggingface_hub import constants as hub_constants

    offline = hub_constants.HF_HUB_OFFLINE or not _hub_reachable()
    saved, hub_constants.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE, offline
    try:
        if cfg is None:
            pretrained.download_pretrained_from_hf(spec.name, filename="open_clip_config.json")
            pretrained.download_pretrained_from_hf(spec.name)
        else:
            pretrained.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - any fetch failure means the same to the user
        if offline:
            reason = "no network access and they are not in the local cache"
        else:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise ModelUnavailable(f"cannot fetch weights for {spec}: {reason}", fetch_failed=True) from None
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


#: Models loaded in this process: (identity, device, precision, weights stamp) -> (model, tokenizer, cfg).
_LOADED: dict[tuple, tuple[Any, Any, dict[str, Any]]] = {}
_LOADED_LOCK = threading.Lock()


def _load_model(spec: ModelSpec, device: str, precision: str) -> tuple[Any, Any, dict[str, Any]]:
    """Check the weights are there, then build the open_clip model, its tokenizer and preprocessing config."""
    preflight(spec)
    import open_clip
    import torch

    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if spec.kind == "builtin":
        kwargs["pretrained"] = spec.tag
    try:
        model = open_clip.create_model(spec.open_clip_name, **kwargs)
        tokenizer = open_clip.get_tokenizer(spec.open_clip_name)
    except Exception as exc:  # noqa: BLE001 - a broken model folder or config, in one line
        reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise ModelUnavailable(f"cannot load model {spec}: {reason}") from None
    model.eval()
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    size = cfg.get("size", 224)
    cfg["size"] = int(size if isinstance(size, int) else size[0])
    return model, tokenizer, cfg


def pick_device(device: str | None = None) -> str:
    """``cuda`` when a GPU is usable, else ``cpu``; an explicit choice wins."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchEncoder:
    """An open_clip model run by PyTorch, loaded on first use; encodes pictures and texts to unit vectors.

    On CUDA the model runs in half precision (``fp16`` unless ``precision='bf16'``);
    on the CPU in float32. Used through :class:`clipdex.models.Encoder`, which picks the backend.
    """

    backend = "torch"

    def __init__(self, spec: ModelSpec, device: str | None = None, precision: str | None = None):
        self.spec = spec
        self._device = device
        self._precision = precision
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._cfg: dict[str, Any] = {}

    def load(self) -> TorchEncoder:
        """Load weights now (idempotent); raises :class:`ModelUnavailable`.

        A model already loaded in this process (same weights, device and precision) is shared,
        not read again: in-process callers (tests, a server's app factory) pay for it once.
        """
        with self._lock:
            if self._model is not None:
                return self
            check_locally(self.spec)
            import torch

            device = pick_device(self._device)
            precision = self._precision or ("fp16" if device.startswith("cuda") else "fp32")
            key = (self.spec.identity, device, precision, weights_stamp(self.spec))
            with _LOADED_LOCK:
                if key not in _LOADED:
                    _LOADED[key] = _load_model(self.spec, device, precision)
                model, tokenizer, cfg = _LOADED[key]
            self._cfg = dict(cfg)
            self._torch_device = torch.device(device)
            self._dtype = next(model.parameters()).dtype
            self._mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
            self._std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
            self._tokenizer = tokenizer
            self._model = model
        return self

    def torch_parts(self) -> tuple[Any, Any, dict[str, Any]]:
        """The loaded open_clip model, its tokenizer and preprocessing config (for the ONNX export)."""
        self.load()
        return self._model, self._tokenizer, dict(self._cfg)

    @property
    def device(self) -> str:
        return str(self.load()._torch_device)

    @property
    def image_size(self) -> int:
        """Side in pixels of the square the model sees."""
        return self.load()._cfg["size"]

    @property
    def resize_mode(self) -> str:
        return self.load()._cfg.get("resize_mode", "shortest")

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (100 for CLIP), used for zero-shot softmax."""
        return float(self.load()._model.logit_scale.exp().item())

    @property
    def dim(self) -> int:
        """Length of the embedding vectors."""
        if "dim" not in self._cfg:
            self._cfg["dim"] = int(self.encode_texts(["a photo"]).shape[1])
        return self._cfg["dim"]

    def _finish(self, features: torch.Tensor) -> np.ndarray:
        import torch

        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def _encode_nchw(self, x: torch.Tensor) -> np.ndarray:
        """Normalise a ``N x 3 x S x S`` uint8 batch on the model's device and encode it."""
        x = x.float().div_(255)
        x = ((x - self._mean) / self._std).to(self._dtype)
        return self._finish(self._model.encode_image(x))

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a ``N x S x S x 3`` uint8 batch (see :func:`clipdex.imaging.fit_square`)."""
        import torch

        self.load()
        with torch.inference_mode():
            x = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"])).to(self._torch_device, non_blocking=True)
            return self._encode_nchw(x.permute(0, 3, 1, 2))

    def encode_pixel_tensor(self, x: torch.Tensor) -> np.ndarray:
        """Encode a ``N x 3 x S x S`` uint8 tensor already on the model's device
        (:func:`clipdex.gpujpeg.decode_jpegs`), with no trip through host memory."""
        import torch

        self.load()
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an N x 3 x S x S uint8 tensor, got {x.dtype} {tuple(x.shape)}")
        with torch.inference_mode():
            return self._encode_nchw(x.to(self._torch_device))

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Encode a list of strings to unit vectors."""
        import torch

        self.load()
        with torch.inference_mode():
            tokens = self._tokenizer(list(texts)).to(self._torch_device)
            return self._finish(self._model.encode_text(tokens))
