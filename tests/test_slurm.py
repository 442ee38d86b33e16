"""The cluster path on a real SLURM (scripts/test-slurm.sh starts a single-node cluster and runs these)."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.slurm
def test_cluster_runs_a_job():
    out = subprocess.run(["srun", "-n1", "hostname"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
