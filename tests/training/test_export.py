"""``mmfuse export``: the directory rebuilds the checkpoint's model with equal logits, carries the
transforms, and its model card names the stage, the data with their licences and the held-out figures."""

import torch
from tiny_lm import conversations, image, tiny_model
from tiny_run import REPO, write_run

from mmfuse.core.generation import left_pad
from mmfuse.core.model import MultimodalLM
from mmfuse.core.text import tokenize_chat
from mmfuse.training.export import load_checkpoint_model, load_transforms, main


def test_export_round_trip_gives_equal_logits_and_a_model_card(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # LICENSES/ and the shards as a run started in the repository sees them
    checkpoint = write_run(tmp_path / "run", tiny_model(dtype=torch.float32))
    main([str(checkpoint), str(tmp_path / "export")])

    trained, _ = load_checkpoint_model(checkpoint)
    exported = MultimodalLM.from_pretrained(tmp_path / "export")
    chats = [tokenize_chat(trained.tokenizer, m).input_ids for m in conversations(3)]
    input_ids, attention_mask = left_pad(chats, trained.tokenizer.pad_token_id)
    media = {"image": {"pixel_values": torch.stack([image(0, torch.float32)["pixel_values"],
                                                   image(2, torch.float32)["pixel_values"]])}}  # fmt: skip
    with torch.no_grad():
        expected = trained(input_ids, media, attention_mask=attention_mask)
        assert torch.equal(exported(input_ids, media, attention_mask=attention_mask), expected)
    assert type(load_transforms(tmp_path / "export")["image"]).__name__ == "ImageTransform"

    card = (tmp_path / "export" / "README.md").read_text()
    assert "| InstructionTuning |" in card and "| 7 |" in card  # the stage and its step
    assert "| digits |" in card and "LICENSES/digits.md" in card
    assert "Creative Commons Attribution 4.0 International (CC BY 4.0)" in card
    assert "| wordnet |" in card and "| val/exact_match/image/digit | 0.375 |" in card
    assert "## Intended use" in card and "## Limits" in card


def test_export_names_the_ema_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    model = tiny_model(dtype=torch.float32)
    checkpoint = write_run(tmp_path / "run", model, current_model_state={})
    main([str(checkpoint), str(tmp_path / "export")])
    assert "EMA (decay" in (tmp_path / "export" / "README.md").read_text()
