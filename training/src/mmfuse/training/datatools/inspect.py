"""``mmfuse data inspect``: what the shards hold, and what ``max_length`` would cut.

Counts samples per modality and source (the json ``source``; a sample without media counts as
``text``), describes every media item (image width and height from its header; audio duration,
rate and channels and video frames, fps and duration from the training decoders), and measures
each sample's text in words and tokens. Token counts use the training tokenizers: an open_clip
name (``ViT-B-32``: start and end tokens included, as the pair decoder pads to
``context_length``), or a Hugging Face tokenizer directory (chat samples tokenized with the chat
template, as the chat decoder does). ``inspect.json`` has every count and distribution (min,
percentiles, max, mean, and the histogram); one PNG histogram per measure lands beside it.
Statistics are kept as value counts, never as the samples.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
from matplotlib.figure import Figure

from mmfuse.core.text import load_tokenizer, tokenize_chat
from mmfuse.training.datatools.media import DESCRIPTIONS
from mmfuse.training.datatools.parts import media_of, record, text_of
from mmfuse.training.datatools.reporting import print_lines, print_table, subcommand, write_json
from mmfuse.training.datatools.shards import ReadErrors, read_samples, resolve_shards


class TokenCounter:
    """Tokens of a sample's text as training would tokenize it (before truncation).

    Args:
        tokenizer: an open_clip tokenizer name, or a Hugging Face tokenizer directory.
    """

    def __init__(self, tokenizer: str) -> None:
        self.hf = load_tokenizer(tokenizer) if Path(tokenizer).is_dir() else None
        self.clip = None if self.hf else open_clip.get_tokenizer(tokenizer)

    def __call__(self, sample: dict[str, Any], text: str) -> int:
        messages = record(sample).get("messages")
        if self.hf is None:
            return len(self.clip.encode(text)) + 2  # open_clip adds <start_of_text> and <end_of_text>
        if isinstance(messages, list):
            return len(tokenize_chat(self.hf, messages).input_ids)
        return len(self.hf(text).input_ids)


def summarize(values: Counter) -> dict[str, Any]:
    """``{"n", "min", "p5", "p50", "p95", "max", "mean", "histogram"}`` of a value -> count table."""
    keys = np.array(sorted(values), dtype=np.float64)
    counts = np.array([values[k] for k in sorted(values)], dtype=np.int64)
    cumulative = np.cumsum(counts)
    n = int(cumulative[-1])

    def quantile(q: float) -> float:
        return float(keys[np.searchsorted(cumulative, q * n, side="left")])

    return {"n": n, "min": float(keys[0]), "p5": quantile(0.05), "p50": quantile(0.5),
            "p95": quantile(0.95), "max": float(keys[-1]), "mean": float((keys * counts).sum() / n),
            "histogram": {f"{k:g}": int(c) for k, c in zip(keys, counts, strict=True)}}  # fmt: skip


def plot_histogram(values: Counter, title: str, path: Path, marker: float | None = None) -> Path:
    """A PNG histogram of a value -> count table (up to 50 bins); ``marker``: a dashed vertical line."""
    figure = Figure(figsize=(6, 3.5))
    ax = figure.subplots()
    keys = sorted(values)
    ax.hist(keys, bins=min(50, max(len(keys), 1)), weights=[values[k] for k in keys], color="tab:blue")
    if marker is not None:
        ax.axvline(marker, color="tab:red", linestyle="--", label=f"max_length {marker:g}")
        ax.legend()
    ax.set_title(title)
    ax.set_ylabel("samples")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path


def inspect(urls: list[str], count_tokens: TokenCounter, max_length: int) -> tuple[dict[str, Any], dict]:
    """Stream ``urls`` once; return the report and the value counts of every measure."""
    counts: dict[str, Counter] = defaultdict(Counter)  # modality -> source -> samples
    stats: dict[str, Counter] = defaultdict(Counter)  # "image/width" ... -> value -> samples
    errors, unreadable, samples, truncated = ReadErrors(), [], 0, 0
    for sample in read_samples(urls, description="inspect", errors=errors):
        samples += 1
        try:
            source = str(record(sample).get("source", "-"))
            media = media_of(sample)
            for modality, data in media:
                counts[modality][source] += 1
                for name, value in DESCRIPTIONS[modality](data).items():
                    stats[f"{modality}/{name}"][round(float(value), 2)] += 1
            text = text_of(sample)
            if not media:
                counts["text"][source] += 1
            if text is not None:
                tokens = count_tokens(sample, text)
                stats["text/words"][len(text.split())] += 1
                stats["text/tokens"][tokens] += 1
                truncated += tokens > max_length
        except Exception as exn:  # noqa: BLE001 - an undecodable sample is counted, not fatal here
            unreadable.append({"shard": sample["__url__"], "key": sample["__key__"],
                               "reason": f"{type(exn).__name__}: {exn}"[:500]})  # fmt: skip
    with_text = sum(stats["text/tokens"].values())
    report = {
        "shards": urls,
        "samples": samples,
        "counts": {m: dict(sorted(c.items())) for m, c in sorted(counts.items())},
        "stats": {name: summarize(values) for name, values in sorted(stats.items()) if values},
        "max_length": max_length,
        "truncated": truncated,
        "truncated_fraction": truncated / with_text if with_text else 0.0,
        "unreadable_samples": unreadable,
        "unreadable": errors.rows,
    }
    return report, stats


def run(args: argparse.Namespace) -> int:
    """Inspect, write ``inspect.json`` and the histograms in ``--out``, print the summary."""
    urls = resolve_shards(args.shards)
    report, stats = inspect(urls, TokenCounter(args.tokenizer), args.max_length)
    args.out.mkdir(parents=True, exist_ok=True)
    report["plots"] = [
        str(plot_histogram(values, name, args.out / f"{name.replace('/', '_')}.png",
                           args.max_length if name == "text/tokens" else None))
        for name, values in sorted(stats.items()) if values
    ]  # fmt: skip
    path = write_json(args.out / "inspect.json", report)
    print_table(
        f"mmfuse data inspect: {report['samples']:,} samples in {len(urls)} shards",
        ["modality", "source", "samples"],
        [[m, s, n] for m, per_source in report["counts"].items() for s, n in per_source.items()],
    )
    print_table(
        "distributions",
        ["measure", "min", "p50", "p95", "max", "mean"],
        [[k, v["min"], v["p50"], v["p95"], v["max"], v["mean"]] for k, v in report["stats"].items()],
    )
    print_lines(
        [
            f"{report['truncated']:,} texts ({report['truncated_fraction']:.1%}) longer than max_length"
            f" {args.max_length} tokens ({args.tokenizer})",
            f"{len(report['unreadable_samples'])} unreadable samples; report: {path}; plots in {args.out}",
        ]
    )
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``inspect`` and its options."""
    parser = subcommand(subparsers, "inspect", __doc__)
    parser.add_argument("shards", nargs="+", help="shard URLs (brace notation)")
    parser.add_argument("--tokenizer", default="ViT-B-32", help="open_clip name or tokenizer directory")
    parser.add_argument("--max_length", type=int, default=77, help="tokens kept by training")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/data/inspect"), help="report + plots directory"
    )
    parser.set_defaults(run=run)
