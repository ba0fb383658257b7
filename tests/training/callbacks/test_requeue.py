"""RequeueOnSignal: a SIGUSR1 in the middle of a step checkpoints at the step boundary -> exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import lightning as L
import pytest
import torch

from mmfuse.training.callbacks import requeue
from mmfuse.training.callbacks.requeue import RequeueOnSignal

BATCHES = [
    (torch.randn(4, 3, generator=torch.Generator().manual_seed(i)), torch.ones(4, 1)) for i in range(10)
]


class StatefulBatches:
    """The fixed ``BATCHES`` as a resumable loader (Lightning's ``state_dict`` protocol)."""

    def __init__(self) -> None:
        self.seen, self.skip = 0, 0

    def __len__(self) -> int:
        return len(BATCHES)

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for i in range(skip, len(BATCHES)):
            self.seen = i + 1
            yield BATCHES[i]

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.skip = state["seen"]


class SignalledRegression(L.LightningModule):
    """Adam regression that sends itself ``SIGUSR1`` inside ``training_step`` at ``signal_at``."""

    def __init__(self, signal_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 1)
        self.signal_at = signal_at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.signal_at:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled between two bytecodes, mid-step
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)


def _fit(root: Path, model: L.LightningModule, callbacks: tuple = (RequeueOnSignal,)) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=root, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[c() for c in callbacks],
    )  # fmt: skip
    trainer.fit(model, StatefulBatches())
    return trainer


@pytest.fixture
def scontrol_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Pretend to be task 0 of SLURM job 4242 and record ``scontrol`` calls instead of running them."""
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "4242"}.items():
        monkeypatch.setenv(name, value)
    calls: list[list[str]] = []
    real_run = subprocess.run

    def run(cmd, *args, **kwargs):
        if cmd[0] != "scontrol":
            return real_run(cmd, *args, **kwargs)
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(requeue.subprocess, "run", run)
    return calls


def test_signal_mid_step_checkpoints_after_the_step_and_resumes_exactly(
    tmp_path: Path, scontrol_calls: list[list[str]]
) -> None:
    interrupted = _fit(tmp_path, SignalledRegression(signal_at=3))
    assert interrupted.global_step == 4  # the signalled step finished, then training stopped
    assert scontrol_calls == [["scontrol", "requeue", "4242"]]
    hpc = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] == 4
    assert hpc["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seen": 4}]

    # The requeued job: same default_root_dir, no ckpt_path -> Lightning restores hpc_ckpt_1.
    resumed = SignalledRegression()
    assert _fit(tmp_path, resumed).global_step == 10
    reference = SignalledRegression()
    _fit(tmp_path / "reference", reference)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
    assert len(scontrol_calls) == 1


def test_lightnings_own_handler_checkpoints_mid_step(
    tmp_path: Path, scontrol_calls: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the callback exists: Lightning's handler saves wherever the signal lands."""
    monkeypatch.setattr("lightning.pytorch.trainer.connectors.signal_connector.call", lambda cmd: 0)
    _fit(tmp_path, SignalledRegression(signal_at=3), callbacks=())
    hpc = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    # Saved during step 3: global step 3, but the loader had already handed out batch 3, which
    # a resume from this checkpoint would never train on.
    assert hpc["global_step"] == 3
    assert hpc["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seen": 4}]


def test_outside_slurm_the_signal_is_not_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # a test-owned handler instead of death
    try:
        trainer = _fit(tmp_path, SignalledRegression(signal_at=3))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert trainer.global_step == 10 and not list(tmp_path.glob("hpc_ckpt_*.ckpt"))


def test_unknown_signal_name() -> None:
    with pytest.raises(ValueError, match="unknown signal 'SIGFOO'"):
        RequeueOnSignal("SIGFOO")
