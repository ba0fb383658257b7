"""``mmfuse report``: curves merged over restarts, panels with reference lines, the pipeline report."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger
from matplotlib.image import imread

from mmfuse.training.evaluation.stats import bootstrap_interval
from mmfuse.training.pipeline_report import write_pipeline_report
from mmfuse.training.report import (
    baseline_targets,
    classify,
    figures,
    find_metrics_files,
    group_panels,
    main,
    plot_panels,
    read_curves,
    restart_steps,
    rolling_mean,
    smoothing_window,
    write_report,
)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n")


@pytest.fixture
def resumed_run(tmp_path: Path) -> Path:
    """A run killed after step 7 (last checkpoint at step 5) and resumed: steps 6-7 are logged twice."""
    logs = tmp_path / "lightning_logs"
    header = ["epoch", "step", "train/loss", "train/time", "val/top1", "validate/time"]
    _write_csv(logs / "version_0/metrics.csv", header, [[0, s, 10 - s, s * 0.1, "", ""] for s in range(8)])
    # ThroughputMonitor logs validation throughput against the validation batch index (here 1).
    _write_csv(
        logs / "version_1/metrics.csv",
        header,
        [[0, s, 9.5 - s, s * 0.1, "", ""] for s in range(6, 12)]
        + [[0, 11, "", "", 0.75, ""], [0, 1, "", "", "", 3]],
    )
    manifest = {"git": {"commit": "abc123", "dirty": True}, "seed": 7, "world_size": 4, "host": "n1"}
    (logs / "version_1/manifest.json").write_text(json.dumps({**manifest, "slurm": {"job_id": "42"}}))
    return tmp_path


def test_curves_merge_restarts_and_later_values_win(resumed_run: Path) -> None:
    files = find_metrics_files(resumed_run)
    assert [f.parent.name for f in files] == ["version_0", "version_1"]
    curves = read_curves(files)
    assert list(curves) == ["train/loss", "val/top1"]  # epoch/step/time are not curves
    assert curves["train/loss"] == {s: 10.0 - s for s in range(6)} | {s: 9.5 - s for s in range(6, 12)}
    assert curves["val/top1"] == {11: 0.75}
    assert restart_steps(files) == [6]


def test_version_order_is_numeric(tmp_path: Path) -> None:
    for v in (10, 9, 2):
        _write_csv(tmp_path / f"lightning_logs/version_{v}/metrics.csv", ["step", "train/loss"], [[0, v]])
    assert [f.parent.name for f in find_metrics_files(tmp_path)] == ["version_2", "version_9", "version_10"]
    assert read_curves(find_metrics_files(tmp_path)) == {"train/loss": {0: 10.0}}


def test_report_writes_pngs_and_summary(resumed_run: Path) -> None:
    report = write_report(resumed_run)
    assert report == resumed_run / "report" / "report.md"
    text = report.read_text()
    assert "- git commit `abc123` (dirty, see git.diff)" in text
    assert "- seed 7, world size 4, host `n1`" in text and "- SLURM job 42" in text
    assert "restarts at global steps [6] (dashed lines)" in text
    assert "| train/loss | 12 | 11 | -1.5 | -1.5 | 10 |  |" in text
    assert "| val/top1 | 1 | 11 | 0.75 | 0.75 | 0.75 |  |" in text  # one point: drawn, not "constant"
    for stem in ("loss", "metrics"):
        assert f"![{stem}]({stem}.png)" in text
        height, width, channels = imread(report.parent / f"{stem}.png").shape
        assert height > 200 and width > 300 and channels == 4


class LoggingModel(BoringModel):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train_loss", out["loss"])
        return out


def test_report_of_a_real_csv_logger_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=12, limit_val_batches=2, val_check_interval=6,
        logger=CSVLogger(tmp_path), log_every_n_steps=2, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(LoggingModel())
    main([str(tmp_path)])
    assert f"wrote {tmp_path / 'report' / 'report.md'}" in capsys.readouterr().out
    curves = read_curves(find_metrics_files(tmp_path))
    assert sorted(curves["train_loss"]) == [1, 3, 5, 7, 9, 11]  # log_every_n_steps=2, 0-based steps
    assert (tmp_path / "report" / "loss.png").stat().st_size > 10_000


def test_missing_run_dir_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "nope")])
    assert info.value.code == 2
    assert f"no metrics.csv under {tmp_path / 'nope'}" in capsys.readouterr().err


def test_rl_reward_and_kl_curves_get_their_own_plot(tmp_path: Path) -> None:
    header = ["step", "train/loss", "rollout/reward", "rollout/rewards/exact_match/mean", "train/kl",
              "rollout/kl_coef", "train/clip_ratio/region", "rollout/completion_length",
              "rollout/rewards/format/mean", "rollout/rewards/format/std"]  # fmt: skip
    _write_csv(
        tmp_path / "lightning_logs/version_0/metrics.csv",
        header,
        [[s, 1 / (s + 1), s / 10, s / 20, s / 100, 0.05, 0.01, 6, s / 30, s / 40] for s in range(5)],
    )
    text = write_report(tmp_path).read_text()
    assert "![rewards](rewards.png)" in text
    assert "| rollout/kl_coef | 5 | 4 | 0.05 | 0.05 | 0.05 | constant |" in text
    series, references, _ = classify(read_curves(find_metrics_files(tmp_path)))
    rewards = figures(series, references, "grpo")["rewards"]
    panels = {
        ax.get_title(): [line.get_label() for line in ax.get_lines()]
        for ax in rewards.axes
        if ax.get_visible()
    }
    assert panels == {  # kl_coef is constant; the rewards' means share a panel, their std has its own
        "rollout/reward": ["rollout/reward"],
        "rollout/rewards/*/mean": ["rollout/rewards/exact_match/mean", "rollout/rewards/format/mean"],
        "rollout/rewards/*/std": ["rollout/rewards/format/std"],
        "train/kl": ["train/kl"],
    }
    height, width, _ = imread(tmp_path / "report" / "rewards.png").shape
    assert width > 2 * height  # four panels, three columns: two rows


def test_panel_key_groups_recall_at_k_kinds_and_statistics() -> None:
    names = [
        "val/i2t_r1",
        "val/i2t_r10",
        "val/i2t_r5",
        "val/t2i_r1",
        "val/exact_match",
        "val/exact_match/chat",
        "val/exact_match/image/digit",
        "train/clip_ratio/low",
        "train/clip_ratio/high",
        "val/loss",
    ]
    panels = group_panels({name: {0: 0.0} for name in names})  # names sorted as strings, as read_curves does
    assert {key: list(curves) for key, curves in panels.items()} == {
        "val/i2t": ["val/i2t_r1", "val/i2t_r5", "val/i2t_r10"],
        "val/t2i": ["val/t2i_r1"],
        "val/exact_match": ["val/exact_match", "val/exact_match/chat", "val/exact_match/image/digit"],
        "train/clip_ratio": ["train/clip_ratio/high", "train/clip_ratio/low"],
        "val/loss": ["val/loss"],
    }


def test_baseline_targets() -> None:
    names = ["val/i2t_r5", "val/exact_match/image/digit", "val/exact_match/image", "val/majority/image/digit"]
    assert baseline_targets("val/i2t_r5_chance", names) == ["val/i2t_r5"]
    assert baseline_targets("val/i2t_r1_chance", names) == []  # its metric is not logged
    assert baseline_targets("val/majority/image/digit", names) == ["val/exact_match/image/digit"]
    assert baseline_targets("val/chance/image", names) == ["val/exact_match/image"]
    assert baseline_targets("val/i2t_r5", names) is None


@pytest.fixture
def retrieval_run(tmp_path: Path) -> Path:
    """Three validations of a contrastive run with chance levels, and a kind's exact match and majority."""
    header = [
        "step",
        "train/loss",
        "data/skipped",
        "val/i2t_r1",
        "val/i2t_r5",
        "val/i2t_r1_chance",
        "val/i2t_r5_chance",
        "val/t2i_r1",
        "val/exact_match/image/digit",
        "val/majority/image/digit",
    ]
    rows = [[s, 4 - s, 0, 0.1 * s, 0.2 * s, 0.05, 0.25, 0.1 * s, 0.3 * s, 0.4] for s in (1, 2, 3)]
    _write_csv(tmp_path / "lightning_logs/version_0/metrics.csv", header, rows)
    return tmp_path


def test_chance_is_a_reference_line_not_a_panel_and_constants_are_left_out(retrieval_run: Path) -> None:
    series, references, notes = classify(read_curves(find_metrics_files(retrieval_run)))
    assert notes == {
        "data/skipped": "constant",
        "val/i2t_r1_chance": "reference line on `val/i2t_r1`",
        "val/i2t_r5_chance": "reference line on `val/i2t_r5`",
        "val/majority/image/digit": "reference line on `val/exact_match/image/digit`",
    }
    fig = figures(series, references, "align")["metrics"]
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(axes) == ["val/exact_match", "val/i2t", "val/t2i"]
    lines = {line.get_label(): line for line in axes["val/i2t"].get_lines()}
    assert list(lines) == ["val/i2t_r1", "val/i2t_r1_chance", "val/i2t_r5", "val/i2t_r5_chance"]
    for k, chance in (("1", 0.05), ("5", 0.25)):
        ref = lines[f"val/i2t_r{k}_chance"]
        assert ref.get_linestyle() == "--" and list(ref.get_ydata()) == [chance, chance]  # axhline
        assert ref.get_color() == lines[f"val/i2t_r{k}"].get_color()
    majority = [line for line in axes["val/exact_match"].get_lines() if line.get_linestyle() == "--"]
    assert [(m.get_label(), list(m.get_ydata())) for m in majority] == [
        ("val/majority/image/digit", [0.4, 0.4])
    ]
    text = write_report(retrieval_run).read_text()
    assert "| data/skipped | 3 | 3 | 0 | 0 | 0 | constant |" in text
    assert "| val/i2t_r5_chance | 3 | 3 | 0.25 | 0.25 | 0.25 | reference line on `val/i2t_r5` |" in text


def _eval_json(path: Path, outcomes: dict[str, list[bool]], logged: dict[str, float]) -> dict:
    """``eval.json`` as :class:`EvalReport` writes it: an interval and items per metric, logged values."""
    report = {
        m: {
            **vars(bootstrap_interval([float(x) for x in xs])),
            "items": {str(i): x for i, x in enumerate(xs)},
        }
        for m, xs in outcomes.items()
    } | {m: {"value": v} for m, v in logged.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return report


@pytest.fixture
def pipeline_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict, dict]:
    """A pipeline: sft (fit) -> sft_eval -> dpo (fit, restarted) -> dpo_eval -> merge -> grpo (pending)."""
    monkeypatch.chdir(tmp_path / "..")  # a cwd without the relative run dirs (not a checkout's runs/)
    root = tmp_path / "runs" / "assistant"
    header = ["step", "train/loss", "val/loss", "val/exact_match/image/digit", "val/majority/image/digit"]
    _write_csv(root / "sft/lightning_logs/version_0/metrics.csv", header,
               [[s, 3 - s / 10, "", "", ""] for s in range(10)] + [[9, "", 1.5, 0.625, 0.25]])  # fmt: skip
    _write_csv(
        root / "dpo/lightning_logs/version_0/metrics.csv",
        ["step", "train/loss", "train/reward_margin"],
        [[s, 0.7 - s / 100, s / 10] for s in range(6)],
    )
    _write_csv(root / "dpo/lightning_logs/version_1/metrics.csv", ["step", "train/loss", "val/loss"],
               [[s, 0.6 - s / 100, ""] for s in range(4, 8)] + [[7, "", 1.25]])  # fmt: skip
    kinds = {"val/exact_match/image/digit": [True] * 7 + [False], "val/exact_match/chat": [True, False] * 3}
    both = {"val/exact_match": kinds["val/exact_match/image/digit"] + kinds["val/exact_match/chat"]}
    evals = {
        "sft": _eval_json(root / "sft_eval/lightning_logs/version_0/eval.json", kinds | both,
                          {"val/perplexity": 4.5, "val/majority/image/digit": 0.25}),
        "dpo": _eval_json(root / "dpo_eval/lightning_logs/version_0/eval.json",
                          {k: xs[::-1][:5] for k, xs in kinds.items()}, {"val/perplexity": 5.0}),
    }  # fmt: skip
    stage = {"status": "done", "starts": 1, "fingerprint": "ab12", "checkpoint": None}
    stages = [
        stage | {"name": "sft", "run": "fit", "wall_s": 1140.2},
        stage | {"name": "sft_eval", "run": "eval", "wall_s": 60.0, "evaluates": "sft"},
        stage | {"name": "dpo", "run": "fit", "wall_s": 600.5, "starts": 2},
        stage | {"name": "dpo_eval", "run": "eval", "wall_s": 59.9, "evaluates": "dpo"},
        stage | {"name": "merge_dpo", "run": "merge", "wall_s": 3.1},
        stage | {"name": "grpo", "run": "fit", "wall_s": 0.0, "status": "pending", "starts": 0},
    ]
    for s in stages:
        s["run_dir"] = f"runs/assistant/{s['name']}"  # relative to a cwd that is not the test's
    state = {"recipe": "training/recipes/assistant.yaml", "directory": "runs/assistant", "stages": stages}
    (root / "pipeline.json").write_text(json.dumps(state))
    return root, state, evals


def test_pipeline_report_tables(
    pipeline_dir: tuple[Path, dict, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    root, state, evals = pipeline_dir
    main([str(root)])
    report = root / "report" / "report.md"
    assert f"wrote {report}" in capsys.readouterr().out
    text = report.read_text()
    total = sum(s["wall_s"] for s in state["stages"]) / 60
    assert f"| total |  |  |  | {total:.1f} |" in text and f"{total:.1f}" == "31.1"
    assert "| dpo | fit | done | 2 | 10.0 |" in text and "| grpo | fit | pending | 0 | 0.0 |" in text

    def ci(r: dict) -> str:
        return f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"

    sft, dpo = evals["sft"], evals["dpo"]
    assert "| kind | sft | sft (sft_eval) | dpo (dpo_eval) | majority |" in text
    assert f"| all |  | {ci(sft['val/exact_match'])} |  |  |" in text
    assert f"| chat |  | {ci(sft['val/exact_match/chat'])} | {ci(dpo['val/exact_match/chat'])} |  |" in text
    digit = [ci(sft["val/exact_match/image/digit"]), ci(dpo["val/exact_match/image/digit"])]
    assert f"| image/digit | 0.625 | {digit[0]} | {digit[1]} | 0.250 |" in text
    assert (
        sft["val/exact_match/image/digit"]["value"] == 0.875
        and dpo["val/exact_match/image/digit"]["value"] == 0.8
    )
    # the other held-out metrics: fit stages' last val values (dpo's from its restart), eval.json's values
    assert "| metric | sft | sft (sft_eval) | dpo | dpo (dpo_eval) |" in text
    assert "| val/loss | 1.500 |  | 1.250 |  |" in text and "| val/perplexity |  | 4.500 |  | 5.000 |" in text
    assert "majority/image/digit |" not in text.split("## Held-out metrics")[1]


def test_pipeline_report_curves(pipeline_dir: tuple[Path, dict, dict]) -> None:
    root, _, _ = pipeline_dir
    text = write_pipeline_report(root).read_text()
    for stage in ("sft", "dpo"):
        assert f"- `{stage}`: [run report]({stage}/report.md), [loss]({stage}/loss.png)" in text
        assert (root / "report" / stage / "loss.png").stat().st_size > 10_000
    assert "restarts at global steps [4]" in (root / "report" / "dpo" / "report.md").read_text()
    assert "![training loss per fit stage](loss.png)" in text
    height, width, _ = imread(root / "report" / "loss.png").shape
    assert width > 2 * height  # two panels side by side: the pending grpo has no curves


def test_pipeline_stage_without_a_field_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage = {"name": "sft", "run": "fit", "status": "done"}
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": [stage]}))
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path)])
    assert info.value.code == 2
    assert f"{tmp_path / 'pipeline.json'}: stage 0 has no run_dir" in capsys.readouterr().err


def test_a_long_noisy_series_is_drawn_under_its_trailing_mean() -> None:
    assert [smoothing_window(n) for n in (5, 99, 100, 595)] == [1, 1, 5, 29]
    assert rolling_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    steps = range(200)
    fig = plot_panels({"rollout/reward": {"rollout/reward": {s: float(s % 2) for s in steps}}}, "grpo")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    raw, mean = ax.get_lines()
    assert raw.get_alpha() == 0.3 and mean.get_label() == "rollout/reward (mean of 10)"
    assert mean.get_ydata()[-1] == pytest.approx(0.5)
