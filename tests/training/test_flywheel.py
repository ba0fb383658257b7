"""``mmfuse flywheel``: k samples per prompt, judged, best vs worst written as preference pairs."""

import json
import tarfile

import pytest
import torch
from pairs import QUESTION, fit_config
from shards import COLORS, png_bytes, write_shard
from tiny_lm import tiny_model

from mmfuse.core.data import ShardedStream, expand_urls
from mmfuse.training.cli import cli_main, main
from mmfuse.training.data.preference import PreferenceDecoder
from mmfuse.training.flywheel import Prompt, exact_judge, pair_sample, reward_judge
from mmfuse.training.stages.reward import RewardModeling
from mmfuse.vision import ImageTransform


def _prompt(reference: str) -> Prompt:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    return Prompt("k", messages, "image/colour", reference, torch.zeros(0), [], {"image_0.png": b""})


def test_exact_judge_and_best_versus_worst():
    prompt = _prompt("red")
    scores = exact_judge([prompt], [["red", " red\n", "blue"]])
    assert scores == [[1.0, 1.0, 0.0]]
    sample = pair_sample(prompt, ["red", " red\n", "blue"], scores[0], "exact")
    assert (
        sample["json"]["chosen"][0]["content"] == "red" and sample["json"]["rejected"][0]["content"] == "blue"
    )
    assert sample["json"]["scores"] == {
        "judge": "exact",
        "chosen": 1.0,
        "rejected": 0.0,
        "samples": [1, 1, 0],
    }
    assert pair_sample(prompt, ["blue", "green"], [0.0, 0.0], "exact") is None  # a tie gives no pair


def test_the_reward_judge_scores_each_answer_as_alone():
    stage = RewardModeling(tiny_model()).eval()
    prompts = [_prompt("red"), _prompt("green")]
    for i, p in enumerate(prompts):
        p.media = [
            (
                "image",
                {
                    "pixel_values": torch.randn(
                        3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(i)
                    )
                },
            )
        ]
    answers = [["red", "a blue one"], ["green", "yellow"]]
    scores = reward_judge(stage, max_length=64)(prompts, answers)
    for p, group, row in zip(prompts, answers, scores, strict=True):
        alone = [reward_judge(stage, max_length=64)([p], [[a, a]])[0][0] for a in group]
        assert row == pytest.approx(alone, abs=1e-9)
    assert len({s for row in scores for s in row}) == 4


@pytest.mark.slow  # builds a model through the CLI and samples: ~30 s on 2 shared cores
def test_flywheel_writes_judged_pairs_that_the_preference_data_reads(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "judges.py").write_text(
        "def longest(prompts, completions, **kwargs):\n"
        "    return [len(c[0]['content']) for c in completions]\n"
    )
    samples = []
    for i, (colour, rgb) in enumerate(COLORS.items()):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
                    {"role": "assistant", "content": colour}]  # fmt: skip
        record = {"messages": messages, "kinds": ["image/colour"]}
        samples.append(
            {"__key__": f"c{i}", "json": json.dumps(record).encode(), "image_0.png": png_bytes(rgb)}
        )
    write_shard(tmp_path / "chat.tar", samples)
    config = fit_config("mmfuse.training.stages.sft.InstructionTuning", tmp_path / "run", "unused", "unused")
    stage = cli_main(["--config", str(config)], run=False).model  # the config's model, as SFT would save it
    torch.save({"state_dict": stage.state_dict()}, tmp_path / "sft.ckpt")
    out = tmp_path / "flywheel" / "train-000000.tar.gz"
    argv = ["mmfuse", "flywheel", "--config", str(config), "--ckpt", str(tmp_path / "sft.ckpt"), "--prompts",
            str(tmp_path / "chat.tar"), "--out", str(out), "--judge", "judges:longest", "--num-samples", "3",
            "--max-new-tokens", "6", "--batch-size", "3", "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    main()

    decoder = PreferenceDecoder(stage.tokenizer, {"image": ImageTransform(image_size=16)}, max_length=64)
    batches = list(ShardedStream(expand_urls(str(out)), decoder, batch_size=8, train=False, shuffle_buffer=0))
    decoded = [e for b in batches for e in b["chat"]]
    assert sum(b["num_skipped"] for b in batches) == 0 and 0 < len(decoded) <= len(COLORS)
    with tarfile.open(out) as tar:
        records = [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]
        assert sum(m.name.endswith(".image_0.png") for m in tar.getmembers()) == len(records) == len(decoded)
    for record in records:
        scores = record["scores"]
        assert scores["judge"] == "judges:longest" and len(scores["samples"]) == 3
        assert scores["chosen"] == max(scores["samples"]) > scores["rejected"] == min(scores["samples"])
        assert record["reference"] in COLORS and record["source"] == "flywheel"
