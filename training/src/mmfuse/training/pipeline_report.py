"""``mmfuse report PIPELINE_DIR``: one report of every stage of a ``mmfuse pipeline`` run.

``PIPELINE_DIR/pipeline.json`` (written by :mod:`mmfuse.training.pipeline`) lists the stages in
order, each with ``name``, ``run`` (fit, eval, merge, ...), ``run_dir``, ``status``, ``starts``,
``wall_s`` and, for an evaluation, the stage it ``evaluates``. A stage's held-out metrics are those
of its newest ``eval.json`` (:class:`~mmfuse.training.evaluation.EvalReport`: value and 95%
bootstrap interval per metric), else the last logged value of each ``val/*`` metric of its
``metrics.csv`` files (merged as :func:`~mmfuse.training.report.read_curves` does). The report
(``report.md`` and PNGs, in ``PIPELINE_DIR/report`` by default) holds:

* the stages: run, status, starts and wall time, with the total;
* the held-out metrics, one column per stage;
* the exact match per question kind (``val/exact_match/<kind>``) side by side across stages, next
  to the majority baseline, so that what preference tuning or RL costs on other kinds shows;
* each fit stage's run report (:func:`~mmfuse.training.report.write_report`) in ``report/<stage>/``,
  and ``loss.png``, the training loss of every fit stage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mmfuse.training.report import (
    baseline_targets,
    find_metrics_files,
    plot_panels,
    read_curves,
    write_report,
)

EXACT_MATCH = "val/exact_match"
_STAGE_FIELDS = ("name", "run", "run_dir", "status")


def stage_run_dir(pipeline_dir: Path, run_dir: str) -> Path:
    """A stage's run directory: the directory of that name in ``pipeline_dir`` when it exists (a stage the
    pipeline ran), else ``run_dir`` as the pipeline wrote it (a given checkpoint's run, relative to the
    directory the pipeline ran in, or absolute)."""
    inside = pipeline_dir / Path(run_dir).name
    return inside if inside.exists() or not Path(run_dir).exists() else Path(run_dir)


def held_out_metrics(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``{metric: {"value", and "low", "high", "n" where an interval exists}}`` of a stage (module
    docstring); empty when the stage logged none."""
    evals = sorted(run_dir.rglob("eval.json"), key=lambda p: p.stat().st_mtime) if run_dir.exists() else []
    if evals:
        report = json.loads(evals[-1].read_text())
        return {m: {k: v for k, v in r.items() if k != "items"} for m, r in report.items()}
    try:
        curves = read_curves(find_metrics_files(run_dir))
    except FileNotFoundError:
        return {}
    return {m: {"value": points[max(points)]} for m, points in curves.items() if m.startswith("val/")}


def cell(metric: dict[str, Any] | None) -> str:
    """``0.905 [0.866, 0.935]`` (value and interval), ``0.905``, or empty for no metric."""
    if metric is None:
        return ""
    interval = f" [{metric['low']:.3f}, {metric['high']:.3f}]" if "low" in metric else ""
    return f"{metric['value']:.3f}{interval}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows]]


def stage_lines(stages: list[dict[str, Any]]) -> list[str]:
    """The stage table, with the total wall time."""
    rows = [
        [s["name"], s["run"], s["status"], str(s.get("starts", "")), f"{(s.get('wall_s') or 0) / 60:.1f}"]
        for s in stages
    ]
    total = sum(s.get("wall_s") or 0 for s in stages) / 60
    return _table(
        ["stage", "run", "status", "starts", "wall (min)"], [*rows, ["total", "", "", "", f"{total:.1f}"]]
    )


def exact_match_lines(columns: dict[str, dict[str, dict[str, Any]]]) -> tuple[list[str], set[str]]:
    """Rows = kind (``all`` for the overall ``val/exact_match``), one column per stage, and the
    majority baseline of the kind; also returns the metric names shown."""
    names = {m for metrics in columns.values() for m in metrics}
    kinds = sorted(m for m in names if m == EXACT_MATCH or m.startswith(EXACT_MATCH + "/"))
    majority: dict[str, dict[str, Any]] = {}
    for metrics in columns.values():
        for name, metric in metrics.items():
            for target in baseline_targets(name, kinds) or []:
                majority.setdefault(target, metric | {"name": name})
    used = [label for label, metrics in columns.items() if any(k in metrics for k in kinds)]
    rows = [
        [k.removeprefix(EXACT_MATCH + "/") if k != EXACT_MATCH else "all"]
        + [cell(columns[label].get(k)) for label in used]
        + [cell(majority.get(k))]
        for k in kinds
    ]
    shown = set(kinds) | {m["name"] for m in majority.values()}
    return (_table(["kind", *used, "majority"], rows) if kinds else []), shown


def write_pipeline_report(pipeline_dir: Path, out_dir: Path | None = None) -> Path:
    """Write ``report.md`` and the PNGs of the pipeline in ``pipeline_dir`` (module docstring).

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: If ``pipeline_dir`` has no ``pipeline.json``.
        ValueError: If a stage of ``pipeline.json`` lacks ``name``, ``run``, ``run_dir`` or ``status``.
    """
    state = json.loads((pipeline_dir / "pipeline.json").read_text())
    stages = state.get("stages", [])
    for i, stage in enumerate(stages):
        if missing := [k for k in _STAGE_FIELDS if k not in stage]:
            raise ValueError(f"{pipeline_dir / 'pipeline.json'}: stage {i} has no {', '.join(missing)}")
    out_dir = out_dir or pipeline_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dirs = {s["name"]: stage_run_dir(pipeline_dir, s["run_dir"]) for s in stages}
    columns: dict[str, dict[str, dict[str, Any]]] = {}  # column label -> metric -> value/interval
    for s in stages:
        if metrics := held_out_metrics(run_dirs[s["name"]]):
            label = f"{s['evaluates']} ({s['name']})" if s.get("evaluates") else s["name"]
            columns[label] = metrics
    lines = [f"# Pipeline report: `{pipeline_dir}`", "", f"recipe `{state.get('recipe')}`", ""]
    lines += ["## Stages", "", *stage_lines(stages), ""]
    per_kind, shown = exact_match_lines(columns)
    if per_kind:
        lines += ["## Exact match per kind (95% bootstrap interval where evaluated)", "", *per_kind, ""]
    other = sorted({m for metrics in columns.values() for m in metrics} - shown)
    if other:
        rows = [[m, *(cell(metrics.get(m)) for metrics in columns.values())] for m in other]
        lines += ["## Held-out metrics", "", *_table(["metric", *columns], rows), ""]
    lines += ["## Curves (loss, reward, KL and metrics of each fit stage)", ""]
    losses: dict[str, dict[str, dict[int, float]]] = {}
    for s in stages:
        if s["run"] == "fit" and list(run_dirs[s["name"]].rglob("metrics.csv")):
            report = write_report(run_dirs[s["name"]], out_dir / s["name"])
            plots = re.findall(r"!\[(\w+)\]\((\w+\.png)\)", report.read_text())
            pngs = ", ".join(f"[{stem}]({s['name']}/{png})" for stem, png in plots)
            lines.append(f"- `{s['name']}`: [run report]({s['name']}/report.md), {pngs}")
            curves = read_curves(find_metrics_files(run_dirs[s["name"]]))
            losses[s["name"]] = {m: v for m, v in curves.items() if m.startswith("train/") and "loss" in m}
    if any(losses.values()):
        fig = plot_panels({k: v for k, v in losses.items() if v}, "training loss per fit stage")
        fig.savefig(out_dir / "loss.png", dpi=110)
        lines += ["", "![training loss per fit stage](loss.png)"]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


__all__ = [
    "cell",
    "exact_match_lines",
    "held_out_metrics",
    "stage_lines",
    "stage_run_dir",
    "write_pipeline_report",
]
