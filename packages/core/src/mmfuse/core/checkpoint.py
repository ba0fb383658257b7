"""Tower weights inside a Lightning checkpoint (e.g. an aligned image tower reused for video or SFT)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def load_media_encoder_state(path: str | Path, prefix: str = "media_encoder.") -> dict[str, Tensor]:
    """The state dict of one tower saved inside a Lightning checkpoint.

    ``ContrastiveAlignment`` holds its towers as ``media_encoder`` and ``text_encoder``, so a
    Lightning checkpoint's ``state_dict`` names the media tower's tensors ``media_encoder.*``.
    The file is read with ``torch.load(weights_only=True)`` (tensors and plain containers only,
    never arbitrary pickled objects) onto the CPU.

    Args:
        path: a ``.ckpt`` written by Lightning (or any ``{"state_dict": {...}}`` file).
        prefix: the tower's attribute name in the LightningModule, with the dot.

    Returns:
        ``{name: tensor}`` with ``prefix`` removed, ready for ``tower.load_state_dict``.

    Raises:
        KeyError: if the file has no ``state_dict`` or no tensor under ``prefix``.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" not in checkpoint:
        raise KeyError(
            f"{path} has no 'state_dict' (keys: {sorted(checkpoint)}); is it a Lightning checkpoint?"
        )
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        prefixes = sorted({k.split(".")[0] for k in checkpoint["state_dict"]})
        raise KeyError(f"{path} holds no tensor under {prefix!r}; its modules are {prefixes}")
    return state


__all__ = ["load_media_encoder_state"]
