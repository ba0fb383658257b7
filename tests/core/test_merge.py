"""Merge methods against hand-computed values (mergekit's semantics), peft's TIES, peft's exact LoRA merge."""

import peft
import pytest
import torch
from torch import nn

from mmfuse.core.merge import dare, fold_lora, linear, merge_state_dicts, task_arithmetic, ties

T = torch.tensor


def test_linear_soup_is_the_weighted_mean():
    out = linear([T([1.0, 2.0]), T([3.0, 6.0])], [1.0, 3.0])
    torch.testing.assert_close(out, T([(1 + 9) / 4, (2 + 18) / 4]))
    torch.testing.assert_close(linear([T([1.0]), T([3.0])], [1.0, 3.0], normalize=False), T([10.0]))


def test_task_arithmetic_adds_the_scaled_weighted_task_vectors():
    base = T([0.0, 1.0])
    out = task_arithmetic(base, [T([1.0, 1.0]), T([0.0, 3.0])], [0.5, 1.0], scale=2.0)
    torch.testing.assert_close(out, base + 2 * (0.5 * T([1.0, 0.0]) + 1.0 * T([0.0, 2.0])))


# Three task vectors over four entries; density 0.5 keeps the two largest magnitudes of each:
# d1 -> [3, 0, 0, -2], d2 -> [-5, 0, 0, -4], d3 -> [2, 0, -3, 0]. Elected signs (sum >= 0 is +):
# [+ (3 - 5 + 2 = 0), + (nothing survived), -, -]; disjoint means of the agreeing entries:
# [(3 + 2) / 2, 0 (no one agrees: divisor 1), -3, (-2 - 4) / 2].
DELTAS = [T([3.0, -1.0, 0.5, -2.0]), T([-5.0, 2.0, 0.1, -4.0]), T([2.0, -0.2, -3.0, 1.0])]


def test_ties_trims_elects_signs_and_takes_the_disjoint_mean():
    base = T([10.0, 20.0, 30.0, 40.0])
    out = ties(base, [base + d for d in DELTAS], [1.0, 1.0, 1.0], density=0.5)
    torch.testing.assert_close(out, base + T([2.5, 0.0, -3.0, -3.0]))
    # weights enter the election and the mean: sum_i w_i d_i m_i / sum_i w_i m_i
    out = ties(base, [base + d for d in DELTAS], [1.0, 2.0, 1.0], density=0.5)
    # weighted: [3,0,0,-2], [-10,0,0,-8], [2,0,-3,0] -> signs [-, +, -, -]
    torch.testing.assert_close(out, base + T([-5.0, 0.0, -3.0, (-2.0 - 8.0) / 3]))


def test_ties_with_unit_weights_equals_peft_ties():
    torch.manual_seed(0)
    deltas = [torch.randn(6, 5) for _ in range(3)]
    ours = ties(torch.zeros(6, 5), deltas, [1.0, 1.0, 1.0], density=0.4)
    theirs = peft.utils.merge_utils.ties(torch.stack(deltas), torch.ones(3), density=0.4)
    torch.testing.assert_close(ours, theirs)


def test_dare_drops_with_probability_one_minus_density_and_rescales_the_survivors():
    delta = torch.linspace(1, 2, 20_000)

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return dare(torch.zeros_like(delta), [delta], [1.0], density=0.3, generator=gen)

    out = run(0)
    kept = out != 0
    torch.testing.assert_close(out[kept], delta[kept] / 0.3)  # survivors rescaled by 1 / (1 - p)
    assert abs(kept.float().mean().item() - 0.3) < 0.02
    assert torch.equal(out, run(0)) and not torch.equal(out, run(1))


def test_dare_is_unbiased_over_seeds():
    base, x = T([1.0, -1.0, 0.5]), T([2.0, 1.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    mean = torch.stack(
        [dare(base, [x, 2 * x], [0.5, 0.5], density=0.5, generator=gen) for _ in range(4000)]
    ).mean(0)
    # E[dare] = base + 0.5 (x - base) + 0.5 (2x - base) = task arithmetic
    torch.testing.assert_close(mean, task_arithmetic(base, [x, 2 * x], [0.5, 0.5]), atol=0.06, rtol=0)


def test_dare_with_sign_consensus_and_density_one_is_ties_without_trimming():
    base = torch.zeros(4)
    parents = [base + d for d in DELTAS]
    out = dare(base, parents, [1.0] * 3, density=1.0, generator=torch.Generator(), sign_consensus=True,
               normalize=True)  # fmt: skip
    torch.testing.assert_close(out, ties(base, parents, [1.0] * 3, density=1.0))


def test_merge_state_dicts_merges_floats_copies_integers_and_keeps_dtypes():
    a = {"w": T([1.0, 2.0], dtype=torch.bfloat16), "n": T([3])}
    b = {"w": T([3.0, 4.0], dtype=torch.bfloat16), "n": T([3])}
    out = merge_state_dicts("linear", [a, b], [1.0, 1.0])
    assert out["w"].dtype == torch.bfloat16 and torch.equal(out["w"], T([2.0, 3.0], dtype=torch.bfloat16))
    assert torch.equal(out["n"], T([3]))
    with pytest.raises(ValueError, match="needs a base"):
        merge_state_dicts("ties", [a, b], [1.0, 1.0], density=0.5)
    with pytest.raises(ValueError, match="other parameters"):
        merge_state_dicts("linear", [a, {"w": b["w"]}], [1.0, 1.0])
    with pytest.raises(ValueError, match="n: integer tensors differ"):
        merge_state_dicts("linear", [a, {**b, "n": T([4])}], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown merge method 'slerp'"):
        merge_state_dicts("slerp", [a, b], [1.0, 1.0])


def _lora_model(seed: int) -> nn.Module:
    torch.manual_seed(0)  # one base weight
    base = nn.Sequential(nn.Linear(6, 5))
    torch.manual_seed(seed)
    return peft.inject_adapter_in_model(_lora_config(), base)


def test_folded_lora_computes_what_the_adapter_computes():
    model, x = _lora_model(1), torch.randn(3, 6)
    before = model(x)
    fold_lora(model)
    assert torch.count_nonzero(model[0].lora_B["default"].weight) == 0
    torch.testing.assert_close(model(x), before)


def test_linear_soup_of_folded_lora_equals_peft_cat_weighted_adapter():
    a, b = fold_lora(_lora_model(1)), fold_lora(_lora_model(2))
    soup = merge_state_dicts("linear", [a.state_dict(), b.state_dict()], [0.3, 0.7])

    torch.manual_seed(0)
    peft_model = peft.get_peft_model(nn.Sequential(nn.Linear(6, 5)), _lora_config(), adapter_name="first")
    peft_model.add_adapter("second", _lora_config())
    for name, seed in (("first", 1), ("second", 2)):  # the same adapters as _lora_model(seed)
        layer = _lora_model(seed)[0]
        peft_model.base_model.model[0].lora_A[name].weight.data.copy_(layer.lora_A["default"].weight)
        peft_model.base_model.model[0].lora_B[name].weight.data.copy_(layer.lora_B["default"].weight)
    peft_model.add_weighted_adapter(["first", "second"], [0.3, 0.7], "soup", combination_type="cat")
    layer = peft_model.base_model.model[0]
    expected = layer.base_layer.weight + layer.get_delta_weight("soup")
    torch.testing.assert_close(soup["0.base_layer.weight"], expected)


def _lora_config() -> peft.LoraConfig:
    return peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], init_lora_weights=False)
