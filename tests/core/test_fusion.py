"""Gated cross-attention fusion on tiny Hugging Face Llama / Qwen2 models built in code."""

import copy
import dataclasses

import pytest
import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from mmfuse.core.adapters import MediaProjector, PerceiverResampler
from mmfuse.core.attention import attention
from mmfuse.core.encoders import EncoderOutput
from mmfuse.core.fusion import FusedCausalLM, MaskedCrossAttention, MediaContext
from mmfuse.core.generation import decode
from mmfuse.core.packing import cross_attention_segments, cu_seqlens_from_lengths, media_item_ranges

IMAGE, AUDIO = 60, 61
SIZES = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
)
MODELS = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SIZES)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SIZES)),
}
# Row 0: text, image, text, audio, text. Row 1: audio first, then two images back to back.
INPUT_IDS = torch.tensor([[5, 6, IMAGE, 7, 8, AUDIO, 9, 10], [5, AUDIO, 6, 7, IMAGE, IMAGE, 8, 9]])
FIRST_MEDIA = [2, 1]  # column of each row's first placeholder


def _media(seed):
    generator = torch.Generator().manual_seed(seed)
    audio_mask = torch.arange(7) < torch.tensor([[7], [3]])  # the second clip has 3 real frames of 7
    return {
        "image": EncoderOutput(torch.randn(3, 5, 16, generator=generator, dtype=torch.float64)),
        "audio": EncoderOutput(
            torch.randn(2, 7, 12, generator=generator, dtype=torch.float64),
            audio_mask,
            pooled=torch.randn(2, 6, generator=generator, dtype=torch.float64),
        ),
    }


def _fused(model="llama", attend="latest", gates=0.0):
    torch.manual_seed(0)
    lm = MODELS[model]().double().eval()
    bare = copy.deepcopy(lm)
    adapters = {
        "image": PerceiverResampler(16, 32, depth=1, num_latents=4, num_heads=2, head_dim=8),
        "audio": MediaProjector(12, 32, pooled_dim=6),
    }
    fused = FusedCausalLM(
        lm,
        adapters,
        {"image": IMAGE, "audio": AUDIO},
        cross_attn_every_n_layers=2,
        num_heads=2,
        head_dim=8,
        attend=attend,
    )
    fused.double().eval()
    for layer in fused._fused_layers:
        layer.gated_xattn.attn_gate.data.fill_(gates)
        layer.gated_xattn.ff_gate.data.fill_(gates)
    return fused, bare


@pytest.mark.parametrize("model", MODELS)
def test_closed_gates_leave_the_language_model_unchanged(model):
    fused, bare = _fused(model)
    assert [type(layer).__name__ for layer in fused.lm.model.layers] == [
        f"{model.capitalize()}DecoderLayer",
        "FusedDecoderLayer",
    ] * 2
    with torch.no_grad():
        logits = fused(input_ids=INPUT_IDS, media=_media(0)).logits
        reference = bare(input_ids=INPUT_IDS).logits
    assert torch.equal(logits, reference)


@pytest.mark.parametrize("attend", ["latest", "all"])
def test_tokens_before_the_first_media_ignore_the_media(attend):
    fused, bare = _fused(attend=attend, gates=0.5)
    with torch.no_grad():
        a = fused(input_ids=INPUT_IDS, media=_media(0)).logits
        b = fused(input_ids=INPUT_IDS, media=_media(1)).logits
        text_only = bare(input_ids=INPUT_IDS).logits
    for row, first in enumerate(FIRST_MEDIA):
        assert torch.equal(a[row, :first], b[row, :first])
        assert not torch.allclose(a[row, first:], b[row, first:])
        assert not torch.allclose(a[row, :first], text_only[row, :first])  # the open feed-forward gate acts


@pytest.mark.parametrize(
    ("modality", "field", "item", "row", "first_changed"),
    [
        ("audio", "hidden_states", 1, 1, 1),
        ("audio", "pooled", 1, 1, 1),
        ("image", "hidden_states", 0, 0, 2),
        ("image", "hidden_states", 2, 1, 5),
    ],
)
def test_each_item_reaches_exactly_the_tokens_after_its_placeholder(
    modality, field, item, row, first_changed
):
    """Items are matched to placeholders in row-major order within each modality; in "latest" mode
    row 1's tokens 1-3 read the audio, token 4 the first image, tokens 5-7 the second image. The
    audio adapter also reads each clip's pooled embedding, which must follow its clip the same way."""
    fused, _ = _fused(attend="latest", gates=0.5)
    media = _media(0)
    changed = getattr(media[modality], field).clone()
    changed[item] += torch.linspace(
        0.0, 1.0, changed.shape[-1], dtype=changed.dtype
    )  # not a shift (LayerNorm)
    other = {**media, modality: dataclasses.replace(media[modality], **{field: changed})}
    with torch.no_grad():
        a = fused(input_ids=INPUT_IDS, media=media).logits
        b = fused(input_ids=INPUT_IDS, media=other).logits
    assert torch.equal(a[1 - row], b[1 - row])
    assert torch.equal(a[row, :first_changed], b[row, :first_changed])
    assert not torch.allclose(a[row, first_changed], b[row, first_changed])


def test_packed_row_sequences_see_only_their_own_media():
    fused, _ = _fused(attend="all", gates=0.5)
    row = torch.tensor([[5, IMAGE, 6, 7, 8, 9, IMAGE, 10]])  # two sequences: columns 0-3 and 4-7
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3]])
    image = _media(0)["image"].hidden_states[:2]
    changed = image.clone()
    changed[0] += 1.0  # the first sequence's image
    with torch.no_grad():
        a = fused(
            input_ids=row, position_ids=position_ids, use_cache=False, media={"image": EncoderOutput(image)}
        ).logits
        b = fused(
            input_ids=row, position_ids=position_ids, use_cache=False, media={"image": EncoderOutput(changed)}
        ).logits
    assert not torch.allclose(a[0, 1:4], b[0, 1:4])
    assert torch.equal(a[0, 4:], b[0, 4:])


def test_gradients_reach_every_gate():
    fused, bare = _fused()
    logits = fused(input_ids=INPUT_IDS, media=_media(0)).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), INPUT_IDS[:, 1:].flatten()).backward()
    for layer in fused._fused_layers:
        assert layer.gated_xattn.attn_gate.grad.abs().item() > 0
        assert layer.gated_xattn.ff_gate.grad.abs().item() > 0
    added = sum(p.numel() for p in fused.parameters()) - sum(p.numel() for p in bare.parameters())
    assert sum(p.numel() for p in fused.fusion_parameters()) == added


@pytest.mark.parametrize("attend", ["latest", "all"])
def test_kv_cached_decoding_equals_step_by_step_decoding_without_cache(attend):
    fused, _ = _fused(attend=attend, gates=0.7)
    media, new_tokens, cache = _media(0), 5, DynamicCache()

    def step(ids, mask, position_ids):
        return fused.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache,
                        use_cache=True).logits[:, -1]  # fmt: skip

    with fused.media_session(INPUT_IDS, media):
        out = decode(step, INPUT_IDS, torch.ones_like(INPUT_IDS), max_new_tokens=new_tokens, eos_token_id=-1,
                     pad_token_id=0)  # fmt: skip
    ids = INPUT_IDS
    with torch.no_grad():
        for t in range(new_tokens):
            logits = fused(input_ids=ids, media=media, use_cache=False).logits[:, -1]
            torch.testing.assert_close(out.logps[:, t], logits.float().log_softmax(-1).max(-1).values)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.completion_ids, ids[:, INPUT_IDS.shape[1] :])


def _dense_cross_attention(xattn, hidden_states, tokens, first, last, item_of_token):
    """OpenFlamingo's formulation: one [b, h, s, m] score matrix masked to the items each token sees."""
    b, s, _ = hidden_states.shape
    q = xattn.to_q(xattn.norm(hidden_states)).view(b, s, xattn.num_heads, -1).transpose(1, 2)
    k, v = xattn.to_kv(tokens).chunk(2, dim=-1)
    k, v = (t.view(1, len(tokens), xattn.num_heads, -1).transpose(1, 2).expand(b, -1, -1, -1) for t in (k, v))
    visible = (item_of_token >= first[..., None]) & (item_of_token <= last[..., None])  # [b, s, m]
    out = attention(q, k, v, attn_mask=visible[:, None], backend="eager")  # [b, h, s, hd]
    return xattn.to_out(out.transpose(1, 2).flatten(2))


@pytest.mark.parametrize("only_latest", [True, False])
def test_masked_cross_attention_equals_the_dense_masked_formulation(only_latest):
    torch.manual_seed(0)
    xattn = MaskedCrossAttention(dim=16, media_dim=12, num_heads=2, head_dim=4).double()
    hidden_states = torch.randn(2, 7, 16, dtype=torch.float64)
    is_media = torch.zeros(2, 7, dtype=torch.bool)
    is_media[0, [1, 4, 6]] = True
    is_media[1, 2] = True
    item_lengths = torch.tensor([2, 3, 1, 4])
    cu_item_tokens = cu_seqlens_from_lengths(item_lengths).long()
    tokens = torch.randn(int(item_lengths.sum()), 12, dtype=torch.float64)
    first, last = media_item_ranges(is_media, only_latest=only_latest)
    segments = cross_attention_segments(first, last, cu_item_tokens)
    out = xattn(hidden_states, MediaContext(tokens, segments))
    item_of_token = torch.repeat_interleave(torch.arange(4), item_lengths)
    reference = _dense_cross_attention(xattn, hidden_states, tokens, first, last, item_of_token)
    torch.testing.assert_close(out, reference)
    assert torch.equal(out[0, 0], torch.zeros(16, dtype=torch.float64))  # before any media: exactly 0
    assert torch.equal(out[1, :2], torch.zeros(2, 16, dtype=torch.float64))


def test_placeholders_and_media_must_agree():
    fused, _ = _fused()
    media = _media(0)
    media["image"] = EncoderOutput(media["image"].hidden_states[:2])
    with pytest.raises(ValueError, match="3 image placeholders in input_ids but 2 image items"):
        fused(input_ids=INPUT_IDS, media=media)
    with pytest.raises(ValueError, match="adapters only for"):
        fused(input_ids=INPUT_IDS, media={**_media(0), "video": media["image"]})
