"""GenerationEval's figures, and its cross-rank merge (the counts of two ranks = one process)."""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from mmfuse.core.text import load_tokenizer
from mmfuse.training.callbacks.generation import GenerationEval
from mmfuse.training.data.chat import ChatExample, answer_prompts

TOKENIZER = str(Path(__file__).resolve().parents[3] / "data" / "tokenizer")


def _observe(callback: GenerationEval, answers: list[tuple[str, str, str]], nll: float, tokens: int) -> None:
    for kind, answer, reference in answers:
        callback.record(kind, "Q?", reference, f" {answer}\n")  # surrounding whitespace does not count
    callback.nll += nll
    callback.tokens += tokens


ANSWERS = [
    ("image/digit", "3", "3"), ("image/digit", "5", "3"), ("image/caption", "a cat", "a cat"),
    ("image/digit", "7", "7"), ("audio/transcript", "one", "two"), ("audio/transcript", "two", "two"),
]  # fmt: skip


def test_metrics_by_hand():
    callback = GenerationEval()
    _observe(callback, ANSWERS, nll=12.0, tokens=6)
    metrics = callback.metrics()
    assert metrics["val/perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics["val/exact_match/image/digit"] == pytest.approx(2 / 3)
    assert metrics["val/majority/image/digit"] == pytest.approx(2 / 3)  # "3" twice of three
    assert metrics["val/exact_match/image"] == pytest.approx(3 / 4)
    assert metrics["val/exact_match/audio"] == pytest.approx(1 / 2)
    assert metrics["val/majority/audio/transcript"] == 1.0  # both references are "two"


def test_merged_ranks_equal_one_process():
    whole, rank0, rank1 = GenerationEval(), GenerationEval(), GenerationEval()
    _observe(whole, ANSWERS, nll=12.0, tokens=6)
    _observe(rank0, ANSWERS[:3], nll=5.0, tokens=2)
    _observe(rank1, ANSWERS[3:], nll=7.0, tokens=4)
    merged = GenerationEval()
    merged.merge([rank0.state(), rank1.state()])
    assert merged.metrics() == whole.metrics()
    assert merged.references["image/digit"] == Counter({"3": 2, "7": 1})
    assert merged.answers == whole.answers


def test_answers_file_lists_every_answer(tmp_path):
    callback = GenerationEval()
    _observe(callback, ANSWERS, nll=12.0, tokens=6)
    callback.write_answers(tmp_path / "answers.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [(a["kind"], a["answer"], a["reference"]) for a in lines] == ANSWERS
    assert [a["correct"] for a in lines] == [True, False, True, True, False, True]
    assert {a["question"] for a in lines} == {"Q?"}


def test_every_assistant_turn_is_a_question_and_missing_kinds_count_as_chat():
    messages = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": " hello "},
        {"role": "user", "content": "Again"}, {"role": "assistant", "content": "bye"},
    ]  # fmt: skip
    tokenizer = load_tokenizer(TOKENIZER)
    empty = torch.zeros(0, dtype=torch.int64)
    prompts = answer_prompts(ChatExample(empty, empty, [], messages), tokenizer)
    assert [(p.kind, p.reference, p.question) for p in prompts] == [
        ("chat", "hello", "Hi"),
        ("chat", "bye", "Again"),
    ]
    second_prompt = tokenizer.decode(prompts[1].input_ids)
    assert "hello" in second_prompt and "bye" not in second_prompt
