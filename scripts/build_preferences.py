"""Build the embedded preference set (``data/preferences``) from the embedded instruction set.

Run ``uv run python scripts/build_preferences.py`` (seconds). It reads
``data/instructions/{train,val}-*.tar.gz`` and the SFT model's confusions of each split: the committed
``data/preferences/confusions-{split}.jsonl``, or an answers file given as ``--answers split=PATH``
(:class:`~mmfuse.training.callbacks.generation.GenerationEval`'s ``answers-epoch=E.jsonl``: one
``{"kind", "question", "reference", "answer", "correct"}`` per question; ``train=`` one written by
``mmfuse eval`` with the training shards as ``val_shards``). Output, in ``--out``:
``{train,val}-00000N.tar.gz``, webdataset shards of TRL explicit-prompt preference pairs
(:mod:`mmfuse.training.data.preference`): ``{key}.json`` -> ``{"prompt", "chosen", "rejected", "kind",
"source", "negative"}`` and the prompt's media bytes as ``{key}.{modality}_0.{ext}``; and the
confusions it used, ``confusions-{split}.jsonl`` (one ``{"kind", "reference", "answer"}`` per
distinct wrong answer, an answers file reduced to what is read), so a rebuild needs no run output.

Pairs of the instruction questions of the targeted kinds (``--kinds``): the prompt is the question
with its media, ``chosen`` the reference answer, ``rejected`` a hard negative, the first that exists:

* ``confusion``: a wrong answer the SFT model gave to a question of the same kind and reference in
  the *same split* that is itself an answer of that kind: its real confusions, e.g. "the digit one"
  for "the digit seven". A wrong answer that answers nothing (an undertrained model's "the digit" or
  "aaaa moving up") is no hard negative and is not used. The answers files do not name the media
  item, so a confusion is per reference;
* else the kind's rule:

  * ``direction`` (video/motion): the same object moving another way ("... moving left" for
    "... moving right"; the clips of opposite directions are the same frames in reverse order),
    alternating over a question's rule-made negatives with ``object``: another object of the source
    moving the same way (the SFT model's own motion errors are wrong objects);
  * ``caption`` (image/caption, audio/transcript): another answer of the same kind and source
    (another digit caption, another photo's object, another stamp's description, another transcript);
  * ``gloss`` (text/definition): another word's gloss, of the same part of speech when there is one;
  * ``digit`` (image/digit): another number word.

``--negatives N`` (3) makes up to N training pairs per question, each with another rejected answer
(its confusions first, then its kind's rule; the first pair's key is the question's, the others'
``{key}-{i}``). Held-out pairs come from held-out questions only, one per question (their prompts and
chosen answers; a rejected answer may be any answer of the kind). Every random choice is seeded by the
question's key, so a rebuild with the same inputs writes the same bytes. ``--max-per-kind`` caps the
training questions of a kind (a seeded choice) to keep the committed shards small.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from build_instructions import read_shards

from mmfuse.training.data.preference import write_preference_shard

REPO = Path(__file__).resolve().parents[1]
CONFUSIONS = REPO / "data" / "preferences"  # the committed confusions-{split}.jsonl
DIRECTIONS = ("left", "right", "up", "down")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
KINDS = ("image/caption", "video/motion", "text/definition")
DEFINE = re.compile(r'the (noun|verb|adjective|adverb) "')


def confusions(path: Path | None, answers: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """``(kind, reference) -> sorted distinct wrong answers`` of an answers file that are answers of
    their kind (``answers``: kind -> every answer of the instruction set); empty without a file."""
    wrong: dict[tuple[str, str], set[str]] = defaultdict(set)
    for line in path.read_text().splitlines() if path else []:
        a = json.loads(line)
        answer = a["answer"].strip()
        if answer != a["reference"] and answer in answers.get(a["kind"], ()):
            wrong[a["kind"], a["reference"]].add(answer)
    return {k: sorted(v) for k, v in wrong.items()}


def write_confusions(path: Path, wrong: dict[tuple[str, str], list[str]]) -> None:
    """The confusions as a reduced answers file, one sorted ``{"kind", "reference", "answer"}`` line
    per distinct wrong answer: what :func:`confusions` reads back unchanged."""
    lines = [json.dumps({"kind": k, "reference": r, "answer": a}) for (k, r), wrong_answers in
             sorted(wrong.items()) for a in wrong_answers]  # fmt: skip
    path.write_text("".join(line + "\n" for line in lines))


def rule_negative(
    kind: str, answer: str, source: str, question: str, pools: dict, rng: random.Random, turn: int = 0
) -> tuple:
    """``(negative type, rejected answer)`` of a kind's rule (module docstring); ``turn`` counts a
    question's rule-made draws: a motion question's odd ones are another object moving the same way."""
    if kind == "video/motion":
        thing, _, direction = answer.rpartition(" moving ")
        if turn % 2:
            same_way = [a for a in pools[kind, source] if a != answer and a.endswith(f" moving {direction}")]
            return "object", rng.choice(same_way)
        return "direction", f"{thing} moving {rng.choice([d for d in DIRECTIONS if d != direction])}"
    if kind == "image/digit":
        return "digit", rng.choice([d for d in DIGITS if d != answer])
    if kind == "text/definition":
        pos = DEFINE.search(question).group(1)
        same = [g for g in pools[kind, pos] if g != answer] or [g for g in pools[kind, None] if g != answer]
        return "gloss", rng.choice(same)
    return "caption", rng.choice([a for a in pools[kind, source] if a != answer])


def pairs(
    samples: list[tuple[str, dict]], split: str, wrong: dict, kinds: set[str], seed: int, negatives: int = 1
) -> list[list[dict]]:
    """The preference samples of one split, per question (module docstring): up to ``negatives`` pairs,
    each with another rejected answer (its confusions first, then its kind's rule); the first pair's
    key is the question's, the others' ``{key}-{i}``."""
    pools: dict[tuple[str, str | None], set[str]] = defaultdict(set)
    for _, raw in samples:  # every split's answers: a rejected answer need not be held out
        record = json.loads(raw["json"])
        kind, question, answer = (
            record["kinds"][0],
            _text(record["messages"][0]),
            record["messages"][1]["content"],
        )
        pools[kind, record["source"]].add(answer)
        pools[kind, None].add(answer)
        if kind == "text/definition":
            pools[kind, DEFINE.search(question).group(1)].add(answer)
    pools = {k: sorted(v) for k, v in pools.items()}
    out = []
    for sample_split, raw in samples:
        record = json.loads(raw["json"])
        kind = record["kinds"][0]
        if sample_split != split or kind not in kinds:
            continue
        key, (user, assistant) = raw["__key__"], record["messages"]
        media = {k: v for k, v in raw.items() if k not in ("__key__", "json")}
        rng = random.Random(f"{seed}-{key}")
        confused = list(wrong.get((kind, assistant["content"]), ()))
        made: list[str] = []
        out.append([])
        ruled = 0  # rule-made draws
        for _ in range(8 * negatives):  # distinct negatives; a kind's rule may repeat one
            if len(made) == negatives:
                break
            if confused:
                negative, rejected = "confusion", rng.choice(confused)
                confused.remove(rejected)
            else:
                negative, rejected = rule_negative(
                    kind, assistant["content"], record["source"], _text(user), pools, rng, ruled
                )
                ruled += 1
            if rejected in made:
                continue
            made.append(rejected)
            rejected_turn = {"role": "assistant", "content": rejected}
            pair = {"prompt": [user], "chosen": [assistant], "rejected": [rejected_turn], "kind": kind,
                    "source": record["source"], "negative": negative}  # fmt: skip
            out[-1].append(
                {"__key__": key if len(made) == 1 else f"{key}-{len(made) - 1}", "json": pair, **media}
            )
    return out


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def cap(questions: list[list[dict]], max_per_kind: int | None, seed: int) -> list[dict]:
    """The pairs of at most ``max_per_kind`` questions of each kind, a seeded choice, in key order."""
    by_kind: dict[str, list[list[dict]]] = defaultdict(list)
    for q in sorted(questions, key=lambda q: q[0]["__key__"]):
        by_kind[q[0]["json"]["kind"]].append(q)
    kept = []
    for kind, group in sorted(by_kind.items()):
        if max_per_kind is not None and len(group) > max_per_kind:
            group = random.Random(f"{seed}-{kind}").sample(group, max_per_kind)
        kept += [s for q in group for s in q]
    return sorted(kept, key=lambda s: s["__key__"])


def write_split(samples: list[dict], out_dir: Path, split: str, num_shards: int, seed: int) -> None:
    """A seeded permutation of the samples cut into ``num_shards`` reproducible gzip tars."""
    permutation = np.random.default_rng(seed).permutation(len(samples))
    for index, part in enumerate(np.array_split(permutation, num_shards)):
        write_preference_shard(out_dir / f"{split}-{index:06d}.tar.gz", (samples[i] for i in part))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--answers", action="append", default=[], metavar="SPLIT=PATH",
                        help="the SFT model's answers file of a split (train=..., val=...), "
                        "instead of the committed confusions-{split}.jsonl")  # fmt: skip
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), help="the question kinds to make pairs of")
    parser.add_argument("--max-per-kind", type=int, default=900, help="training questions kept per kind")
    parser.add_argument("--negatives", type=int, default=3,
                        help="training pairs per question, each with another rejected answer")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "data" / "preferences")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    answers = dict(a.split("=", 1) for a in args.answers)
    unknown = set(answers) - {"train", "val"}
    if unknown:
        parser.error(f"--answers names splits {sorted(unknown)}; use train= and val=")
    samples = read_shards(REPO / "data" / "instructions")
    kind_answers: dict[str, set[str]] = defaultdict(set)
    for _, raw in samples:
        record = json.loads(raw["json"])
        kind_answers[record["kinds"][0]].add(record["messages"][1]["content"])
    args.out.mkdir(parents=True, exist_ok=True)
    counts: Counter[str] = Counter()
    for split, num_shards in (("train", 4), ("val", 2)):
        committed = CONFUSIONS / f"confusions-{split}.jsonl"
        source = Path(answers[split]) if split in answers else committed if committed.exists() else None
        wrong = confusions(source, kind_answers)
        print(f"{split}: {sum(map(len, wrong.values()))} confusions of the kind's answers ({source})")
        if wrong:
            write_confusions(args.out / committed.name, wrong)
        negatives = args.negatives if split == "train" else 1  # one pair per held-out question
        questions = pairs(samples, split, wrong, set(args.kinds), args.seed, negatives)
        made = (
            cap(questions, args.max_per_kind, args.seed)
            if split == "train"
            else sorted((s for q in questions for s in q), key=lambda s: s["__key__"])
        )
        write_split(made, args.out, split, num_shards, args.seed)
        counts.update(f"{split} {s['json']['kind']} {s['json']['negative']}" for s in made)
    print(json.dumps(dict(sorted(counts.items())), indent=1))


if __name__ == "__main__":
    main()
