"""``mmfuse report RUN_DIR``: loss and metric curves (PNG) and a Markdown summary of a run.

A run directory is a trainer's ``default_root_dir``. Lightning's CSV logger writes one
``metrics.csv`` per (re)start of the run (``lightning_logs/version_N/``); a resumed run logs
again the steps between its checkpoint and the interruption. The report merges the files in
version order and keeps, for each metric and step, the value logged last. The run manifest
(``manifest.json``, see :mod:`mmfuse.training.callbacks.manifest`) of the latest start, when
present, heads the summary. A reward-model run's latest ``reliability-epoch=E.json`` (written by
:class:`~mmfuse.training.stages.reward.RewardModeling`'s validation) is drawn as ``reliability.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

# Columns that are not curves against the global step: the axes themselves, ThroughputMonitor's
# cumulative counters, and its validate/test/predict rates (logged against the batch index of that
# loop, not the global step).
_NOT_CURVES = re.compile(r"^(epoch|step)$|/(time|batches|samples|lengths)$|^(validate|test|predict)/")

# The RL stages' reward and KL curves (rollout/reward, rollout/rewards/<name>/mean, train/kl, ...).
_REWARD_OR_KL = re.compile(r"reward|(^|/)kl(_|/|$)")

Curves = dict[str, dict[int, float]]  # metric name -> {global step: value}


def _version_key(path: Path) -> tuple:
    """Sort ``.../version_10/metrics.csv`` after ``.../version_9/metrics.csv``."""
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


def plot_curves(
    curves: Curves,
    path: Path,
    title: str,
    ncols: int = 3,
    overlay: bool = False,
    restarts: Sequence[int] = (),
) -> None:
    """Write a PNG of ``curves`` against the global step: one axes for all (``overlay``) or a grid.

    ``restarts`` (global steps) are drawn as dashed vertical lines.
    """
    names = list(curves)
    n_axes = 1 if overlay else len(names)
    ncols = min(ncols, n_axes)
    nrows = math.ceil(n_axes / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, name in enumerate(names):
        ax = axes[0 if overlay else i]
        steps, values = zip(*curves[name].items(), strict=True)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_title("" if overlay else name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[:n_axes]:
        for j, step in enumerate(restarts):
            ax.axvline(step, color="gray", linestyle="--", linewidth=0.8, label="restart" if j == 0 else None)
    if overlay:
        axes[0].legend(fontsize=8)
    for ax in axes[n_axes:]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_reliability(figures: dict, path: Path, title: str) -> None:
    """Write a reliability diagram: accuracy against mean confidence per bin, the diagonal, the counts."""
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
    fig.savefig(path, dpi=110)


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


def write_report(run_dir: Path, out_dir: Path | None = None) -> Path:
    """Plot the curves of ``run_dir`` and write ``report.md`` next to the PNGs.

    Writes ``loss.png`` (every metric whose name contains "loss", on one axes), ``rewards.png`` (the
    RL stages' reward and KL curves, one panel each), ``metrics.png`` (every other metric, one panel
    each), all with the restarts marked, and ``report.md`` into ``out_dir`` (default
    ``run_dir/report``).

    Returns:
        The path of ``report.md``.

    Raises:
        FileNotFoundError: If ``run_dir`` holds no ``metrics.csv``.
    """
    files = find_metrics_files(run_dir)
    curves = read_curves(files)
    out_dir = out_dir or run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = {k: v for k, v in curves.items() if "loss" in k}
    rewards = {k: v for k, v in curves.items() if k not in losses and _REWARD_OR_KL.search(k)}
    others = {k: v for k, v in curves.items() if k not in losses and k not in rewards}
    lines = [f"# Run report: `{run_dir}`", "", *_manifest_lines(files)]
    restarts = restart_steps(files)
    lines += [f"{len(files)} metrics file(s): " + ", ".join(f"`{f.relative_to(run_dir)}`" for f in files)]
    lines += [f"restarts at global steps {restarts} (dashed lines)" if restarts else "no restart", ""]
    lines += ["| metric | points | last step | last | min | max |", "|---|---|---|---|---|---|"]
    for name, points in curves.items():
        last, values = max(points), points.values()
        cells = [name, len(points), last, *(f"{v:.6g}" for v in (points[last], min(values), max(values)))]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    for stem, group, overlay in (
        ("loss", losses, True),
        ("rewards", rewards, False),
        ("metrics", others, False),
    ):
        if group:
            plot_curves(
                group, out_dir / f"{stem}.png", f"{run_dir.name}: {stem}", overlay=overlay, restarts=restarts
            )
            lines += ["", f"![{stem}]({stem}.png)"]
    reliability = sorted(run_dir.rglob("reliability-epoch=*.json"), key=_version_key)
    if reliability:
        figures = json.loads(reliability[-1].read_text())
        plot_reliability(figures, out_dir / "reliability.png", f"{run_dir.name} epoch {figures['epoch']}")
        lines += ["", f"reliability of `{reliability[-1].relative_to(run_dir)}`: ECE {figures['ece']:.4f}",
                  "", "![reliability](reliability.png)"]  # fmt: skip
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse report RUN_DIR [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="mmfuse report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run's trainer.default_root_dir")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.run_dir, args.out)
    except FileNotFoundError as exc:
        parser.exit(2, f"mmfuse report: {exc}\n")
    print(f"wrote {report} and its plots in {report.parent}")


__all__ = [
    "find_metrics_files",
    "main",
    "plot_curves",
    "plot_reliability",
    "read_curves",
    "restart_steps",
    "write_report",
]
