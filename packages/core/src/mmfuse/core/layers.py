"""Small blocks shared by the adapters, the fusion layers and the towers.

Shape letters: n items, t frames, s_e encoder tokens, d width.
"""

from __future__ import annotations

from torch import Tensor, nn


class FeedForward(nn.Sequential):
    """Pre-norm MLP ``[..., d] -> [..., d]``: LayerNorm, Linear(d, mult * d), GELU, Linear (no biases)."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__(
            nn.LayerNorm(dim),
            nn.Linear(dim, mult * dim, bias=False),
            nn.GELU(),
            nn.Linear(mult * dim, dim, bias=False),
        )


def flatten_frames(hidden_states: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``[n, t, s_e, d] -> [n, t * s_e, d]`` (and the mask ``[n, t, s_e] -> [n, t * s_e]``)."""
    if hidden_states.dim() == 3:
        return hidden_states, attention_mask
    return hidden_states.flatten(1, 2), None if attention_mask is None else attention_mask.flatten(1, 2)


def mlp(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """``depth`` Linear layers with GELU between them: ``[..., in_dim] -> [..., out_dim]``."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


__all__ = ["FeedForward", "flatten_frames", "mlp"]
