"""``save_pretrained`` / ``from_pretrained``: equal logits, the plain LM for transformers; streaming."""

import torch
from tiny_lm import conversations, image, tiny_init_args, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmfuse.core.generation import left_pad
from mmfuse.core.model import MultimodalLM
from mmfuse.core.text import tokenize_chat

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _model() -> MultimodalLM:
    model = tiny_model(dtype=torch.float32, lora=LORA)
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters count
            param.data.normal_(std=0.1)
    return model


def _batch(model: MultimodalLM):
    chats = [tokenize_chat(model.tokenizer, m).input_ids for m in conversations(3)]
    input_ids, attention_mask = left_pad(chats, model.tokenizer.pad_token_id)
    media = {"image": {"pixel_values": torch.stack([image(0, torch.float32)["pixel_values"],
                                                   image(2, torch.float32)["pixel_values"]])}}  # fmt: skip
    return input_ids, attention_mask, media


def test_from_pretrained_rebuilds_equal_logits_and_generations(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, tiny_init_args(lora=LORA))
    loaded = MultimodalLM.from_pretrained(tmp_path)
    input_ids, attention_mask, media = _batch(model)
    with torch.no_grad():
        logits = model(input_ids, media, attention_mask=attention_mask)
        assert torch.equal(loaded(input_ids, media, attention_mask=attention_mask), logits)
    ours = model.generate(input_ids, attention_mask, media, max_new_tokens=6)
    theirs = loaded.generate(input_ids, attention_mask, media, max_new_tokens=6)
    assert torch.equal(ours.completion_ids, theirs.completion_ids) and torch.equal(ours.logps, theirs.logps)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()


def test_the_language_model_loads_with_plain_transformers_with_the_chat_template(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path, tiny_init_args(lora=LORA))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "language_model")
    expected = model.language_model_state_dict()  # LoRA merged in, no fusion blocks
    state = plain.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.chat_template == model.tokenizer.chat_template is not None


def test_on_token_streams_the_tokens_generate_returns():
    model = tiny_model(dtype=torch.float32)
    input_ids, attention_mask, media = _batch(model)
    steps = []
    out = model.generate(input_ids, attention_mask, media, max_new_tokens=5, on_token=steps.append)
    assert torch.equal(torch.stack(steps, 1), out.completion_ids)
