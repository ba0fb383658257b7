"""``mmfuse eval``: any stage's held-out metrics with bootstrap intervals, and paired comparisons."""

from mmfuse.training.evaluation.report import EvalReport, compare, main
from mmfuse.training.evaluation.stats import Interval, bootstrap_interval, mcnemar_exact, paired_difference

__all__ = [
    "EvalReport",
    "Interval",
    "bootstrap_interval",
    "compare",
    "main",
    "mcnemar_exact",
    "paired_difference",
]
