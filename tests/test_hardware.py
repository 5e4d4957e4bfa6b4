"""CPU threads from the CPUs the process may use: its affinity mask and its cgroup's CPU quota."""

from __future__ import annotations

import pytest

import os

from hubtune import hardware


def test_a_cgroup_v2_quota_is_the_tightest_limit_on_the_way_up(tmp_path):
    (tmp_path / "space" / "job").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "space" / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs for the Space
    (tmp_path / "space" / "job" / "cpu.max").write_text("max 100000\n")
    assert hardware.cgroup_cpu_quota(tmp_path, "0::/space/job\n") == 2.5
    assert hardware.cgroup_cpu_quota(tmp_path, "0::/\n") is None  # unlimited


def test_a_cgroup_v1_quota_is_read_too(tmp_path):
    (tmp_path / "cpu,cpuacct" / "docker").mkdir(parents=True)
    (tmp_path / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu,cpuacct" / "docker" / "cpu.cfs_period_us").write_text("100000\n")
    assert hardware.cgroup_cpu_quota(tmp_path, "4:cpu,cpuacct:/docker\n1:memory:/docker\n") == 1.5
    (tmp_path / "cpu,cpuacct" / "docker" / "cpu.cfs_quota_us").write_text("-1\n")
    assert hardware.cgroup_cpu_quota(tmp_path, "4:cpu,cpuacct:/docker\n") is None


def test_threads_follow_affinity_and_quota_unless_omp_num_threads_says(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(hardware, "cgroup_cpu_quota", lambda: 2.5)  # a 2.5-CPU container on an 8-core host
    assert hardware.usable_cpus() == 2
    assert hardware.cpu_threads() == 2 and hardware.cpu_threads(processes=2) == 1
    monkeypatch.setattr(hardware, "cgroup_cpu_quota", lambda: None)
    assert hardware.cpu_threads(processes=2) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.cpu_threads() == 3


@pytest.mark.slow
def test_waiting_threads_sleep_by_default():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    shown = subprocess.run([sys.executable, "-c", "import os, hubtune; print(os.environ['OMP_WAIT_POLICY'])"],
                           capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert shown == "PASSIVE"
