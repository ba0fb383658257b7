import copy
import math
import statistics

import pytest
import torch
from torch import nn

from mmfuse.core.functional import token_logps
from mmfuse.core.losses import (
    ADVANTAGE_ESTIMATORS,
    AdaptiveKLController,
    entropy_bonus,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_estimate,
    kl_penalized_rewards,
    masked_whiten,
    policy_loss,
    rloo_advantages,
    value_loss,
)

# --- advantages -------------------------------------------------------------------------------------------


def test_group_advantages_issue_values():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4)
    # mean 0.25, Bessel std 0.5: 0.75 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5001)
    torch.testing.assert_close(adv, torch.tensor([1.4997, -0.4999, -0.4999, -0.4999]), atol=1e-4, rtol=0)


def test_all_equal_and_singleton_groups_give_finite_zeros():
    torch.testing.assert_close(group_advantages(torch.ones(4), 4), torch.zeros(4))
    for scale in ("group", "batch", "none"):
        single = group_advantages(torch.tensor([0.7, 3.0]), 1, scale=scale)
        assert torch.isfinite(single).all()
        torch.testing.assert_close(single, torch.zeros(2))
    torch.testing.assert_close(group_advantages(torch.tensor([5.0]), 1, scale="batch"), torch.zeros(1))


def test_group_advantages_scales_and_independent_groups():
    rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    x = torch.tensor(rewards)
    torch.testing.assert_close(group_advantages(x, 4, scale="none"), centred)
    group_std = torch.tensor([statistics.stdev(rewards[:4])] * 4 + [statistics.stdev(rewards[4:])] * 4)
    torch.testing.assert_close(group_advantages(x, 4), centred / (group_std + 1e-4))
    torch.testing.assert_close(
        group_advantages(x, 4, scale="batch"), centred / (statistics.stdev(rewards) + 1e-4)
    )
    with pytest.raises(ValueError, match="whole groups of group_size=3"):
        group_advantages(x, 3)
    with pytest.raises(ValueError, match="scale must be"):
        group_advantages(x, 4, scale="global")


def test_rloo_leave_one_out():
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), 4), torch.tensor([1, -1 / 3, -1 / 3, -1 / 3])
    )
    # two groups of 2: each sample's baseline is its one sibling
    torch.testing.assert_close(
        rloo_advantages(torch.tensor([3.0, 1.0, 2.0, 2.0]), 2), torch.tensor([2.0, -2.0, 0, 0])
    )
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo_advantages(torch.tensor([1.0]), 1)
    assert ADVANTAGE_ESTIMATORS == {"grpo": group_advantages, "rloo": rloo_advantages}


# --- KL ---------------------------------------------------------------------------------------------------


def test_kl_estimators_at_log_ratio_minus_one():
    logps, ref_logps = torch.tensor([[-0.5]]), torch.tensor([[-1.5]])  # log r = ref - logps = -1
    assert kl_estimate(logps, ref_logps, "k3").item() == pytest.approx(0.3679, abs=1e-4)
    assert kl_estimate(logps, ref_logps, "k3").item() == pytest.approx(math.exp(-1), abs=1e-7)
    assert kl_estimate(logps, ref_logps, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(logps, ref_logps, "k2").item() == pytest.approx(0.5)
    for estimator in ("k1", "k2", "k3"):
        assert kl_estimate(logps, logps, estimator).item() == 0.0
    with pytest.raises(ValueError, match="estimator must be one of"):
        kl_estimate(logps, ref_logps, "k4")


def test_k1_and_k3_estimate_kl_of_policy_from_reference_on_policy_samples():
    # Samples drawn from the policy q; the estimators' means approach KL(q || p), not KL(p || q).
    q = torch.tensor([0.5, 0.3, 0.15, 0.05])
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    true_kl = (q * (q / p).log()).sum().item()  # 0.7438; KL(p || q) would be 0.7776
    tokens = torch.multinomial(q, 400_000, replacement=True, generator=torch.Generator().manual_seed(0))
    logps, ref_logps = q.log()[tokens][None], p.log()[tokens][None]
    assert kl_estimate(logps, ref_logps, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_estimate(logps, ref_logps, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


# --- policy_loss ------------------------------------------------------------------------------------------

# Sequence 0 (A = +1, two tokens): ratios 1.5 (clipped high at 1.2) and 0.9 -> token losses -1.2, -0.9.
# Sequence 1 (A = -1, three tokens): ratios 0.5 (clipped low at 0.8), 1.1, 1.3 -> 0.8, 1.1, 1.3.
RATIOS = torch.tensor([[1.5, 0.9, 1.0], [0.5, 1.1, 1.3]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-0.7, -1.2, -3.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
ADV = torch.tensor([1.0, -1.0])
TOKEN_LOSSES = [[-1.2, -0.9], [0.8, 1.1, 1.3]]


def _loss(**kwargs):
    logps = OLD + RATIOS.log()
    return policy_loss(logps, OLD, ADV, MASK, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"loss_type": "grpo"}, (sum(TOKEN_LOSSES[0]) / 2 + sum(TOKEN_LOSSES[1]) / 3) / 2),
        ({"loss_type": "bnpo"}, (sum(TOKEN_LOSSES[0]) + sum(TOKEN_LOSSES[1])) / 5),
        ({"loss_type": "dapo"}, (sum(TOKEN_LOSSES[0]) + sum(TOKEN_LOSSES[1])) / 5),
        ({"loss_type": "dapo", "num_items": 10}, (sum(TOKEN_LOSSES[0]) + sum(TOKEN_LOSSES[1])) / 10),
        ({"loss_type": "dr_grpo"}, (sum(TOKEN_LOSSES[0]) + sum(TOKEN_LOSSES[1])) / (2 * 3)),
        (
            {"loss_type": "dr_grpo", "max_completion_length": 8},
            (sum(TOKEN_LOSSES[0]) + sum(TOKEN_LOSSES[1])) / 16,
        ),
        # clip-higher: with epsilon_high 0.6 the ratio 1.5 is no longer clipped
        ({"loss_type": "bnpo", "epsilon_high": 0.6}, (-1.5 - 0.9 + sum(TOKEN_LOSSES[1])) / 5),
        # a wider low clip: 0.5 is inside [0.4, 1.2], so -min(-0.5, -0.5) = 0.5
        ({"loss_type": "bnpo", "epsilon_low": 0.6}, (sum(TOKEN_LOSSES[0]) + 0.5 + 1.1 + 1.3) / 5),
    ],
)
def test_policy_loss_hand_values(kwargs, expected):
    loss, metrics = _loss(**kwargs)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_clip_metrics_count_the_clipped_tokens():
    _, metrics = _loss()
    assert metrics["clip_ratio/high"].item() == pytest.approx(1 / 5)  # 1.5 with A > 0
    assert metrics["clip_ratio/low"].item() == pytest.approx(1 / 5)  # 0.5 with A < 0 (1.3 with A < 0 is not)
    assert metrics["clip_ratio/region"].item() == pytest.approx(2 / 5)
    assert metrics["ratio"].item() == pytest.approx((1.5 + 0.9 + 0.5 + 1.1 + 1.3) / 5)
    assert "kl" not in metrics


def test_sequence_importance_sampling_is_gspo():
    loss, metrics = _loss(loss_type="grpo", importance_sampling="sequence")
    s0 = math.exp((math.log(1.5) + math.log(0.9)) / 2)  # geometric mean of the ratios, 1.1619
    s1 = math.exp((math.log(0.5) + math.log(1.1) + math.log(1.3)) / 3)  # 0.8942, inside [0.8, 1.2]
    assert loss.item() == pytest.approx((-min(s0, 1.2) + s1) / 2, abs=1e-6)
    assert metrics["clip_ratio/region"].item() == 0.0
    assert metrics["ratio"].item() == pytest.approx((2 * s0 + 3 * s1) / 5, abs=1e-6)


def test_kl_term_adds_beta_times_k3_per_token():
    ref = OLD - 0.3
    logps = OLD + RATIOS.log()
    base, _ = policy_loss(logps, OLD, ADV, MASK, loss_type="bnpo")
    loss, metrics = policy_loss(logps, OLD, ADV, MASK, loss_type="bnpo", ref_logps=ref, beta=0.05)
    log_r = (ref - logps)[MASK.bool()]
    mean_k3 = (log_r.exp() - log_r - 1).mean().item()
    assert loss.item() == pytest.approx(base.item() + 0.05 * mean_k3, abs=1e-6)
    assert metrics["kl"].item() == pytest.approx(mean_k3, abs=1e-6)
    _, k1_metrics = policy_loss(logps, OLD, ADV, MASK, ref_logps=ref, kl_estimator="k1")
    assert k1_metrics["kl"].item() == pytest.approx(-log_r.mean().item(), abs=1e-6)


def test_per_token_advantages_equal_broadcast_sequence_advantages():
    logps = OLD + RATIOS.log()
    seq, _ = policy_loss(logps, OLD, ADV, MASK, loss_type="grpo")
    tok, _ = policy_loss(logps, OLD, ADV[:, None].expand(2, 3), MASK, loss_type="grpo")
    assert tok.item() == pytest.approx(seq.item(), abs=1e-7)


def test_policy_loss_bad_input_names_the_field():
    logps = OLD + RATIOS.log()
    with pytest.raises(ValueError, match="ref_logps is required when beta"):
        policy_loss(logps, OLD, ADV, MASK, beta=0.1)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        policy_loss(logps, OLD, ADV, MASK, loss_type="ppo")
    with pytest.raises(ValueError, match="old_logps has shape"):
        policy_loss(logps, OLD[:, :2], ADV, MASK)
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(logps, OLD, ADV[:1], MASK)
    with pytest.raises(ValueError, match="importance_sampling must be"):
        policy_loss(logps, OLD, ADV, MASK, importance_sampling="group")


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids):
        return self.head(self.dropout(self.embed(input_ids)))


def _completion_logps(model, input_ids, labels):
    return token_logps(model(input_ids), labels)  # [b, t]


def test_first_update_ratio_is_one_and_kl_zero_from_independent_forwards():
    torch.manual_seed(0)
    policy = TinyLM()
    ref = copy.deepcopy(policy)
    input_ids = torch.randint(0, 11, (4, 6))
    labels = torch.randint(0, 11, (4, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), 2)
    policy.eval(), ref.eval()
    with torch.no_grad():  # the rollout: old and reference log-probs, each its own forward
        old_logps = _completion_logps(policy, input_ids, labels)
        ref_logps = _completion_logps(ref, input_ids, labels)
    logps = _completion_logps(policy, input_ids, labels)  # the training forward, with grad
    loss, metrics = policy_loss(logps, old_logps, advantages, mask, ref_logps=ref_logps, beta=0.04)
    assert metrics["ratio"].item() == pytest.approx(1.0, abs=1e-5)
    assert metrics["kl"].item() == pytest.approx(0.0, abs=1e-5)
    assert metrics["clip_ratio/region"].item() == 0.0
    # At ratio 1 the surrogate's gradient is the policy gradient -sum(A * grad logps) / tokens
    # (k3's gradient vanishes at logps == ref_logps).
    grad = torch.autograd.grad(loss, policy.head.weight, retain_graph=True)[0]
    reinforce = -(advantages[:, None] * logps * mask).sum() / mask.sum()
    torch.testing.assert_close(grad, torch.autograd.grad(reinforce, policy.head.weight)[0])
    # With dropout active in the training forward the ratio is no longer 1: why old logps need eval mode.
    policy.train()
    _, train_metrics = policy_loss(_completion_logps(policy, input_ids, labels), old_logps, advantages, mask)
    assert abs(train_metrics["ratio"].item() - 1) > 1e-3


def _accumulation_case():
    torch.manual_seed(1)
    logps = (-torch.rand(6, 5) * 2).requires_grad_()
    old_logps = logps.detach() + 0.3 * torch.randn(6, 5)
    advantages = torch.randn(6)
    lengths = torch.tensor([5, 1, 3, 2, 5, 4])  # micro-batches [:3] (9 tokens) and [3:] (11 tokens)
    mask = (torch.arange(5)[None] < lengths[:, None]).long()
    return logps, old_logps, advantages, mask


def _accumulated(loss_type, **kwargs):
    logps, old_logps, advantages, mask = _accumulation_case()
    big, _ = policy_loss(logps, old_logps, advantages, mask, loss_type=loss_type, **kwargs)
    (big_grad,) = torch.autograd.grad(big, logps)
    total = 0.0
    for rows in (slice(0, 3), slice(3, 6)):
        micro, _ = policy_loss(
            logps[rows], old_logps[rows], advantages[rows], mask[rows], loss_type=loss_type, **kwargs
        )
        total = total + micro
    (micro_grad,) = torch.autograd.grad(total, logps)
    return big, big_grad, total, micro_grad


def test_dapo_gradient_accumulation_equals_one_batch():
    logps, _, _, mask = _accumulation_case()
    big, big_grad, total, micro_grad = _accumulated("dapo", num_items=int(mask.sum()))
    assert total.item() == pytest.approx(big.item(), abs=1e-6)
    torch.testing.assert_close(micro_grad, big_grad)
    # bnpo normalises each micro-batch by its own tokens (9 vs 11): averaging the two is not one batch
    big, big_grad, total, micro_grad = _accumulated("bnpo")
    assert (total / 2).item() != pytest.approx(big.item(), abs=1e-4)


def test_dr_grpo_gradient_accumulation_equals_one_batch():
    # a constant normaliser per sequence: the mean over equal-sized micro-batches is the one-batch loss
    big, big_grad, total, micro_grad = _accumulated("dr_grpo", max_completion_length=8)
    assert (total / 2).item() == pytest.approx(big.item(), abs=1e-6)
    torch.testing.assert_close(micro_grad / 2, big_grad)


# --- PPO --------------------------------------------------------------------------------------------------


def test_gae_hand_computed_three_steps():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1's last position is padding
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.7 - 0.6 = 0.1, A1 = 0.1 + 0.95 * 0.3 = 0.385;
    #        d0 = 0.6 - 0.5 = 0.1, A0 = 0.1 + 0.95 * 0.385 = 0.46575
    # row 1: A1 = 1 - 0.4 = 0.6; A0 = 0.4 - 0.2 + 0.95 * 0.6 = 0.77; the padding is skipped
    torch.testing.assert_close(advantages, torch.tensor([[0.46575, 0.385, 0.3], [0.77, 0.6, 0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[0.96575, 0.985, 1.0], [0.97, 1.0, 0.0]]))


def test_gae_with_lambda_one_gives_discounted_reward_to_go():
    torch.manual_seed(2)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.ones(3, 6)
    _, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    discount = 0.9 ** torch.arange(6.0)
    expected = torch.stack([(rewards[:, t:] * discount[: 6 - t]).sum(-1) for t in range(6)], dim=1)
    torch.testing.assert_close(returns, expected)


def test_kl_penalized_rewards_put_the_score_on_the_last_token():
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -1.5, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -2.5, -3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    rewards = kl_penalized_rewards(torch.tensor([1.0, 2.0]), logps, ref, mask, kl_coef=0.1)
    # -0.1 * (logps - ref) on the masked tokens; the score added at the last one
    expected = torch.tensor([[-0.05, 0.1 + 1.0, 0.0], [0.0, -0.1, -0.2 + 2.0]])
    torch.testing.assert_close(rewards, expected)
    with pytest.raises(ValueError, match="at least one token"):
        kl_penalized_rewards(
            torch.tensor([1.0, 2.0]), logps, ref, mask * torch.tensor([[1], [0]]), kl_coef=0.1
        )


def test_masked_whiten():
    torch.manual_seed(3)
    x = torch.randn(3, 5) * 4 + 2
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    kept = x[mask.bool()]
    white = masked_whiten(x, mask)
    assert white[mask.bool()].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert white[mask.bool()].var().item() == pytest.approx(1.0, abs=1e-5)  # Bessel-corrected
    torch.testing.assert_close(white[mask.bool()], (kept - kept.mean()) / kept.std())
    assert (white[~mask.bool()] == 0).all()
    shifted = masked_whiten(x, mask, shift_mean=False)
    assert shifted[mask.bool()].mean().item() == pytest.approx(kept.mean().item(), abs=1e-5)
    one = torch.zeros_like(mask)
    one[0, 0] = 1
    with pytest.raises(ValueError, match="at least 2 masked positions"):
        masked_whiten(x, one)


def test_value_loss_clips_around_the_old_values():
    vpreds = torch.tensor([[1.0, 2.0, 0.5, 7.0]])
    values = torch.tensor([[0.8, 1.0, 1.0, 0.0]])
    returns = torch.tensor([[1.5, 1.2, 0.4, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_fraction = value_loss(vpreds, values, returns, mask, cliprange_value=0.2)
    # token 0: (1 - 1.5)^2 = 0.25, clipped to 1.0 -> 0.25; token 1: 0.64 vs clip 1.2 -> 0; max 0.64;
    # token 2: 0.01 vs clip 0.8 -> 0.16, the clipped term wins; token 3 is masked
    assert loss.item() == pytest.approx(0.5 * (0.25 + 0.64 + 0.16) / 3, abs=1e-6)
    assert clip_fraction.item() == pytest.approx(1 / 3)
    accumulated, _ = value_loss(vpreds, values, returns, mask, num_items=6)
    assert accumulated.item() == pytest.approx(0.5 * (0.25 + 0.64 + 0.16) / 6, abs=1e-6)


def test_entropy_from_logits_and_bonus():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 7) * 3
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, torch.distributions.Categorical(logits=logits).entropy())
    assert entropy_from_logits(torch.zeros(1, 1, 7)).item() == pytest.approx(math.log(7), abs=1e-6)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    bonus = entropy_bonus(entropy, mask, coef=0.01)
    assert bonus.item() == pytest.approx(-0.01 * entropy[mask.bool()].mean().item(), abs=1e-7)


def test_adaptive_kl_controller_follows_ziegler():
    ctl = AdaptiveKLController(kl_coef=0.2, target=6.0, horizon=10_000)
    # KL twice the target: the error is clipped to +0.2
    assert ctl.update(current_kl=12.0, n_steps=256) == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))
    after_high = ctl.kl_coef
    # KL 10% above target: error 0.1
    assert ctl.update(current_kl=6.6, n_steps=100) == pytest.approx(after_high * (1 + 0.1 * 100 / 10_000))
    # KL far below target: error clipped to -0.2, the coefficient falls
    before = ctl.kl_coef
    assert ctl.update(current_kl=0.0, n_steps=500) == pytest.approx(before * (1 - 0.2 * 500 / 10_000))
    with pytest.raises(ValueError, match="target and horizon must be > 0"):
        AdaptiveKLController(kl_coef=0.1, target=0.0, horizon=10)
