"""EMA of the weights (``--ema_decay``, Lightning's EMAWeightAveraging): a hand-computed average, validation
and checkpoints on it, the raw weights kept for resuming."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EMAWeightAveraging, ModelCheckpoint
from shards import color_shards
from tiny_lm import examples, tiny_model
from torch.utils.data import DataLoader

from mmfuse.training.cli import cli_main
from mmfuse.training.data.chat import pad_examples
from mmfuse.training.stages.base import load_stage_weights
from mmfuse.training.stages.sft import InstructionTuning

DECAY, STEPS = 0.6, 4
CONFIG = Path(__file__).parents[1] / "tiny_align.yaml"


class Recorder(Callback):
    """The raw weights after each optimizer step, and the weights validation runs on (state-dict keys)."""

    def __init__(self) -> None:
        self.raw, self.validated = [], None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw.append(_weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.validated = _weights(pl_module)


def _weights(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_ema_weights_equal_the_hand_computed_average_in_validation_and_in_the_checkpoint(tmp_path):
    stage = InstructionTuning(tiny_model(dtype=torch.float32).train(), lr=0.05, warmup_steps=0)
    pad_id = stage.tokenizer.pad_token_id
    chats = examples(stage.tokenizer, n=4, dtype=torch.float32)
    batches = [{"micro_batches": [pad_examples([c], pad_id)], "num_skipped": 0} for c in chats]
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, accelerator="cpu",
        callbacks=[EMAWeightAveraging(decay=DECAY), recorder,
                   ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=STEPS, save_last=False)],
    )  # fmt: skip
    trainer.fit(stage, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))

    assert len(recorder.raw) == STEPS
    ema = dict(recorder.raw[0])  # the first update copies
    for raw in recorder.raw[1:]:
        ema = {n: DECAY * ema[n] + (1 - DECAY) * raw[n] for n in ema}
    last = recorder.raw[-1]
    moved = [n for n in ema if not torch.allclose(ema[n], last[n])]
    assert len(moved) > 10  # the average differs from the last weights
    for name in ema:
        torch.testing.assert_close(recorder.validated[name], ema[name], msg=name)

    (path,) = tmp_path.glob("*.ckpt")
    saved = load_stage_weights(str(path))  # what init_from, mmfuse eval and mmfuse export read
    raw = torch.load(path, weights_only=True)["current_model_state"]
    for name in ema:
        key = name.removeprefix("model.")
        torch.testing.assert_close(saved[key], ema[name], msg=name)
        assert torch.equal(raw[name], last[name])


def test_ema_decay_adds_lightnings_callback_once(tmp_path):
    shards = color_shards(tmp_path, num_shards=1, per_shard=8)
    args = ["--config", str(CONFIG), "--data.init_args.train_shards", shards,
            "--data.init_args.num_workers", "0", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    plain = cli_main(args, run=False)
    assert not any(isinstance(c, EMAWeightAveraging) for c in plain.trainer.callbacks)
    cli = cli_main([*args, "--ema_decay", "0.9"], run=False)
    assert sum(isinstance(c, EMAWeightAveraging) for c in cli.trainer.callbacks) == 1
    # the saved config lists the callback and the decay; re-running it adds no second one
    again = cli_main(
        [*args, "--ema_decay", "0.9", "--trainer.callbacks+=lightning.pytorch.callbacks.EMAWeightAveraging"],
        run=False,
    )
    assert sum(isinstance(c, EMAWeightAveraging) for c in again.trainer.callbacks) == 1
