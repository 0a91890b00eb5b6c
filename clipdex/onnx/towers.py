"""The torch modules that are traced into the two ONNX graphs (imported only when exporting).

Image graph: uint8 ``N x S x S x 3`` (or float NCHW in [0, 1]) -> layout change, ``(x/255 - mean)/std``
folded into one multiply-add per channel, the open_clip image tower, L2 normalisation.

Text graph: token ids -> the open_clip text tower -> L2 normalisation. When the text tower is CLIP's
causal transformer pooled at the end-of-text token (the usual case), the graph accepts sequences
cut right after the last end-of-text token: with a causal mask, positions after it cannot change
the pooled vector, so a 10-token query costs a tenth of a 77-token pass. The runtime does the
cutting and the token-embedding lookup; the export verifies cut and uncut sequences against PyTorch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


def image_tower(model: Any, mean: list[float], std: list[float], layout: str) -> nn.Module:
    """Module for the image graph; ``layout`` is ``uint8-nhwc`` or ``float-nchw``."""

    class ImageTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
            mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std_t) if layout == "uint8-nhwc" else 1.0 / std_t)
            self.register_buffer("shift", -mean_t / std_t)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = pixels.permute(0, 3, 1, 2).float() if layout == "uint8-nhwc" else pixels
            x = x * self.scale + self.shift
            return nn.functional.normalize(self.model.encode_image(x), dim=-1)

    return ImageTower().eval()


def _plain_block(block: nn.Module) -> bool:
    """open_clip's ResidualAttentionBlock around a plain ``nn.MultiheadAttention`` (self-attention only)."""
    attn = getattr(block, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and attn.bias_k is None and not attn.add_zero_attn and not hasattr(block, "ln_1_kv")
            and all(hasattr(block, name) for name in ("ln_1", "ln_2", "mlp", "ls_1", "ls_2")))


def can_cut_sequences(model: Any) -> bool:
    """True for open_clip's ``CLIP`` text tower: plain blocks, a causal mask, end-of-text (argmax) pooling."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "attn_mask", "text_projection")
    if not all(hasattr(model, name) for name in needed) or getattr(model, "text_pool_type", None) != "argmax":
        return False
    if not all(_plain_block(b) for b in getattr(model.transformer, "resblocks", [None])):
        return False
    mask = model.attn_mask
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        return False
    causal = torch.full_like(mask, float("-inf")).triu_(1)
    return bool(torch.equal(mask, causal))


def _attention(attn: nn.MultiheadAttention, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x, attn_mask=mask)`` for batch-first ``x``, written so that the sequence length stays
    a dynamic axis when traced (torch's own implementation bakes the traced length into its reshapes)."""
    batch, width = x.shape[0], x.shape[2]
    heads = attn.num_heads
    q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1) + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, -1, width)
    return attn.out_proj(out)


def text_tower(model: Any) -> tuple[nn.Module, bool]:
    """Module for the text graph, and whether it is the cut form.

    The cut form (see :func:`can_cut_sequences`) takes ``embedded`` (``N x L x width``: the token
    embeddings, looked up by the runtime in a memory-mapped table, which keeps the largest weight out
    of the graph and so halves session start-up) and ``eot`` (``N`` end-of-text positions), for any
    ``L`` up to the context length. The other form takes ``tokens`` (``N x context_length``).
    """
    cut = can_cut_sequences(model)

    class TextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return nn.functional.normalize(self.model.encode_text(tokens), dim=-1)

    class CutTextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, embedded: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
            m = self.model  # open_clip's CLIP.encode_text from the embeddings on, cut to their length
            length = embedded.shape[1]
            cast = m.transformer.get_cast_dtype()
            x = embedded.to(cast) + m.positional_embedding[:length].to(cast)
            mask = m.attn_mask[:length, :length].to(x.dtype)
            for block in m.transformer.resblocks:
                x = x + block.ls_1(_attention(block.attn, block.ln_1(x), mask))
                x = x + block.ls_2(block.mlp(block.ln_2(x)))
            x = m.ln_final(x)
            x = x[torch.arange(x.shape[0]), eot]
            x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
            return nn.functional.normalize(x, dim=-1)

    return (CutTextTower() if cut else TextTower()).eval(), cut


@contextlib.contextmanager
def fast_attention_off() -> Iterator[None]:
    """Without gradients ``nn.MultiheadAttention`` takes a fused fast path that has no ONNX export;
    it is switched off while tracing (same numbers, plain ops)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)
