"""A multimodal reward model: the LM's last hidden state at the last real token through a scalar head.

The stage is its loss and its metrics. The score of a prompt + answer is ``score(h[last])``, ``h`` the
fused LM's final (normed) hidden states and ``last`` the last real token found from the attention
mask (:func:`~mmfuse.training.data.preference.last_token_index`: left or right padding, a pad id equal
to EOS), as TRL's ``RewardTrainer`` scores ``AutoModelForSequenceClassification`` at the last
non-pad token. Chosen and rejected are one concatenated forward with the prompt's media encoded
once. Loss: Bradley-Terry, :func:`mmfuse.core.losses.reward_loss`, summed over pairs and divided
by the step's pairs (:class:`~mmfuse.training.stages.base.LMStage`).

Logged: ``train/loss``, ``train/accuracy``, ``train/margin``; held-out, at the end of each
validation: ``val/loss``, ``val/accuracy`` (share of pairs with ``r_chosen > r_rejected``, ties
wrong), ``val/accuracy/<kind>``, ``val/margin`` (mean ``r_chosen - r_rejected``) and ``val/ece``, the
expected calibration error of ``p = sigmoid(r_chosen - r_rejected)`` (:func:`reliability`). The
reliability bins are written to ``reliability-epoch=<epoch>.json`` in the trainer's log directory,
and ``mmfuse report`` draws them (``reliability.png``).

Shape letters: b pairs, r rows (chosen rows then rejected rows), s tokens, d LM width.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.core.losses import reward_loss
from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.preference import encode_once, last_token_index, lm_inputs
from mmfuse.training.stages.base import LMStage


def reliability(probs: Tensor, num_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error and reliability bins of pairwise preference probabilities.

    ``probs`` ``[b]`` are ``p = P(chosen preferred)``; the predicted label is "chosen" when ``p > 0.5``,
    its confidence ``max(p, 1 - p)`` in ``[0.5, 1]``. The confidences are put in ``num_bins`` equal
    bins over ``[0.5, 1]`` (the last closed) and ``ECE = sum_m |B_m| / b * |acc(B_m) - conf(B_m)|``
    (Guo et al. 2017, "On Calibration of Modern Neural Networks", Eq. 3; Naeini et al. 2015), with
    ``acc`` the share of correct predictions and ``conf`` the mean confidence in a bin.

    Returns:
        ``{"ece": float, "num_pairs": int, "bins": [{"lower", "upper", "count", "confidence",
        "accuracy"}]}`` (confidence and accuracy None in an empty bin).

    Raises:
        ValueError: no probabilities, or any outside ``[0, 1]``.
    """
    probs = probs.detach().double().flatten().cpu()
    if not len(probs) or ((probs < 0) | (probs > 1)).any():
        raise ValueError(f"reliability needs probabilities in [0, 1], got {len(probs)} values")
    confidence, correct = torch.maximum(probs, 1 - probs), (probs > 0.5).double()
    index = ((confidence - 0.5) * 2 * num_bins).long().clamp_max(num_bins - 1)
    bins, ece = [], 0.0
    for m in range(num_bins):
        members = index == m
        count = int(members.sum())
        conf = float(confidence[members].mean()) if count else None
        acc = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(probs) * abs(acc - conf)
        bins.append({"lower": 0.5 + m / (2 * num_bins), "upper": 0.5 + (m + 1) / (2 * num_bins),
                     "count": count, "confidence": conf, "accuracy": acc})  # fmt: skip
    return {"ece": ece, "num_pairs": len(probs), "bins": bins}


class RewardModeling(LMStage):
    """Bradley-Terry reward modelling of a :class:`~mmfuse.core.model.MultimodalLM` plus a scalar head.

    Args:
        model: the LM whose final hidden state is scored (``init_from``: usually SFT's checkpoint).
        init_from: see :class:`~mmfuse.training.stages.base.LMStage` (the head starts fresh).
        center_rewards_coefficient: :func:`~mmfuse.core.losses.reward_loss`'s centering weight (TRL
            suggests 0.01); None: off.
        num_bins: reliability bins of the held-out calibration.
        kwargs: the optimiser arguments of :class:`~mmfuse.training.stages.base.LMStage` (``lr``,
            ``weight_decay``, ``betas``, ``eps``, ``warmup_steps``, ``min_lr_ratio``, ``max_grad_norm``).
    """

    units_name = "pairs"

    def __init__(
        self,
        model: MultimodalLM,
        init_from: str | None = None,
        center_rewards_coefficient: float | None = None,
        num_bins: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, init_from, **kwargs)
        embeddings = model.lm.get_input_embeddings().weight
        # AutoModelForSequenceClassification's head: no bias, normal(0, initializer_range)
        self.score = nn.Linear(embeddings.shape[1], 1, bias=False, dtype=embeddings.dtype)
        nn.init.normal_(self.score.weight, std=getattr(model.lm.config, "initializer_range", 0.02))
        self._margins: list[Tensor] = []
        self._kinds: list[str] = []

    def rewards(self, micro_batch: dict[str, Any], group_size: int = 2) -> Tensor:
        """``[r]`` float32 score of every row of a micro-batch laid out by
        :func:`~mmfuse.training.data.preference.collate_completions` (``group_size`` completions per
        prompt; 2 for pairs)."""
        out = self.model.fused(
            micro_batch["input_ids"], media=encode_once(self.model, micro_batch["media"], group_size),
            use_cache=False, output_hidden_states=True, logits_to_keep=1, **lm_inputs(micro_batch),
        )  # fmt: skip
        hidden = out.hidden_states[-1]  # [r, s, d], after the final norm
        last = last_token_index(micro_batch["attention_mask"])
        return self.score(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1).float()

    def margins(self, micro_batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """``[b]`` per-pair losses and margins ``r_chosen - r_rejected``."""
        chosen, rejected = self.rewards(micro_batch).chunk(2)
        losses = reward_loss(
            chosen, rejected, center_rewards_coefficient=self.hparams.center_rewards_coefficient
        )
        return losses, chosen - rejected

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        losses, margins = self.margins(micro_batch)
        margins = margins.detach()
        return losses.sum(), {"accuracy": (margins > 0).float().sum(), "margin": margins.sum()}

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        return len(micro_batch["keys"])

    def on_validation_epoch_start(self) -> None:
        self._margins, self._kinds = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        micro_batch = batch["micro_batches"][0]
        losses, margins = self.margins(micro_batch)
        self.log("val/loss", losses.mean(), batch_size=len(losses))
        self._margins.append(margins.detach().cpu())
        self._kinds += micro_batch["kinds"]

    def on_validation_epoch_end(self) -> None:
        """Accuracy, margin and calibration over every held-out pair of every rank (module docstring)."""
        state = (torch.cat(self._margins) if self._margins else torch.zeros(0), self._kinds)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            states: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(states, state)
            state = (torch.cat([m for m, _ in states]), [k for _, ks in states for k in ks])
        margins, kinds = state
        if not len(margins):
            return
        figures = reliability(torch.sigmoid(margins), self.hparams.num_bins)
        correct = (margins > 0).float()
        metrics = {"val/accuracy": correct.mean(), "val/margin": margins.mean(), "val/ece": figures["ece"]}
        for kind in sorted(set(kinds)):
            metrics[f"val/accuracy/{kind}"] = correct[[k == kind for k in kinds]].mean()
        self.log_dict({k: float(v) for k, v in metrics.items()})
        if self.trainer.is_global_zero and self.trainer.log_dir is not None:
            path = Path(self.trainer.log_dir) / f"reliability-epoch={self.current_epoch}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps({"epoch": self.current_epoch, "step": self.global_step, **figures}, indent=1)
            )


__all__ = ["RewardModeling", "reliability"]
