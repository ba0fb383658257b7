"""The ``slurm_cluster`` fixture: a two-node SLURM cluster on this host for the whole session.

Skips (with the reason) where the Debian packages, root or namespaces are missing; ``.ci/run``
installs the packages through ``.ci/slurm-deps``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `cluster` helper module

from cluster import LocalSlurmCluster, missing_requirements  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="mmfuse-slurm-", dir="/tmp"))  # munged: world-searchable path
    cluster = LocalSlurmCluster(root, nodes=2, cpus=4)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
