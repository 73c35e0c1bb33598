"""The temporal module M of VideoMolmo (paper Sec. 3.2; ``MemoryAttention`` in the release).

For a keyframe with unpooled patch features f (crops x patches x C, C = 2048 for ViT-L) and the
context f* = mean of the same features of the previous l frames (crop i of each frame aligned
with crop i of the keyframe), both are cut into non-overlapping 2x2 patch windows,
(N * P / 4) x 4 x C. Inside every window the 4 tokens of f attend to the 4 tokens of the same
window of f* (multi-head cross-attention: query from f, key and value from f*), and the result is
added back: f^ = f + M(f, f*). No biases, no normalisation, no positional encoding; the weights
start from Xavier-normal (the paper trains M from scratch). Windows use the same 2x2 grouping as
the attention pooling that follows, so each pooled image token sees exactly one window.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from videomolmo_ros.model.config import VideoMolmoConfig


def to_windows(features: torch.Tensor, grid: tuple[int, int],
               pool: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """(B, T, rows*cols, C) patch features -> (B*T*rows/ph*cols/pw, ph*pw, C) windows.

    Windows are ordered (batch, crop, window row, window col); tokens inside a window row-major.
    A grid with an odd side is zero-padded at the bottom/right first, as in Molmo.
    """
    b, t, _, c = features.shape
    rows, cols = grid
    ph, pw = pool
    x = features.reshape(b, t, rows, cols, c)
    pad_rows, pad_cols = (-rows) % ph, (-cols) % pw
    if pad_rows or pad_cols:
        x = F.pad(x, (0, 0, 0, pad_cols, 0, pad_rows))
        rows, cols = rows + pad_rows, cols + pad_cols
    x = x.reshape(b, t, rows // ph, ph, cols // pw, pw, c).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(-1, ph * pw, c)


def context_mean(history: Sequence[torch.Tensor]) -> torch.Tensor:
    """f*: the mean of the history features, as the release's running mean over frames in order."""
    if not history:
        raise ValueError("the temporal context needs at least one history frame")
    mean = history[0]
    for i, features in enumerate(history[1:], start=1):
        mean = mean + (features - mean) / (i + 1)
    return mean


class TemporalModule(nn.Module):
    """M(f, f*): window-local multi-head cross-attention, query f, key/value f*.

    Parameter names (wq, wk, wv, wo) match the release's ``vision_backbone.adapter``.
    """

    def __init__(self, config: VideoMolmoConfig) -> None:
        super().__init__()
        dim = config.image_feature_dim
        self.num_heads = config.temporal_heads
        self.head_dim = config.temporal_head_dim
        inner = self.num_heads * self.head_dim
        self.wq = nn.Linear(dim, inner, bias=False)
        self.wk = nn.Linear(dim, inner, bias=False)
        self.wv = nn.Linear(dim, inner, bias=False)
        self.wo = nn.Linear(inner, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal initialisation of all four projections (paper Sec. 3.2)."""
        for linear in (self.wq, self.wk, self.wv, self.wo):
            nn.init.xavier_normal_(linear.weight)

    def forward(self, current: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """current, context: (W, 4, C) windows -> M(f, f*): (W, 4, C), the residual to add."""
        w, n, _ = current.shape
        q = self.wq(current).view(w, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(context).view(w, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.wv(context).view(w, -1, self.num_heads, self.head_dim).transpose(1, 2)
        # (W, heads, 4, head_dim); logits and softmax in float32 like the release.
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        out = out.to(current.dtype).transpose(1, 2).reshape(w, n, -1)
        return self.wo(out)

    def fuse(self, current: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """f^ = f + M(f, f*)."""
        return current + self(current, context)
