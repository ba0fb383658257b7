"""The online RL loop GRPO and PPO share: sample, score, then several updates per rollout buffer.

A training batch is the rollout buffer: ``data.batch_size`` prompts on each rank
(:class:`~mmfuse.training.data.prompts.PromptDataModule`), sized in prompts. One training step:

1. samples ``group_size`` completions per prompt in eval mode (:func:`mmfuse.training.rollout.sample`;
   their log-probs are the ``old_logps``);
2. scores them with the configured rewards (:func:`mmfuse.training.rewards.combine`) and, when the
   stage has a reference model (a frozen copy of the initial policy, always in eval mode), computes
   ``ref_logps`` with it;
3. lets the stage add its experience, :meth:`OnlineRL.prepare` (GRPO: group advantages; PPO: values,
   per-token rewards, GAE) and choose what to train on, :meth:`OnlineRL.keep` (DAPO's dynamic sampling);
4. runs ``num_iterations`` passes over the kept prompts, each ``steps_per_rollout`` optimiser steps
   (:meth:`~mmfuse.training.stages.base.LMStage.optimizer_update`) of micro-batches of
   ``micro_batch_size`` whole prompts: a group is never split over micro-batches or ranks, and the
   loss units are all-reduced over micro-batches and ranks.

Logged per step (rollout figures over every rank's completions): ``rollout/reward`` and
``rollout/reward_std`` (the weighted sum), ``rollout/rewards/<name>/mean`` and ``.../std`` per reward,
``rollout/completion_length`` (tokens, EOS included), ``rollout/all_equal_groups`` (the fraction of
groups whose rewards are all equal: no GRPO signal; with ``group_size > 1``), ``time/generation``,
``time/scoring`` (rewards, reference and value forwards) and ``time/update`` (seconds), and each
stage's ``train/*`` losses.
Validation is SFT's: the held-out answers' NLL (``val/perplexity`` through
:class:`~mmfuse.training.callbacks.generation.GenerationEval`, which adds greedy exact match per kind
and writes ``answers-epoch=E.jsonl``).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import Tensor, nn

from mmfuse.core.model import MultimodalLM
from mmfuse.training.data.base import log_data
from mmfuse.training.rewards import Reward, combine
from mmfuse.training.rollout import (
    Rollout,
    completion_forward,
    completion_logps,
    gather_rows,
    map_micro_batches,
    sample,
)
from mmfuse.training.stages.base import LMStage
from mmfuse.training.stages.sft import InstructionTuning


def disable_dropout_in_model(module: nn.Module) -> None:
    """Dropout off everywhere, in train mode too (TRL's ``disable_dropout_in_model``).

    Sets ``p = 0`` on every ``nn.Dropout`` and ``0.0`` on every float ``attention_dropout`` attribute
    (transformers' attention modules read it in train mode), so the training forward scores completions
    exactly as the eval-mode rollout did.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Dropout):
            sub.p = 0.0
        if isinstance(getattr(sub, "attention_dropout", None), float):
            sub.attention_dropout = 0.0


class _Clock:
    """Seconds between laps, synchronising an accelerator first."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.last = device, time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


class OnlineRL(LMStage):
    """Base of the online RL stages (module docstring); a subclass gives its loss and experience.

    Args:
        model: the policy.
        rewards: the rewards, weighted (:mod:`mmfuse.training.rewards`).
        group_size: completions sampled per prompt ``g``.
        max_new_tokens: token budget per completion.
        temperature: sampling temperature; the training forward divides its logits by it too.
        top_p: nucleus mass of the sampling (None: 1).
        top_k: top-k of the sampling (None: off).
        num_iterations: passes over each rollout buffer (TRL's ``num_iterations``, PPO's epochs); all
            reuse the rollout's ``old_logps``.
        steps_per_rollout: optimiser steps per pass (the buffer split into this many parts of whole
            prompts; PPO's mini-batches).
        micro_batch_size: prompts per forward/backward (memory); any value gives the same gradient.
        disable_dropout: :func:`disable_dropout_in_model` on the policy, so the first update's ratio is 1.
        seed: seeds the sampling, with the rank, epoch and batch index (reproducible, resumable).
        kwargs: :class:`~mmfuse.training.stages.base.LMStage`'s (``init_from``, ``lr``, ...).

    Raises:
        ValueError: a non-positive size or count.
    """

    object_arguments = ("model", "rewards")
    units_name = "response_tokens"
    # validation as SFT's: the held-out answers' summed NLL and target count, for GenerationEval
    nll = InstructionTuning.nll
    validation_step = InstructionTuning.validation_step

    def __init__(
        self,
        model: MultimodalLM,
        rewards: list[Reward],
        group_size: int = 8,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float | None = None,
        top_k: int | None = None,
        num_iterations: int = 1,
        steps_per_rollout: int = 1,
        micro_batch_size: int = 4,
        disable_dropout: bool = True,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        for name in (
            "group_size",
            "max_new_tokens",
            "num_iterations",
            "steps_per_rollout",
            "micro_batch_size",
        ):
            if int(self.hparams[name]) < 1:
                raise ValueError(f"{name} must be >= 1, got {self.hparams[name]}")
        self.rewards = list(rewards)
        if not self.rewards:
            raise ValueError("rewards is empty: give at least one (e.g. mmfuse.training.rewards.ExactMatch)")
        if disable_dropout:
            disable_dropout_in_model(self.model)
        self.ref_model = None
        if self.uses_reference:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)

    @property
    def uses_reference(self) -> bool:
        """Whether the stage needs ``ref_logps`` (a frozen copy of the initial policy)."""
        return False

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def train(self, mode: bool = True) -> OnlineRL:
        """The reference model stays in eval mode."""
        super().train(mode)
        if self.ref_model is not None:
            self.ref_model.eval()
        return self

    # --- hooks of the stages -----------------------------------------------------------------------------

    def prepare(self, rollout: Rollout) -> dict[str, Tensor]:
        """Add the stage's row tensors (``advantages``...) to ``rollout.rows``; return rollout metrics."""
        raise NotImplementedError

    def keep(self, rollout: Rollout) -> Rollout | None:
        """The prompts to update on (all of them); None skips this step's update."""
        return rollout

    # --- the loop ----------------------------------------------------------------------------------------

    def generator(self, batch_idx: int) -> torch.Generator:
        """The sampling RNG of one step: a function of (seed, rank, epoch, batch), so a resume repeats it."""
        seed = self.hparams.seed
        for part in (self.global_rank, self.current_epoch, batch_idx):
            seed = (seed * 1_000_003 + part) % 2**63
        return torch.Generator(device=self.device).manual_seed(seed)

    def rollout(self, prompts: list, batch_idx: int) -> Rollout:
        """Sampled completions of ``prompts`` (on this rank), eval mode."""
        hp = self.hparams
        return sample(
            self.model, prompts, group_size=hp.group_size, max_new_tokens=hp.max_new_tokens,
            temperature=hp.temperature, top_p=hp.top_p, top_k=hp.top_k, generator=self.generator(batch_idx),
        )  # fmt: skip

    def score(self, rollout: Rollout) -> dict[str, Tensor]:
        """``rows["rewards"]`` (and ``ref_logps`` with a reference); the reward metrics of every rank."""
        total, table = combine(self.rewards, rollout.reward_inputs(self.pad_token_id))
        rollout.rows["rewards"] = total.to(self.device)
        if self.ref_model is not None:
            rollout.rows["ref_logps"] = self.eval_logps(self.ref_model, rollout)
        table = gather_rows(table.to(self.device))  # [n * world, k]
        total = gather_rows(rollout.rows["rewards"])
        lengths = gather_rows(rollout.rows["response_mask"].sum(-1).float())
        groups = total.view(-1, rollout.group_size)  # [n] -> [p, g]
        metrics = {
            "rollout/reward": total.mean(),
            "rollout/reward_std": total.std() if total.numel() > 1 else torch.zeros(()),
            "rollout/completion_length": lengths.mean(),
        }
        if rollout.group_size > 1:
            metrics["rollout/all_equal_groups"] = (groups.amax(1) == groups.amin(1)).float().mean()
        for reward, column in zip(self.rewards, table.unbind(1), strict=True):
            valid = column[~column.isnan()]
            metrics[f"rollout/rewards/{reward.name}/mean"] = (
                valid.mean() if valid.numel() else torch.zeros(())
            )
            metrics[f"rollout/rewards/{reward.name}/std"] = (
                valid.std() if valid.numel() > 1 else torch.zeros(())
            )
        return metrics

    def eval_logps(self, model: MultimodalLM, rollout: Rollout) -> Tensor:
        """``[n, t]`` completion log-probs under ``model`` in eval mode, no grad (reference or policy)."""
        fn = lambda mb: completion_logps(  # noqa: E731
            completion_forward(model, mb, temperature=self.hparams.temperature)[0], mb
        )
        return map_micro_batches(rollout, fn, self.hparams.micro_batch_size, self.pad_token_id)

    def updates(self, rollout: Rollout) -> list[Rollout]:
        """One pass's optimiser steps: ``steps_per_rollout`` contiguous parts of whole prompts."""
        parts = torch.arange(rollout.num_prompts).tensor_split(self.hparams.steps_per_rollout)
        return [rollout.select(part.tolist()) for part in parts if len(part)]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        hp, clock = self.hparams, _Clock(self.device)
        rollout = self.rollout(batch["prompts"], batch_idx)
        timing = {"time/generation": clock.lap()}
        metrics = {**self.score(rollout), **self.prepare(rollout)}
        timing["time/scoring"] = clock.lap()
        kept = self.keep(rollout)
        log_data(self, batch)
        if kept is None:
            self.log_dict({**metrics, **timing})
            return None
        sums: dict[str, Tensor] = {}
        steps = 0
        for _ in range(hp.num_iterations):
            for part in self.updates(kept):
                loss, step_metrics, units = self.optimizer_update(
                    part.micro_batches(hp.micro_batch_size, self.pad_token_id)
                )
                for name, value in {
                    "loss": loss,
                    **step_metrics,
                    self.units_name: torch.tensor(float(units)),
                }.items():
                    sums[name] = sums.get(name, 0.0) + value
                steps += 1
        timing["time/update"] = clock.lap()
        self.log_dict({**metrics, **timing})
        # this rank's share averaged over the step's updates; the sum over ranks is the figure
        self.log_dict({f"train/{k}": v / steps for k, v in sums.items()}, reduce_fx="sum", sync_dist=True)
        return sums["loss"] / steps

    def scheduler_steps(self) -> int:
        """``num_iterations * steps_per_rollout`` optimiser steps per batch (capped by ``max_steps``)."""
        per_batch = self.hparams.num_iterations * self.hparams.steps_per_rollout
        estimated = int(self.trainer.estimated_stepping_batches) * per_batch
        return estimated if self.trainer.max_steps == -1 else min(estimated, self.trainer.max_steps)


__all__ = ["OnlineRL", "disable_dropout_in_model"]
