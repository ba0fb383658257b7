"""Chat templating and assistant-only labels on a word-level tokenizer built in code."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mmfuse.core.functional import IGNORE_INDEX, shift_labels, token_logps
from mmfuse.core.text import (
    DEFAULT_CHAT_TEMPLATE,
    MediaTruncatedError,
    content_text,
    load_tokenizer,
    media_parts,
    render_chat,
    tokenize_chat,
)

SPECIAL = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<|pad|>", "<|image|>"]
WORDS = [
    "user",
    "assistant",
    "system",
    "which",
    "digit",
    "seven",
    "and",
    "this",
    "?",
    "the",
    "number",
    "be",
    "brief",
]
VOCAB = {token: i for i, token in enumerate(SPECIAL + WORDS + ["<unk>"])}
BOS, IM_START, IM_END, PAD, IMAGE = range(5)
W = {word: VOCAB[word] for word in WORDS}
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "which digit ?"}]},
    {"role": "assistant", "content": "seven"},
    {"role": "user", "content": "and this ?"},
    {"role": "assistant", "content": [{"type": "text", "text": "the number seven"}]},
]


TOKENIZER_DIR = str(Path(__file__).resolve().parents[3] / "data" / "tokenizer")


def _tokenizer(tmp_path, chat_template=DEFAULT_CHAT_TEMPLATE, pad_token="<|pad|>"):
    """Word-level tokenizer (whitespace and punctuation split), saved and loaded like a real one."""
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token=pad_token,
        unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|image|>"],
        chat_template=chat_template,
    )  # fmt: skip
    fast.save_pretrained(tmp_path)
    return load_tokenizer(str(tmp_path))


def test_labels_cover_assistant_turns_and_their_eos_at_exact_positions(tmp_path):
    chat = tokenize_chat(_tokenizer(tmp_path), CONVERSATION)
    expected_ids = [
        BOS,
        IM_START, W["system"], W["be"], W["brief"], IM_END,
        IM_START, W["user"], IMAGE, W["which"], W["digit"], W["?"], IM_END,
        IM_START, W["assistant"], W["seven"], IM_END,  # 15, 16 trained
        IM_START, W["user"], W["and"], W["this"], W["?"], IM_END,
        IM_START, W["assistant"], W["the"], W["number"], W["seven"], IM_END,  # 25..28 trained
    ]  # fmt: skip
    assert chat.input_ids.tolist() == expected_ids
    trained = [i for i, label in enumerate(chat.labels.tolist()) if label != IGNORE_INDEX]
    assert trained == [15, 16, 25, 26, 27, 28]
    assert chat.labels[trained].tolist() == chat.input_ids[trained].tolist()
    assert chat.media == ["image"]


def test_exactly_one_bos_whether_or_not_the_template_writes_it(tmp_path):
    without_bos = DEFAULT_CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    for i, template in enumerate([DEFAULT_CHAT_TEMPLATE, without_bos]):
        (tmp_path / str(i)).mkdir()
        ids = tokenize_chat(_tokenizer(tmp_path / str(i), template), CONVERSATION).input_ids
        assert ids[0] == BOS and int((ids == BOS).sum()) == 1


def test_eos_is_a_target_when_pad_equals_eos(tmp_path):
    tokenizer = _tokenizer(tmp_path, pad_token="<|im_end|>")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == IM_END
    labels = tokenize_chat(tokenizer, CONVERSATION).labels
    assert labels[16] == IM_END and labels[28] == IM_END


def test_a_tokenizer_without_template_gets_the_default(tmp_path):
    tokenizer = _tokenizer(tmp_path, chat_template=None)
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    text = render_chat(tokenizer, CONVERSATION[1:3], add_generation_prompt=False)
    assert (
        text
        == "<|bos|><|im_start|>user\n<|image|>which digit ?<|im_end|><|im_start|>assistant\nseven<|im_end|>"
    )


def test_truncation_drops_targets_but_never_a_media_placeholder(tmp_path):
    tokenizer = _tokenizer(tmp_path)
    assert tokenize_chat(tokenizer, CONVERSATION, max_length=20).labels.tolist()[15:17] == [
        W["seven"],
        IM_END,
    ]
    with pytest.raises(MediaTruncatedError):
        tokenize_chat(tokenizer, CONVERSATION, max_length=8)  # the placeholder is token 8
    assert len(tokenize_chat(tokenizer, CONVERSATION, max_length=9).input_ids) == 9


def test_any_non_text_part_is_a_media_part_named_by_its_modality():
    content = [{"type": "imu"}, {"type": "text", "text": " which gesture?"}]
    assert content_text(content) == "<|imu|> which gesture?"
    assert media_parts([{"role": "user", "content": content}]) == [{"type": "imu"}]


def test_load_tokenizer_adds_the_placeholders_of_the_modalities_asked(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER_DIR, modalities=["image", "imu"])
    assert tokenizer.convert_tokens_to_ids("<|image|>") == load_tokenizer(
        TOKENIZER_DIR
    ).convert_tokens_to_ids("<|image|>")  # already in the embedded tokenizer: not added again
    imu = tokenizer.convert_tokens_to_ids("<|imu|>")
    assert imu == len(tokenizer) - 1 and tokenizer.decode([imu]) == "<|imu|>"


def test_token_logps_score_the_next_token_and_ignore_masked_targets():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 2, IGNORE_INDEX]])  # position 0 is a prompt token; 2 follows it, then -100
    shifted = shift_labels(labels)
    assert shifted.tolist() == [[2, IGNORE_INDEX, IGNORE_INDEX]]
    expected = torch.log(torch.tensor([[0.25, 1.0, 1.0]]))  # log 1 = 0 where nothing is scored
    torch.testing.assert_close(token_logps(logits, shifted), expected)
