"""Reward model: score at the last real token, one media encoding per pair, ECE by hand, a fit."""

import csv
import json
import math

import pytest
import torch
from pairs import cast_media, colour_pairs, colour_record, fit_config
from shards import png_bytes
from tiny_lm import tiny_model

from mmfuse.training.cli import cli_main
from mmfuse.training.data.preference import PreferenceDecoder, collate_pairs
from mmfuse.training.report import write_report
from mmfuse.training.stages.reward import RewardModeling, reliability
from mmfuse.vision import ImageTransform


def _examples(stage, n: int = 3):
    decoder = PreferenceDecoder(stage.tokenizer, {"image": ImageTransform(image_size=8)}, max_length=64)
    colours = ["red", "green", "blue", "yellow"]
    examples = [
        decoder({"__key__": f"k{i}", "json": json.dumps(colour_record(colours[i], "a " * i + colours[i - 1])),
                 "image_0.png": png_bytes((40 * i, 90, 200 - 40 * i))}, train=False)["chat"]
        for i in range(n)
    ]  # fmt: skip
    return cast_media(examples, stage.score.weight.dtype)


def test_the_score_is_read_at_the_last_real_token_under_left_and_right_padding():
    stage = RewardModeling(tiny_model())
    examples = _examples(stage)
    eos = stage.tokenizer.eos_token_id  # pad == EOS, which also ends the user turn inside each prompt
    with torch.no_grad():
        right = stage.rewards(collate_pairs(examples, pad_token_id=eos))
        left = stage.rewards(collate_pairs(examples, pad_token_id=eos, padding_side="left"))
        alone = torch.cat([stage.rewards(collate_pairs([e], pad_token_id=eos)) for e in examples])
    alone = alone.view(-1, 2).T.flatten()  # per-example (chosen, rejected) -> chosen rows, rejected rows
    torch.testing.assert_close(right, alone)
    torch.testing.assert_close(left, alone)
    assert right.std() > 0  # the rows score differently, so a wrong position would show


def test_chosen_and_rejected_share_one_encoding_of_the_prompt_media(monkeypatch):
    stage = RewardModeling(tiny_model())
    tower = stage.model.towers["image"]
    calls = []
    forward = tower.forward_features
    monkeypatch.setattr(
        tower, "forward_features", lambda **kw: calls.append(kw["pixel_values"].shape[0]) or forward(**kw)
    )
    stage.micro_batch_loss(collate_pairs(_examples(stage), stage.tokenizer.pad_token_id))
    assert calls == [3]  # one tower call for 3 pairs (6 rows)


def test_ece_against_a_hand_computed_case():
    # confidence, correct: .95 y, .92 y (bin [.9, 1]); .72 y, .75 n (bin [.7, .8)); .55 y, .55 n ([.5, .6))
    figures = reliability(torch.tensor([0.95, 0.92, 0.72, 0.25, 0.55, 0.45]), num_bins=5)
    expected = (abs(1 - 0.935) + abs(0.5 - 0.735) + abs(0.5 - 0.55)) * 2 / 6
    assert figures["ece"] == pytest.approx(expected) == pytest.approx(0.35 / 3)
    assert [b["count"] for b in figures["bins"]] == [2, 0, 2, 0, 2]
    assert figures["bins"][2]["confidence"] == pytest.approx(0.735) and figures["bins"][2]["accuracy"] == 0.5
    assert reliability(torch.tensor([1.0, 0.0]))["ece"] == pytest.approx(0.5)  # sure, and wrong half the time


def test_a_few_steps_learn_a_fixed_batch():
    stage = RewardModeling(tiny_model(dtype=torch.float32))
    batch = collate_pairs(_examples(stage, 4), stage.tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(stage.parameters(), lr=3e-3)
    with torch.no_grad():
        before, _ = stage.margins(batch)
    for _ in range(30):
        optimizer.zero_grad()
        loss, _ = stage.micro_batch_loss(batch)
        (loss / 4).backward()
        optimizer.step()
    with torch.no_grad():
        after, margins = stage.margins(batch)
    assert before.mean() == pytest.approx(math.log(2), abs=0.05)  # untrained: rewards near 0
    assert after.mean() < 0.1 and (margins > 0).all()


@pytest.mark.slow  # a tiny fit through the CLI: ~30 s on 2 shared cores
def test_fit_logs_accuracy_margin_and_ece_and_report_draws_the_reliability_diagram(tmp_path):
    train = colour_pairs(tmp_path / "train.tar.gz", 16)
    val = colour_pairs(tmp_path / "val.tar.gz", 8, offset=16)
    root = tmp_path / "run"
    config = fit_config("mmfuse.training.stages.reward.RewardModeling", root, str(train), str(val))
    cli_main(["fit", "--config", str(config)])
    log_dir = root / "lightning_logs" / "version_0"
    rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
    logged = {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}
    figures = json.loads((log_dir / "reliability-epoch=0.json").read_text())
    assert figures["num_pairs"] == 8 and sum(b["count"] for b in figures["bins"]) == 8
    assert logged["val/ece"] == pytest.approx(figures["ece"])
    assert 0 <= logged["val/accuracy"] <= 1 and logged["val/accuracy/image/colour"] == logged["val/accuracy"]
    assert math.isfinite(logged["train/loss"]) and "train/margin" in logged
    report = write_report(root)
    assert (report.parent / "reliability.png").stat().st_size > 10_000
    assert "ECE" in report.read_text()
