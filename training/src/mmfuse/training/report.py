"""``mmfuse report RUN_DIR``: loss and metric curves (PNG) and a Markdown summary of a run.

A run directory is a trainer's ``default_root_dir``. Lightning's CSV logger writes one
``metrics.csv`` per (re)start of the run (``lightning_logs/version_N/``); a resumed run logs
again the steps between its checkpoint and the interruption. The report merges the files in
version order and keeps, for each metric and step, the value logged last. The run manifest
(``manifest.json``, see :mod:`mmfuse.training.callbacks.manifest`) of the latest start, when
present, heads the summary. A reward-model run's latest ``reliability-epoch=E.json`` (written by
:class:`~mmfuse.training.stages.reward.RewardModeling`'s validation) is drawn as ``reliability.png``.

The plots keep what a reader compares: related series share a panel (:func:`panel_key`); chance
levels and majority baselines (:func:`baseline_targets`) are dashed reference lines on the panel
of the metric they refer to, not panels of their own; constant series are left out of the plots
and marked "constant" in the table. A directory holding ``pipeline.json`` gets the pipeline report
of :mod:`mmfuse.training.pipeline_report` instead.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
from collections.abc import Collection, Sequence
from pathlib import Path

from matplotlib.figure import Figure

# Columns that are not curves against the global step: the axes themselves, ThroughputMonitor's
# cumulative counters, and its validate/test/predict rates (logged against the batch index of that
# loop, not the global step).
_NOT_CURVES = re.compile(r"^(epoch|step)$|/(time|batches|samples|lengths)$|^(validate|test|predict)/")

# The RL stages' reward and KL curves (rollout/reward, rollout/rewards/<name>/mean, train/kl, ...).
_REWARD_OR_KL = re.compile(r"reward|(^|/)kl(_|/|$)")

# Baselines: ``val/i2t_r5_chance`` (of ``val/i2t_r5``) or ``val/majority/<kind>`` (of ``val/*/<kind>``).
_BASELINE_SUFFIX = re.compile(r"_(chance|majority)$")
_BASELINE_PART = ("chance", "majority")

# A last path component that summarises one series of several (``rollout/rewards/<name>/mean``).
_STATISTICS = ("mean", "std", "min", "max")

Curves = dict[str, dict[int, float]]  # metric name -> {global step: value}


def _version_key(path: Path | str) -> tuple:
    """Natural order: ``.../version_10/metrics.csv`` after ``.../version_9/metrics.csv``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path)))


def find_metrics_files(run_dir: Path) -> list[Path]:
    """The ``metrics.csv`` files under ``run_dir``, oldest start first.

    Raises:
        FileNotFoundError: If ``run_dir`` has no ``metrics.csv`` (naming the directory).
    """
    files = sorted(run_dir.rglob("metrics.csv"), key=_version_key)
    if not files:
        raise FileNotFoundError(f"no metrics.csv under {run_dir} (is it a run's default_root_dir?)")
    return files


def read_curves(files: Sequence[Path]) -> Curves:
    """Merge CSV-logger files into ``{metric: {step: value}}``; later files win on equal steps."""
    curves: Curves = {}
    for path in files:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row["step"]))
                for name, text in row.items():
                    if text not in ("", None) and not _NOT_CURVES.search(name):
                        curves.setdefault(name, {})[step] = float(text)
    return {name: dict(sorted(points.items())) for name, points in sorted(curves.items())}


def restart_steps(files: Sequence[Path]) -> list[int]:
    """The first global step with a curve point in each restart (every file after the first)."""
    starts = []
    for path in files[1:]:
        if curves := read_curves([path]):
            starts.append(min(min(points) for points in curves.values()))
    return starts


def baseline_targets(name: str, names: Collection[str]) -> list[str] | None:
    """The metrics among ``names`` that the baseline ``name`` refers to; None if it is no baseline.

    A name ending ``_chance`` or ``_majority`` refers to the name without that suffix
    (``val/i2t_r5_chance`` -> ``val/i2t_r5``); one with a path component ``chance`` or ``majority``
    to every other name that differs from it in that component only (``val/majority/image/digit`` ->
    ``val/exact_match/image/digit``).
    """
    if match := _BASELINE_SUFFIX.search(name):
        return [t for t in [name[: match.start()]] if t in names]
    parts = name.split("/")
    i = next((i for i, part in enumerate(parts) if part in _BASELINE_PART), None)
    if i is None:
        return None
    return [
        n for n in names
        if n != name and (p := n.split("/"))[:i] == parts[:i] and p[i + 1 :] == parts[i + 1 :]
        and len(p) == len(parts) and baseline_targets(n, ()) is None
    ]  # fmt: skip


def panel_key(name: str) -> str:
    """Series with equal keys share a panel: the first two path components (split and metric), a
    trailing ``_r<k>`` dropped (R@1/5/10 of one direction), a last component naming a statistic
    kept (``rollout/rewards/*/mean``). So ``val/exact_match/<kind>`` share ``val/exact_match``."""
    parts = name.split("/")
    key = re.sub(r"_r\d+$", "", "/".join(parts[:2]))
    return f"{key}/*/{parts[-1]}" if len(parts) > 2 and parts[-1] in _STATISTICS else key


def group_panels(curves: Curves) -> dict[str, Curves]:
    """``{panel key: {name: points}}`` (:func:`panel_key`), names in natural order (``_r5``, ``_r10``)."""
    panels: dict[str, Curves] = {}
    for name in sorted(curves, key=_version_key):
        panels.setdefault(panel_key(name), {})[name] = curves[name]
    return panels


def smoothing_window(num_points: int) -> int:
    """Points in the trailing mean drawn over a noisy per-step series: 1 (none) below 100 points,
    else about a twentieth of the series, so a few hundred RL steps read as a trend."""
    return 1 if num_points < 100 else num_points // 20


def rolling_mean(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean of ``values`` over ``window`` points (fewer at the start), same length."""
    sums = list(itertools.accumulate(values, initial=0.0))
    return [(sums[i + 1] - sums[max(0, i + 1 - window)]) / min(i + 1, window) for i in range(len(values))]


def plot_panels(
    panels: dict[str, Curves],
    title: str,
    references: dict[str, dict[str, float]] | None = None,
    restarts: Sequence[int] = (),
    ncols: int = 3,
) -> Figure:
    """A figure with one axes per panel: its series against the global step, with a legend. A series
    of 100 points or more is drawn faint, under its trailing mean (:func:`smoothing_window`).

    Args:
        panels: ``{panel title: {series name: {step: value}}}``.
        title: the figure's title.
        references: ``{series name: {baseline name: value}}``, dashed horizontal lines in the
            colour of that series.
        restarts: global steps, drawn as dashed gray vertical lines.
        ncols: axes per row.
    """
    references = references or {}
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (panel, curves) in zip(axes, panels.items(), strict=False):
        for name, points in curves.items():
            steps, values = zip(*points.items(), strict=True)
            window = smoothing_window(len(steps))
            (line,) = ax.plot(
                steps,
                values,
                marker="o" if len(steps) < 30 else None,
                markersize=3,
                label=name if window == 1 else None,
                alpha=1.0 if window == 1 else 0.3,
                linewidth=1.5 if window == 1 else 0.8,
            )
            if window > 1:
                ax.plot(steps, rolling_mean(values, window), color=line.get_color(),
                        label=f"{name} (mean of {window})")  # fmt: skip
            for baseline, value in references.get(name, {}).items():
                ax.axhline(value, color=line.get_color(), linestyle="--", linewidth=1, label=baseline)
        values = [v for points in curves.values() for v in points.values()]
        if min(values) > 0 and max(values) > 1e3 * min(values):  # rates of different units
            ax.set_yscale("log")
        for j, step in enumerate(restarts):
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8, label="restart" if j == 0 else None)
        ax.set(xlabel="step")
        ax.set_title(panel, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig


def plot_reliability(figures: dict, title: str) -> Figure:
    """A reliability diagram: accuracy against mean confidence per bin, the diagonal, the counts."""
    bins = [b for b in figures["bins"] if b["count"]]
    width = figures["bins"][0]["upper"] - figures["bins"][0]["lower"]
    fig = Figure(figsize=(5, 4.2), layout="constrained")
    ax = fig.subplots()
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=width * 0.9, alpha=0.7, label="accuracy")
    ax.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        "o",
        color="C1",
        label="(confidence, accuracy)",
    )
    ax.plot([0.5, 1], [0.5, 1], "--", color="gray", label="perfect calibration")
    for x, b in zip(centres, bins, strict=True):
        ax.annotate(str(b["count"]), (x, b["accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0.5, 1), ylim=(0, 1.05), xlabel="confidence max(p, 1 - p)", ylabel="accuracy")
    ax.set_title(f"{title}: ECE {figures['ece']:.4f} over {figures['num_pairs']} pairs", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _manifest_lines(files: Sequence[Path]) -> list[str]:
    manifests = sorted({f.parent / "manifest.json" for f in files if (f.parent / "manifest.json").exists()})
    if not manifests:
        return []
    m = json.loads(max(manifests, key=_version_key).read_text())
    git, slurm = m.get("git") or {}, m.get("slurm") or {}
    return [
        f"- git commit `{git.get('commit')}`{' (dirty, see git.diff)' if git.get('dirty') else ''}",
        f"- seed {m.get('seed')}, world size {m.get('world_size')}, host `{m.get('host')}`",
        f"- SLURM job {slurm.get('job_id')}" if slurm.get("job_id") else "- not a SLURM job",
        f"- started {m.get('time')}",
        "",
    ]


def classify(curves: Curves) -> tuple[Curves, dict[str, dict[str, float]], dict[str, str]]:
    """Split ``curves`` into the series to draw, their reference lines and a note on the others.

    Returns:
        ``(series, references, notes)``: the curves that are neither constant (two points or more,
        one value) nor baselines (:func:`baseline_targets`); ``{series: {baseline: last value}}``;
        ``{metric: "constant" | "reference line on ..." | "baseline"}`` for the metrics left out.
    """
    notes = {
        n: "constant" for n, points in curves.items() if len(points) > 1 and len(set(points.values())) == 1
    }
    references: dict[str, dict[str, float]] = {}
    for name, points in curves.items():
        targets = baseline_targets(name, [n for n in curves if n not in notes])
        if targets is not None:
            notes[name] = (
                ("reference line on " + ", ".join(f"`{t}`" for t in targets)) if targets else "baseline"
            )
            for target in targets:
                references.setdefault(target, {})[name] = points[max(points)]
    return {k: v for k, v in curves.items() if k not in notes}, references, notes


def figures(
    series: Curves, references: dict[str, dict[str, float]], title: str, restarts: Sequence[int] = ()
) -> dict[str, Figure]:
    """The run's figures by file stem, each drawn by :func:`plot_panels` (empty ones left out).

    ``loss`` overlays every series whose name contains "loss" on one axes; ``rewards`` holds the RL
    stages' reward and KL curves and ``metrics`` every other series, both grouped by :func:`panel_key`.
    """
    losses = {k: v for k, v in series.items() if "loss" in k}
    rewards = {k: v for k, v in series.items() if k not in losses and _REWARD_OR_KL.search(k)}
    others = {k: v for k, v in series.items() if k not in losses and k not in rewards}
    panels = {"loss": {"loss": losses}, "rewards": group_panels(rewards), "metrics": group_panels(others)}
    return {
        stem: plot_panels(group, f"{title}: {stem}", references, restarts)
        for stem, group in panels.items() if any(group.values())
    }  # fmt: skip


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Plot the curves of ``run_dir`` (:func:`figures`) and write ``report.md`` next to the PNGs.

    Writes ``loss.png``, ``rewards.png``, ``metrics.png``, all with the restarts marked, ``reliability.png``
    for a reward model, and ``report.md`` into ``out_dir`` (default ``run_dir/report``).

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: If ``run_dir`` holds no ``metrics.csv``.
    """
    files = find_metrics_files(run_dir)
    curves = read_curves(files)
    out_dir = out_dir or run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Run report: `{run_dir}`", "", *_manifest_lines(files)]
    restarts = restart_steps(files)
    lines += [f"{len(files)} metrics file(s): " + ", ".join(f"`{f.relative_to(run_dir)}`" for f in files)]
    lines += [f"restarts at global steps {restarts} (dashed lines)" if restarts else "no restart", ""]
    series, references, notes = classify(curves)
    lines += ["| metric | points | last step | last | min | max | note |", "|---|---|---|---|---|---|---|"]
    for name, points in curves.items():
        last, values = max(points), points.values()
        cells = [name, len(points), last, *(f"{v:.6g}" for v in (points[last], min(values), max(values)))]
        lines.append("| " + " | ".join(map(str, [*cells, notes.get(name, "")])) + " |")
    for stem, fig in figures(series, references, run_dir.name, restarts).items():
        fig.savefig(out_dir / f"{stem}.png", dpi=110)
        lines += ["", f"![{stem}]({stem}.png)"]
    reliability = sorted(run_dir.rglob("reliability-epoch=*.json"), key=_version_key)
    if reliability:
        diagram = json.loads(reliability[-1].read_text())
        fig = plot_reliability(diagram, f"{run_dir.name} epoch {diagram['epoch']}")
        fig.savefig(out_dir / "reliability.png", dpi=110)
        lines += ["", f"reliability of `{reliability[-1].relative_to(run_dir)}`: ECE {diagram['ece']:.4f}",
                  "", "![reliability](reliability.png)"]  # fmt: skip
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse report RUN_DIR|PIPELINE_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="mmfuse report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", type=Path, help="a run's trainer.default_root_dir, or a pipeline directory"
    )
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        if (args.run_dir / "pipeline.json").exists():
            from mmfuse.training.pipeline_report import write_pipeline_report

            report = write_pipeline_report(args.run_dir, args.out)
        else:
            report = write_report(args.run_dir, args.out)
    except (FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"mmfuse report: {exc}\n")
    print(f"wrote {report} and its plots in {report.parent}")


__all__ = [
    "baseline_targets",
    "classify",
    "figures",
    "find_metrics_files",
    "group_panels",
    "main",
    "panel_key",
    "plot_panels",
    "plot_reliability",
    "read_curves",
    "restart_steps",
    "write_report",
]
