"""Token-level log-probabilities shared by the post-training losses.

Alignment convention (every causal LM): ``logits[:, i]`` scores the token at ``i + 1``. Callers
shift the labels once (:func:`shift_labels`) and every function here then reads position ``i`` of
``logits`` against position ``i`` of the shifted labels, so packed rows (several sequences in one
row) shift each sequence on its own before concatenation.

Shape letters: b batch, s tokens, v vocabulary.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """The target of each position: ``[..., s] -> [..., s]``, ``out[..., i] = labels[..., i + 1]``.

    The last position gets ``ignore_index`` (transformers' ``shift_labels`` convention).
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def token_logps(logits: Tensor, shifted_labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Log-probability of each target token: ``[b, s, v]`` and ``[b, s]`` -> ``[b, s]`` float32.

    Any leading shape works the same (``[n, v]`` and ``[n]`` -> ``[n]``).

    Computed as ``-cross_entropy`` in float32 (one fused log-softmax + gather); positions whose
    target is ``ignore_index`` get exactly 0.
    """
    nll = F.cross_entropy(
        logits.flatten(0, -2).float(), shifted_labels.flatten(), ignore_index=ignore_index, reduction="none"
    )  # [b * s]
    return -nll.view_as(shifted_labels)


__all__ = ["IGNORE_INDEX", "shift_labels", "token_logps"]
