"""Direct preference optimisation (the DPO family) of a multimodal LM on preference pairs.

The stage is its loss and its metrics: :func:`mmfuse.core.losses.dpo_loss` (every ``loss_type``:
sigmoid / cDPO, robust, hinge, ipo, simpo, apo_zero, nca_pair, with the RPO term) on summed
completion log-probs from **one** forward over the concatenated chosen and rejected rows, the
prompt's media encoded once (:func:`~mmfuse.training.data.preference.completion_logps`). The
reference is a frozen eval-mode copy or log-probs precomputed once and cached on disk
(:mod:`mmfuse.training.stages.reference`); the reference-free ``simpo`` has none. Optimiser,
schedule, pair-normalised accumulation and ``init_from`` (the SFT checkpoint) come from
:class:`~mmfuse.training.stages.base.LMStage`.

Logged (TRL ``DPOTrainer``'s names), under ``train/`` and ``val/``: ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins`` (chosen - rejected), ``rewards/accuracies`` (share of
pairs whose chosen reward is the larger), ``logps/chosen``, ``logps/rejected`` (means over pairs);
held-out, also ``val/rewards/accuracies/<kind>`` per question kind.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mmfuse.core.losses import DPO_LOSS_TYPES, DPOOutput, dpo_loss
from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.preference import completion_logps
from mmfuse.training.stages.base import LMStage
from mmfuse.training.stages.reference import CachedReference, FrozenReference, weights_fingerprint


class DirectPreferenceOptimization(LMStage):
    """DPO of a :class:`~mmfuse.core.model.MultimodalLM` on
    :class:`~mmfuse.training.data.preference.PreferenceDataModule` batches.

    Args:
        model: the policy (and, copied or cached, the reference).
        init_from: the checkpoint both start from (usually SFT's).
        beta, loss_type, label_smoothing, simpo_gamma, rpo_alpha: see :func:`mmfuse.core.losses.dpo_loss`.
        ref_logps_cache: a file for reference log-probs precomputed in one pass before training
            (computed when missing, refused when its fingerprints are not this run's); None keeps a
            frozen copy of the model as the live reference.
        kwargs: the optimiser arguments of :class:`~mmfuse.training.stages.base.LMStage` (``lr``,
            ``weight_decay``, ``betas``, ``eps``, ``warmup_steps``, ``min_lr_ratio``, ``max_grad_norm``).

    Raises:
        ValueError: an unknown ``loss_type``.
    """

    units_name = "pairs"

    def __init__(
        self,
        model: MultimodalLM,
        init_from: str | None = None,
        beta: float = 0.1,
        loss_type: str = "sigmoid",
        label_smoothing: float = 0.0,
        simpo_gamma: float = 0.5,
        rpo_alpha: float | None = None,
        ref_logps_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        if loss_type not in DPO_LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {sorted(DPO_LOSS_TYPES)}, got {loss_type!r}")
        super().__init__(model, init_from, **kwargs)
        self.reference: FrozenReference | CachedReference | None = None
        if DPO_LOSS_TYPES[loss_type].reference:
            self.reference = (
                FrozenReference(self.model)
                if ref_logps_cache is None
                else CachedReference(ref_logps_cache, weights_fingerprint(self.model))
            )

    def _prepare_reference(self) -> None:
        if isinstance(self.reference, CachedReference):
            self.reference.prepare(self.model, self.trainer.datamodule, self.trainer.strategy)

    def on_fit_start(self) -> None:
        self._prepare_reference()

    def on_validation_start(self) -> None:
        self._prepare_reference()

    def pair_outputs(self, micro_batch: dict[str, Any], split: str) -> tuple[DPOOutput, Tensor]:
        """The loss outputs of a micro-batch's pairs, and the policy's ``[2b]`` log-probs."""
        logps = completion_logps(self.model, micro_batch)  # [2b]: chosen rows, then rejected
        ref = (None, None) if self.reference is None else self.reference.logps(micro_batch, split).chunk(2)
        lengths = micro_batch["completion_mask"].sum(-1).chunk(2)
        hp = self.hparams
        out = dpo_loss(
            *logps.chunk(2), *ref, beta=hp.beta, loss_type=hp.loss_type, label_smoothing=hp.label_smoothing,
            chosen_lengths=lengths[0], rejected_lengths=lengths[1], simpo_gamma=hp.simpo_gamma,
            rpo_alpha=hp.rpo_alpha,
        )  # fmt: skip
        return out, logps

    @staticmethod
    def pair_metrics(out: DPOOutput, logps: Tensor) -> dict[str, Tensor]:
        """Metrics summed over pairs (the base divides by the step's pairs)."""
        chosen_logps, rejected_logps = logps.detach().chunk(2)
        return {
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/margins": (out.chosen_rewards - out.rejected_rewards).sum(),
            "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().sum(),
            "logps/chosen": chosen_logps.sum(),
            "logps/rejected": rejected_logps.sum(),
        }

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        out, logps = self.pair_outputs(micro_batch, "train")
        return out.losses.sum(), self.pair_metrics(out, logps)

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        return len(micro_batch["keys"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        micro_batch = batch["micro_batches"][0]
        out, logps = self.pair_outputs(micro_batch, "val")
        n = len(micro_batch["keys"])
        self.log("val/loss", out.losses.mean(), batch_size=n)
        self.log_dict({f"val/{k}": v / n for k, v in self.pair_metrics(out, logps).items()}, batch_size=n)
        correct = out.chosen_rewards > out.rejected_rewards
        kinds = micro_batch["kinds"]
        for kind in sorted(set(kinds)):
            mine = torch.tensor([k == kind for k in kinds], device=correct.device)
            self.log(
                f"val/rewards/accuracies/{kind}", correct[mine].float().mean(), batch_size=int(mine.sum())
            )


__all__ = ["DirectPreferenceOptimization"]
