"""PPO stage: ratio 1 and KL 0 at the first update, the score at the last token, accumulation, KL control."""

import pytest
import torch
from dist_grpo import fixed_rollout, prompts
from tiny_lm import tiny_model

from mmfuse.core.losses.policy import AdaptiveKLController
from mmfuse.training.rewards import ExactMatch
from mmfuse.training.stages.ppo import PPO


def _stage(**kwargs) -> PPO:
    settings = {"max_new_tokens": 6, "micro_batch_size": 2, "whiten_advantages": False, **kwargs}
    return PPO(tiny_model(dtype=torch.float32), [ExactMatch()], **settings)


def test_first_update_has_ratio_one_zero_kl_and_returns_equal_the_score():
    """Value head at 0 and gamma = lam = 1: every token's return is the completion's score."""
    stage = _stage(group_size=2, lam=1.0, kl_coef=0.1)
    rollout = stage.rollout(prompts(stage.tokenizer), batch_idx=0)
    stage.score(rollout)
    rollout.rows["rewards"] = torch.linspace(-1, 1, len(rollout.rows["rewards"]))  # distinct scores
    metrics = stage.prepare(rollout)
    mask = rollout.rows["response_mask"]
    assert abs(float(metrics["rollout/kl"])) < 1e-5 and abs(float(metrics["rollout/non_score_reward"])) < 1e-6
    assert (rollout.rows["values"] == 0).all()
    expected = rollout.rows["rewards"][:, None].expand_as(mask)
    torch.testing.assert_close(rollout.rows["returns"][mask], expected[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.rows["advantages"][mask], expected[mask], atol=1e-5, rtol=0)
    stage.train()
    for micro_batch in rollout.micro_batches(2, stage.pad_token_id):
        loss, sums = stage.micro_batch_loss(micro_batch)
        units = stage.loss_units(micro_batch)
        assert abs(sums["ratio"] / units - 1) < 1e-5 and sums["clip_ratio/region"] == 0
        # ratio 1, zero values: policy loss -mean(A), value loss 0.5 * mean(R^2)
        adv = micro_batch["advantages"][micro_batch["response_mask"]]
        torch.testing.assert_close(sums["policy_loss"] / units, -adv.mean(), atol=1e-5, rtol=0)
        torch.testing.assert_close(sums["value_loss"] / units, 0.5 * (adv**2).mean(), atol=1e-5, rtol=0)
        loss.backward()
    assert stage.value_head.weight.grad.abs().sum() > 0


def test_micro_batches_of_one_prompt_accumulate_to_the_gradient_of_one_batch():
    stage = _stage(group_size=3, vf_coef=0.5, entropy_coef=0.01)
    rollout = fixed_rollout(group_size=3)
    stage.prepare(rollout)

    def gradients(micro_batches):
        stage.zero_grad()
        total = torch.tensor(float(sum(stage.loss_units(mb) for mb in micro_batches)))
        stage.accumulate(micro_batches, total, 1, lambda loss: loss.backward())
        return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}

    split = gradients(rollout.micro_batches(1, stage.pad_token_id))
    whole = gradients(rollout.micro_batches(rollout.num_prompts, stage.pad_token_id))
    assert "value_head.weight" in whole and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], msg=name, rtol=1e-5, atol=1e-7)


def test_adaptive_kl_follows_the_controller_and_survives_a_checkpoint():
    stage = _stage(group_size=2, kl_coef=0.2, target_kl=6.0, kl_horizon=100)
    rollout = fixed_rollout(group_size=2)
    metrics = stage.prepare(rollout)
    assert float(metrics["rollout/kl_coef"]) == pytest.approx(
        0.2
    )  # this rollout's rewards used the initial coefficient
    error = min(max(float(metrics["rollout/kl"]) / 6.0 - 1, -0.2), 0.2)
    n = len(rollout.rows["rewards"])
    assert abs(stage.kl_coef - 0.2 * (1 + error * n / 100)) < 1e-12 and stage.kl_coef != 0.2
    checkpoint = {}
    stage.on_save_checkpoint(checkpoint)
    resumed = _stage(group_size=2, kl_coef=0.2, target_kl=6.0, kl_horizon=100)
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.kl_controller == stage.kl_controller == AdaptiveKLController(stage.kl_coef, 6.0, 100)


def test_the_kl_penalty_uses_the_reference_and_the_score_sits_on_the_last_token():
    stage = _stage(group_size=3, kl_coef=0.5, gamma=1.0, lam=1.0)
    rollout = fixed_rollout(group_size=3)  # ref_logps perturbed: KL != 0
    rows = rollout.rows
    metrics = stage.prepare(rollout)
    mask = rows["response_mask"]
    kl = ((rows["old_logps"] - rows["ref_logps"]) * mask).sum(-1)  # k1, nats per sequence
    torch.testing.assert_close(metrics["rollout/kl"], kl.mean())
    torch.testing.assert_close(metrics["rollout/non_score_reward"], -0.5 * kl.mean())
    # values 0, gamma = lam = 1: the first token's return is the score plus every token's penalty
    torch.testing.assert_close(rows["returns"][:, 0], rows["rewards"] - 0.5 * kl, atol=1e-5, rtol=0)
