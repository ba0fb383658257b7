"""``training/slurm/fit.sbatch`` on a real two-node SLURM cluster: DDP over 2 nodes x 2 tasks, and
a SIGUSR1 requeue that resumes at the exact step.

Each job trains the tiny alignment config of ``tests/training`` on CPU (gloo) with a probe
callback printing one ``RANK ...`` line per rank (cluster environment, world size, node, global
step, parameter digest) and a ``STEP <n>`` line per step from rank 0.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from cluster import LocalSlurmCluster
from shards import color_shards

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).parents[2]
SBATCH = REPO / "training" / "slurm" / "fit.sbatch"
PROBES = REPO / "tests" / "training"
MAX_STEPS = 12  # world size 4 x batch 4 = 16 samples a step: 4 steps an epoch over 64 samples
RANK_LINE = re.compile(
    r"^RANK (?P<event>start|end) global_rank=(?P<rank>\d) world_size=(?P<world>\d+) env=(?P<env>\w+) "
    r"node=(?P<node>\S+) restart=(?P<restart>\d+) global_step=(?P<step>\d+) params=(?P<params>\w+)$",
    re.MULTILINE,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("shards")
    train = color_shards(root, num_shards=4, per_shard=16)
    return [f"--data.init_args.train_shards={train}", f"--data.init_args.val_shards={train}"]


def _submit(cluster: LocalSlurmCluster, run_dir: Path, shards: list[str], *args: str) -> tuple[str, Path]:
    """Submit fit.sbatch as 2 nodes x 2 CPU tasks; the job id and its output file."""
    options = [
        "--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:20:00",
        f"--job-name={run_dir.name}", f"--output={run_dir.parent}/%x-%j.out",
    ]  # fmt: skip
    mmfuse_args = [
        *shards, "--data.init_args.num_workers=1", "--data.init_args.batch_size=4",
        f"--trainer.max_steps={MAX_STEPS}", "--trainer.callbacks+=probes.ReportRank", *args,
    ]  # fmt: skip
    env = {"CONFIG": str(PROBES / "tiny_align.yaml"), "RUN_DIR": str(run_dir), "PYTHONPATH": str(PROBES)}
    job = cluster.sbatch(SBATCH, options, mmfuse_args, env=env, cwd=REPO)
    return job, run_dir.parent / f"{run_dir.name}-{job}.out"


def _ranks(log: str, event: str, restart: int = 0) -> list[dict[str, str]]:
    lines = [m.groupdict() for m in RANK_LINE.finditer(log)]
    return sorted(
        (m for m in lines if m["event"] == event and int(m["restart"]) == restart), key=lambda m: m["rank"]
    )


def _assert_one_ddp_world(ranks: list[dict[str, str]], step: int) -> None:
    assert [r["rank"] for r in ranks] == ["0", "1", "2", "3"]
    assert {(r["env"], r["world"], r["step"]) for r in ranks} == {("SLURMEnvironment", "4", str(step))}
    assert Counter(r["node"] for r in ranks) == {"n1": 2, "n2": 2}
    assert len({r["params"] for r in ranks}) == 1, "parameters differ across ranks"


@pytest.fixture(scope="module")
def uninterrupted(slurm_cluster: LocalSlurmCluster, shards: list[str], tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted 2 x 2 job: its run directory and log."""
    run_dir = tmp_path_factory.mktemp("jobs") / "ddp"
    job, out = _submit(slurm_cluster, run_dir, shards)
    info = slurm_cluster.wait(job, {"COMPLETED"}, timeout=900)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-5000:]}"
    return run_dir, log


def test_ddp_job_on_2_nodes_x_2_tasks(uninterrupted: tuple[Path, str]) -> None:
    run_dir, log = uninterrupted
    _assert_one_ddp_world(_ranks(log, "start"), step=0)
    _assert_one_ddp_world(_ranks(log, "end"), step=MAX_STEPS)
    manifest = (run_dir / "lightning_logs" / "version_0" / "manifest.json").read_text()
    assert '"cluster_environment": "SLURMEnvironment"' in manifest and '"world_size": 4' in manifest


def _wait_for_line(path: Path, pattern: str, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (match := re.search(pattern, path.read_text(), re.MULTILINE)):
            return match
        time.sleep(0.5)
    raise TimeoutError(f"no {pattern!r} in {path} after {timeout:.0f} s")


def test_sigusr1_requeue_resumes_at_the_exact_step(
    slurm_cluster: LocalSlurmCluster, shards: list[str], uninterrupted: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "requeue"
    job, out = _submit(slurm_cluster, run_dir, shards, "--trainer.callbacks.step_sleep=1.0")
    _wait_for_line(out, r"^STEP 5$", timeout=900)
    slurm_cluster.run("scancel", "--signal=USR1", job)  # what --signal=SIGUSR1@90 sends, now
    info = slurm_cluster.wait(job, {"PENDING"}, timeout=300)  # requeued: held ~2 min by BeginTime
    assert info["Restarts"] == "1", info
    slurm_cluster.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    info = slurm_cluster.wait(job, {"COMPLETED"}, timeout=900)
    log = out.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{log[-5000:]}"

    saved = re.search(r"SIGUSR1: saved (\S+hpc_ckpt_1\.ckpt) at global step (\d+); stopping", log)
    assert saved and f"requeueing SLURM job {job}" in log, log[-5000:]
    step = int(saved.group(2))
    assert torch.load(saved.group(1), weights_only=False)["global_step"] == step
    first_run, second_run = log.split("restart=1", 1)
    assert max(int(s) for s in re.findall(r"^STEP (\d+)$", first_run, re.MULTILINE)) == step
    _assert_one_ddp_world(_ranks(log, "start", restart=1), step=step)  # resumed where it stopped
    _assert_one_ddp_world(_ranks(log, "end", restart=1), step=MAX_STEPS)
    assert min(int(s) for s in re.findall(r"^STEP (\d+)$", second_run, re.MULTILINE)) == step + 1

    # Same data positions and optimizer state: the weights equal the uninterrupted job's up to
    # float summation order (DDP's first step after a restart reduces gradients in the initial
    # bucket layout, which it rebuilds after step one: gloo then sums some elements in another
    # order, ~1e-6 apart).
    reference = torch.load(uninterrupted[0] / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["global_step"] == reference["global_step"] == MAX_STEPS
    for name, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=1e-4, atol=1e-5)
