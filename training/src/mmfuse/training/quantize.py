"""Int8 quantisation of a model's linear layers for CPU inference, with torchao.

``weight_only`` (torchao's ``Int8WeightOnlyConfig``): every ``nn.Linear`` weight becomes int8 with one
scale per output channel, activations stay in float and the matmul dequantises on the fly; the
weights take a quarter of their float32 bytes. ``dynamic`` (``Int8DynamicActivationInt8WeightConfig``):
activations are also quantised per token at run time and the matmul runs in int8. Embeddings,
norms and convolutions keep their dtype. A tied LM head is quantised on its own (its embedding stays
float).
"""

from __future__ import annotations

from typing import Literal

from torch import nn
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

MODES = {"weight_only": Int8WeightOnlyConfig, "dynamic": Int8DynamicActivationInt8WeightConfig}


def quantize_int8(model: nn.Module, mode: Literal["weight_only", "dynamic"] = "weight_only") -> nn.Module:
    """Quantise every ``nn.Linear`` of ``model`` in place (module docstring) and return it.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown int8 mode {mode!r}; use one of {sorted(MODES)}")
    quantize_(model, MODES[mode]())
    return model


__all__ = ["MODES", "quantize_int8"]
