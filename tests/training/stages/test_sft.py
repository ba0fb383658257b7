"""SFT stage: packed vs padded loss, token-normalised accumulation, the varlen path, frozen towers."""

import copy

import lightning as L
import torch
from tiny_lm import examples, tiny_model

from mmfuse.core import hf_attention
from mmfuse.core.attention import attention
from mmfuse.core.functional import IGNORE_INDEX
from mmfuse.training.data.chat import pack_examples, pad_examples
from mmfuse.training.stages.sft import InstructionTuning


def _stage(**kwargs) -> InstructionTuning:
    return InstructionTuning(tiny_model(**kwargs))


def test_packed_and_padded_micro_batches_give_the_same_loss():
    stage = _stage()
    chats = examples(stage.tokenizer)
    packed = pack_examples(chats, max_length=64, pad_token_id=stage.tokenizer.pad_token_id)
    padded = pad_examples(chats, pad_token_id=stage.tokenizer.pad_token_id)
    assert packed["input_ids"].shape[0] < len(chats)  # several conversations share a row
    with torch.no_grad():
        nll_packed, tokens_packed = stage.nll(packed)
        nll_padded, tokens_padded = stage.nll(padded)
    targets = sum(int((e.shift_labels != -100).sum()) for e in chats)
    assert int(tokens_packed) == int(tokens_padded) == targets == stage.loss_units(packed)
    torch.testing.assert_close(nll_packed, nll_padded)


def test_a_conversation_without_targets_adds_nothing_and_a_step_without_targets_is_zero():
    stage = _stage()
    chats = examples(stage.tokenizer, n=3)
    masked = copy.deepcopy(chats[1])
    masked.shift_labels.fill_(IGNORE_INDEX)
    pad_id = stage.tokenizer.pad_token_id
    with torch.no_grad():
        nll, tokens = stage.nll(pad_examples([chats[0], chats[2]], pad_id))
        nll_with, tokens_with = stage.nll(pad_examples([chats[0], masked, chats[2]], pad_id))
    torch.testing.assert_close(nll_with, nll)
    assert int(tokens_with) == int(tokens)
    loss, _ = stage.accumulate(
        [pad_examples([masked], pad_id)], torch.tensor(0.0), 1, lambda loss: loss.backward()
    )
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in stage.parameters() if p.grad is not None)


def test_two_micro_batches_of_different_sizes_accumulate_to_the_gradient_of_one_batch():
    stage = _stage()
    chats = examples(stage.tokenizer)
    pad_id = stage.tokenizer.pad_token_id

    def gradients(micro_batches):
        stage.zero_grad()
        total = torch.tensor(float(sum(stage.loss_units(mb) for mb in micro_batches)), dtype=torch.float64)
        stage.accumulate(micro_batches, total, 1, lambda loss: loss.backward())
        return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}

    split = gradients([pad_examples(chats[:1], pad_id), pad_examples(chats[1:], pad_id)])
    whole = gradients([pad_examples(chats, pad_id)])
    assert split.keys() == whole.keys() and len(whole) > 10
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], msg=name)


def test_packed_rows_attend_through_the_core_varlen_path(monkeypatch):
    stage = _stage()
    packed = pack_examples(
        examples(stage.tokenizer), max_length=64, pad_token_id=stage.tokenizer.pad_token_id
    )
    seen = []

    def recording_attention(q, k, v, **kwargs):
        seen.append(kwargs.get("cu_seqlens_q"))
        return attention(q, k, v, **kwargs)

    monkeypatch.setattr(hf_attention, "attention", recording_attention)
    with torch.no_grad():
        stage.nll(packed)
    assert len(seen) == stage.model.lm.config.num_hidden_layers
    assert all(torch.equal(cu, packed["cu_seq_lens_q"]) for cu in seen)


def test_frozen_towers_stay_in_eval_mode_and_get_no_gradient():
    stage = _stage(freeze=["encoders"]).train()
    towers = stage.model.towers
    assert not towers.training and stage.model.fused.training
    assert not any(p.requires_grad for p in towers.parameters())
    nll, _ = stage.nll(pack_examples(examples(stage.tokenizer), 64, stage.tokenizer.pad_token_id))
    nll.backward()
    assert all(p.grad is None for p in towers.parameters())
    assert any(p.grad is not None for p in stage.model.fused.adapters.parameters())


def test_init_from_loads_a_previous_stage_and_refuses_a_foreign_checkpoint(tmp_path):
    trained = _stage()
    torch.manual_seed(5)
    for param in trained.parameters():
        param.data.add_(torch.randn_like(param) * 0.01)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "sft.ckpt")
    fresh = InstructionTuning(tiny_model(), init_from=str(tmp_path / "sft.ckpt"))
    for name, tensor in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    torch.save({"state_dict": {"media_encoder.x": torch.zeros(1)}}, tmp_path / "align.ckpt")
    try:
        InstructionTuning(tiny_model(), init_from=str(tmp_path / "align.ckpt"))
    except KeyError as error:
        assert "no tensor under 'model.'" in str(error)
    else:
        raise AssertionError("an alignment checkpoint was accepted as init_from")


def _trainer(precision: str) -> L.Trainer:
    """A Trainer to attach (not fit): ``configure_optimizers`` reads its precision and step count."""
    quiet = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    return L.Trainer(accelerator="cpu", precision=precision, max_epochs=-1, max_steps=10, **quiet)


def test_adamw_gets_every_argument_and_its_fused_kernel_on_cpu_with_the_same_step():
    hyper = dict(lr=3e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.2)
    chats = examples(tiny_model().tokenizer)
    params = []
    for fused in (None, False):
        stage = InstructionTuning(tiny_model(), fused=fused, **hyper).train()
        stage.trainer = _trainer("32-true")
        optimizer = stage.configure_optimizers()["optimizer"]
        assert optimizer.defaults["fused"] is (fused is None)  # None: fused on CPU
        assert {k: optimizer.defaults[k] for k in ("lr", "betas", "eps")} == {
            k: hyper[k] for k in ("lr", "betas", "eps")
        }
        assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]
        stage.nll(pack_examples(chats, 64, stage.tokenizer.pad_token_id))[0].backward()
        optimizer.step()
        params.append(dict(stage.named_parameters()))
    for name, param in params[0].items():
        torch.testing.assert_close(param, params[1][name], msg=name)


def test_adamw_is_not_fused_by_default_under_lightning_mixed_precision():
    stage = InstructionTuning(tiny_model())
    stage.trainer = _trainer("bf16-mixed")  # its plugin cannot clip the gradients of a fused step
    assert not stage.configure_optimizers()["optimizer"].defaults["fused"]
    explicit = InstructionTuning(tiny_model(), fused=True)
    explicit.trainer = _trainer("bf16-mixed")
    assert explicit.configure_optimizers()["optimizer"].defaults["fused"]
