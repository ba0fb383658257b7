"""A fourth modality defined outside mmfuse: inertial (IMU) time series stored as ``.npy`` members.

Nothing in mmfuse.core or mmfuse.training names it; a config maps the key ``imu`` to this tower and
this transform, and chat parts ``{"type": "imu"}`` to its placeholder.
"""

import io

import numpy as np
import torch
from torch import Tensor, nn

from mmfuse.core.encoders import EncoderOutput, MediaEncoder


class ImuTransform:
    """``.npy`` bytes of a ``[t, c]`` float array -> ``{"imu_values": [t, c] float32}``."""

    extensions = ("npy",)

    def __call__(self, data: bytes, *, train: bool) -> dict[str, Tensor]:
        return {"imu_values": torch.from_numpy(np.load(io.BytesIO(data))).float()}


class ImuEncoder(MediaEncoder):
    """Per-time-step MLP ``[n, t, c] -> [n, t, hidden_size]``, pooled by the mean and projected."""

    input_names = ("imu_values",)

    def __init__(self, channels: int = 3, hidden_size: int = 16, embed_dim: int = 16) -> None:
        super().__init__()
        self.hidden_size, self.embed_dim = hidden_size, embed_dim
        self.net = nn.Sequential(
            nn.Linear(channels, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size)
        )
        self.proj = nn.Linear(hidden_size, embed_dim)

    def forward_features(self, imu_values: Tensor) -> EncoderOutput:
        hidden_states = self.net(imu_values)
        return EncoderOutput(hidden_states, pooled=self.proj(hidden_states.mean(1)))

    def forward(self, imu_values: Tensor) -> Tensor:
        return self.forward_features(imu_values).pooled
