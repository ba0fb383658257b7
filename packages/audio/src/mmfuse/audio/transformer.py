"""Whisper's encoder architecture over log-mel frames, with key-padding masks.

The layout is that of Radford et al. (2022), "Robust Speech Recognition via Large-Scale Weak
Supervision", figure 1: two 1-D convolutions (the second with stride 2) + GELU, sinusoidal
positions, pre-LayerNorm transformer blocks, a final LayerNorm. Parameter names equal those of
``transformers.WhisperEncoder``, so its state dict loads unchanged; outputs match it when every
frame is real. Unlike it, padded frames are masked: they are zeroed before each convolution
(so a clip's real frames see the same neighbours padded or not) and excluded as attention keys,
and any number of frames up to ``2 * max_positions`` is accepted.

Shape letters: b batch, m mel bins, f frames, s_e encoder tokens (``ceil(f / 2)``), d hidden
size, h heads, hd head size, ffn feed-forward width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmfuse.core.attention import attention
from mmfuse.core.encoders import EncoderOutput


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed position table: ``[length, channels]`` float32, sines then cosines.

    Channel ``i < channels / 2`` has angular rate ``max_timescale ** (-i / (channels / 2 - 1))``
    (Radford et al., 2022, released ``whisper/model.py``; equals transformers' ``sinusoids``,
    which is not imported here because importing Whisper's modelling code takes seconds).

    Raises:
        ValueError: if ``channels`` is odd.
    """
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    rates = torch.exp(-math.log(max_timescale) / (channels // 2 - 1) * torch.arange(channels // 2))
    angles = torch.arange(length)[:, None] * rates[None, :]  # [length, channels / 2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with Whisper's projections (no bias on ``k_proj``).

    The attention itself goes through :func:`mmfuse.core.attention.attention` (backend ``auto``).
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """``[b, s_e, d]`` (+ ``[b, s_e]`` bool) -> ``[b, s_e, d]``."""
        b, s, d = hidden_states.shape

        def heads(x: Tensor) -> Tensor:  # [b, s_e, d] -> [b, h, s_e, hd]
            return x.view(b, s, self.num_heads, d // self.num_heads).transpose(1, 2)

        q, k, v = (heads(proj(hidden_states)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # [b, 1, 1, s_e]
        out = attention(q, k, v, attn_mask=attn_mask)  # bidirectional; padded keys excluded
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))  # [b, h, s_e, hd] -> [b, s_e, d]


class EncoderLayer(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))``, then ``x + fc2(gelu(fc1(ln(x))))``; dropout on both branches."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(hidden_size)
        self.self_attn = SelfAttention(hidden_size, num_heads)
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        self.fc1 = nn.Linear(hidden_size, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """``[b, s_e, d]`` (+ ``[b, s_e]`` bool) -> ``[b, s_e, d]``."""
        attn = self.self_attn(self.self_attn_layer_norm(hidden_states), key_padding_mask)
        hidden_states = hidden_states + self.dropout(attn)
        mlp = self.fc2(F.gelu(self.fc1(self.final_layer_norm(hidden_states))))
        return hidden_states + self.dropout(mlp)


class MelTransformer(nn.Module):
    """Whisper's encoder over ``input_features [b, m, f]`` with a frame mask.

    Args:
        n_mels: mel bins of the input (m).
        hidden_size: model width (d).
        num_layers: transformer blocks.
        num_heads: attention heads per block (h); must divide ``hidden_size``.
        ffn_dim: feed-forward width.
        max_positions: longest token sequence (``s_e``); frames are at most twice this.
        dropout: residual and embedding dropout (Whisper's ``dropout``).
    """

    def __init__(
        self,
        n_mels: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        max_positions: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, hidden_size, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(hidden_size, hidden_size, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(max_positions, hidden_size)
        self.embed_positions.requires_grad_(False)  # fixed sinusoids, as in Whisper
        with torch.no_grad():
            self.embed_positions.weight.copy_(sinusoids(max_positions, hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(hidden_size, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, input_features: Tensor, feature_attention_mask: Tensor | None = None) -> EncoderOutput:
        """Encode mel frames.

        Args:
            input_features: ``[b, m, f]`` float log-mels.
            feature_attention_mask: ``[b, f]`` bool, True for real frames; None if all are real.

        Returns:
            hidden states ``[b, ceil(f / 2), d]`` and token mask ``[b, ceil(f / 2)]`` bool (token
            ``j`` is real when frame ``2 j`` is), or None when no mask was given.

        Raises:
            ValueError: if ``f > 2 * max_positions``.
        """
        num_tokens = (input_features.shape[-1] + 1) // 2
        if num_tokens > self.embed_positions.num_embeddings:
            raise ValueError(
                f"{input_features.shape[-1]} frames give {num_tokens} tokens, more than max_positions="
                f"{self.embed_positions.num_embeddings}"
            )
        mask = None if feature_attention_mask is None else feature_attention_mask[:, None, :]  # [b, 1, f]
        hidden_states = F.gelu(self.conv1(_zero_padding(input_features, mask)))  # [b, m, f] -> [b, d, f]
        hidden_states = F.gelu(self.conv2(_zero_padding(hidden_states, mask)))  # -> [b, d, s_e]
        positions = self.embed_positions.weight[:num_tokens]  # [s_e, d]
        hidden_states = hidden_states.transpose(1, 2) + positions  # [b, d, s_e] -> [b, s_e, d]
        hidden_states = self.dropout(hidden_states)
        token_mask = None if feature_attention_mask is None else feature_attention_mask[:, ::2]  # [b, s_e]
        for layer in self.layers:
            hidden_states = layer(hidden_states, token_mask)
        return EncoderOutput(hidden_states=self.layer_norm(hidden_states), attention_mask=token_mask)


def _zero_padding(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded frames of ``[b, c, f]`` given a ``[b, 1, f]`` bool mask (None: unchanged)."""
    return x if mask is None else x.masked_fill(~mask, 0.0)


__all__ = ["EncoderLayer", "MelTransformer", "SelfAttention", "sinusoids"]
