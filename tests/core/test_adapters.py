"""Adapters: the Perceiver resampler and the pooled token."""

import pytest
import torch

from mmfuse.core.adapters import MediaProjector, PerceiverResampler


def test_resampler_ignores_padding_and_embeds_frame_time():
    torch.manual_seed(0)
    resampler = PerceiverResampler(6, 8, depth=2, num_latents=3, num_heads=2, head_dim=4, max_frames=4).eval()
    frames = torch.randn(2, 3, 5, 6)  # [n, t, s_e, d]
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 2] = False  # the second item's third frame is padding
    padded = frames.clone()
    padded[1, 2] = 100.0
    with torch.no_grad():
        out = resampler(frames, mask).hidden_states
        assert out.shape == (2, 3, 8)
        torch.testing.assert_close(resampler(padded, mask).hidden_states, out)
        swapped = frames[:, [1, 0, 2]]  # same tokens, frames in another order
        assert not torch.allclose(resampler(swapped, mask).hidden_states, out)
    with pytest.raises(ValueError, match="time embeddings for 4"):
        resampler(torch.randn(1, 5, 2, 6))


@pytest.mark.parametrize("adapter", ["projector", "resampler"])
def test_pooled_token_comes_first_and_reads_only_the_pooled_embedding(adapter):
    torch.manual_seed(0)
    make = {
        "projector": lambda pooled_dim: MediaProjector(6, 8, pooled_dim=pooled_dim),
        "resampler": lambda pooled_dim: PerceiverResampler(
            6, 8, depth=1, num_latents=3, num_heads=2, head_dim=4, pooled_dim=pooled_dim
        ),
    }[adapter]
    with_pooled = make(5).eval()
    without = make(None).eval()
    without.load_state_dict(with_pooled.state_dict(), strict=False)  # same weights but the pooled MLP
    hidden_states, pooled = torch.randn(2, 4, 6), torch.randn(2, 5)
    mask = torch.tensor([[True] * 4, [True, True, False, False]]) if adapter == "projector" else None
    with torch.no_grad():
        out = with_pooled(hidden_states, mask, pooled)
        other = with_pooled(hidden_states + 1.0, mask, pooled)  # new tokens, same pooled embedding
        torch.testing.assert_close(out.hidden_states[:, 1:], without(hidden_states, mask).hidden_states)
        torch.testing.assert_close(other.hidden_states[:, 0], out.hidden_states[:, 0])
        torch.testing.assert_close(out.hidden_states[:, 0], with_pooled.pooled.mlp(pooled))
    if mask is not None:
        assert torch.equal(out.attention_mask, torch.cat([torch.ones(2, 1, dtype=torch.bool), mask], dim=1))
    with pytest.raises(ValueError, match="reads the pooled embedding"):
        with_pooled(hidden_states, mask)
