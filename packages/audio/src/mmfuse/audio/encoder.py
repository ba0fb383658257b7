"""The audio tower: a Whisper-style encoder over log-mels behind the ``MediaEncoder`` contract.

Shape letters: b batch, m mel bins, f frames, s_e encoder tokens, d ``hidden_size``, e ``embed_dim``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mmfuse.audio.transformer import MelTransformer
from mmfuse.core.encoders import EncoderOutput, MediaEncoder, masked_mean_pool


class AudioEncoder(MediaEncoder):
    """Log-mel frames -> token states (for fusion) and one pooled embedding (for alignment).

    ``forward_features`` runs :class:`~mmfuse.audio.transformer.MelTransformer`; ``forward``
    mean-pools its real tokens and projects them linearly (no bias) to ``embed_dim``, as CLAP
    (Elizalde et al., 2023) projects its audio encoder's pooled output.

    The size arguments are the architecture. ``pretrained`` loads the encoder half of a Hugging
    Face Whisper checkpoint (a hub name such as ``"openai/whisper-tiny"`` or a local directory)
    into it; the sizes must then equal the checkpoint's (whisper-tiny: ``n_mels=80,
    hidden_size=384, num_layers=4, num_heads=6, ffn_dim=1536, max_positions=1500``). The
    projection always starts from PyTorch's default initialisation.

    Args:
        embed_dim: pooled embedding width (e).
        n_mels: mel bins of ``input_features``.
        hidden_size: transformer width (d).
        num_layers: transformer blocks.
        num_heads: attention heads.
        ffn_dim: feed-forward width.
        max_positions: most encoder tokens; inputs may have up to ``2 * max_positions`` frames.
        dropout: residual and embedding dropout.
        pretrained: Whisper checkpoint name or path, or None for random initialisation.

    Raises:
        ValueError: when the sizes differ from the ``pretrained`` checkpoint's, or it is not a
            GELU encoder without embedding scaling.
    """

    input_names = ("input_features", "feature_attention_mask")

    def __init__(
        self,
        embed_dim: int = 512,
        n_mels: int = 80,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        ffn_dim: int = 1024,
        max_positions: int = 1500,
        dropout: float = 0.0,
        pretrained: str | None = None,
    ):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed_dim = embed_dim
        sizes = dict(
            n_mels=n_mels,
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            max_positions=max_positions,
        )
        self.encoder = MelTransformer(**sizes, dropout=dropout)
        self.projection = nn.Linear(hidden_size, embed_dim, bias=False)
        if pretrained is not None:
            _load_whisper_encoder(self.encoder, pretrained, sizes)

    def forward_features(
        self, input_features: Tensor, feature_attention_mask: Tensor | None = None
    ) -> EncoderOutput:
        """``[b, m, f]`` float (+ ``[b, f]`` bool) -> hidden states ``[b, ceil(f / 2), d]``, their mask
        and ``pooled`` ``[b, e]``, the projected mean of the real tokens."""
        out = self.encoder(input_features, feature_attention_mask)
        out.pooled = self.projection(masked_mean_pool(out.hidden_states, out.attention_mask))
        return out

    def forward(self, input_features: Tensor, feature_attention_mask: Tensor | None = None) -> Tensor:
        """``[b, m, f]`` float (+ ``[b, f]`` bool) -> ``[b, e]``: projected mean of the real tokens."""
        return self.forward_features(input_features, feature_attention_mask).pooled


def _load_whisper_encoder(encoder: MelTransformer, name: str, sizes: dict[str, int]) -> None:
    """Copy the encoder weights of Whisper checkpoint ``name`` into ``encoder``.

    Raises:
        ValueError: if ``sizes`` or the activation/embedding scaling differ from the checkpoint's.
    """
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig.from_pretrained(name)
    expected = dict(
        n_mels=config.num_mel_bins,
        hidden_size=config.d_model,
        num_layers=config.encoder_layers,
        num_heads=config.encoder_attention_heads,
        ffn_dim=config.encoder_ffn_dim,
        max_positions=config.max_source_positions,
    )
    if sizes != expected:
        raise ValueError(f"AudioEncoder sizes {sizes} differ from {name}'s encoder: set {expected}")
    if config.activation_function != "gelu" or config.scale_embedding:
        raise ValueError(
            f"{name} uses activation {config.activation_function!r}, scale_embedding="
            f"{config.scale_embedding}; AudioEncoder implements 'gelu' without scaling"
        )
    encoder.load_state_dict(WhisperModel.from_pretrained(name).get_encoder().state_dict())


__all__ = ["AudioEncoder"]
