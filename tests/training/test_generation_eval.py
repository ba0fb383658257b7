"""GenerationEval's figures, and its cross-rank merge (the counts of two ranks = one process)."""

import math
from collections import Counter

import pytest

from mmfuse.training.callbacks.generation import GenerationEval


def _observe(callback: GenerationEval, answers: list[tuple[str, str, str]], nll: float, tokens: int) -> None:
    for kind, answer, reference in answers:
        callback.asked[kind] += 1
        callback.correct[kind] += answer == reference
        callback.references[kind][reference] += 1
    callback.nll += nll
    callback.tokens += tokens


ANSWERS = [
    ("image/digit", "3", "3"), ("image/digit", "5", "3"), ("image/caption", "a cat", "a cat"),
    ("image/digit", "7", "7"), ("audio/transcript", "one", "two"), ("audio/transcript", "two", "two"),
]  # fmt: skip


def test_metrics_by_hand():
    callback = GenerationEval()
    _observe(callback, ANSWERS, nll=12.0, tokens=6)
    metrics = callback.metrics()
    assert metrics["val/perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["val/exact_match/image/digit"] == pytest.approx(2 / 3)
    assert metrics["val/majority/image/digit"] == pytest.approx(2 / 3)  # "3" twice of three
    assert metrics["val/exact_match/image"] == pytest.approx(3 / 4)
    assert metrics["val/exact_match/audio"] == pytest.approx(1 / 2)
    assert metrics["val/majority/audio/transcript"] == 1.0  # both references are "two"


def test_merged_ranks_equal_one_process():
    whole, rank0, rank1 = GenerationEval(), GenerationEval(), GenerationEval()
    _observe(whole, ANSWERS, nll=12.0, tokens=6)
    _observe(rank0, ANSWERS[:3], nll=5.0, tokens=2)
    _observe(rank1, ANSWERS[3:], nll=7.0, tokens=4)
    merged = GenerationEval()
    merged.merge([rank0.state(), rank1.state()])
    assert merged.metrics() == whole.metrics()
    assert merged.references["image/digit"] == Counter({"3": 2, "7": 1})
