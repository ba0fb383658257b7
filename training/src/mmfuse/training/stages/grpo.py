"""GRPO and RLOO on multimodal prompts: group-relative advantages and the clipped surrogate loss.

The loop (sampling, rewards, reference, updates) is :class:`~mmfuse.training.stages.online.OnlineRL`'s;
this stage is its advantages and its loss.

Advantages (``advantage``), from the rewards of every rank (all-gathered, each rank keeps its rows, as
TRL's ``GRPOTrainer`` does), one per completion:

* ``"grpo"``: :func:`~mmfuse.core.losses.policy.group_advantages` with ``scale_rewards`` (Shao et al.
  2024, arXiv:2402.03300, Sec. 4.1.2);
* ``"rloo"``: :func:`~mmfuse.core.losses.policy.rloo_advantages`, leave-one-out baselines (Ahmadian et
  al. 2024, arXiv:2402.14740).

Loss: :func:`~mmfuse.core.losses.policy.policy_loss` (clip-higher, token or sequence importance
sampling, ``beta`` times a per-token KL to the reference), aggregated by ``loss_type`` over the whole
optimiser step as if it were one batch: ``"dapo"`` divides the summed token losses by the response
tokens of every micro-batch on every rank; ``"grpo"`` averages each completion's token mean over the
step's completions; ``"dr_grpo"`` divides the sum by (completions x ``max_new_tokens``); ``"bnpo"`` is
each micro-batch's own token mean (TRL's), averaged over the step's micro-batches. The reference (a
frozen copy of the initial policy) exists only when ``beta != 0``.

DAPO's dynamic sampling (``dynamic_sampling``, Yu et al. 2025, arXiv:2503.14476, Sec. 3.2): groups
whose rewards are all equal have zero advantage and no gradient, so they are dropped; kept groups
wait in a buffer, the next batches' kept groups join them, and once every rank holds
``data.batch_size`` prompts the update runs on exactly that many and the rest is dropped (verl's
choice: every update is on-policy). A step without an update logs only its rollout figures.

Logged (besides :class:`~mmfuse.training.stages.online.OnlineRL`'s): ``train/loss``,
``train/clip_ratio/low|high|region`` (the clip fraction), ``train/ratio``, ``train/kl`` (with a
reference; nats per token), ``train/entropy`` (nats per token), and with dynamic sampling
``rollout/buffered_prompts``.
"""

from __future__ import annotations

from typing import Any, Literal

from torch import Tensor

from mmfuse.core.losses.policy import (
    LOSS_AGGREGATIONS,
    entropy_from_logits,
    group_advantages,
    policy_loss,
    rloo_advantages,
)
from mmfuse.core.model import MultimodalLM
from mmfuse.training.rewards import Reward
from mmfuse.training.rollout import (
    Rollout,
    completion_forward,
    completion_logps,
    gather_rows,
    local_rows,
    world_min,
)
from mmfuse.training.stages.online import OnlineRL

#: loss_type -> the unit its step normaliser counts (``LMStage.loss_units``).
LOSS_UNITS = {"dapo": "response_tokens", "grpo": "sequences", "dr_grpo": "sequences", "bnpo": "micro_batches"}


class GRPO(OnlineRL):
    """GRPO / RLOO / DAPO / Dr. GRPO / GSPO of a :class:`~mmfuse.core.model.MultimodalLM` (module docstring).

    Args:
        model: the policy (``init_from``: the SFT checkpoint).
        rewards: see :class:`~mmfuse.training.stages.online.OnlineRL`.
        advantage: ``"grpo"`` or ``"rloo"``.
        scale_rewards: GRPO's std scaling, ``"group"``, ``"batch"`` or ``"none"`` (Dr. GRPO).
        loss_type: ``"dapo"``, ``"grpo"``, ``"bnpo"`` or ``"dr_grpo"``.
        epsilon_low: the ratio floor is ``1 - epsilon_low``.
        epsilon_high: the ratio ceiling is ``1 + epsilon_high`` (DAPO: 0.28).
        importance_sampling: ``"token"`` or ``"sequence"`` (GSPO).
        beta: weight of the per-token KL to the reference (0: no reference model).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        dynamic_sampling: DAPO's filter of all-equal groups (module docstring).
        kwargs: :class:`~mmfuse.training.stages.online.OnlineRL`'s (``group_size``, ``max_new_tokens``,
            ``temperature``, ``num_iterations``, ...) and :class:`~mmfuse.training.stages.base.LMStage`'s.

    Raises:
        ValueError: an unknown ``advantage``, ``scale_rewards`` or ``loss_type``, ``"rloo"`` with
            ``group_size < 2``, or ``beta < 0``.
    """

    def __init__(
        self,
        model: MultimodalLM,
        rewards: list[Reward],
        advantage: Literal["grpo", "rloo"] = "grpo",
        scale_rewards: Literal["group", "batch", "none"] = "group",
        loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo",
        epsilon_low: float = 0.2,
        epsilon_high: float = 0.2,
        importance_sampling: Literal["token", "sequence"] = "token",
        beta: float = 0.0,
        kl_estimator: Literal["k1", "k2", "k3"] = "k3",
        dynamic_sampling: bool = False,
        **kwargs: Any,
    ) -> None:
        if advantage not in ("grpo", "rloo"):
            raise ValueError(f"advantage must be 'grpo' or 'rloo', got {advantage!r}")
        if scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
        if loss_type not in LOSS_AGGREGATIONS:
            raise ValueError(f"loss_type must be one of {sorted(LOSS_AGGREGATIONS)}, got {loss_type!r}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        super().__init__(model, rewards, **kwargs)
        if advantage == "rloo" and self.hparams.group_size < 2:
            raise ValueError(f"advantage 'rloo' needs group_size >= 2, got {self.hparams.group_size}")
        self.units_name = LOSS_UNITS[loss_type]
        self._buffer: Rollout | None = None

    @property
    def uses_reference(self) -> bool:
        return self.hparams.beta != 0

    def prepare(self, rollout: Rollout) -> dict[str, Tensor]:
        """``rows["advantages"]`` ``[n]`` from the rewards of every rank."""
        rewards = gather_rows(rollout.rows["rewards"])  # [n * world]
        g = rollout.group_size
        if self.hparams.advantage == "grpo":
            advantages = group_advantages(rewards, g, scale=self.hparams.scale_rewards)
        else:
            advantages = rloo_advantages(rewards, g)
        rollout.rows["advantages"] = local_rows(advantages, len(rollout.rows["rewards"]))
        return {}

    def keep(self, rollout: Rollout) -> Rollout | None:
        """Every prompt; with ``dynamic_sampling``, ``data.batch_size`` informative ones once buffered."""
        if not self.hparams.dynamic_sampling:
            return rollout
        target = rollout.num_prompts
        groups = rollout.rows["rewards"].view(-1, rollout.group_size)  # [n] -> [p, g]
        informative = (groups.amax(1) != groups.amin(1)).nonzero().flatten().tolist()
        kept = rollout.select(informative)
        self._buffer = kept if self._buffer is None else Rollout.cat([self._buffer, kept])
        self.log("rollout/buffered_prompts", float(self._buffer.num_prompts))
        if world_min(self._buffer.num_prompts, self.device) < target:
            return None
        kept, self._buffer = self._buffer.select(range(target)), None
        return kept

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch's loss and metrics times its :meth:`loss_units` (the step normalises)."""
        hp = self.hparams
        logits, _ = completion_forward(self.model, micro_batch, temperature=hp.temperature)
        mask = micro_batch["response_mask"]
        loss, metrics = policy_loss(
            completion_logps(logits, micro_batch), micro_batch["old_logps"], micro_batch["advantages"], mask,
            loss_type=hp.loss_type, epsilon_low=hp.epsilon_low, epsilon_high=hp.epsilon_high,
            importance_sampling=hp.importance_sampling, ref_logps=micro_batch.get("ref_logps"), beta=hp.beta,
            kl_estimator=hp.kl_estimator, max_completion_length=hp.max_new_tokens,
        )  # fmt: skip
        metrics["entropy"] = (entropy_from_logits(logits.detach()) * mask).sum() / mask.sum().clamp_min(1)
        units = self.loss_units(micro_batch)
        return loss * units, {k: v * units for k, v in metrics.items()}

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        """Response tokens (``"dapo"``), completions (``"grpo"``, ``"dr_grpo"``) or 1 (``"bnpo"``)."""
        unit = LOSS_UNITS[self.hparams.loss_type]
        if unit == "response_tokens":
            return int(micro_batch["response_mask"].sum())
        return micro_batch["response_mask"].shape[0] if unit == "sequences" else 1


__all__ = ["GRPO", "LOSS_UNITS"]
