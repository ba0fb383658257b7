"""GRPO stage: ratio 1 and KL 0 at the first update, advantages, accumulation, dynamic sampling, 2 ranks."""

import socket

import pytest
import torch
import torch.multiprocessing as mp
from dist_grpo import WORLD, fixed_rollout, grpo_stage, prompts, step_gradients, worker
from tiny_lm import LM, TOKENIZER, tiny_tower

from mmfuse.core.model import MultimodalLM
from mmfuse.training.rewards import ExactMatch
from mmfuse.training.rollout import completion_forward, completion_logps
from mmfuse.training.stages.grpo import GRPO


def _dropout_model() -> MultimodalLM:
    """The tiny model with attention dropout 0.3, so train mode differs from eval mode unless disabled."""
    torch.manual_seed(0)
    model = MultimodalLM({**LM, "attention_dropout": 0.3}, TOKENIZER, towers={"image": tiny_tower()},
                         num_heads=2, head_dim=8)  # fmt: skip
    for layer in model.fused._fused_layers:
        layer.gated_xattn.attn_gate.data.fill_(0.5)
    return model.float()


def test_first_update_ratio_is_one_and_kl_is_zero_with_independent_forwards():
    stage = GRPO(
        _dropout_model(), [ExactMatch()], beta=0.04, group_size=3, max_new_tokens=5, micro_batch_size=2
    )
    rollout = stage.rollout(prompts(stage.tokenizer), batch_idx=0)  # old_logps: the KV-cached sampling pass
    stage.score(rollout)  # ref_logps: the reference copy's own full forward
    stage.prepare(rollout)
    stage.train()
    for micro_batch in rollout.micro_batches(2, stage.pad_token_id):
        mask = micro_batch["response_mask"]
        logits, _ = completion_forward(stage.model, micro_batch)  # train mode, with grad
        logps = completion_logps(logits, micro_batch)
        assert logps.requires_grad and not micro_batch["old_logps"].requires_grad
        torch.testing.assert_close(logps[mask], micro_batch["old_logps"][mask], atol=1e-5, rtol=0)
        torch.testing.assert_close(logps[mask], micro_batch["ref_logps"][mask], atol=1e-5, rtol=0)
        _, metrics = stage.micro_batch_loss(micro_batch)
        units = stage.loss_units(micro_batch)
        assert abs(metrics["ratio"] / units - 1) < 1e-5 and abs(metrics["kl"] / units) < 1e-5
        assert metrics["clip_ratio/region"] == 0


def test_without_disable_dropout_the_train_mode_forward_differs():
    stage = GRPO(_dropout_model(), [ExactMatch()], group_size=2, max_new_tokens=5, disable_dropout=False)
    rollout = stage.rollout(prompts(stage.tokenizer), batch_idx=0)
    stage.train()
    micro_batch = rollout.micro_batch(stage.pad_token_id)
    logps = completion_logps(completion_forward(stage.model, micro_batch)[0], micro_batch)
    mask = micro_batch["response_mask"]
    assert (logps[mask] - micro_batch["old_logps"][mask]).abs().max() > 1e-3


def test_advantages_are_per_group_and_rloo_leaves_one_out():
    rollout = fixed_rollout(group_size=4)
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 0.5, 0, 1, 0.5, 0, 0, 0, 1])
    rollout.rows["rewards"] = rewards
    grpo = grpo_stage(group_size=4)
    grpo.prepare(rollout)
    expected = torch.tensor([1.4997, -0.4999, -0.4999, -0.4999, 0, 0, 0, 0])
    torch.testing.assert_close(rollout.rows["advantages"][:8], expected, atol=1e-4, rtol=0)
    rloo = grpo_stage(group_size=4, advantage="rloo")
    rloo.prepare(rollout)
    third = 1 / 3
    torch.testing.assert_close(rollout.rows["advantages"][:4], torch.tensor([1, -third, -third, -third]))
    torch.testing.assert_close(rollout.rows["advantages"][8:12], torch.tensor([0.0, -2 / 3, 2 / 3, 0.0]))


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo", "grpo"])
def test_micro_batches_of_one_prompt_accumulate_to_the_gradient_of_one_batch(loss_type):
    stage = grpo_stage(loss_type=loss_type, beta=0.04)
    rollout = fixed_rollout()
    stage.prepare(rollout)
    split = step_gradients(stage, rollout.micro_batches(1, stage.pad_token_id))
    whole = step_gradients(stage, rollout.micro_batches(rollout.num_prompts, stage.pad_token_id))
    assert len(whole) > 10
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], msg=name, rtol=1e-5, atol=1e-7)


def test_bnpo_is_the_micro_batch_token_mean_so_uneven_lengths_change_it():
    """The fixture's completions have uneven lengths: a per-micro-batch mean is not the batch's."""
    stage = grpo_stage(loss_type="bnpo")
    rollout = fixed_rollout()
    stage.prepare(rollout)
    split = step_gradients(stage, rollout.micro_batches(1, stage.pad_token_id))
    whole = step_gradients(stage, rollout.micro_batches(rollout.num_prompts, stage.pad_token_id))
    assert any(not torch.allclose(split[n], whole[n], rtol=1e-3, atol=1e-6) for n in whole)


def test_dynamic_sampling_drops_all_equal_groups_and_updates_once_refilled():
    stage = grpo_stage(group_size=2, dynamic_sampling=True)
    first, second = fixed_rollout(group_size=2), fixed_rollout(group_size=2)
    first.rows["rewards"] = torch.tensor([1.0, 1, 0, 1, 0, 0, 1, 1])  # prompt 1 informative
    second.rows["rewards"] = torch.tensor([0.0, 1, 1, 0, 1, 0, 0, 0])  # prompts 0, 1, 2
    assert stage.keep(first) is None  # 1 of 4 prompts kept: wait for more
    kept = stage.keep(second)
    assert kept is not None and kept.num_prompts == first.num_prompts
    assert kept.prompts == [first.prompts[1], *second.prompts[:3]]
    torch.testing.assert_close(kept.rows["rewards"], torch.tensor([0.0, 1, 0, 1, 1, 0, 1, 0]))
    assert stage._buffer is None  # the update starts a fresh buffer


def test_training_forward_encodes_each_prompt_once_and_equals_per_row_media():
    stage = grpo_stage()
    rollout = fixed_rollout()
    micro_batch = rollout.micro_batch(stage.pad_token_id)
    seen = []
    stage.model.towers["image"].visual.register_forward_hook(
        lambda m, args, out: seen.append(args[0].shape[0])
    )
    with torch.no_grad():
        logits, _ = completion_forward(stage.model, micro_batch)
        images = sum(m == "image" for p in rollout.prompts for m, _ in p.media)
        assert seen == [images] and images < len(micro_batch["input_ids"])
        pixels = micro_batch["media"]["image"]["pixel_values"]
        per_row = {"image": {"pixel_values": pixels[micro_batch["media_index"]["image"]]}}  # g copies
        full = stage.model.token_logps(
            micro_batch["input_ids"], per_row, attention_mask=micro_batch["attention_mask"],
            position_ids=micro_batch["position_ids"],
        )  # fmt: skip
    t = micro_batch["response_mask"].shape[1]
    mask = micro_batch["response_mask"]
    torch.testing.assert_close(
        completion_logps(logits, micro_batch)[mask], full[:, -t:][mask], atol=1e-5, rtol=0
    )


@pytest.mark.slow
def test_two_ranks_give_the_gradients_of_one_process_holding_the_same_rollouts():
    """Ranks hold different prompts with different token counts; batch-scaled advantages need the gather."""
    stage = grpo_stage(scale_rewards="batch")
    rollout = fixed_rollout()
    stage.prepare(rollout)
    expected = step_gradients(stage, rollout.micro_batches(1, stage.pad_token_id))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.get_context("spawn").Manager().dict()
    mp.start_processes(worker, args=(port, rollout, out), nprocs=WORLD, start_method="spawn")
    for rank in range(WORLD):
        torch.testing.assert_close(out[rank]["advantages"], rollout.rows["advantages"][out[rank]["rows"]])
        for name in expected:
            torch.testing.assert_close(
                out[rank]["grads"][name], expected[name], rtol=1e-5, atol=1e-7, msg=name
            )
    assert out[0]["tokens"] != out[1]["tokens"]  # dapo's normaliser must be the all-reduced count
