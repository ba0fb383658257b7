"""The one sharded data base: the same epoch length, shard and sample errors in every data module."""

import json

import pytest
from shards import color_shards, write_shard
from tiny_lm import TOKENIZER

from mmfuse.core.text import load_tokenizer
from mmfuse.training.data import ChatDataModule, MediaTextDataModule
from mmfuse.vision import ImageTransform


def _media_text(url, **kwargs):
    return MediaTextDataModule(url, None, ImageTransform(image_size=16), context_length=8, **kwargs)


def _chat_shard(path, n):
    samples = []
    for i in range(n):
        messages = [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": f"{i}"}]
        samples.append({"__key__": f"c{i:03d}", "json": json.dumps({"messages": messages}).encode()})
    write_shard(path, samples)
    return str(path)


def test_a_single_shard_with_the_default_workers_trains(tmp_path, caplog):
    url = color_shards(tmp_path, num_shards=1, per_shard=24)
    data = _media_text(url.replace("{000000..000000}", "000000"), batch_size=8)  # num_workers=2 by default
    assert data.num_workers == 2
    with caplog.at_level("WARNING"):
        batches = list(data.train_dataloader())
    assert len(batches) == 3 and all(b["pixel_values"].shape == (8, 3, 16, 16) for b in batches)
    assert "1 shards per rank: 1 dataloader workers, not 2" in caplog.text


@pytest.mark.parametrize("module", ["media_text", "chat"])
def test_too_few_samples_is_the_same_clear_error_in_every_module(tmp_path, module):
    if module == "media_text":
        data = _media_text(color_shards(tmp_path, num_shards=1, per_shard=5), batch_size=8)
    else:
        tokenizer = load_tokenizer(TOKENIZER)
        data = ChatDataModule(
            _chat_shard(tmp_path / "c.tar", 5), batch_size=4, accumulate=2, tokenizer=tokenizer
        )
    with pytest.raises(ValueError, match="5 training samples .* fewer than one step needs: world_size 1 x 8"):
        data.train_dataloader()


def test_fewer_shards_than_ranks_names_the_field_and_resampled_lifts_it(tmp_path, monkeypatch):
    url = color_shards(tmp_path, num_shards=1, per_shard=16)
    data = _media_text(url, batch_size=4, num_workers=0)
    monkeypatch.setattr(data, "_world_size", lambda: 2)
    with pytest.raises(ValueError, match="data.train_shards has 1 shards for 2 ranks.*data.resampled=true"):
        data.train_dataloader()
    data.resampled = True
    assert len(data.train_dataloader()) == 2  # 16 samples // (2 ranks x 4)


def test_chat_module_takes_the_model_tokenizer():
    data = ChatDataModule("unused.tar")
    tokenizer = load_tokenizer(TOKENIZER)
    data.trainer = type("T", (), {"lightning_module": type("M", (), {"tokenizer": tokenizer})()})()
    data.setup("fit")
    assert data.tokenizer is tokenizer and data.decoder().tokenizer is tokenizer
