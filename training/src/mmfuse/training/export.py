"""``mmfuse export CKPT DIR``: an LM stage's checkpoint as a directory that loads without mmfuse's trainer.

The directory (:meth:`mmfuse.core.model.MultimodalLM.save_pretrained`) holds ``model.safetensors``,
``mmfuse.json`` (the model's init arguments, towers as ``class_path``/``init_args``), the tokenizer
with its chat template, ``language_model/`` (the plain LM: ``AutoModelForCausalLM.from_pretrained``),
plus what this command adds: ``transforms.json`` (the data module's media transforms, for
``mmfuse chat``) and ``README.md``, the model card (:mod:`mmfuse.training.model_card`).
``MultimodalLM.from_pretrained(DIR)`` rebuilds the model with equal logits.

The checkpoint's ``state_dict`` is exported: the EMA weights when the run averaged them
(``--ema_decay``). The model is rebuilt from the run's resolved config, by default the newest
``<run>/lightning_logs/version_*/config.yaml`` of the run the checkpoint sits in
(``<run>/checkpoints/*.ckpt``); ``--config`` names another resolved config (``mmfuse fit --config X
--print_config`` writes one), e.g. for a merged checkpoint. Run it from the directory the run was
started in: the config's paths (tokenizer, shards) are relative to it.

    mmfuse export runs/sft/embedded/checkpoints/last.ckpt exports/sft
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from mmfuse.core.model import MultimodalLM, instantiate
from mmfuse.training.model_card import model_card, run_config_path
from mmfuse.training.stages.base import load_stage_weights

TRANSFORMS_FILE = "transforms.json"


def model_init_args(config: dict[str, Any]) -> dict[str, Any]:
    """The ``MultimodalLM`` init arguments of a resolved run config (``model.init_args.model``).

    Raises:
        ValueError: the stage has no ``MultimodalLM`` (not an LM stage), or the config is unresolved.
    """
    spec = (config.get("model") or {}).get("init_args", {}).get("model")
    if not isinstance(spec, dict) or not spec.get("class_path", "").endswith("MultimodalLM"):
        raise ValueError("the config's model.init_args.model is no MultimodalLM: export takes LM stages")
    towers = spec["init_args"].get("towers") or {}
    if any(not isinstance(t, dict) for t in towers.values()):
        raise ValueError("model.init_args.model.init_args.towers are file references: pass a resolved config")
    return {**spec["init_args"], "tower_checkpoints": None}


def build_model(init_args: dict[str, Any]) -> MultimodalLM:
    """A ``MultimodalLM`` from its init arguments (towers as specs), in eval mode."""
    towers = {m: instantiate(t) for m, t in (init_args.get("towers") or {}).items()}
    return MultimodalLM(**{**init_args, "towers": towers}).eval()


def load_checkpoint_model(
    checkpoint: str | Path, config: str | Path | None = None
) -> tuple[MultimodalLM, dict[str, Any]]:
    """The checkpoint's model (its ``state_dict`` weights, strictly) and the resolved run config."""
    checkpoint = Path(checkpoint)
    config_path = Path(config) if config is not None else run_config_path(checkpoint)
    run_config = yaml.safe_load(config_path.read_text())
    model = build_model(model_init_args(run_config))
    model.load_state_dict(load_stage_weights(str(checkpoint)))
    return model, run_config


def export(checkpoint: str | Path, directory: str | Path, config: str | Path | None = None) -> Path:
    """Write the export directory of the module docstring; returns it."""
    checkpoint, directory = Path(checkpoint), Path(directory)
    model, run_config = load_checkpoint_model(checkpoint, config)
    model.save_pretrained(directory, model_init_args(run_config))
    transforms = ((run_config.get("data") or {}).get("init_args") or {}).get("transforms") or {}
    (directory / TRANSFORMS_FILE).write_text(json.dumps(transforms, indent=1))
    (directory / "README.md").write_text(model_card(checkpoint, run_config, model))
    return directory


def load_transforms(directory: str | Path) -> dict[str, Any]:
    """Modality -> media transform of an export directory (``transforms.json``)."""
    specs = json.loads((Path(directory) / TRANSFORMS_FILE).read_text())
    return {m: instantiate(s) for m, s in specs.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """``mmfuse export CKPT DIR [--config CONFIG]``."""
    parser = argparse.ArgumentParser(prog="mmfuse export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an LM stage's .ckpt (its state_dict is exported)")
    parser.add_argument("directory", type=Path, help="output directory (created)")
    parser.add_argument("--config", type=Path, help="resolved run config (default: the run's newest)")
    args = parser.parse_args(argv)
    with torch.no_grad():
        out = export(args.checkpoint, args.directory, args.config)
    print(f"exported {args.checkpoint} to {out} (model card: {out / 'README.md'})")


__all__ = ["build_model", "export", "load_checkpoint_model", "load_transforms", "model_init_args", "main"]
