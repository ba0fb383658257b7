"""A tiny MultimodalLM (two-layer Llama, an 8 px image tower) and chat examples for the LM tests."""

from pathlib import Path

import torch

from mmfuse.core.functional import shift_labels
from mmfuse.core.model import MultimodalLM
from mmfuse.core.text import tokenize_chat
from mmfuse.training.data.chat import ChatExample
from mmfuse.vision import OpenClipVisionEncoder

TOKENIZER = str(Path(__file__).resolve().parents[1] / "data" / "tokenizer")
LM = dict(
    model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, bos_token_id=0, eos_token_id=2, pad_token_id=3,
)  # fmt: skip


TOWER = {
    "class_path": "mmfuse.vision.OpenClipVisionEncoder",
    "init_args": {
        "embed_dim": 16,
        "vision_cfg": dict(image_size=8, patch_size=4, width=16, layers=1, head_width=8),
    },
}


def tiny_tower() -> OpenClipVisionEncoder:
    return OpenClipVisionEncoder(**TOWER["init_args"])


def tiny_init_args(**kwargs) -> dict:
    """The init arguments of :func:`tiny_model` as a resolved config holds them (the tower as a spec)."""
    return dict(lm=LM, tokenizer=TOKENIZER, towers={"image": TOWER}, num_heads=2, head_dim=8, **kwargs)


def tiny_model(open_gates: bool = True, dtype: torch.dtype = torch.float64, **kwargs) -> MultimodalLM:
    """Seeded; gates at 0.5 so that media change the logits (closed, as initialised, when False)."""
    torch.manual_seed(0)
    model = MultimodalLM(**{**tiny_init_args(**kwargs), "towers": {"image": tiny_tower()}})
    if open_gates:
        for layer in model.fused._fused_layers:
            layer.gated_xattn.attn_gate.data.fill_(0.5)
            layer.gated_xattn.ff_gate.data.fill_(0.5)
    return model.to(dtype).eval()


def conversations(n: int = 5) -> list[list[dict]]:
    """``n`` conversations of different lengths, every other one with an image first."""
    out = []
    for i in range(n):
        question = [{"type": "text", "text": "Which digit is this?" + " Look closely." * i}]
        if i % 2 == 0:
            question.insert(0, {"type": "image"})
        out.append(
            [{"role": "user", "content": question}, {"role": "assistant", "content": "seven" + " eight" * i}]
        )
    return out


def image(seed: int, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=dtype)}


def examples(tokenizer, n: int = 5, dtype: torch.dtype = torch.float64):
    """``ChatExample`` s of :func:`conversations`, their images seeded by position."""
    out = []
    for i, messages in enumerate(conversations(n)):
        chat = tokenize_chat(tokenizer, messages)
        media = [("image", image(i, dtype))] if i % 2 == 0 else []
        out.append(ChatExample(chat.input_ids, shift_labels(chat.labels), media, messages))
    return out
