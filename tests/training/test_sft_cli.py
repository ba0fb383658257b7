"""``mmfuse fit`` on the default SFT config, shrunk to tiny towers and two steps."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from tiny_towers import shrink

from mmfuse.training.cli import cli_main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fit_on_the_embedded_instruction_set_logs_exact_match_and_perplexity(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names data/ paths relative to the repository
    config = yaml.safe_load((REPO / "training/configs/sft/embedded.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(default_root_dir=str(tmp_path), max_steps=2, max_epochs=1, limit_val_batches=1,
                   check_val_every_n_epoch=1, val_check_interval=2, max_time=None,
                   log_every_n_steps=1)  # fmt: skip
    trainer["callbacks"][0]["init_args"] = {"max_new_tokens": 4, "max_questions": 8}
    shrink(config["model"]["init_args"]["model"]["init_args"])
    config["data"]["init_args"].update(batch_size=8, val_batch_size=8, num_workers=0, shuffle_buffer=16)
    path = tmp_path / "tiny_sft.yaml"
    path.write_text(yaml.safe_dump(config))

    cli_main(["fit", "--config", str(path)])

    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    rows = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    logged = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    assert math.isfinite(logged["train/loss"]) and logged["train/loss"] > 0
    assert 1 < logged["val/perplexity"] < 2 * 4096  # a near-uniform guess over the vocabulary after two steps
    assert any(k.startswith("val/exact_match/") for k in logged)
    assert all(0 <= v <= 1 for k, v in logged.items() if k.startswith(("val/exact_match/", "val/majority/")))
    answers_file = tmp_path / "lightning_logs" / "version_0" / "answers-epoch=0.jsonl"
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    assert len(answers) == 8  # max_questions
    for kind in {a["kind"] for a in answers}:  # the file and the logged figures agree
        mine = [a["correct"] for a in answers if a["kind"] == kind]
        assert logged[f"val/exact_match/{kind}"] == pytest.approx(sum(mine) / len(mine))
