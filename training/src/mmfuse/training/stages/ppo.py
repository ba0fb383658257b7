"""PPO on multimodal prompts: a value head, the reward at the last response token, GAE, a KL penalty.

The loop (sampling, rewards, reference, updates) is :class:`~mmfuse.training.stages.online.OnlineRL`'s;
this stage is RLHF's PPO (Ziegler et al. 2019, arXiv:1909.08593; Ouyang et al. 2022) as TRL's
``PPOTrainer`` and verl shape it:

* experience, after each rollout: the value head's ``values`` (policy in eval mode); per-token rewards
  ``-kl_coef * KL_t`` with the sequence's score (the weighted rewards, e.g. the reward model's score of
  the whole completion) added at its last response token
  (:func:`~mmfuse.core.losses.policy.kl_penalized_rewards`, ``KL_t`` against the reference, a frozen
  copy of the initial policy); :func:`~mmfuse.core.losses.policy.gae` advantages and returns; the
  advantages whitened over this rank's response tokens (:func:`~mmfuse.core.losses.policy.masked_whiten`,
  TRL's per-process whitening);
* ``kl_coef`` fixed, or adapted after every rollout towards ``target_kl`` nats per sequence
  (:class:`~mmfuse.core.losses.policy.AdaptiveKLController`, its state saved in checkpoints);
* loss per response token, normalised by the step's response tokens over micro-batches and ranks:
  the clipped surrogate (:func:`~mmfuse.core.losses.policy.policy_loss` with per-token advantages,
  ``epsilon``) + ``vf_coef`` x the clipped value loss (:func:`~mmfuse.core.losses.policy.value_loss`)
  - ``entropy_coef`` x the entropy (:func:`~mmfuse.core.losses.policy.entropy_bonus`).

The value head is a linear map of the policy's final hidden states (a shared trunk, as TRL's
``AutoModelForCausalLMWithValueHead``), initialised to zero; position ``i`` is the value of the state
before completion token ``i``.

Logged (besides :class:`~mmfuse.training.stages.online.OnlineRL`'s): ``rollout/kl`` (nats per
sequence, to the reference, at sampling), ``rollout/kl_coef`` (the coefficient this rollout's rewards
used), ``rollout/non_score_reward`` (the summed KL penalty per sequence), ``rollout/values``,
``train/loss``, ``train/policy_loss``, ``train/value_loss``, ``train/value_clip_fraction``,
``train/clip_ratio/region`` (the clip fraction), ``train/ratio``, ``train/entropy``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mmfuse.core.losses.policy import (
    AdaptiveKLController,
    entropy_bonus,
    entropy_from_logits,
    gae,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
    policy_loss,
    value_loss,
)
from mmfuse.core.model import MultimodalLM
from mmfuse.training.rewards import Reward
from mmfuse.training.rollout import (
    Rollout,
    completion_forward,
    completion_logps,
    eval_mode,
    gather_rows,
    map_micro_batches,
    world_size,
)
from mmfuse.training.stages.online import OnlineRL


class PPO(OnlineRL):
    """PPO of a :class:`~mmfuse.core.model.MultimodalLM` with a value head (module docstring).

    Args:
        model: the policy (``init_from``: the SFT checkpoint).
        rewards: the sequence score's rewards (e.g. :class:`~mmfuse.training.rewards.ModelReward`).
        group_size: completions per prompt (PPO: 1).
        kl_coef: the KL penalty's coefficient (the initial one with ``target_kl``).
        target_kl: KL per sequence (nats) the adaptive controller holds; None keeps ``kl_coef`` fixed.
        kl_horizon: the controller's horizon in sequences (Ziegler et al.: 10000).
        kl_estimator: ``"k1"`` (TRL's), ``"k2"`` or ``"k3"``, for the penalty and ``rollout/kl``.
        gamma: GAE's discount.
        lam: GAE's lambda.
        epsilon: the policy ratio's clip range.
        cliprange_value: the value's clip range around its rollout value.
        vf_coef: weight of the value loss.
        entropy_coef: weight of the entropy bonus.
        whiten_advantages: whiten the GAE advantages over this rank's response tokens.
        kwargs: :class:`~mmfuse.training.stages.online.OnlineRL`'s (``max_new_tokens``, ``temperature``,
            ``num_iterations`` (PPO epochs), ``steps_per_rollout`` (mini-batches), ...) and
            :class:`~mmfuse.training.stages.base.LMStage`'s.

    Raises:
        ValueError: a negative coefficient, ``gamma`` or ``lam`` outside ``[0, 1]``, or ``epsilon <= 0``.
    """

    def __init__(
        self,
        model: MultimodalLM,
        rewards: list[Reward],
        group_size: int = 1,
        kl_coef: float = 0.05,
        target_kl: float | None = None,
        kl_horizon: int = 10000,
        kl_estimator: Literal["k1", "k2", "k3"] = "k1",
        gamma: float = 1.0,
        lam: float = 0.95,
        epsilon: float = 0.2,
        cliprange_value: float = 0.2,
        vf_coef: float = 0.1,
        entropy_coef: float = 0.0,
        whiten_advantages: bool = True,
        **kwargs: Any,
    ) -> None:
        for name, value in (("kl_coef", kl_coef), ("vf_coef", vf_coef), ("entropy_coef", entropy_coef),
                            ("cliprange_value", cliprange_value)):  # fmt: skip
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not (0 <= gamma <= 1 and 0 <= lam <= 1) or epsilon <= 0:
            raise ValueError(f"need gamma, lam in [0, 1] and epsilon > 0; got {gamma}, {lam}, {epsilon}")
        super().__init__(model, rewards, group_size=group_size, **kwargs)
        parameter = next(self.model.parameters())
        self.value_head = nn.Linear(self.model.lm.config.hidden_size, 1, device=parameter.device,
                                    dtype=parameter.dtype)  # fmt: skip
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.kl_controller = (
            None if target_kl is None else AdaptiveKLController(kl_coef, target_kl, kl_horizon)
        )

    @property
    def uses_reference(self) -> bool:
        return True

    @property
    def kl_coef(self) -> float:
        """The KL penalty's current coefficient."""
        return self.hparams.kl_coef if self.kl_controller is None else self.kl_controller.kl_coef

    def values(self, micro_batch: dict[str, Any]) -> Tensor:
        """``[n, t]`` float32 value of the state before each completion token (with grad in training)."""
        _, hidden = completion_forward(self.model, micro_batch, temperature=self.hparams.temperature,
                                       hidden_states=True)  # fmt: skip
        return self.value_head(hidden).squeeze(-1).float()  # [n, t, 1] -> [n, t]

    def prepare(self, rollout: Rollout) -> dict[str, Tensor]:
        """``values``, ``advantages`` and ``returns`` ``[n, t]``; the KL controller's update."""
        hp, rows = self.hparams, rollout.rows
        mask = rows["response_mask"]
        with eval_mode(self.model):
            rows["values"] = map_micro_batches(rollout, self.values, hp.micro_batch_size, self.pad_token_id)
        kl_coef = self.kl_coef
        rewards = kl_penalized_rewards(rows["rewards"], rows["old_logps"], rows["ref_logps"], mask,
                                       kl_coef=kl_coef, kl_estimator=hp.kl_estimator)  # fmt: skip
        advantages, rows["returns"] = gae(rewards, rows["values"], mask, gamma=hp.gamma, lam=hp.lam)
        rows["advantages"] = masked_whiten(advantages, mask) if hp.whiten_advantages else advantages
        kl = gather_rows((kl_estimate(rows["old_logps"], rows["ref_logps"], hp.kl_estimator) * mask).sum(-1))
        if self.kl_controller is not None:
            self.kl_controller.update(float(kl.mean()), n_steps=len(mask) * world_size())
        non_score = gather_rows(rewards.sum(-1) - rows["rewards"])
        return {
            "rollout/kl": kl.mean(),
            "rollout/kl_coef": torch.tensor(kl_coef),
            "rollout/non_score_reward": non_score.mean(),
            "rollout/values": gather_rows((rows["values"] * mask).sum(-1) / mask.sum(-1)).mean(),
        }

    def micro_batch_loss(self, micro_batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """The micro-batch's token-mean loss and metrics times its response tokens (the step normalises)."""
        hp = self.hparams
        logits, hidden = completion_forward(self.model, micro_batch, temperature=hp.temperature,
                                            hidden_states=True)  # fmt: skip
        mask = micro_batch["response_mask"]
        pg_loss, metrics = policy_loss(
            completion_logps(logits, micro_batch), micro_batch["old_logps"], micro_batch["advantages"], mask,
            loss_type="dapo", epsilon_low=hp.epsilon, epsilon_high=hp.epsilon,
        )  # fmt: skip
        vpreds = self.value_head(hidden).squeeze(-1).float()  # [n, t, 1] -> [n, t]
        vf_loss, vf_clip = value_loss(vpreds, micro_batch["values"], micro_batch["returns"], mask,
                                      cliprange_value=hp.cliprange_value)  # fmt: skip
        entropy = entropy_from_logits(logits if hp.entropy_coef else logits.detach())  # [n, t]
        loss = pg_loss + hp.vf_coef * vf_loss + entropy_bonus(entropy, mask, coef=hp.entropy_coef)
        metrics.update(policy_loss=pg_loss.detach(), value_loss=vf_loss.detach(), value_clip_fraction=vf_clip,
                       entropy=(entropy.detach() * mask).sum() / mask.sum().clamp_min(1))  # fmt: skip
        units = self.loss_units(micro_batch)
        return loss * units, {k: v * units for k, v in metrics.items()}

    def loss_units(self, micro_batch: dict[str, Any]) -> int:
        """Response tokens."""
        return int(micro_batch["response_mask"].sum())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.kl_controller is not None:
            checkpoint["kl_controller"] = dataclasses.asdict(self.kl_controller)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.kl_controller is not None and "kl_controller" in checkpoint:
            self.kl_controller = AdaptiveKLController(**checkpoint["kl_controller"])


__all__ = ["PPO"]
