"""The model card (``README.md``) of an exported model: what it is, how it was trained, on what data
under which licences, its held-out figures, and what it is for and not for.

Everything is read from the run, nothing is typed in: the stages are the chain of ``init_from``
checkpoints (each stage's class, run, step, EMA or merge), the data are the training shards of the
run's config with the samples per ``source`` counted in them and each source's licence taken from
``LICENSES/<source>*.md`` (the first ``**Licence:**`` line), and the held-out metrics come from the
run's ``eval.json`` (``mmfuse eval``: value, 95% interval, items) when there is one, else the last
``val/*`` values of its ``metrics.csv``.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import yaml

from mmfuse.core.data import expand_urls
from mmfuse.core.model import MultimodalLM
from mmfuse.training.report import _version_key, find_metrics_files, read_curves

LICENSES = Path("LICENSES")


def run_dir(checkpoint: Path) -> Path:
    """The run directory (``default_root_dir``) of ``<run>/checkpoints/<name>.ckpt``."""
    return checkpoint.resolve().parent.parent


def run_config_path(checkpoint: Path) -> Path:
    """The newest resolved ``config.yaml`` of the checkpoint's run.

    Raises:
        FileNotFoundError: the run has none (naming where it looked).
    """
    found = sorted(run_dir(checkpoint).glob("lightning_logs/version_*/config.yaml"), key=_version_key)
    if not found:
        raise FileNotFoundError(
            f"no lightning_logs/version_*/config.yaml in {run_dir(checkpoint)}; pass --config with the "
            "run's resolved config (mmfuse fit --config ... --print_config)"
        )
    return found[-1]


def stage_chain(checkpoint: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages that made ``checkpoint``, this one first, following ``init_from`` while configs exist."""
    chain, seen = [], set()
    while checkpoint is not None and checkpoint.resolve() not in seen:
        seen.add(checkpoint.resolve())
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        model = config.get("model") or {}
        chain.append({
            "stage": model.get("class_path", "?").rsplit(".", 1)[-1],
            "run": str(run_dir(checkpoint)), "checkpoint": checkpoint.name,
            "step": saved.get("global_step"), "epoch": saved.get("epoch"),
            "ema": "current_model_state" in saved, "ema_decay": config.get("ema_decay"),
            "merge": saved.get("merge"),
        })  # fmt: skip
        parent = (model.get("init_args") or {}).get("init_from")
        if parent is None or not Path(parent).exists():
            break
        checkpoint = Path(parent)
        try:
            config = yaml.safe_load(run_config_path(checkpoint).read_text())
        except FileNotFoundError:
            config = {}
    return chain


def source_counts(shards: Any) -> Counter[str]:
    """Samples per ``source`` field in tar(.gz) or JSONL shards (other shard specs count nothing)."""
    counts: Counter[str] = Counter()
    if not isinstance(shards, str):
        return counts
    for url in expand_urls(shards):
        path = Path(url)
        if not path.exists():
            continue
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            with tarfile.open(path) as tar:
                records = [json.load(tar.extractfile(m)) for m in tar if m.name.endswith(".json")]
        counts.update(str(r.get("source", "unnamed")) for r in records)
    return counts


def licence(source: str) -> tuple[str, str]:
    """``(licence, file)`` of a data source from ``LICENSES/<source>*.md``; ``("unknown", "")`` if none.

    The licence is the name on its ``**Licence:**`` line, with a short parenthesised id kept.
    """
    for path in sorted(LICENSES.glob(f"{source}*.md")):
        match = re.search(r"\*\*Licence:\*\*\s*(.+?)(?:,\s*http|\n\s*\n|$)", path.read_text(), re.S)
        if match:
            text = " ".join(match.group(1).split())
            name = re.split(r" \(|[,;]|\. ", text)[0]  # "GPL-2+ (GNU General ..." -> "GPL-2+"
            short = re.match(r" \(([^)]{1,15})\)", text[len(name) :])  # keep "(CC BY 4.0)"
            return name + (f" ({short.group(1)})" if short else ""), str(path)
    return "unknown", ""


def held_out_metrics(run: Path) -> tuple[str, list[str]]:
    """Where the figures come from and their table rows."""
    evals = sorted(run.glob("lightning_logs/version_*/eval.json"), key=_version_key)
    if evals:
        report = json.loads(evals[-1].read_text())
        rows = []
        for name, r in report.items():
            interval = f"[{r['low']:.3f}, {r['high']:.3f}]" if "low" in r else ""
            rows.append(f"| {name} | {r['value']:.3f} | {interval} | {r.get('n', '')} |")
        return f"`{evals[-1]}` (mmfuse eval)", rows
    try:
        curves = read_curves(find_metrics_files(run))
    except FileNotFoundError:
        return "none recorded", []
    rows = [
        f"| {name} | {points[max(points)]:.3f} | | |"
        for name, points in curves.items()
        if name.startswith("val/")
    ]
    return "the last validation of `metrics.csv`", rows


def model_card(checkpoint: Path, config: dict[str, Any], model: MultimodalLM) -> str:
    """The Markdown model card (module docstring)."""
    lm = model.lm.config
    n_params = sum(p.numel() for p in model.parameters())
    n_lm = sum(p.numel() for p in model.language_model_state_dict().values())
    towers = ", ".join(f"{m} ({type(t).__name__})" for m, t in model.towers.items()) or "none"
    chain = stage_chain(checkpoint, config)
    data = (config.get("data") or {}).get("init_args") or {}
    counts = source_counts(data.get("train_shards"))
    source, metric_rows = held_out_metrics(Path(chain[0]["run"]))

    lines = [
        f"# {Path(chain[0]['run']).name}: a multimodal assistant trained with mmfuse",
        "",
        f"A {lm.model_type} language model ({n_lm:,} parameters, {lm.num_hidden_layers} layers, width "
        f"{lm.hidden_size}) fused through gated cross-attention with the towers {towers}: "
        f"{n_params:,} parameters in all, {next(model.parameters()).dtype}.",
        "",
        "## Load it",
        "```python",
        "from mmfuse.core.model import MultimodalLM",
        "model = MultimodalLM.from_pretrained(DIR)  # the whole model, equal logits",
        "from transformers import AutoModelForCausalLM",
        "lm = AutoModelForCausalLM.from_pretrained(f'{DIR}/language_model')  # the text LM alone",
        "```",
        "or talk to it: `mmfuse chat DIR` (`--prompt ... --image PATH` for one answer).",
        "",
        "## How it was trained (last stage first)",
        "| stage | run | checkpoint | step | epoch | weights |",
        "|---|---|---|---|---|---|",
    ]
    for s in chain:
        weights = f"EMA (decay {s['ema_decay']})" if s["ema"] else "as trained"
        if s["merge"]:
            weights = f"merge: {s['merge']['method']} of {', '.join(s['merge']['parents'])}"
        lines.append(
            f"| {s['stage']} | `{s['run']}` | {s['checkpoint']} | {s['step']} | {s['epoch']} | {weights} |"
        )
    lines += [
        "",
        "## Data",
        f"Training shards: `{data.get('train_shards')}`; held out: `{data.get('val_shards')}`.",
        "",
    ]
    if counts:
        lines += ["| source | training samples | licence | notice |", "|---|---|---|---|"]
        for name, n in counts.most_common():
            text, path = licence(name)
            lines.append(f"| {name} | {n:,} | {text} | {f'`{path}`' if path else ''} |")
        lines.append("")
        lines.append(
            "The weights are trained on these data; redistribute them under terms compatible with each."
        )
    lines += [
        "",
        "## Held-out metrics",
        f"From {source}: exact match of greedy answers per question kind, majority baselines, perplexity.",
        "",
    ]
    lines += (
        ["| metric | value | 95% CI | n |", "|---|---|---|---|", *metric_rows] if metric_rows else ["None."]
    )
    lines += [
        "",
        "## Intended use",
        "Research and teaching: trying the mmfuse recipe end to end, testing multimodal post-training code,",
        "comparing stages, merges and quantisation on the same held-out items.",
        "",
        "## Limits",
        "- Trained only on the data above: it answers the question kinds of that set (the metrics name",
        "  them) and nothing else reliably; it is not a general assistant and knows no facts beyond them.",
        "- Small and trained briefly on a CPU; exact-match figures are on the held-out questions of the",
        "  same distribution, not on any public benchmark.",
        "- Media must be prepared by the transforms in `transforms.json` (sizes, sample rates, frames).",
        "- No safety tuning: do not put it in front of users.",
    ]
    return "\n".join(lines) + "\n"


__all__ = [
    "held_out_metrics",
    "licence",
    "model_card",
    "run_config_path",
    "run_dir",
    "source_counts",
    "stage_chain",
]
