"""A throw-away SLURM cluster on this host: munged + slurmctld + slurmd daemons posing as nodes.

Adapted from a recipe verified on this machine kind (Debian's slurm-wlm 22.05, built with
multiple-slurmd support). Every daemon runs from Debian's packages with its state, logs, sockets
and pid files under one directory; no systemd, no cgroups (``proctrack/linuxproc``,
``task/none``). Each slurmd runs in its own mount + UTS namespace where the hostname is its node
name (``n1``, ``n2``...) and a private ``/etc/hosts`` maps every node name to 127.0.0.1, so job
tasks see distinct hosts and Lightning can resolve ``MASTER_ADDR`` from ``SLURM_NODELIST``.

Ports: slurmctld ``port``, slurmd ``port + 1``, node i ``port + 3 + i``. They are kept out of
15000-24999, where Lightning puts ``MASTER_PORT`` (15000 + the job id's last 4 digits).

Installs nothing: ``.ci/slurm-deps`` installs the packages; :func:`missing_requirements` says
why a cluster cannot start here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def missing_requirements() -> str | None:
    """Why a local cluster cannot start here (None if it can)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"SLURM/munge commands not found: {', '.join(missing)} (run `bash .ci/slurm-deps` as root)"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs slurmd as root (job steps switch user); not root"
    probe = subprocess.run(
        ["unshare", "--mount", "--uts", "--propagation", "private", "true"], capture_output=True
    )
    if probe.returncode != 0:
        return f"cannot create mount+UTS namespaces for the fake nodes: {probe.stderr.decode().strip()}"
    return None


class LocalSlurmCluster:
    """A cluster of ``nodes`` fake nodes with ``cpus`` CPUs each, everything under ``root``.

    Args:
        root: directory for config, state, logs, spool and sockets. munged insists that every
            directory above its socket be world-searchable (pytest's ``tmp_path`` is not): use a
            fresh directory directly under ``/tmp``; it is made mode 755.
        nodes: number of slurmd daemons / nodes ``n1..nN``.
        cpus: CPUs advertised per node (overcommitting the host is fine).
        port: first of ``nodes + 4`` consecutive TCP ports; the first free block from 7817 if None.
    """

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 4, port: int | None = None) -> None:
        self.root, self.nodes, self.cpus = root, nodes, cpus
        self.port = port if port is not None else self._free_port_block(7817)
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.sock"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _free_port_block(self, start: int) -> int:
        for base in range(start, 14_000, self.nodes + 4):
            if all(_port_free(p) for p in range(base, base + self.nodes + 4)):
                return base
        raise RuntimeError(f"no {self.nodes + 4} free consecutive ports between {start} and 14000")

    def _pidfiles(self) -> list[Path]:
        run = self.root / "run"
        nodes = [run / f"slurmd-n{i}.pid" for i in range(1, self.nodes + 1)]
        return [*nodes, run / "slurmctld.pid", self.root / "munge" / "munged.pid"]

    def _write_conf(self) -> None:
        for sub in (
            "etc",
            "state",
            "log",
            "run",
            "munge",
            *(f"spool/n{i}" for i in range(1, self.nodes + 1)),
        ):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        names = " ".join(f"n{i}" for i in range(1, self.nodes + 1))
        hosts = Path("/etc/hosts").read_text().splitlines()
        (self.root / "etc" / "hosts").write_text("\n".join([*hosts, f"127.0.0.1 {names}", ""]))
        r, p = self.root, self.port
        ports = f"Port=[{p + 4}-{p + 3 + self.nodes}]"
        self.conf.write_text(
            f"""ClusterName=mmfuse-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={p}
SlurmdPort={p + 1}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName=n[1-{self.nodes}] NodeHostname=localhost NodeAddr=127.0.0.1 {ports} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )

    def start(self, timeout: float = 60.0) -> None:
        """Start munged, slurmctld and the slurmd daemons; return once every node is idle.

        Raises:
            RuntimeError: with the daemons' log tails if the nodes are not idle within ``timeout``.
        """
        self._write_conf()
        for path in (self.root, self.root / "munge"):
            path.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
        m = self.root / "munge"
        subprocess.run(
            ["munged", f"--socket={self.munge_socket}", f"--key-file={key}", f"--log-file={m}/munged.log",
             f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed"],
            check=True,
        )  # fmt: skip
        subprocess.run(["slurmctld", "-f", str(self.conf)], check=True, env=self.env)
        hosts = self.root / "etc" / "hosts"
        for i in range(1, self.nodes + 1):
            node = f"hostname n{i} && mount --bind {hosts} /etc/hosts && exec slurmd -f {self.conf} -N n{i}"
            subprocess.run(
                ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", node], check=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            idle = self.run("sinfo", "-h", "-N", "-t", "idle", "-o", "%N", check=False).split()
            if len(idle) >= self.nodes:
                return
            time.sleep(0.2)
        raise RuntimeError(f"nodes not idle after {timeout:.0f} s:\n{self.logs()}")

    def stop(self) -> None:
        """Cancel every job, then stop the daemons started by :meth:`start` (by their pid files)."""
        if self.conf.exists():
            self.run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 10
            while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for pidfile in self._pidfiles():
            try:
                pid = int(pidfile.read_text())
            except (FileNotFoundError, ValueError):
                continue
            _terminate(pid)

    def run(self, *cmd: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster; its stdout."""
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def sbatch(
        self,
        script: Path,
        options: list[str],
        args: list[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> str:
        """``sbatch <options> <script> <args>``; the job id.

        ``env`` is added to the submitting environment, which the job inherits (``--export=ALL``).
        """
        result = subprocess.run(
            ["sbatch", "--parsable", *options, str(script), *args],
            capture_output=True, text=True, cwd=cwd, env={**self.env, **(env or {})},
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {script} failed: {result.stderr.strip()}")
        return result.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (``JobState``, ``Restarts``, ``ExitCode``...)."""
        line = self.run("scontrol", "show", "job", "-o", job_id)
        return dict(field.split("=", 1) for field in line.split() if "=" in field)

    def wait(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        """Poll the job until its state is in ``states`` (or it ended); the job record.

        Raises:
            TimeoutError: with the job record and daemon logs after ``timeout`` seconds.
        """
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info["JobState"] in states | final:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout:.0f} s: {info}\n{self.logs()}")

    def logs(self, lines: int = 30) -> str:
        """The last ``lines`` lines of every daemon log."""
        tails = []
        for log in sorted((self.root / "log").glob("*.log")):
            tails.append(
                f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            )
        return "\n".join(tails)


def _terminate(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid`` if it is a munged/slurm daemon, SIGKILL it after ``grace`` seconds."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return
    if not comm.startswith(("munged", "slurm")):
        return  # the pid was reused by something that is not ours
    os.kill(pid, 15)
    deadline = time.monotonic() + grace
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, 9)
