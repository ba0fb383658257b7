"""``mmfuse chat DIR --prompt ... --image PATH``: the streamed answer is the model's greedy answer."""

import torch
from shards import png_bytes
from tiny_lm import tiny_model
from tiny_run import REPO, write_run

from mmfuse.core.model import MultimodalLM
from mmfuse.core.text import tokenize_chat
from mmfuse.training import chat, export
from mmfuse.training.data.chat import collate_media


def test_one_shot_chat_streams_the_greedy_answer_to_an_image_question(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    checkpoint = write_run(tmp_path / "run", tiny_model(dtype=torch.float32))
    export.main([str(checkpoint), str(tmp_path / "export")])
    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes((255, 0, 0)))
    capsys.readouterr()
    chat.main([str(tmp_path / "export"), "--prompt", "Which digit is this?", "--image", str(picture),
               "--max_new_tokens", "6"])  # fmt: skip
    printed = capsys.readouterr().out.strip()

    model = MultimodalLM.from_pretrained(tmp_path / "export")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which digit is this?"}]}
    ]
    input_ids = tokenize_chat(model.tokenizer, messages, add_generation_prompt=True).input_ids[None]
    transform = export.load_transforms(tmp_path / "export")["image"]
    media = collate_media([[("image", transform(picture.read_bytes(), train=False))]])
    out = model.generate(input_ids, torch.ones_like(input_ids), media, max_new_tokens=6)
    ids = out.completion_ids[0][out.completion_mask[0]].tolist()
    expected = model.tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert printed == expected and len(expected) > 0
