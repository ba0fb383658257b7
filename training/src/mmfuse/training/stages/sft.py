"""Multimodal instruction tuning (SFT): the assistant tokens' negative log-likelihood.

The stage is its loss and its validation; the model (:class:`~mmfuse.core.model.MultimodalLM`),
the optimiser, the schedule and the token-normalised accumulation come from
:class:`~mmfuse.training.stages.base.LMStage`.

Loss: the summed negative log-likelihood of the assistant tokens divided by the number of assistant
tokens of the whole optimizer step (every micro-batch, every rank), as transformers' Trainer does
with ``num_items_in_batch``; a conversation without targets adds nothing (no NaN). Validation
returns the summed NLL and target count per batch, from which
:class:`~mmfuse.training.callbacks.generation.GenerationEval` computes perplexity next to its
generated answers.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from mmfuse.core.functional import IGNORE_INDEX, token_logps
from mmfuse.core.model import LM_KEYS
from mmfuse.training.stages.base import LMStage


class InstructionTuning(LMStage):
    """SFT of a :class:`~mmfuse.core.model.MultimodalLM` on :class:`~mmfuse.training.data.ChatDataModule`
    batches (micro-batches with ``input_ids``, ``shift_labels`` and ``media``).

    Args: those of :class:`~mmfuse.training.stages.base.LMStage`.
    """

    units_name = "target_tokens"

    def nll(self, micro_batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Summed negative log-likelihood (float32 scalar) of a micro-batch's targets, and their count."""
        lm_kwargs = {k: micro_batch[k] for k in LM_KEYS if k in micro_batch}
        labels = micro_batch["shift_labels"]
        targets = labels != IGNORE_INDEX  # the head scores these positions only: [n, v] logits
        logits = self.model(micro_batch["input_ids"], micro_batch["media"], logits_mask=targets, **lm_kwargs)
        return -token_logps(logits, labels[targets]).sum(), targets.sum()

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.nll(micro_batch)[0], {}

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        return int((micro_batch["shift_labels"] != IGNORE_INDEX).sum())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Summed NLL and target count (``nll``, ``tokens``) of the batch, for perplexity."""
        nll, tokens = self.nll(batch["micro_batches"][0])
        self.log("val/loss", nll / tokens.clamp_min(1), batch_size=int(tokens))
        return {"nll": nll, "tokens": tokens}


__all__ = ["InstructionTuning"]
