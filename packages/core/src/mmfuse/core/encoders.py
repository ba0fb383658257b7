"""The contract every modality tower meets, so stages and the fusion module stay modality-agnostic.

A tower reads named tensors from a batch (``input_names``), returns per-token hidden states for
fusion (:meth:`MediaEncoder.forward_features`) and one pooled embedding per sample for contrastive
alignment (:meth:`MediaEncoder.forward`). The same contract covers the text tower.

Shape letters: b batch, s_e encoder tokens, d ``hidden_size``, e ``embed_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class EncoderOutput:
    """Per-token output of a tower.

    Attributes:
        hidden_states: ``[b, s_e, d]`` in the tower's compute dtype.
        attention_mask: ``[b, s_e]`` bool, True for real tokens; None when every token is real.
        pooled: ``[b, e]`` the tower's pooled, projected embedding (what ``forward`` returns, the one
            contrastive alignment trained), when the tower computes it along the way; else None.
    """

    hidden_states: Tensor
    attention_mask: Tensor | None = None
    pooled: Tensor | None = None


class MediaEncoder(nn.Module):
    """Base class of modality towers (image, audio, video, text).

    Subclasses set three attributes and implement two methods:

    * ``input_names``: the batch keys the tower reads, e.g. ``("pixel_values",)`` or
      ``("input_features", "feature_attention_mask")``; stages call
      ``tower(**{k: batch[k] for k in tower.input_names})``.
    * ``hidden_size`` (d): width of :meth:`forward_features` hidden states.
    * ``embed_dim`` (e): width of the pooled embedding from :meth:`forward`.
    """

    input_names: tuple[str, ...] = ()
    hidden_size: int
    embed_dim: int

    def forward_features(self, **inputs: Tensor) -> EncoderOutput:
        """Per-token hidden states ``[b, s_e, d]`` (and a mask, and the pooled ``[b, e]``) for fusion."""
        raise NotImplementedError

    def forward(self, **inputs: Tensor) -> Tensor:
        """Pooled, projected embedding ``[b, e]`` (not L2-normalised) for contrastive alignment."""
        raise NotImplementedError

    def select_inputs(self, batch: dict[str, object]) -> dict[str, Tensor]:
        """The tensors of ``batch`` this tower reads.

        Raises:
            KeyError: naming the missing key and the keys the batch has.
        """
        missing = [k for k in self.input_names if k not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {missing}; the batch has {sorted(batch)}")
        return {k: batch[k] for k in self.input_names}  # type: ignore[misc]


def masked_mean_pool(hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean over real tokens: ``[b, s_e, d]`` and ``[b, s_e]`` bool -> ``[b, d]``.

    A row with no real token gives zeros (not NaN).
    """
    if attention_mask is None:
        return hidden_states.mean(dim=1)
    weights = attention_mask.to(hidden_states.dtype).unsqueeze(-1)  # [b, s_e] -> [b, s_e, 1]
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


__all__ = ["EncoderOutput", "MediaEncoder", "masked_mean_pool"]
