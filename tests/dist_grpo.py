"""Fixtures of the GRPO tests and the worker of their two-process test (spawned: must be importable)."""

import os

import torch
import torch.distributed as dist
from tiny_lm import examples, tiny_model

from mmfuse.training.data.chat import answer_prompts
from mmfuse.training.rewards import ExactMatch
from mmfuse.training.rollout import Rollout
from mmfuse.training.stages.grpo import GRPO

WORLD = 2


def prompts(tokenizer, n: int = 4) -> list:
    """The last-turn prompts of ``n`` tiny conversations, every other one with an image."""
    return [answer_prompts(e, tokenizer)[-1] for e in examples(tokenizer, n=n, dtype=torch.float32)]


def grpo_stage(**kwargs) -> GRPO:
    """GRPO on the seeded tiny fp32 model (identical in every process)."""
    settings = {"group_size": 3, "max_new_tokens": 6, "micro_batch_size": 2, **kwargs}
    return GRPO(tiny_model(dtype=torch.float32), [ExactMatch()], **settings)


def fixed_rollout(group_size: int = 3) -> Rollout:
    """A sampled rollout with uneven completion lengths, fixed rewards and perturbed ``ref_logps``."""
    stage = grpo_stage(group_size=group_size)
    rollout = stage.rollout(prompts(stage.tokenizer), batch_idx=0)
    rows = rollout.rows
    n, t = rows["response_mask"].shape
    mask = rows["response_mask"] & (torch.arange(t) < 1 + (torch.arange(n) * t // n)[:, None])  # [n, t]
    rows["response_mask"] = mask
    rows["completion_ids"] = rows["completion_ids"].masked_fill(~mask, stage.pad_token_id)
    rows["old_logps"] = rows["old_logps"] * mask
    rows["ref_logps"] = (rows["old_logps"] + 0.3 * torch.sin(torch.arange(n * t).view(n, t).float())) * mask
    rows["rewards"] = (torch.arange(n) % 3).float() / 2
    return rollout


def step_gradients(stage: GRPO, micro_batches: list[dict], world: int = 1) -> dict[str, torch.Tensor]:
    """Gradients of one optimiser step's accumulation, units all-reduced as ``LMStage`` does."""
    stage.zero_grad()
    total = torch.tensor(float(sum(stage.loss_units(mb) for mb in micro_batches)))
    if world > 1:
        dist.all_reduce(total)
    stage.accumulate(micro_batches, total, world, lambda loss: loss.backward())
    return {n: p.grad.clone() for n, p in stage.named_parameters() if p.grad is not None}


def worker(rank: int, port: int, rollout: Rollout, out) -> None:
    """Rank ``rank``'s half of ``rollout`` (whole prompts): advantages, accumulation, averaged gradients."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    stage = grpo_stage(scale_rewards="batch")
    per_rank = rollout.num_prompts // WORLD
    mine = rollout.select(range(rank * per_rank, (rank + 1) * per_rank))  # whole groups on each rank
    stage.prepare(mine)  # advantages from the gathered rewards
    micro_batches = mine.micro_batches(1, stage.pad_token_id)
    grads = step_gradients(stage, micro_batches, world=WORLD)
    for grad in grads.values():
        dist.all_reduce(grad)  # what DDP does: the average of the ranks' gradients
        grad /= WORLD
    g = rollout.group_size
    out[rank] = {
        "grads": grads,
        "advantages": mine.rows["advantages"],
        "rows": torch.arange(rank * per_rank * g, (rank + 1) * per_rank * g),
        "tokens": sum(stage.loss_units(mb) for mb in micro_batches),
    }
    dist.destroy_process_group()
