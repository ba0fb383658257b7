"""MultimodalLM: logits, log-probs, the generation engine, checkpoint keys and the LM export."""

import pytest
import torch
from tiny_lm import LM, conversations, image, tiny_model
from transformers import AutoModelForCausalLM

from mmfuse.core.generation import Generation, decode, filter_logits, left_pad, sample_categorical
from mmfuse.core.model import build_language_model
from mmfuse.core.text import tokenize_chat


def _prompts(model, n=4, dtype=torch.float64):
    """Left-padded prompts of uneven length (user turns of :func:`conversations`), images seeded."""
    chats = conversations(n)
    ids = [tokenize_chat(model.tokenizer, c[:1], add_generation_prompt=True).input_ids for c in chats]
    input_ids, attention_mask = left_pad(ids, model.tokenizer.pad_token_id)
    images = [image(i, dtype)["pixel_values"] for i in range(n) if i % 2 == 0]
    return input_ids, attention_mask, {"image": {"pixel_values": torch.stack(images)}}


def _full_sequence(input_ids, attention_mask, out: Generation):
    """Prompt + completion as one left-padded batch: ids, mask, and the completion's positions."""
    ids = torch.cat([input_ids, out.completion_ids], dim=1)
    mask = torch.cat([attention_mask, out.completion_mask.long()], dim=1)
    completion = torch.cat([torch.zeros_like(input_ids, dtype=torch.bool), out.completion_mask], dim=1)
    return ids, mask, completion


def _positions(mask):
    return (mask.cumsum(-1) - 1).clamp_min(0)


def test_sampled_logps_equal_a_separate_eval_forward():
    """The ratio-equals-1 property: generate's log-probs are token_logps of an independent forward."""
    model = tiny_model(dtype=torch.float32)
    input_ids, attention_mask, media = _prompts(model, dtype=torch.float32)
    assert len(set(attention_mask.sum(1).tolist())) > 1  # uneven prompts, so left padding matters
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=6, do_sample=True,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    ids, mask, completion = _full_sequence(input_ids, attention_mask, out)
    with torch.no_grad():
        logps = model.token_logps(ids, media, attention_mask=mask, position_ids=_positions(mask))
    torch.testing.assert_close(logps[completion], out.logps[out.completion_mask], atol=1e-5, rtol=0)
    assert out.completion_mask.any() and (out.logps[~out.completion_mask] == 0).all()


def test_temperature_scaled_logps_are_before_top_k_truncation():
    model = tiny_model(dtype=torch.float32)
    input_ids, attention_mask, media = _prompts(model, dtype=torch.float32)
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=4, do_sample=True, temperature=0.7,
                         top_k=3, generator=torch.Generator().manual_seed(1))  # fmt: skip
    ids, mask, completion = _full_sequence(input_ids, attention_mask, out)
    with torch.no_grad():
        logps = model.token_logps(ids, media, attention_mask=mask, position_ids=_positions(mask),
                                  temperature=0.7)  # fmt: skip
    torch.testing.assert_close(logps[completion], out.logps[out.completion_mask], atol=1e-5, rtol=0)
    assert (out.logps[out.completion_mask] < 0).all()  # renormalised over 3 tokens would reach ~-1.1 at worst


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sequence_logps_run_the_head_on_completion_positions_only_and_equal_the_masked_full_logps(
    temperature,
):
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=5, do_sample=True,
                         generator=torch.Generator().manual_seed(2))  # fmt: skip
    ids, mask, completion = _full_sequence(input_ids, attention_mask, out)  # left-padded prompts, ragged ends
    kwargs = dict(attention_mask=mask, position_ids=_positions(mask), temperature=temperature)
    weights = torch.arange(1.0, len(ids) + 1, dtype=torch.float64)  # a different gradient weight per row
    params = [p for p in model.parameters() if p.requires_grad]
    full = (model.token_logps(ids, media, **kwargs) * completion).sum(-1)  # the [b, s, v] definition
    full_grads = torch.autograd.grad((full * weights).sum(), params, allow_unused=True)
    rows = []
    head = model.lm.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape))
    fast = model.sequence_logps(ids, completion, media, **kwargs)
    head.remove()
    fast_grads = torch.autograd.grad((fast * weights).sum(), params, allow_unused=True)
    assert rows == [(int(completion[:, 1:].sum()), model.lm.config.hidden_size)]  # [n, d], not [b, s, d]
    torch.testing.assert_close(fast, full)
    assert (full < 0).all()
    for a, b in zip(fast_grads, full_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)

    def sample(seed):
        return model.generate(input_ids, attention_mask, media, max_new_tokens=8, do_sample=True,
                              generator=torch.Generator().manual_seed(seed)).completion_ids  # fmt: skip

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_n_samples_share_one_encoding_and_greedy_copies_agree():
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)
    calls = []
    model.towers["image"].register_forward_hook(lambda *args: calls.append(1))
    model.towers["image"].visual.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0])
    )
    greedy = model.generate(input_ids, attention_mask, media, max_new_tokens=5)
    calls.clear()
    copies = model.generate(input_ids, attention_mask, media, max_new_tokens=5, num_return_sequences=3)
    assert calls == [2]  # the tower ran once, on the two real images, for 4 prompts x 3 samples
    assert copies.completion_ids.shape == (12, greedy.completion_ids.shape[1])
    assert torch.equal(copies.completion_ids, greedy.completion_ids.repeat_interleave(3, dim=0))
    torch.testing.assert_close(copies.logps, greedy.logps.repeat_interleave(3, dim=0))


def test_greedy_kv_cached_decoding_equals_full_forwards():
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=5)
    ids, mask = input_ids, attention_mask
    with torch.no_grad():
        for _ in range(5):  # no cache: the whole sequence again for every token
            logits = model(ids, media, attention_mask=mask, position_ids=_positions(mask))
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    generated = ids[:, input_ids.shape[1] :]
    assert torch.equal(generated[out.completion_mask], out.completion_ids[out.completion_mask])


def test_completion_mask_stops_after_the_first_eos():
    script = torch.tensor(
        [[5, 2, 7, 7], [5, 6, 2, 7], [5, 6, 6, 6]]
    )  # row 0 ends at 1, row 1 at 2, row 2 never
    calls = []

    def step(new_ids, mask, position_ids):
        t = len(calls)
        calls.append(new_ids.shape[1])
        return torch.nn.functional.one_hot(script[:, t], 10).double() * 5

    out = decode(step, torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2), max_new_tokens=4,
                 eos_token_id=2, pad_token_id=0)  # fmt: skip
    assert out.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert out.completion_ids.tolist() == [[5, 2, 0, 0], [5, 6, 2, 0], [5, 6, 6, 6]]
    assert calls == [2, 1, 1, 1]  # the prompt once, then one token per step through the cache
    assert (out.logps[~out.completion_mask] == 0).all()


def test_decoding_stops_once_every_row_has_ended():
    step = lambda ids, mask, pos: torch.nn.functional.one_hot(torch.tensor([2, 2]), 4).double()  # noqa: E731
    ones = torch.ones(2, 3, dtype=torch.long)
    out = decode(step, ones, ones, max_new_tokens=10, eos_token_id=2, pad_token_id=0)
    assert out.completion_ids.tolist() == [[2], [2]]


def test_suppressed_tokens_are_never_generated_and_logps_keep_the_full_distribution():
    """A media placeholder has no media item: sampled or greedy, it must not come out."""
    logits = torch.tensor([[4.0, 0.0, 3.0, 0.0]]).repeat(64, 1)  # token 0 most likely, then 2
    step = lambda ids, mask, pos: logits  # noqa: E731
    ones = torch.ones(64, 2, dtype=torch.long)
    for do_sample in (False, True):
        out = decode(step, ones, ones, max_new_tokens=5, eos_token_id=1, pad_token_id=3, do_sample=do_sample,
                     suppress_token_ids=[0], generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert (out.completion_ids != 0).all() and (out.completion_ids == 2).any()
        full = logits.log_softmax(-1)[0]
        torch.testing.assert_close(
            out.logps[out.completion_ids == 2], full[2].expand(int((out.completion_ids == 2).sum()))
        )
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)
    image_id = model.media_token_ids["image"]
    index = torch.tensor([image_id])
    boost = lambda module, args, out: out.index_fill(-1, index, 100.0)  # noqa: E731
    model.lm.get_output_embeddings().register_forward_hook(boost)  # the placeholder dominates every step
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=3, do_sample=True,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert (out.completion_ids != image_id).all()


def test_categorical_sampling_draws_the_given_distribution_and_never_a_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    draws = sample_categorical(probs.repeat(50_000, 1), torch.Generator().manual_seed(0)).view(50_000, 2)
    frequencies = torch.stack([torch.bincount(draws[:, r], minlength=6) for r in range(2)]) / 50_000
    torch.testing.assert_close(frequencies, probs, atol=0.01, rtol=0)  # 4 standard errors at p = 0.5
    assert frequencies[probs == 0].sum() == 0
    first = sample_categorical(probs, torch.Generator().manual_seed(1))
    assert torch.equal(first, sample_categorical(probs, torch.Generator().manual_seed(1)))


def test_top_p_keeps_the_smallest_set_reaching_p_and_renormalises():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = filter_logits(logits, top_p=0.8).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))  # 0.5 + 0.3 >= 0.8
    kept = filter_logits(logits, top_p=0.81).softmax(-1)
    torch.testing.assert_close(kept, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95)
    assert filter_logits(logits, top_p=0.1).softmax(-1)[0, 0] == 1  # at least the most likely token
    torch.testing.assert_close(
        filter_logits(logits, top_k=2).softmax(-1), torch.tensor([[0.625, 0.375, 0, 0]])
    )
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)


def test_fused_layers_keep_the_language_model_parameter_names():
    model = tiny_model()
    plain = build_language_model(LM, len(model.tokenizer))
    keys = set(model.lm.state_dict())
    assert {k for k in keys if ".gated_xattn." not in k} == set(plain.state_dict())
    assert any(".gated_xattn." in k for k in keys)
    copy = tiny_model(open_gates=False)  # a round trip through the hooks restores every tensor
    copy.load_state_dict(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(copy.state_dict()[name], tensor), name


def test_closed_gates_give_the_bare_language_model_logits():
    model = tiny_model(open_gates=False)
    bare = build_language_model(LM, len(model.tokenizer)).double().eval()
    bare.load_state_dict(model.language_model_state_dict())
    input_ids, attention_mask, media = _prompts(model)
    with torch.no_grad():
        fused = model(input_ids, media, attention_mask=attention_mask)
        plain = bare(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(fused, plain)


def test_the_language_model_saves_with_save_pretrained_and_loads_with_automodel(tmp_path):
    model = tiny_model(open_gates=False, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]})
    torch.manual_seed(1)
    for name, param in model.lm.named_parameters():  # as after training: LoRA B no longer zero
        if "lora_B" in name or "embed" in name:
            param.data.normal_(0, 0.1)
    model.save_language_model(tmp_path / "lm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lm", dtype=torch.float64).eval()
    input_ids = tokenize_chat(model.tokenizer, conversations(2)[1]).input_ids[None]
    with torch.no_grad():
        ours = model(input_ids)
        theirs = loaded(input_ids=input_ids).logits
    torch.testing.assert_close(theirs, ours)
    assert not any("lora" in k for k in loaded.state_dict())


def test_logits_mask_gives_those_rows_of_the_full_logits_and_the_same_gradients():
    model = tiny_model()
    input_ids, attention_mask, media = _prompts(model)
    mask = torch.zeros_like(input_ids, dtype=torch.bool)
    mask[0, -3:], mask[2, 1] = True, True  # scattered positions of two rows

    def picked_logits_and_gradients(logits_mask):
        model.zero_grad()
        logits = model(input_ids, media, attention_mask=attention_mask, logits_mask=logits_mask)
        picked = logits[mask] if logits_mask is None else logits  # [4, v]
        (picked.logsumexp(-1).sum() + picked[:, 5].sum()).backward()
        return picked.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = picked_logits_and_gradients(None)
    masked, masked_grads = picked_logits_and_gradients(mask)
    assert masked.shape == (4, model.lm.config.vocab_size)
    torch.testing.assert_close(masked, full)
    assert masked_grads.keys() == full_grads.keys() and len(full_grads) > 10
    for name in full_grads:
        torch.testing.assert_close(masked_grads[name], full_grads[name], msg=name)
    with torch.no_grad():  # the hook is gone after the call
        logits = model(input_ids, media, attention_mask=attention_mask)
        assert logits.shape == (*input_ids.shape, full.shape[-1])
