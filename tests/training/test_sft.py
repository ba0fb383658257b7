"""SFT stage: packed vs padded loss, token-normalised accumulation, fusion at closed gates, generation."""

import copy
from pathlib import Path

import torch

from mmfuse.core.attention import attention
from mmfuse.core.functional import IGNORE_INDEX, shift_labels
from mmfuse.core.text import tokenize_chat
from mmfuse.training import hf_attention
from mmfuse.training.callbacks.generation import left_pad
from mmfuse.training.data.chat import ChatExample, collate_media, pack_examples, pad_examples
from mmfuse.training.stages.sft import LM_KEYS, InstructionTuning, build_language_model
from mmfuse.vision import OpenClipVisionEncoder

TOKENIZER = str(Path(__file__).resolve().parents[2] / "data" / "tokenizer")
LM = dict(
    model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=2, pad_token_id=3,
)  # fmt: skip


def _model(**kwargs) -> InstructionTuning:
    torch.manual_seed(0)
    tower = OpenClipVisionEncoder(
        embed_dim=16, vision_cfg=dict(image_size=8, patch_size=4, width=16, layers=1, head_width=8)
    )
    model = InstructionTuning(LM, TOKENIZER, image_encoder=tower, num_heads=2, head_dim=8, **kwargs)
    for layer in model.fused._fused_layers:  # open the gates so that media change the logits
        layer.cross_attn.attn_gate.data.fill_(0.5)
        layer.cross_attn.ff_gate.data.fill_(0.5)
    return model.double().eval()


def _examples(tokenizer, n=5) -> list[ChatExample]:
    """``n`` conversations of different lengths, every other one with an image."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        question = [{"type": "text", "text": "Which digit is this?" + " Look closely." * i}]
        if i % 2 == 0:
            question.insert(0, {"type": "image"})
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "seven" + " eight" * i},
        ]
        chat = tokenize_chat(tokenizer, messages)
        media = [("image", {"pixel_values": torch.randn(3, 8, 8, generator=generator, dtype=torch.float64)})]
        out.append(
            ChatExample(chat.input_ids, shift_labels(chat.labels), media if i % 2 == 0 else [], messages)
        )
    return out


def test_packed_and_padded_micro_batches_give_the_same_loss():
    model = _model()
    examples = _examples(model.tokenizer)
    packed = pack_examples(examples, max_length=64, pad_token_id=model.tokenizer.pad_token_id)
    padded = pad_examples(examples, pad_token_id=model.tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(examples)  # several conversations share a row
    with torch.no_grad():
        nll_packed, tokens_packed = model.nll(packed)
        nll_padded, tokens_padded = model.nll(padded)
    assert (
        int(tokens_packed) == int(tokens_padded) == sum(int((e.shift_labels != -100).sum()) for e in examples)
    )
    torch.testing.assert_close(nll_packed, nll_padded)


def test_pack_examples_layout():
    lengths = [5, 3, 4, 2]
    examples = [
        ChatExample(torch.arange(n) + 10 * i, torch.arange(n), [("image", {"x": torch.full((1,), i)})], [])
        for i, n in enumerate(lengths)
    ]
    batch = pack_examples(examples, max_length=7, pad_token_id=99)
    # best fit decreasing: [5, 2] fills row 0, [4, 3] fills row 1
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4, 30, 31], [20, 21, 22, 23, 10, 11, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 5, 7, 11, 14]
    assert batch["media"]["image"]["x"].flatten().tolist() == [0, 3, 2, 1]  # row-major placeholder order
    tail = pack_examples(examples[:1], max_length=7, pad_token_id=99)
    assert tail["input_ids"].tolist() == [[0, 1, 2, 3, 4, 99, 99]]
    assert tail["shift_labels"][0, 5:].tolist() == [IGNORE_INDEX] * 2 and tail["cu_seq_lens_q"].tolist() == [
        0,
        5,
        7,
    ]


def test_a_conversation_without_targets_adds_nothing_and_a_step_without_targets_is_zero():
    model = _model()
    examples = _examples(model.tokenizer, n=3)
    masked = copy.deepcopy(examples[1])
    masked.shift_labels.fill_(IGNORE_INDEX)
    pad_id = model.tokenizer.pad_token_id
    with torch.no_grad():
        nll, tokens = model.nll(pad_examples([examples[0], examples[2]], pad_id))
        nll_with, tokens_with = model.nll(pad_examples([examples[0], masked, examples[2]], pad_id))
    torch.testing.assert_close(nll_with, nll)
    assert int(tokens_with) == int(tokens)
    only_masked = [pad_examples([masked], pad_id)]
    loss = model.accumulate(only_masked, torch.tensor(0.0), 1, lambda loss: loss.backward())
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_two_micro_batches_of_different_sizes_accumulate_to_the_gradient_of_one_batch():
    model = _model()
    examples = _examples(model.tokenizer)
    pad_id = model.tokenizer.pad_token_id

    def gradients(micro_batches):
        model.zero_grad()
        total = sum((mb["shift_labels"] != IGNORE_INDEX).sum() for mb in micro_batches).double()
        model.accumulate(micro_batches, total, 1, lambda loss: loss.backward())
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    split = gradients([pad_examples(examples[:1], pad_id), pad_examples(examples[1:], pad_id)])
    whole = gradients([pad_examples(examples, pad_id)])
    assert split.keys() == whole.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], msg=name)


def test_closed_gates_give_the_bare_language_model_logits():
    model = _model()
    for layer in model.fused._fused_layers:
        layer.cross_attn.attn_gate.data.zero_()
        layer.cross_attn.ff_gate.data.zero_()
    bare = build_language_model(LM, len(model.tokenizer)).double().eval()
    state = {
        k.replace(".decoder_layer.", "."): v
        for k, v in model.fused.lm.state_dict().items()
        if "cross_attn" not in k
    }
    bare.load_state_dict(state)
    batch = pad_examples(_examples(model.tokenizer), model.tokenizer.pad_token_id)
    lm_kwargs = {k: batch[k] for k in LM_KEYS if k in batch}
    with torch.no_grad():
        fused = model.fused(
            input_ids=batch["input_ids"], media=model.encode_media(batch["media"]), **lm_kwargs
        )
        plain = bare(input_ids=batch["input_ids"], **lm_kwargs)
    torch.testing.assert_close(fused.logits, plain.logits)


def test_greedy_generation_with_and_without_kv_cache_agrees():
    model = _model()
    examples = _examples(model.tokenizer, n=4)
    prompts = [
        tokenize_chat(model.tokenizer, e.messages[:1], add_generation_prompt=True).input_ids for e in examples
    ]
    input_ids, attention_mask = left_pad(prompts, model.tokenizer.pad_token_id)
    media = collate_media([e.media for e in examples])
    generate = model.fused.generate
    kwargs = dict(
        max_new_tokens=8, do_sample=False, pad_token_id=model.tokenizer.pad_token_id, eos_token_id=None
    )
    with_cache = generate(input_ids=input_ids, attention_mask=attention_mask, media=model.encode_media(media),
                          use_cache=True, **kwargs)  # fmt: skip
    without = generate(input_ids=input_ids, attention_mask=attention_mask, media=model.encode_media(media),
                       use_cache=False, **kwargs)  # fmt: skip
    assert with_cache.shape == (4, input_ids.shape[1] + 8)
    assert torch.equal(with_cache, without)


def test_packed_rows_attend_through_the_core_varlen_path(monkeypatch):
    model = _model()
    examples = _examples(model.tokenizer)
    packed = pack_examples(examples, max_length=64, pad_token_id=model.tokenizer.pad_token_id)
    seen = []

    def recording_attention(q, k, v, **kwargs):
        seen.append(kwargs.get("cu_seqlens_q"))
        return attention(q, k, v, **kwargs)

    monkeypatch.setattr(hf_attention, "attention", recording_attention)
    with torch.no_grad():
        model.nll(packed)
    assert len(seen) == LM["num_hidden_layers"]
    assert all(torch.equal(cu, packed["cu_seq_lens_q"]) for cu in seen)


def test_frozen_towers_stay_in_eval_mode_and_get_no_gradient():
    model = _model(freeze=["encoders"]).train()
    assert not model.encoders.training and model.fused.training
    assert not any(p.requires_grad for p in model.encoders.parameters())
    examples = _examples(model.tokenizer)
    nll, _ = model.nll(pack_examples(examples, 64, model.tokenizer.pad_token_id))
    nll.backward()
    assert all(p.grad is None for p in model.encoders.parameters())
    assert any(p.grad is not None for p in model.fused.adapters.parameters())
