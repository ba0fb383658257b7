"""Optimiser pieces shared by the stages: AdamW parameter groups and the warmup-cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def adamw_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay; biases, norms, embeddings' 1-D params and scalars do not.

    Matches open_clip's ``exclude`` rule (``p.ndim < 2`` or ``bn``/``ln``/``bias``/``logit_scale``
    in the name): the learnable temperature is never decayed.
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or any(k in name for k in ("bias", "logit_scale", "logit_bias", "ln", "norm"))
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int | Callable[[], int],
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``.

    Stepped once per optimiser step (Lightning ``interval="step"``). ``total_steps`` may be a callable,
    called once, at the first step after the warmup: ``trainer.estimated_stepping_batches`` read in
    ``configure_optimizers`` sets the train dataloader up before a resumed run restores its position,
    which Lightning then never loads (Lightning issue #20550), so read it lazily.
    """
    total: list[int] = []

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step == warmup_steps:  # cos(0): the peak, whatever the total (the schedule's first value)
            return 1.0
        if not total:
            total.append(int(total_steps() if callable(total_steps) else total_steps))
        progress = min((step - warmup_steps) / max(total[0] - warmup_steps, 1), 1.0)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
