import pytest
import torch
from transformers import WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.models.whisper.modeling_whisper import sinusoids as hf_sinusoids

from mmfuse.audio import AudioEncoder
from mmfuse.audio.transformer import sinusoids

TINY = dict(n_mels=8, hidden_size=16, num_layers=2, num_heads=2, ffn_dim=32, max_positions=12)


def tiny_encoder(**overrides) -> AudioEncoder:
    torch.manual_seed(0)
    return AudioEncoder(embed_dim=6, **{**TINY, **overrides}).eval()


def whisper_config() -> WhisperConfig:
    return WhisperConfig(
        num_mel_bins=8, d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
        max_source_positions=12, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
        vocab_size=64, max_target_positions=8, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=2,
    )  # fmt: skip


def test_shapes_and_mask():
    encoder = tiny_encoder()
    features, mask = torch.randn(3, 8, 21), torch.ones(3, 21, dtype=torch.bool)
    mask[1, 10:] = False
    out = encoder.forward_features(features, mask)
    assert out.hidden_states.shape == (3, 11, 16)  # ceil(21 / 2) tokens
    assert out.attention_mask.tolist()[1] == [True] * 5 + [False] * 6  # frames 0, 2, .., 8 real
    assert encoder(features, mask).shape == (3, 6)
    assert torch.equal(out.pooled, encoder(features, mask))  # fusion reads the aligned embedding too
    assert encoder.forward_features(features).attention_mask is None


def test_padding_does_not_change_the_pooled_embedding():
    encoder = tiny_encoder()
    torch.manual_seed(1)
    short, long = torch.randn(1, 8, 9), torch.randn(1, 8, 24)
    padded = torch.cat([short, 100 * torch.randn(1, 8, 15)], dim=-1)  # loud garbage in the padding
    batch = torch.cat([padded, long])
    mask = torch.ones(2, 24, dtype=torch.bool)
    mask[0, 9:] = False
    pooled = encoder(batch, mask)
    torch.testing.assert_close(pooled[0], encoder(short)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled[1], encoder(long)[0], rtol=0, atol=1e-5)
    hidden = encoder.forward_features(batch, mask).hidden_states
    alone = encoder.forward_features(short).hidden_states[0]
    torch.testing.assert_close(hidden[0, :5], alone, rtol=0, atol=1e-5)


def test_matches_transformers_whisper_encoder_when_every_frame_is_real():
    torch.manual_seed(0)
    reference = WhisperEncoder(whisper_config()).eval()
    encoder = tiny_encoder()
    encoder.encoder.load_state_dict(reference.state_dict())
    features = torch.randn(2, 8, 24)  # transformers requires exactly 2 * max_source_positions frames
    expected = reference(features).last_hidden_state
    all_real = torch.ones(2, 24, dtype=torch.bool)
    for mask in (None, all_real):
        ours = encoder.forward_features(features, mask).hidden_states
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_positions_are_whispers_sinusoids():
    torch.testing.assert_close(sinusoids(12, 16), hf_sinusoids(12, 16))
    torch.testing.assert_close(tiny_encoder().encoder.embed_positions.weight, hf_sinusoids(12, 16))
    assert not tiny_encoder().encoder.embed_positions.weight.requires_grad


def test_pretrained_loads_a_whisper_checkpoint(tmp_path):
    torch.manual_seed(0)
    WhisperModel(whisper_config()).save_pretrained(tmp_path)
    reference = WhisperModel.from_pretrained(tmp_path).get_encoder().eval()
    encoder = AudioEncoder(embed_dim=6, **TINY, pretrained=str(tmp_path)).eval()
    features = torch.randn(1, 8, 24)
    ours = encoder.forward_features(features).hidden_states
    torch.testing.assert_close(ours, reference(features).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_pretrained_with_other_sizes_names_the_checkpoint_sizes(tmp_path):
    WhisperModel(whisper_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'hidden_size': 16"):
        AudioEncoder(embed_dim=6, **{**TINY, "hidden_size": 32}, pretrained=str(tmp_path))


def test_too_many_frames_raise():
    with pytest.raises(ValueError, match="max_positions=12"):
        tiny_encoder()(torch.randn(1, 8, 25))


def test_select_inputs_reads_the_transform_keys():
    batch = {
        "input_features": torch.randn(2, 8, 10),
        "feature_attention_mask": torch.ones(2, 10, dtype=torch.bool),
        "input_ids": torch.zeros(2, 5, dtype=torch.long),
    }
    encoder = tiny_encoder()
    assert encoder(**encoder.select_inputs(batch)).shape == (2, 6)
