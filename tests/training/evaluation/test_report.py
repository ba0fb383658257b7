"""``mmfuse eval``'s report and paired comparison from per-item outcomes."""

import json

import pytest

from mmfuse.training.callbacks.generation import GenerationEval
from mmfuse.training.evaluation.report import collect, compare, markdown


class _Trainer:
    def __init__(self, *callbacks, metrics=None):
        self.callbacks, self.callback_metrics = list(callbacks), metrics or {}


def _answers(flags):
    callback = GenerationEval()
    for i, right in enumerate(flags):
        callback.record("image/digit", "Which digit?", "3", "3" if right else "5", key=f"k{i}#1")
    return callback


def test_collect_gives_every_exact_match_an_interval_and_its_items():
    report = collect(_Trainer(_answers([1, 1, 0, 1]), metrics={"val/perplexity": 3.5}))
    digit = report["val/exact_match/image/digit"]
    assert digit["value"] == 0.75 and digit["n"] == 4 and digit["low"] <= 0.75 <= digit["high"]
    assert digit["items"] == {"k0#1": True, "k1#1": True, "k2#1": False, "k3#1": True}
    assert report["val/exact_match/image"]["value"] == 0.75  # the modality figure too
    assert report["val/perplexity"] == {"value": 3.5}
    assert "| val/exact_match/image/digit | 0.750 | [" in markdown(report)


def test_compare_pairs_items_by_key():
    a = collect(_Trainer(_answers([0] * 6 + [1] * 4)))
    b = collect(_Trainer(_answers([1] * 10)))
    table = compare(json.loads(json.dumps(a)), json.loads(json.dumps(b)))  # as read back from eval.json
    row = next(line for line in table.splitlines() if line.startswith("| val/exact_match/image/digit "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["0.400", "1.000"] and cells[3].startswith("+0.600")
    assert float(cells[4]) == pytest.approx(2 / 64, rel=1e-2) and cells[5] == "10"
