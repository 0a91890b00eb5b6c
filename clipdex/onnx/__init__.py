"""ONNX Runtime backend for open_clip models: export once with torch, then encode without torch.

- :mod:`clipdex.onnx.cache`     where exports live and the key that invalidates them (no torch);
- :mod:`clipdex.onnx.export`    export both towers, verify them against PyTorch, write atomically (torch);
- :mod:`clipdex.onnx.towers`    the torch modules traced into the graphs (torch);
- :mod:`clipdex.onnx.runtime`   encode pictures and texts with onnxruntime (no torch, no open_clip);
- :mod:`clipdex.onnx.tokenizer` CLIP's BPE tokenizer in pure Python + numpy.

Importing this package is cheap and never imports torch.
"""

from __future__ import annotations

from clipdex.errors import ClipdexError


class BackendUnavailable(ClipdexError):
    """The ONNX backend cannot serve this model here (export failed, disagrees with PyTorch,
    unsupported tokenizer, onnxruntime missing); ``reason`` says why in one line."""

    exit_code = 2

    def __init__(self, model: str, reason: str, transient: bool = False):
        super().__init__(f"ONNX backend unavailable for {model}: {reason}")
        #: ``transient``: a problem of this machine now (a package missing, memory short), not of the model:
        #: never remembered as a refusal
        self.model, self.reason, self.transient = model, reason, transient
