"""Prompt data: one prompt per conversation (its last assistant turn), a rollout buffer of batch_size."""

import json
from pathlib import Path

import pytest
import torch
from shards import COLORS, png_bytes

from mmfuse.core.text import load_tokenizer
from mmfuse.training.data.prompts import PromptDataModule, prompt_count
from mmfuse.vision import ImageTransform

TOKENIZER = str(Path(__file__).resolve().parents[2] / "data" / "tokenizer")


def test_training_batches_are_the_last_turns_with_their_media_and_references(tmp_path):
    lines = []
    for color, rgb in COLORS.items():
        (tmp_path / f"{color}.png").write_bytes(png_bytes(rgb))
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "path": f"{color}.png"}, {"type": "text", "text": "Colour?"}],
            },
            {"role": "assistant", "content": color},
            {"role": "user", "content": "Say it twice."},
            {"role": "assistant", "content": f" {color} {color} "},
        ]
        lines.append(json.dumps({"messages": messages, "kinds": ["image/colour", "text/repeat"]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = load_tokenizer(TOKENIZER, modalities=["image"])
    transforms = {"image": ImageTransform(image_size=16)}
    data = PromptDataModule(str(tmp_path / "train.jsonl"), transforms=transforms, batch_size=2,
                            tokenizer=tokenizer, num_workers=0, shuffle_buffer=0)  # fmt: skip
    batches = [data.on_before_batch_transfer(b, 0) for b in data.train_dataloader()]
    assert len(batches) == len(COLORS) // 2 and all(prompt_count(b) == 2 for b in batches)
    seen = {}
    for prompt in (p for b in batches for p in b["prompts"]):
        color = prompt.reference.split()[0]
        seen[color] = prompt
        assert prompt.reference == f"{color} {color}" and prompt.kind == "text/repeat"
        assert prompt.question == "Say it twice."
        text = tokenizer.decode(prompt.input_ids)
        assert text.count(color) == 1 and text.rstrip().endswith(
            "assistant"
        )  # the first answer, then the turn
        assert [m for m, _ in prompt.media] == ["image"]
    assert sorted(seen) == sorted(COLORS)
    red = seen["red"].media[0][1]["pixel_values"]  # the image of the conversation, not another's
    assert red.shape == (3, 16, 16) and red[0].mean() > red[2].mean() + 0.5
    assert isinstance(batches[0]["num_skipped"], int) and torch.is_tensor(seen["red"].input_ids)


def test_kinds_keep_only_those_training_questions_and_count_no_skip(tmp_path):
    lines = []
    for i, (color, rgb) in enumerate(COLORS.items()):
        (tmp_path / f"{color}.png").write_bytes(png_bytes(rgb))
        image = [{"type": "image", "path": f"{color}.png"}, {"type": "text", "text": "Colour?"}]
        question, kind = (image, "image/colour") if i % 2 else ("Name a colour.", "text/colour")
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": color}]
        lines.append(json.dumps({"messages": messages, "kinds": [kind]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = load_tokenizer(TOKENIZER, modalities=["image"])

    def prompts(kinds):
        transforms = {"image": ImageTransform(image_size=16)}
        data = PromptDataModule(
            str(tmp_path / "train.jsonl"), transforms=transforms, batch_size=1, kinds=kinds,
            tokenizer=tokenizer, num_workers=0, shuffle_buffer=0, num_samples=2,
        )  # fmt: skip
        batches = [data.on_before_batch_transfer(b, 0) for b in data.train_dataloader()]
        assert sum(b["num_skipped"] for b in batches) == 0
        return [p for b in batches for p in b["prompts"]]

    assert {p.kind for p in prompts(["image"])} == {"image/colour"}  # a modality prefix
    assert {p.kind for p in prompts(["text/colour"])} == {"text/colour"}  # a whole kind
    with pytest.raises(ValueError, match="decoded no sample"):
        prompts(["audio"])
