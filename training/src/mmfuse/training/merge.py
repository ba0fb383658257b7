"""``mmfuse merge``: one checkpoint from LM stage checkpoints of one architecture.

    mmfuse merge --method linear A.ckpt B.ckpt --weights 0.5 0.5 --out soup.ckpt
    mmfuse merge --method task_arithmetic --base SFT.ckpt DPO.ckpt --weights 1 --scale 0.5 --out ta.ckpt
    mmfuse merge --method ties --base SFT.ckpt DPO.ckpt GRPO.ckpt --weights 1 1 --density 0.5 --out ties.ckpt
    mmfuse merge --method dare --base SFT.ckpt DPO.ckpt GRPO.ckpt --weights 1 1 --density 0.5 --seed 0 \\
        --out dare.ckpt

The methods are :mod:`mmfuse.core.merge`'s (mergekit's semantics). Each checkpoint's ``state_dict``
is read (the EMA weights of a run that averaged them). When the models carry peft LoRA layers,
each parent is rebuilt from its run's config (``--config`` for another one), its adapters folded
into the base weights (:func:`mmfuse.core.merge.fold_lora`) and the folded weights merged: the
merged checkpoint has the same keys, its LoRA ``B`` at zero.

The output is a checkpoint with the first parent's Lightning metadata, the merged ``model.*``
tensors and a ``merge`` record (method, parents, base, weights, options), which ``init_from``,
``mmfuse eval --config <the stage config> --ckpt_path OUT`` and ``mmfuse export OUT DIR --config
<a resolved run config>`` read; the model card names the parents.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from mmfuse.core.merge import METHODS, fold_lora, merge_state_dicts
from mmfuse.training.checkpoint import atomic_torch_save
from mmfuse.training.stages.base import load_stage_weights

#: Lightning checkpoint entries copied from the first parent (not optimiser or loop state).
KEPT = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name")


def model_state(checkpoint: Path, config: Path | None) -> dict[str, Tensor]:
    """A checkpoint's model tensors, LoRA layers folded into their base weights when present."""
    state = load_stage_weights(str(checkpoint))
    if not any("lora_" in k for k in state):
        return state
    from mmfuse.training.export import load_checkpoint_model

    model, _ = load_checkpoint_model(checkpoint, config)
    return fold_lora(model).state_dict()


def merge_checkpoints(
    method: str,
    checkpoints: Sequence[Path],
    weights: Sequence[float],
    out: Path,
    base: Path | None = None,
    config: Path | None = None,
    seed: int = 0,
    **options: float | bool,
) -> Path:
    """Merge ``checkpoints`` (module docstring) into ``out``; ``options`` go to the method.

    Raises:
        ValueError: see :func:`mmfuse.core.merge.merge_state_dicts`.
    """
    states = [model_state(c, config) for c in checkpoints]
    base_state = model_state(base, config) if base is not None else None
    if method == "dare":
        options["generator"] = torch.Generator().manual_seed(seed)
    merged = merge_state_dicts(method, states, weights, base=base_state, **options)
    first = torch.load(checkpoints[0], map_location="cpu", weights_only=True, mmap=True)
    record = {k: v for k, v in options.items() if k != "generator"}
    record |= {"method": method, "parents": [str(c) for c in checkpoints], "weights": list(weights)}
    record |= {"base": None if base is None else str(base), "seed": seed if method == "dare" else None}
    saved = {k: first[k] for k in KEPT if k in first}
    saved |= {"state_dict": {f"model.{k}": v for k, v in merged.items()}, "merge": record}
    atomic_torch_save(saved, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse merge`` (module docstring)."""
    parser = argparse.ArgumentParser(prog="mmfuse merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", type=Path, nargs="+", help="the models to merge (not the base)")
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default: all 1)")
    parser.add_argument("--base", type=Path, help="the shared base model (task_arithmetic, ties, dare)")
    parser.add_argument("--out", type=Path, required=True, help="the merged .ckpt")
    parser.add_argument(
        "--density", type=float, help="ties: share of each delta kept; dare: keep probability"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the mixed delta (mergekit lambda)"
    )
    parser.add_argument("--sign_consensus", action="store_true", help="dare: TIES sign election (dare_ties)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="divide by the summed weights (default: the method's, as mergekit)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="dare: the drop RNG's seed")
    parser.add_argument("--config", type=Path, help="resolved run config to rebuild LoRA models from")
    args = parser.parse_args(argv)
    weights = args.weights or [1.0] * len(args.checkpoints)
    options: dict[str, float | bool] = {}
    if args.normalize is not None:
        options["normalize"] = args.normalize
    if args.method in ("ties", "dare"):
        if args.density is None:
            parser.error(f"--method {args.method} needs --density")
        options["density"] = args.density
    if args.method != "linear":
        options["scale"] = args.scale
    if args.method == "dare":
        options["sign_consensus"] = args.sign_consensus
    out = merge_checkpoints(args.method, args.checkpoints, weights, args.out, args.base, args.config,
                            args.seed, **options)  # fmt: skip
    print(f"merged {len(args.checkpoints)} checkpoints ({args.method}) into {out}")


__all__ = ["main", "merge_checkpoints", "model_state"]
