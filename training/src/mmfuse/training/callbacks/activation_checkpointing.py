"""Activation checkpointing of chosen layer classes, for any strategy (single device, DDP...).

Lightning's FSDP strategies take ``activation_checkpointing_policy``; other strategies have no
such setting. :class:`ActivationCheckpointing` applies the same mechanism - PyTorch's
non-reentrant ``checkpoint_wrapper`` through ``apply_activation_checkpointing``, as Lightning's
FSDP strategy does - before the strategy wraps the model: the wrapped layers keep only their
inputs during the forward pass and recompute their activations during the backward pass.
Parameter names (``state_dict`` keys) are unchanged, so checkpoints load with or without it.
"""

from __future__ import annotations

import importlib

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    apply_activation_checkpointing,
)
from typing_extensions import override


def _import_class(path: str) -> type[nn.Module]:
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"ActivationCheckpointing: cannot import layer class {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"ActivationCheckpointing: {path!r} is not an nn.Module class")
    return cls


class ActivationCheckpointing(Callback):
    """Recompute the activations of every ``layer_classes`` layer in the backward pass.

    Trades one extra forward of those layers per step for not storing their intermediate
    activations (for a transformer block: attention scores, MLP hidden states).

    Args:
        layer_classes: dotted class paths, e.g. ``["open_clip.transformer.ResidualAttentionBlock"]``.

    Raises:
        ValueError: If a class cannot be imported or is not an ``nn.Module``; at ``setup`` if the
            model has no layer of these classes.
    """

    def __init__(self, layer_classes: list[str]) -> None:
        self.layer_classes = tuple(_import_class(path) for path in layer_classes)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if any(isinstance(m, CheckpointWrapper) for m in pl_module.modules()):
            return  # already applied (a second fit/validate on the same module)
        if not any(isinstance(m, self.layer_classes) for m in pl_module.modules()):
            names = [c.__qualname__ for c in self.layer_classes]
            raise ValueError(f"ActivationCheckpointing: {type(pl_module).__name__} has no {names} layer")
        apply_activation_checkpointing(pl_module, check_fn=lambda m: isinstance(m, self.layer_classes))


__all__ = ["ActivationCheckpointing"]
