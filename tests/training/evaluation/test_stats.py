"""Bootstrap intervals and McNemar's exact test against hand-computed values."""

import pytest

from mmfuse.training.evaluation.stats import bootstrap_interval, mcnemar_exact, paired_difference


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_items():
    small = bootstrap_interval([1, 0] * 18)  # 36 items at 0.5, as the embedded speech set
    large = bootstrap_interval([1, 0] * 500)
    assert small.value == large.value == 0.5 and small.n == 36
    assert small.low < 0.5 < small.high and large.low < 0.5 < large.high
    # the normal approximation's half width is 1.96 * sqrt(0.25 / n): 0.163 for 36 items, 0.031 for 1000
    assert (small.high - small.low) / 2 == pytest.approx(0.163, abs=0.03)
    assert (large.high - large.low) / 2 == pytest.approx(0.031, abs=0.006)
    assert bootstrap_interval([1, 1, 1]) == bootstrap_interval([1, 1, 1])  # seeded
    with pytest.raises(ValueError, match="no outcomes"):
        bootstrap_interval([])


def test_mcnemar_exact_by_hand():
    # discordant: A only right on 2 items, B only right on 1 -> n = 3, 2 * P(X <= 1) = 2 * 4 / 8 -> 1
    assert mcnemar_exact([1, 1, 1, 0, 0, 1], [0, 0, 1, 0, 1, 1]) == 1.0
    # B right on 6 items A got wrong, never the reverse: 2 * (1/2)^6
    assert mcnemar_exact([0] * 6 + [1] * 4, [1] * 10) == pytest.approx(2 / 64)
    assert mcnemar_exact([1, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([1], [1, 0])


def test_paired_difference_is_b_minus_a():
    diff = paired_difference([0, 0, 1, 1] * 10, [1, 0, 1, 1] * 10)
    assert diff.value == pytest.approx(0.25) and diff.low < 0.25 < diff.high
