import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from mmfuse.core.losses import dpo_loss, reward_loss


def softplus(x: float) -> float:  # -log sigmoid(-x)
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# One pair: policy (chosen -10, rejected -12), reference (-11, -11): log-ratios +1 and -1, d = 2.
PAIR = [torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0])]
LENGTHS = {"chosen_lengths": torch.tensor([4]), "rejected_lengths": torch.tensor([2])}


def test_sigmoid_issue_value():
    out = dpo_loss(*PAIR, beta=0.1)
    assert out.losses.item() == pytest.approx(0.5981, abs=1e-4)
    assert out.losses.item() == pytest.approx(softplus(-0.2), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # cDPO, eps = 0.1: (1 - eps) softplus(-beta d) + eps softplus(beta d)
        ({"loss_type": "sigmoid", "label_smoothing": 0.1}, 0.9 * softplus(-0.2) + 0.1 * softplus(0.2)),
        # rDPO: ((1 - eps) softplus(-beta d) - eps softplus(beta d)) / (1 - 2 eps)
        ({"loss_type": "robust", "label_smoothing": 0.1}, (0.9 * softplus(-0.2) - 0.1 * softplus(0.2)) / 0.8),
        ({"loss_type": "hinge"}, 1 - 0.2),
        # per-token log-ratios 1/4 and -1/2: (0.75 - 1 / (2 * 0.1))^2
        ({"loss_type": "ipo", **LENGTHS}, (0.25 + 0.5 - 5.0) ** 2),
        # c = beta * log-ratio = 0.1, r = -0.1
        ({"loss_type": "apo_zero"}, 1 - sigmoid(0.1) + sigmoid(-0.1)),
        ({"loss_type": "nca_pair"}, softplus(-0.1) + 0.5 * softplus(0.1) + 0.5 * softplus(-0.1)),
        # RPO: the chosen per-token NLL 10 / 4, weight 0.5, on top of DPO
        ({"loss_type": "sigmoid", "rpo_alpha": 0.5, **LENGTHS}, softplus(-0.2) + 0.5 * 10 / 4),
    ],
)
def test_each_loss_type_against_hand_value(kwargs, expected):
    out = dpo_loss(*PAIR, beta=0.1, **kwargs)
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    # every reference-based type reports TRL's implicit rewards, beta * summed log-ratio
    assert out.chosen_rewards.item() == pytest.approx(0.1)
    assert out.rejected_rewards.item() == pytest.approx(-0.1)


def test_simpo_is_reference_free_length_normalised_with_margin():
    out = dpo_loss(PAIR[0], PAIR[1], None, None, beta=2.0, loss_type="simpo", simpo_gamma=0.5, **LENGTHS)
    # averages -10/4 = -2.5 and -12/2 = -6: -log sigmoid(2 * 3.5 - 0.5)
    assert out.losses.item() == pytest.approx(softplus(-6.5), abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(-5.0)
    assert out.rejected_rewards.item() == pytest.approx(-12.0)
    # the reference log-probs, if passed, are ignored
    same = dpo_loss(*PAIR, beta=2.0, loss_type="simpo", simpo_gamma=0.5, **LENGTHS)
    assert same.losses.item() == out.losses.item()


@pytest.mark.parametrize(
    ("loss_type", "expected"),
    [
        ("sigmoid", math.log(2)),
        ("robust", math.log(2)),  # with any eps: ((1 - eps) - eps) ln 2 / (1 - 2 eps)
        ("hinge", 1.0),
        ("ipo", (1 / (2 * 0.1)) ** 2),
        ("apo_zero", 1.0),
        ("nca_pair", 2 * math.log(2)),
    ],
)
def test_policy_equal_to_reference_gives_value_at_zero_log_ratio(loss_type, expected):
    logps = torch.tensor([-3.0, -7.5, -20.0])
    kwargs = {"label_smoothing": 0.2} if loss_type == "robust" else {}
    lengths = torch.tensor([3, 5, 9])
    out = dpo_loss(
        logps,
        logps - 1,
        logps,
        logps - 1,
        beta=0.1,
        loss_type=loss_type,
        chosen_lengths=lengths,
        rejected_lengths=lengths,
        **kwargs,
    )
    torch.testing.assert_close(out.losses, torch.full((3,), expected))
    torch.testing.assert_close(out.chosen_rewards, torch.zeros(3))


def test_batch_matches_per_pair_and_gradients_flow():
    torch.manual_seed(0)
    policy = torch.randn(2, 5, requires_grad=True)
    ref = torch.randn(2, 5)
    out = dpo_loss(policy[0], policy[1], ref[0], ref[1], beta=0.5)
    for i in range(5):
        single = dpo_loss(
            policy[0, i : i + 1], policy[1, i : i + 1], ref[0, i : i + 1], ref[1, i : i + 1], beta=0.5
        )
        assert out.losses[i].item() == pytest.approx(single.losses.item(), abs=1e-6)
    out.losses.mean().backward()
    # d/dc of -log sigmoid(beta (c - r)) is -beta sigmoid(-beta d)
    d = (policy[0] - ref[0] - policy[1] + ref[1]).detach()
    torch.testing.assert_close(policy.grad[0], -0.5 * torch.sigmoid(-0.5 * d) / 5)
    torch.testing.assert_close(policy.grad[1], 0.5 * torch.sigmoid(-0.5 * d) / 5)
    assert not out.chosen_rewards.requires_grad


@pytest.mark.parametrize("loss_type", ["ipo", "simpo"])
def test_length_normalised_types_require_lengths(loss_type):
    with pytest.raises(ValueError, match="chosen_lengths is required by loss_type="):
        dpo_loss(*PAIR, loss_type=loss_type)
    with pytest.raises(ValueError, match="rejected_lengths is required"):
        dpo_loss(*PAIR, loss_type=loss_type, chosen_lengths=torch.tensor([3]))
    with pytest.raises(ValueError, match="chosen_lengths must be >= 1"):
        dpo_loss(
            *PAIR, loss_type=loss_type, chosen_lengths=torch.tensor([0]), rejected_lengths=torch.tensor([2])
        )


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="loss_type must be one of"):
        dpo_loss(*PAIR, loss_type="dpo")
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        dpo_loss(*PAIR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing is not used by loss_type='hinge'"):
        dpo_loss(*PAIR, loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="ref_chosen_logps and ref_rejected_logps are required"):
        dpo_loss(PAIR[0], PAIR[1], None, None)
    with pytest.raises(ValueError, match="ref_rejected_logps has shape"):
        dpo_loss(PAIR[0], PAIR[1], PAIR[2], torch.zeros(2))
    with pytest.raises(ValueError, match="chosen_lengths is required by rpo_alpha"):
        dpo_loss(*PAIR, rpo_alpha=1.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(*PAIR, beta=0.0)


def test_reward_loss_with_margin_and_centering():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    margin = torch.tensor([0.5, 0.0])
    plain = reward_loss(chosen, rejected)
    torch.testing.assert_close(plain, torch.tensor([softplus(-1.0), softplus(1.0)]))
    with_margin = reward_loss(chosen, rejected, margin=margin)
    torch.testing.assert_close(with_margin, torch.tensor([softplus(-0.5), softplus(1.0)]))
    full = reward_loss(chosen, rejected, margin=margin, center_rewards_coefficient=0.01)
    # centering: 0.01 * (r_c + r_r)^2 = 0.09 and 0.04
    torch.testing.assert_close(full, torch.tensor([softplus(-0.5) + 0.09, softplus(1.0) + 0.04]))
    assert full.mean().item() == pytest.approx(0.958669, abs=1e-6)
    torch.testing.assert_close(reward_loss(chosen, rejected, margin=0.5)[1], torch.tensor(softplus(1.5)))
    with pytest.raises(ValueError, match="margin must be a scalar or"):
        reward_loss(chosen, rejected, margin=torch.zeros(3))
    with pytest.raises(ValueError, match="chosen_rewards and rejected_rewards must both be"):
        reward_loss(chosen, rejected[:1])


# --- parity with TRL 1.16: `uv run --group bench pytest -m slow tests/core/losses/test_preference.py`


def _trl_dpo_loss(loss_type, loss_weights, beta, label_smoothing, chosen_tokens, rejected_tokens, ref):
    """TRL 1.16's ``DPOTrainer._compute_loss`` on given per-token log-probs, through a stand-in trainer.

    The loss lives inside the trainer method; the stand-in supplies just the attributes it reads and a
    model whose ``log_probs`` are the given per-token values (0 outside the completion).
    """
    from trl import DPOTrainer

    per_token = torch.cat([chosen_tokens, rejected_tokens])  # [2b, s - 1]
    completion_mask = torch.cat([torch.zeros(per_token.shape[0], 1), (per_token != 0).float()], dim=1)
    outputs = SimpleNamespace(
        log_probs=per_token,
        entropy=torch.zeros_like(per_token),
        mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool),
    )
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_type,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask, dtype=torch.long),
        "attention_mask": torch.ones_like(completion_mask, dtype=torch.long),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": ref[0],
        "ref_rejected_logps": ref[1],
    }
    loss = DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]


def _token_logps(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(len(lengths), 7, generator=g) * 3 - 0.01  # strictly negative
    return logps * (torch.arange(7)[None] < torch.tensor(lengths)[:, None])


@pytest.mark.slow  # importing TRL takes ~20 s here
@pytest.mark.parametrize(
    ("loss_type", "label_smoothing"),
    [("sigmoid", 0.0), ("robust", 0.2), ("hinge", 0.0), ("ipo", 0.0), ("apo_zero", 0.0), ("nca_pair", 0.0)],
)
def test_matches_trl_dpo_trainer(loss_type, label_smoothing):
    pytest.importorskip("trl")
    chosen_tokens, rejected_tokens = _token_logps([3, 7, 5, 1], 0), _token_logps([6, 2, 7, 4], 1)
    ref = (-torch.rand(4, generator=torch.Generator().manual_seed(2)) * 10, -torch.rand(4) * 10)
    trl_loss, metrics = _trl_dpo_loss(
        [loss_type], [1.0], 0.3, label_smoothing, chosen_tokens, rejected_tokens, ref
    )
    out = dpo_loss(
        chosen_tokens.sum(1),
        rejected_tokens.sum(1),
        *ref,
        beta=0.3,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        chosen_lengths=torch.tensor([3, 7, 5, 1]),
        rejected_lengths=torch.tensor([6, 2, 7, 4]),
    )
    assert out.losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)
    assert out.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-6)
    assert out.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-6)


@pytest.mark.slow
def test_rpo_matches_trl_sigmoid_plus_sft_for_equal_chosen_lengths():
    pytest.importorskip("trl")
    chosen_tokens, rejected_tokens = _token_logps([5, 5, 5], 3), _token_logps([2, 7, 4], 4)
    ref = (-torch.rand(3) * 10, -torch.rand(3) * 10)
    trl_loss, _ = _trl_dpo_loss(["sigmoid", "sft"], [1.0, 0.7], 0.1, 0.0, chosen_tokens, rejected_tokens, ref)
    out = dpo_loss(
        chosen_tokens.sum(1),
        rejected_tokens.sum(1),
        *ref,
        beta=0.1,
        rpo_alpha=0.7,
        chosen_lengths=torch.tensor([5, 5, 5]),
    )
    assert out.losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("loss_type", "label_smoothing"), [("simpo", 0.0), ("simpo", 0.1), ("sigmoid", 0.1)])
def test_simpo_and_cdpo_match_trl_cpo_loss(loss_type, label_smoothing):
    """TRL 1.16 keeps SimPO, and the cDPO form of the sigmoid loss, in ``CPOTrainer.cpo_loss``."""
    pytest.importorskip("trl")
    from trl.experimental.cpo import CPOTrainer

    torch.manual_seed(5)
    chosen, rejected = -torch.rand(6) * 20, -torch.rand(6) * 20
    lengths_c, lengths_r = torch.randint(1, 9, (6,)), torch.randint(1, 9, (6,))
    beta = 2.0 if loss_type == "simpo" else 0.1
    cpo = SimpleNamespace(
        alpha=0.0,
        loss_type=loss_type,
        simpo_gamma=0.8,
        beta=beta,
        label_smoothing=label_smoothing,
        accelerator=SimpleNamespace(device="cpu"),
    )
    if loss_type == "simpo":  # CPO's SimPO reads per-token average log-probs
        expected = CPOTrainer.cpo_loss(cpo, chosen / lengths_c, rejected / lengths_r)
        out = dpo_loss(
            chosen,
            rejected,
            None,
            None,
            beta=beta,
            loss_type="simpo",
            simpo_gamma=0.8,
            label_smoothing=label_smoothing,
            chosen_lengths=lengths_c,
            rejected_lengths=lengths_r,
        )
    else:  # CPO's sigmoid is cDPO on whatever scores it is given: pass the log-ratios
        ref_c, ref_r = -torch.rand(6) * 20, -torch.rand(6) * 20
        expected = CPOTrainer.cpo_loss(cpo, chosen - ref_c, rejected - ref_r)
        out = dpo_loss(chosen, rejected, ref_c, ref_r, beta=beta, label_smoothing=label_smoothing)
    torch.testing.assert_close(out.losses, expected[0])
    torch.testing.assert_close(out.chosen_rewards, expected[1])
    torch.testing.assert_close(out.rejected_rewards, expected[2])
