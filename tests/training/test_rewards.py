"""Rewards: exact match, format, TRL-signature ``module:function`` rewards, weights, the model adapter."""

import math
import textwrap

import pytest
import torch
from dist_grpo import grpo_stage, prompts
from tiny_lm import tiny_model

from mmfuse.training.rewards import (
    ExactMatch,
    FormatReward,
    FunctionReward,
    ModelReward,
    RewardInputs,
    RewardModelScorer,
    combine,
    load_function,
)
from mmfuse.training.stages.reward import RewardModeling

INPUTS = RewardInputs(
    prompts=["Which digit?", "Which digit?", "What moves?"],
    completions=[" seven\n", "eight", "the digit two moving up"],
    columns={
        "reference": ["seven", "seven", "the digit two moving up"],
        "kind": ["image/digit"] * 2 + ["video/motion"],
    },
)


def test_exact_match_strips_and_compares_with_the_reference():
    assert ExactMatch().score(INPUTS).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(KeyError, match="'reference' column"):
        ExactMatch().score(RewardInputs(["q"], ["a"]))


def test_format_reward_is_a_full_match():
    reward = FormatReward(r"[a-z]+", weight=0.5)
    assert reward.score(INPUTS).tolist() == [1.0, 1.0, 0.0]  # spaces are outside the pattern
    assert reward(["q"], ["<answer>7</answer>"]) == [0.0]  # TRL's call signature


def test_a_trl_reward_function_runs_unchanged_from_module_colon_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent('''
        def length_penalty(prompts, completions, **kwargs):
            """A TRL-style reward: -0.1 per word, None for video questions (not applicable)."""
            return [None if k.startswith("video") else -0.1 * len(c.split())
                    for c, k in zip(completions, kwargs["kind"])]
    ''')
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = FunctionReward("my_rewards:length_penalty", weight=2.0)
    assert reward.name == "length_penalty"
    scores = reward.score(INPUTS)
    assert scores[:2].tolist() == pytest.approx([-0.1, -0.1]) and math.isnan(scores[2])
    total, table = combine([ExactMatch(), reward], INPUTS)
    assert table.shape == (3, 2)
    # TRL's weighted nansum: a reward that does not apply leaves the others
    assert total.tolist() == pytest.approx([1.0 - 0.2, 0.0 - 0.2, 1.0])


def test_bad_reward_specs_name_the_problem(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards.py").write_text(
        "NOT_CALLABLE = 3\ndef short(prompts, completions, **kw):\n    return [1.0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="'module:function'"):
        load_function("bad_rewards.short")
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        load_function("bad_rewards:missing")
    with pytest.raises(ValueError, match="not a callable"):
        load_function("bad_rewards:NOT_CALLABLE")
    with pytest.raises(ModuleNotFoundError):
        load_function("no_such_module_here:fn")
    with pytest.raises(ValueError, match="returned 1 values for 3 completions"):
        FunctionReward("bad_rewards:short").score(INPUTS)
    with pytest.raises(ValueError, match="rewards is empty"):
        combine([], INPUTS)


def test_the_model_reward_reads_each_completion_at_its_last_attended_token():
    """A scorer that returns the id of the last attended token sees each completion's last token."""
    stage = grpo_stage(group_size=2, max_new_tokens=5)
    rollout = stage.rollout(prompts(stage.tokenizer), batch_idx=0)
    inputs = rollout.reward_inputs(stage.pad_token_id)
    seen = {}

    def last_token_id(input_ids, attention_mask, media):
        last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)  # [b] last attended position
        seen["images"] = media["image"]["pixel_values"].shape[0]
        return input_ids.gather(1, last[:, None]).squeeze(1).float()

    scores = ModelReward(last_token_id).score(inputs)
    mask = rollout.rows["response_mask"]
    lengths = mask.sum(1)
    expected = rollout.rows["completion_ids"].gather(1, (lengths - 1)[:, None]).squeeze(1).float()
    assert torch.equal(scores, expected)
    images_per_prompt = [sum(m == "image" for m, _ in p.media) for p in rollout.prompts]
    assert seen["images"] == 2 * sum(images_per_prompt)  # one copy of a prompt's media per completion
    assert inputs.columns["completion_ids"][0] == rollout.rows["completion_ids"][0][: lengths[0]].tolist()
    with pytest.raises(TypeError, match="must be callable"):
        ModelReward(scorer="not a model")


def test_the_reward_model_checkpoint_scores_each_completion_as_it_scores_it_alone(tmp_path):
    """RewardModelScorer over a rollout's rows = the stage's own score of each row, one row at a time."""
    torch.manual_seed(3)
    trained = RewardModeling(tiny_model(dtype=torch.float32))
    torch.nn.init.normal_(trained.score.weight)
    torch.save({"state_dict": trained.state_dict()}, tmp_path / "reward.ckpt")
    scorer = RewardModelScorer(tiny_model(dtype=torch.float32), str(tmp_path / "reward.ckpt"))
    stage = grpo_stage(group_size=2, max_new_tokens=4)
    inputs = stage.rollout(prompts(stage.tokenizer), batch_idx=0).reward_inputs(stage.pad_token_id)
    scores = ModelReward(scorer).score(inputs)
    index = inputs.columns["completion_ids"]
    assert len(scores) == len(index) and scores.std() > 0
    items = 0
    for row in range(len(scores)):
        real = inputs.attention_mask[row].bool()
        n = int((inputs.input_ids[row] == trained.model.media_token_ids["image"]).sum())
        media = (
            {"image": {"pixel_values": inputs.media["image"]["pixel_values"][items : items + n]}} if n else {}
        )
        items += n
        alone = {
            "input_ids": inputs.input_ids[row, real][None],
            "attention_mask": torch.ones(1, int(real.sum())),
        }
        with torch.no_grad():
            expected = trained.eval().rewards({**alone, "media": media}, group_size=1)
        torch.testing.assert_close(scores[row], expected[0], atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="no 'state_dict'"):
        torch.save({"weights": {}}, tmp_path / "bad.ckpt")
        RewardModelScorer(tiny_model(dtype=torch.float32), str(tmp_path / "bad.ckpt"))
