"""``mmfuse merge`` on checkpoints: merged tensors against hand-computed ones, LoRA folded into weights."""

import torch
from tiny_lm import conversations, tiny_init_args, tiny_model
from tiny_run import write_run

from mmfuse.core.generation import left_pad
from mmfuse.core.text import tokenize_chat
from mmfuse.training.export import load_checkpoint_model
from mmfuse.training.merge import main
from mmfuse.training.stages.base import load_stage_weights

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _perturbed(seed: int, **kwargs):
    model = tiny_model(dtype=torch.float32, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_A" not in name:  # everything else, LoRA B included, moves
            param.data += 0.05 * torch.randn(param.shape, generator=gen)
    return model


def test_linear_soup_of_two_checkpoints_is_their_weighted_mean(tmp_path):
    a = write_run(tmp_path / "a", _perturbed(1))
    b = write_run(tmp_path / "b", _perturbed(2))
    out = tmp_path / "soup.ckpt"
    main([str(a), str(b), "--method", "linear", "--weights", "1", "3", "--out", str(out)])
    merged, wa, wb = (load_stage_weights(str(p)) for p in (out, a, b))
    assert merged.keys() == wa.keys()
    for key, value in merged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (wa[key] + 3 * wb[key]) / 4, msg=key)
    record = torch.load(out, weights_only=True)["merge"]
    assert record["method"] == "linear" and record["weights"] == [1.0, 3.0]


def test_task_arithmetic_of_lora_checkpoints_merges_what_the_adapters_do(tmp_path):
    # base + 1 * (B - base) is B: with LoRA folded into the weights, the merged model computes B's logits
    init_args = tiny_init_args(lora=LORA)
    base = write_run(tmp_path / "base", _perturbed(1, lora=LORA), init_args)
    child = write_run(tmp_path / "child", _perturbed(2, lora=LORA), init_args)
    out = tmp_path / "ta.ckpt"
    main([str(child), "--method", "task_arithmetic", "--base", str(base), "--out", str(out),
          "--config", str(tmp_path / "child/lightning_logs/version_0/config.yaml")])  # fmt: skip
    merged_state = load_stage_weights(str(out))
    assert all(torch.count_nonzero(v) == 0 for k, v in merged_state.items() if "lora_B" in k)

    expected_model, _ = load_checkpoint_model(child)
    merged_model, _ = load_checkpoint_model(out, tmp_path / "child/lightning_logs/version_0/config.yaml")
    chats = [tokenize_chat(expected_model.tokenizer, m).input_ids for m in conversations(2)[1:]]
    input_ids, attention_mask = left_pad(chats, expected_model.tokenizer.pad_token_id)
    with torch.no_grad():
        expected = expected_model(input_ids, attention_mask=attention_mask)
        torch.testing.assert_close(merged_model(input_ids, attention_mask=attention_mask), expected)
