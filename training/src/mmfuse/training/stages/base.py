"""The LM stage base: what SFT, reward modelling, DPO and the RL stages share, written once.

A stage receives its :class:`~mmfuse.core.model.MultimodalLM` and defines its loss per micro-batch
(:meth:`LMStage.micro_batch_loss`) and the unit its loss is normalised by
(:meth:`LMStage.loss_units`: target tokens for SFT, pairs for DPO...). The base owns:

* AdamW over two parameter groups of the stage's trainable parameters (the model's and any head a
  stage adds, e.g. a reward model's score; matrices decay; biases, norms, scalars do not) with every
  AdamW argument configurable, and linear warmup + cosine decay stepped per optimiser step
  (:meth:`LMStage.scheduler_steps`);
* manual accumulation (:meth:`LMStage.optimizer_update`): one training batch is one optimiser step of
  ``micro_batches`` (the RL stages take several per batch); the loss of
  each micro-batch is its *sum* over units divided by the units of the whole step, all-reduced over
  micro-batches and ranks (transformers' ``num_items_in_batch``): accumulating micro-batches of any
  sizes on any number of ranks gives the gradient of one big batch, and a micro-batch without units
  adds nothing (no NaN). Keep ``trainer.accumulate_grad_batches`` at 1 and size the step in the data;
* clipping by global norm; ``data/skipped`` and ``data/mix/*``
  (:func:`~mmfuse.training.data.base.log_data`); ``init_from``: the weights of a previous stage's
  checkpoint (``model.*``, read with ``weights_only=True``), so SFT -> DPO -> GRPO is one argument per
  step. A resumed run (``--ckpt_path``) restores its own weights over them.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor

from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.base import log_data
from mmfuse.training.optim import adamw_param_groups, warmup_cosine


def load_stage_weights(path: str, prefix: str = "model.") -> dict[str, Tensor]:
    """The ``prefix`` tensors of a Lightning checkpoint, prefix removed (``torch.load(weights_only=True)``).

    Raises:
        KeyError: the file has no ``state_dict`` or no tensor under ``prefix``.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise KeyError(f"init_from {path} has no 'state_dict' (keys: {sorted(checkpoint)})")
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise KeyError(f"init_from {path} holds no tensor under {prefix!r}; is it an LM stage's checkpoint?")
    return state


class LMStage(L.LightningModule):
    """Base of the stages that train a :class:`~mmfuse.core.model.MultimodalLM` (module docstring).

    Args:
        model: the multimodal LM to train.
        init_from: a previous LM stage's checkpoint whose ``model.*`` weights start this one.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay of matrices.
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warmup steps.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        max_grad_norm: gradient clipping by global norm (None: off).
        fused: AdamW's fused kernel (``torch.optim.AdamW(fused=)``); None takes it for CPU and CUDA
            parameters outside Lightning's mixed precision, which cannot clip a fused step (TRL's default
            ``adamw_torch_fused``; on this CPU the step of a 1.3 M-parameter LM took 2.2 ms fused, 16 ms
            with PyTorch's default per-tensor loop).

    Raises:
        KeyError: see :func:`load_stage_weights`.
        RuntimeError: ``init_from`` weights that do not fit ``model`` (missing or unexpected keys).
    """

    def __init__(
        self,
        model: MultimodalLM,
        init_from: str | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        warmup_steps: int = 50,
        min_lr_ratio: float = 0.1,
        max_grad_norm: float | None = 1.0,
        fused: bool | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.object_arguments))
        self.automatic_optimization = False
        self.model = model
        if init_from is not None:
            self.model.load_state_dict(load_stage_weights(init_from))

    #: the name ``train/<name>`` under which the per-step unit count is logged.
    units_name = "loss_units"
    #: init arguments that are objects, not settings: kept out of ``hparams`` and so out of checkpoints
    #: (which ``init_from`` reads with ``weights_only=True``).
    object_arguments: tuple[str, ...] = ("model",)

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (the data modules read it from here)."""
        return self.model.tokenizer

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one micro-batch *summed* over its units, and metrics summed the same way."""
        raise NotImplementedError

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        """How many units (e.g. target tokens) the summed loss of ``micro_batch`` covers."""
        raise NotImplementedError

    def accumulate(
        self, micro_batches: list[dict[str, Any]], total_units: Tensor, world_size: int, backward: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Backpropagate ``sum(loss) * world_size / total_units`` one micro-batch at a time.

        Args:
            micro_batches: one optimizer step's micro-batches on this rank.
            total_units: loss units of the step over every micro-batch of every rank.
            world_size: ranks whose gradients the strategy averages.
            backward: ``loss -> None`` (``manual_backward`` in training).

        Returns:
            This rank's share of the step's loss and metrics, ``sum / total_units`` (detached).
        """
        scale = world_size / total_units.clamp_min(1.0)
        loss = torch.zeros((), device=self.device)
        metrics: dict[str, Tensor] = {}
        for micro_batch in micro_batches:
            summed, summed_metrics = self.micro_batch_loss(micro_batch)
            backward(summed * scale)
            loss += summed.detach() * scale / world_size
            for name, value in summed_metrics.items():
                metrics[name] = metrics.get(name, 0.0) + value.detach() * scale / world_size
        return loss, metrics

    def optimizer_update(self, micro_batches: list[dict[str, Any]]) -> tuple[Tensor, dict[str, Tensor], int]:
        """One optimiser step over this rank's ``micro_batches``: accumulate, clip, step, schedule.

        Returns:
            This rank's share of the loss and metrics (:meth:`accumulate`) and its loss units.
        """
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        local = sum(self.loss_units(mb) for mb in micro_batches)
        total = self.trainer.strategy.reduce(torch.tensor(float(local), device=self.device), reduce_op="sum")
        # DDP averages gradients over ranks, so each rank scales by world_size / the global unit count.
        loss, metrics = self.accumulate(micro_batches, total, self.trainer.world_size, self.manual_backward)
        if self.hparams.max_grad_norm is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return loss, metrics, local

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, metrics, local = self.optimizer_update(batch["micro_batches"])
        # this rank's share; the sum over ranks is the step's figure
        self.log("train/loss", loss, prog_bar=True, reduce_fx="sum", sync_dist=True)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, reduce_fx="sum", sync_dist=True)
        self.log(f"train/{self.units_name}", float(local), reduce_fx="sum")
        log_data(self, batch)
        return loss

    def scheduler_steps(self) -> int:
        """Optimiser steps the schedule spans: one per training batch (the RL stages take several)."""
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        # Lightning's mixed precision refuses to clip the gradients of a fused optimizer (it unscales them
        # inside its step), so the default is fused only outside it.
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        fused = self.device.type in ("cpu", "cuda") and not mixed if hp.fused is None else hp.fused
        optimizer = torch.optim.AdamW(
            adamw_param_groups(self, hp.weight_decay), lr=hp.lr, betas=hp.betas, eps=hp.eps, fused=fused
        )
        # the step total is read lazily (see warmup_cosine), so a resumed run restores its data position first
        scheduler = warmup_cosine(optimizer, hp.warmup_steps, self.scheduler_steps, hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["LMStage", "load_stage_weights"]
