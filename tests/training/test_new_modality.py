"""A fourth modality (tests/imu.py) trains through SFT end to end with no change to mmfuse."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from shards import write_shard

from mmfuse.training.cli import cli_main

REPO = Path(__file__).resolve().parents[2]


def _imu_shard(path: Path, n: int, seed: int) -> None:
    """Conversations asking which way a 3-axis signal drifts; the answer is the sign of axis 0."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        direction = ["up", "down"][i % 2]
        signal = rng.normal(0, 0.3, (16, 3)) + np.linspace(0, 2 if direction == "up" else -2, 16)[:, None] * [
            1,
            0,
            0,
        ]
        buffer = io.BytesIO()
        np.save(buffer, signal.astype(np.float32))
        question = [{"type": "imu"}, {"type": "text", "text": " Which way does it move?"}]
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": direction}]
        record = {"messages": messages, "kinds": ["imu/direction"]}
        samples.append(
            {"__key__": f"imu{i:04d}", "json": json.dumps(record).encode(), "imu_0.npy": buffer.getvalue()}
        )
    write_shard(path, samples)


@pytest.mark.slow
def test_an_imu_tower_trains_through_sft(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    _imu_shard(tmp_path / "train.tar", 128, seed=0)
    _imu_shard(tmp_path / "val.tar", 32, seed=1)
    lm = dict(
        model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    config = {
        "seed_everything": 0,
        "trainer": {"default_root_dir": f"{tmp_path}/run", "max_epochs": 12, "check_val_every_n_epoch": 12,
                    "num_sanity_val_steps": 0, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "mmfuse.training.callbacks.generation.GenerationEval",
                                   "init_args": {"max_new_tokens": 3}}]},
        "checkpoint": {"monitor": None},
        "model": {"class_path": "mmfuse.training.stages.sft.InstructionTuning", "init_args": {
            "model": {"class_path": "mmfuse.core.model.MultimodalLM", "init_args": {
                "lm": lm, "tokenizer": "data/tokenizer", "towers": {"imu": {"class_path": "imu.ImuEncoder"}},
                "num_heads": 2, "head_dim": 8}},
            "lr": 3e-3, "warmup_steps": 5}},
        "data": {"class_path": "mmfuse.training.data.ChatDataModule", "init_args": {
            "train_shards": str(tmp_path / "train.tar"), "val_shards": str(tmp_path / "val.tar"),
            "transforms": {"imu": {"class_path": "imu.ImuTransform"}}, "max_length": 32, "batch_size": 16,
            "val_batch_size": 32, "num_workers": 0, "shuffle_buffer": 64}},
    }  # fmt: skip
    (tmp_path / "imu.yaml").write_text(yaml.safe_dump(config))

    cli_main(["fit", "--config", str(tmp_path / "imu.yaml")])

    rows = list(csv.DictReader(open(tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    logged = {k: float(v) for r in rows for k, v in r.items() if v not in ("", None)}
    assert losses[-1] < 0.5 * losses[0]
    assert logged["val/majority/imu/direction"] == 0.5
    assert logged["val/exact_match/imu/direction"] >= 0.9  # the answer is read from the signal
