"""Build the embedded instruction set and its tokenizer from the committed shards under ``data/``.

Run ``uv run python scripts/build_instructions.py`` (seconds; it reads ``data/{image,audio,video}_text``
and ``data/text/wordnet.jsonl.gz`` and never rebuilds the media). Output:

* ``data/instructions/{train,val}-00000N.tar.gz``: webdataset shards of TRL conversational samples.
  A sample is ``{key}.json`` -> ``{"messages": [...], "kinds": [...], "source": ...}`` (one kind per
  assistant turn) plus one member per media part, ``{key}.{modality}_{i}.{ext}`` (the i-th part of
  that modality, the original encoded bytes). Text-only samples have the json alone.
* ``data/tokenizer/``: a byte-level BPE tokenizer trained with ``tokenizers`` on the instruction text,
  saved as a ``PreTrainedTokenizerFast`` with :data:`mmfuse.core.text.DEFAULT_CHAT_TEMPLATE`.

Questions (answers are exact strings, for exact-match evaluation):

* image, digits: "Which digit is this?" -> the number word; or "What is in the picture?" -> "the
  digit seven" (one of the two per image, by key hash); qabcs / tuxpaint: "What is in the picture?"
  -> the object with its article ("an eagle-owl") / the stamp's description;
* audio: "What does the speaker say?" -> the transcript;
* video: "What moves, and which way?" -> the caption ("the digit seven moving up");
* text: 'Define the noun "eagle".' (or one of the other :data:`TEXT_QUESTIONS`) -> the WordNet gloss.

Splits: media samples keep their shard's split, so the aligned towers never saw a held-out item.
A held-out question is kept only when its answer is one of its kind's training answers (the issue's
"classes seen in training"): an answer never seen cannot be produced exactly, e.g. a human Asterisk
sentence heard once or a new Tux Paint stamp description. Held-out speech is then new espeak-ng
voices and the human recordings of heard words. Text: the (word, part of speech) pairs with a single
WordNet sense (one right answer) and a gloss of at most :data:`TEXT_MAX_WORDS` words; each is asked
in two of the three :data:`TEXT_QUESTIONS` phrasings in train and in the third held out. A gloss is
rarely guessable from its word alone (derived words are the exception: "singer" -> "a person who
sings"), so the held-out text questions mostly measure recall under a new phrasing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mmfuse.core.text import DEFAULT_CHAT_TEMPLATE, media_token

REPO = Path(__file__).resolve().parents[1]
MODALITIES = ("image", "audio", "video")  # the embedded set's media
SPECIAL_TOKENS = ["<|bos|>", "<|im_start|>", "<|im_end|>", "<|pad|>", *(media_token(m) for m in MODALITIES)]
SOURCES = {"image": "image_text", "audio": "audio_text", "video": "video_text"}
#: longest gloss asked about, in words: longer glosses (up to 60 words) would hold most of the target
#: tokens and are beyond what the tiny default LM memorises.
TEXT_MAX_WORDS = 5
TEXT_QUESTIONS = ('Define the {pos} "{word}".', 'What does the {pos} "{word}" mean?',
                  'Give the meaning of the {pos} "{word}".')  # fmt: skip


def bucket(key: str) -> int:
    """0..99 from SHA-256 of ``key`` (``build_data.py``'s split hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100


def read_shards(directory: Path) -> list[tuple[str, dict[str, bytes]]]:
    """``(split, {ext: bytes, "__key__": key})`` for every sample of every shard in ``directory``."""
    samples = []
    for path in sorted(directory.glob("*.tar.gz")):
        split = path.name.split("-")[0]
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(member).read()
        samples += [(split, sample) for sample in members.values()]
    return samples


def turn(modality: str | None, question: str, answer: str) -> list[dict]:
    """A single-turn conversation: the media part (if any) first, then the question."""
    parts = ([{"type": modality}] if modality else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": parts}, {"role": "assistant", "content": answer}]


def media_question(modality: str, meta: dict, text: str, key: str) -> tuple[str, str, str]:
    """``(kind, question, answer)`` for one media sample."""
    if modality == "audio":
        return "audio/transcript", "What does the speaker say?", text
    if modality == "video":
        return "video/motion", "What moves, and which way?", text
    if meta["source"] == "digits":
        if bucket(key + "/question") < 50:
            return "image/digit", "Which digit is this?", meta["label"]
        return "image/caption", "What is in the picture?", f"the digit {meta['label']}"
    answer = meta["object"] if meta["source"] == "qabcs" else text
    return "image/caption", "What is in the picture?", answer


def media_samples() -> list[tuple[str, dict]]:
    """``(split, sample)`` instruction samples with their media, for every media shard.

    Held-out samples whose answer is no training answer of their kind are left out (module docstring).
    """
    out = []
    for modality, name in SOURCES.items():
        for split, raw in read_shards(REPO / "data" / name):
            key, meta = raw["__key__"], json.loads(raw["json"])
            ext = next(e for e in raw if e not in ("__key__", "json", "txt"))
            kind, question, answer = media_question(modality, meta, raw["txt"].decode().strip(), key)
            record = {"messages": turn(modality, question, answer), "kinds": [kind], "source": meta["source"]}
            out.append((split, {"__key__": key, "json": record, f"{modality}_0.{ext}": raw[ext]}))
    seen = {(s["json"]["kinds"][0], _answer(s["json"])) for split, s in out if split == "train"}
    return [
        (split, s)
        for split, s in out
        if split == "train" or (s["json"]["kinds"][0], _answer(s["json"])) in seen
    ]


def _answer(record: dict) -> str:
    """The assistant turn of a single-turn conversation."""
    return record["messages"][-1]["content"]


def text_samples() -> list[tuple[str, dict]]:
    """``(split, sample)`` WordNet definition questions (module docstring: which words, which phrasing)."""
    with gzip.open(REPO / "data" / "text" / "wordnet.jsonl.gz", "rt") as lines:
        rows = [json.loads(line) for line in lines]
    senses = Counter((row["word"], row["pos"]) for row in rows)
    out = []
    for i, row in enumerate(rows):
        if senses[row["word"], row["pos"]] > 1 or len(row["gloss"].split()) > TEXT_MAX_WORDS:
            continue
        held_out = bucket(f"{row['pos']}/{row['word']}/phrasing") % len(TEXT_QUESTIONS)
        for q, template in enumerate(TEXT_QUESTIONS):
            split = "val" if q == held_out else "train"
            question = template.format(**row)
            record = {"messages": turn(None, question, row["gloss"]), "kinds": ["text/definition"],
                      "source": "wordnet"}  # fmt: skip
            out.append((split, {"__key__": f"wordnet-{i:05d}-{q}", "json": record}))
    return out


def write_split(samples: list[dict], out_dir: Path, split: str, num_shards: int, seed: int) -> None:
    """Seeded permutation, cut into ``num_shards`` gzip tars with fixed metadata (reproducible bytes)."""
    ordered = sorted(samples, key=lambda s: s["__key__"])
    permutation = np.random.default_rng(seed).permutation(len(ordered))
    for index, part in enumerate(np.array_split(permutation, num_shards)):
        with (
            open(out_dir / f"{split}-{index:06d}.tar.gz", "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
            wds.TarWriter(gz, user="", group="", mtime=0, encoder=False) as writer,
        ):
            for i in part:
                sample = dict(ordered[i])
                sample["json"] = json.dumps(sample["json"], sort_keys=True, ensure_ascii=False).encode()
                writer.write(sample)


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on ``texts`` (GPT-2's pre-tokenizer), saved with the default chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|bos|>", eos_token="<|im_end|>", pad_token="<|pad|>",
        additional_special_tokens=[media_token(m) for m in MODALITIES], chat_template=DEFAULT_CHAT_TEMPLATE,
    )  # fmt: skip
    fast.save_pretrained(out_dir)
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "data", help="writes OUT/instructions, OUT/tokenizer"
    )
    parser.add_argument("--vocab-size", type=int, default=4096)
    args = parser.parse_args()
    samples = media_samples() + text_samples()
    out_dir = args.out / "instructions"
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, num_shards in (("train", 4), ("val", 2)):
        write_split([s for sp, s in samples if sp == split], out_dir, split, num_shards, seed=0)
    texts = [
        "\n".join(part if isinstance(part, str) else part.get("text", "") for part in _contents(s["json"]))
        for _, s in samples
    ]
    tokenizer = train_tokenizer(texts, args.out / "tokenizer", args.vocab_size)
    counts: dict[str, int] = {}
    for split, sample in samples:
        for kind in sample["json"]["kinds"]:
            counts[f"{split} {kind}"] = counts.get(f"{split} {kind}", 0) + 1
    print(json.dumps(dict(sorted(counts.items())), indent=1), f"vocab {len(tokenizer)}")


def _contents(record: dict) -> list:
    """Every text piece of a conversation (string contents and text parts)."""
    pieces: list = []
    for message in record["messages"]:
        content = message["content"]
        pieces += [content] if isinstance(content, str) else content
    return pieces


if __name__ == "__main__":
    main()
