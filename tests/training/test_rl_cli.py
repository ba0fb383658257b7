"""``mmfuse fit`` on the GRPO and PPO configs shrunk to tiny towers and two steps; ``mmfuse report``."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml
from tiny_towers import tiny_model

from mmfuse.training.cli import cli_main
from mmfuse.training.report import _REWARD_OR_KL, write_report

REPO = Path(__file__).resolve().parents[2]
ROLLOUT = ["rollout/reward", "rollout/rewards/exact_match/mean", "rollout/completion_length",
           "time/generation", "time/scoring", "time/update", "train/loss", "train/entropy",
           "train/clip_ratio/region"]  # fmt: skip
EXTRA = {
    "grpo": ["train/kl", "rollout/all_equal_groups"],
    "ppo": ["rollout/kl", "rollout/kl_coef", "train/value_loss"],
}


def _tiny_config(stage: str, root: Path) -> Path:
    config = yaml.safe_load((REPO / f"training/configs/{stage}/embedded.yaml").read_text())
    config["trainer"].update(default_root_dir=str(root), val_check_interval=2, limit_val_batches=1,
                             max_time=None)  # fmt: skip
    config["trainer"]["callbacks"][0]["init_args"] = {"max_new_tokens": 4, "max_questions": 6}
    stage_args = config["model"]["init_args"]
    stage_args.update(init_from=None, max_new_tokens=4, micro_batch_size=2, warmup_steps=1)
    # two training batches: max_steps counts optimiser steps, several per rollout batch
    config["trainer"]["max_steps"] = (
        2 * stage_args.get("num_iterations", 1) * stage_args.get("steps_per_rollout", 1)
    )
    if stage == "grpo":
        stage_args["group_size"] = 2
    tiny_model(stage_args)
    config["data"]["init_args"].update(batch_size=4, val_batch_size=6, num_workers=0, shuffle_buffer=16)
    path = root / f"tiny_{stage}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_fit_logs_rollout_figures_answers_and_the_reward_plot(stage, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs name data/ paths relative to the repository
    cli_main(["fit", "--config", str(_tiny_config(stage, tmp_path))])

    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if v not in ("", None):
                logged.setdefault(k, []).append(float(v))
    for name in ROLLOUT + EXTRA[stage]:
        assert name in logged and all(math.isfinite(v) for v in logged[name]), name
    assert len(logged["train/loss"]) == 2  # one figure per training batch
    assert all(0 <= v <= 1 for v in logged["rollout/reward"])
    assert all(1 <= v <= 4 for v in logged["rollout/completion_length"])  # max_new_tokens 4
    answers = (tmp_path / "lightning_logs" / "version_0" / "answers-epoch=0.jsonl").read_text().splitlines()
    assert (
        len(answers) == 6
        and {"kind", "question", "reference", "answer", "correct"} <= json.loads(answers[0]).keys()
    )
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    text = write_report(tmp_path).read_text()
    curves = [n for n in ROLLOUT + EXTRA[stage] if _REWARD_OR_KL.search(n) and "loss" not in n]
    drawn = [n for n in curves if len(set(logged[n])) > 1]  # a tiny untrained policy may earn 0 throughout
    assert ("![rewards](rewards.png)" in text) == bool(drawn)
    for name in set(curves) - set(drawn):
        assert re.search(rf"^\| {name} \|.* \| constant \|$", text, re.M), name
    if drawn:
        assert (tmp_path / "report" / "rewards.png").stat().st_size > 10_000
