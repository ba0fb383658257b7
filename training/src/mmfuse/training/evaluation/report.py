"""``mmfuse eval``: validate a checkpoint, then give every accuracy a 95% interval; compare two.

``mmfuse eval --config C.yaml --ckpt_path run/checkpoints/last.ckpt`` is ``mmfuse validate`` with
:class:`EvalReport` appended to the callbacks. Evaluation callbacks that can say, per held-out item,
whether it was right (``item_outcomes() -> {metric: {item_key: bool}}``: exact match per kind and
modality of :class:`~mmfuse.training.callbacks.generation.GenerationEval`, zero-shot top-1 and
retrieval R@k of :class:`~mmfuse.training.callbacks.zeroshot.ZeroShotRetrieval`) are read after
they have gathered every rank, and ``eval.json`` (per metric: value, bootstrap interval, n, and the
per-item outcomes) plus ``eval.md`` (a Markdown table) are written to the run's log directory.
Metrics without items (perplexity, loss) are listed as logged.

``mmfuse eval --compare A/eval.json B/eval.json`` pairs the two runs' items by key and prints, per
metric, both values, the bootstrap interval of B - A and McNemar's exact p-value.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from mmfuse.training.evaluation.stats import bootstrap_interval, mcnemar_exact, paired_difference


def collect(trainer: L.Trainer) -> dict[str, Any]:
    """Per metric ``{value, low, high, n, items}`` from every callback with ``item_outcomes``, and the
    other logged validation metrics as ``{value}``."""
    report: dict[str, Any] = {}
    for callback in trainer.callbacks:
        outcomes = getattr(callback, "item_outcomes", None)
        for metric, items in (outcomes() if callable(outcomes) else {}).items():
            interval = bootstrap_interval([float(v) for v in items.values()])
            report[metric] = {**vars(interval), "items": {k: bool(v) for k, v in items.items()}}
    for metric, value in trainer.callback_metrics.items():
        if metric.startswith("val/") and metric not in report:
            report[metric] = {"value": float(value)}
    return dict(sorted(report.items()))


def markdown(report: dict[str, Any]) -> str:
    """A table: metric, value, 95% interval, items."""
    lines = ["| metric | value | 95% CI | n |", "|---|---|---|---|"]
    for metric, r in report.items():
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]" if "low" in r else ""
        lines.append(f"| {metric} | {r['value']:.3f} | {interval} | {r.get('n', '')} |")
    return "\n".join(lines) + "\n"


class EvalReport(Callback):
    """Writes ``eval.json`` and ``eval.md`` after validation (module docstring); must come last.

    Args:
        output_dir: where to write; the trainer's log directory when None.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        report = collect(trainer)
        out = Path(self.output_dir or trainer.log_dir or ".")
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=1))
        (out / "eval.md").write_text(markdown(report))
        print(f"\n{markdown(report)}\nwritten to {out / 'eval.json'} and {out / 'eval.md'}")


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Markdown table of the metrics with items in both reports, paired by item key."""
    lines = ["| metric | A | B | B - A (95% CI) | McNemar p | paired n |", "|---|---|---|---|---|---|"]
    for metric in sorted(set(a) & set(b)):
        if "items" not in a[metric] or "items" not in b[metric]:
            continue
        keys = sorted(set(a[metric]["items"]) & set(b[metric]["items"]))
        if not keys:
            continue
        xa = [a[metric]["items"][k] for k in keys]
        xb = [b[metric]["items"][k] for k in keys]
        diff = paired_difference([float(x) for x in xa], [float(x) for x in xb])
        lines.append(
            f"| {metric} | {sum(xa) / len(keys):.3f} | {sum(xb) / len(keys):.3f} | {diff.value:+.3f} "
            f"[{diff.low:+.3f}, {diff.high:+.3f}] | {mcnemar_exact(xa, xb):.3g} | {len(keys)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """``mmfuse eval`` (module docstring)."""
    if argv[:1] == ["--compare"]:
        if len(argv) != 3:
            raise SystemExit("usage: mmfuse eval --compare A/eval.json B/eval.json")
        print(compare(*(json.loads(Path(p).read_text()) for p in argv[1:])), end="")
        return
    from mmfuse.training.cli import cli_main

    cli_main(["validate", *argv, "--trainer.callbacks+=mmfuse.training.evaluation.EvalReport"])


if __name__ == "__main__":
    main(sys.argv[1:])
