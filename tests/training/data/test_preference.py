"""Preference data: completion masks, the pair layout, the last real token, JSONL = tar, bad records."""

import json
import tarfile
from pathlib import Path

import pytest
import torch
from pairs import colour_pairs, colour_record
from shards import COLORS, png_bytes
from tiny_lm import TOKENIZER

from mmfuse.core.data import ShardedStream, expand_urls
from mmfuse.core.text import load_tokenizer
from mmfuse.training.data.preference import (
    PreferenceDecoder,
    collate_pairs,
    last_token_index,
    tokenize_completion,
)
from mmfuse.vision import ImageTransform


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER, modalities=["image"])


def _decoded(url: str, tokenizer, image_size: int = 16) -> tuple[list, int]:
    decoder = PreferenceDecoder(tokenizer, {"image": ImageTransform(image_size=image_size)}, max_length=64)
    stream = ShardedStream(expand_urls(url), decoder, batch_size=4, train=False, shuffle_buffer=0)
    batches = list(stream)
    return [e for b in batches for e in b["chat"]], sum(b["num_skipped"] for b in batches)


def test_the_completion_mask_is_the_last_answer_and_its_end_of_turn(tokenizer):
    prompt = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit is this?"}]},
        {"role": "assistant", "content": "one"},  # an earlier turn: part of the prompt, not scored
        {"role": "user", "content": "Are you sure?"},
    ]
    input_ids, mask = tokenize_completion(tokenizer, prompt, [{"role": "assistant", "content": "seven"}])
    assert tokenizer.decode(input_ids[mask]) == "seven<|im_end|>"
    assert tokenizer.decode(input_ids[~mask]).endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="no completion token within max_length=8"):
        tokenize_completion(tokenizer, prompt, [{"role": "assistant", "content": "seven"}], max_length=8)


def test_last_token_index_under_left_and_right_padding_with_pad_equal_to_eos(tokenizer):
    eos = tokenizer.eos_token_id  # "<|im_end|>" also ends the user turn inside every prompt
    decoder = PreferenceDecoder(tokenizer, {"image": ImageTransform(image_size=16)}, max_length=64)
    records = [colour_record("red", "green"), colour_record("blue", "a yellow square, surely")]
    examples = [
        decoder(
            {"__key__": f"k{i}", "json": json.dumps(r), "image_0.png": png_bytes((9, 9, 9))}, train=False
        )["chat"]
        for i, r in enumerate(records)
    ]
    lengths = [len(e.chosen_ids) for e in examples] + [len(e.rejected_ids) for e in examples]
    assert len(set(lengths)) > 1
    right = collate_pairs(examples, pad_token_id=eos)
    left = collate_pairs(examples, pad_token_id=eos, padding_side="left")
    assert torch.equal(last_token_index(right["attention_mask"]), torch.tensor(lengths) - 1)
    s = left["input_ids"].shape[1]
    assert torch.equal(last_token_index(left["attention_mask"]), torch.full((4,), s - 1))
    for batch in (right, left):  # each row's last real token is its answer's end of turn
        rows = torch.arange(4)
        assert (batch["input_ids"][rows, last_token_index(batch["attention_mask"])] == eos).all()
    # the `token == pad_id` shortcut would stop at the end of the user turn instead
    first_pad = (right["input_ids"] == eos).int().argmax(-1)
    assert (first_pad < last_token_index(right["attention_mask"])).all()
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_pairs_collate_chosen_rows_then_rejected_rows_with_each_prompt_media_once(tokenizer, tmp_path):
    examples, _ = _decoded(str(colour_pairs(tmp_path / "p.tar.gz", 3)), tokenizer)
    batch = collate_pairs(examples[:3], tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6 and batch["media"]["image"]["pixel_values"].shape[0] == 3
    for i, e in enumerate(examples[:3]):
        assert torch.equal(batch["input_ids"][i, : len(e.chosen_ids)], e.chosen_ids)
        assert torch.equal(batch["completion_mask"][3 + i, : len(e.rejected_ids)], e.rejected_mask)
    assert batch["keys"] == [e.key for e in examples[:3]]


def test_jsonl_decodes_like_the_tar_and_bad_records_are_skipped_and_counted(tokenizer, tmp_path):
    (tmp_path / "img").mkdir()
    names, lines, good = list(COLORS), [], []
    for i, colour in enumerate(names):
        (tmp_path / "img" / f"{colour}.png").write_bytes(png_bytes(COLORS[colour]))
        record = colour_record(colour, names[(i + 1) % 4])
        good.append(record)
        trl = {**record, "images": [f"img/{colour}.png"]}  # TRL's top-level images list
        lines.append(json.dumps(trl))
    bad_media = {
        **good[0],
        "chosen": [{"role": "assistant", "content": [{"type": "image"}]}],
        "images": ["img/red.png"],
    }
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    lines[1:1] = [  # among the good lines: a skip after a worker's last batch is only logged
        "{not json",
        json.dumps({k: v for k, v in good[1].items() if k != "rejected"}),  # no rejected answer
        json.dumps(bad_media),  # media in an answer
        json.dumps({**good[2], "images": ["img/broken.png"]}),  # undecodable image
        json.dumps({**good[3], "chosen": [{"role": "user", "content": "x"}], "images": ["img/red.png"]}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    from_jsonl, skipped = _decoded(str(tmp_path / "pairs.jsonl"), tokenizer)
    assert skipped == 5 and len(from_jsonl) == 4

    from_tar, tar_skipped = _decoded(str(colour_pairs(tmp_path / "pairs.tar.gz", 4)), tokenizer)
    assert tar_skipped == 0
    by_answer = {tuple(e.chosen_ids[e.chosen_mask].tolist()): e for e in from_tar}
    for e in from_jsonl:
        twin = by_answer[tuple(e.chosen_ids[e.chosen_mask].tolist())]
        assert torch.equal(e.chosen_ids, twin.chosen_ids) and torch.equal(e.rejected_ids, twin.rejected_ids)
        assert e.kind == "image/colour" and e.media[0][0] == "image"


def test_the_sample_fingerprint_follows_ids_and_media_tensors(tokenizer, tmp_path):
    url = str(colour_pairs(tmp_path / "p.tar.gz", 4))
    once, _ = _decoded(url, tokenizer)
    again, _ = _decoded(url, tokenizer)
    smaller, _ = _decoded(url, tokenizer, image_size=8)  # another transform, same records
    assert [e.fingerprint for e in once] == [e.fingerprint for e in again]
    assert len({e.fingerprint for e in once}) == 4
    assert not {e.fingerprint for e in once} & {e.fingerprint for e in smaller}


def test_the_embedded_set_takes_held_out_pairs_from_held_out_questions_only():
    data = Path(__file__).resolve().parents[3] / "data"

    def keys(directory: str, split: str) -> dict[str, dict]:
        out = {}
        for path in sorted((data / directory).glob(f"{split}-*.tar.gz")):
            with tarfile.open(path) as tar:
                out.update({m.name.split(".")[0]: json.load(tar.extractfile(m))
                            for m in tar.getmembers() if m.name.endswith(".json")})  # fmt: skip
        return out

    for split in ("train", "val"):
        pairs, questions = keys("preferences", split), keys("instructions", split)
        assert pairs
        rejected: dict[str, list] = {}
        for key, pair in pairs.items():
            question = key if key in questions else key.rpartition("-")[0]  # its i-th pair: {key}-{i}
            assert pair["prompt"] == questions[question]["messages"][:1]
            assert pair["chosen"] == questions[question]["messages"][1:] != pair["rejected"]
            assert pair["kind"] == questions[question]["kinds"][0]
            assert pair["rejected"] not in rejected.setdefault(question, [])
            rejected[question].append(pair["rejected"])
        assert split == "train" or len(rejected) == len(pairs)  # one pair per held-out question
