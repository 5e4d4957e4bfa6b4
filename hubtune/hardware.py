"""What the machine can do: device, compute dtype, mixed precision and optimizer; on a CPU, how many
threads the process may run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hubtune.config import ModelSection, TrainingSection

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    compute_dtype: torch.dtype
    optimizer: str

    @property
    def bf16(self) -> bool:
        return self.device == "cuda" and self.compute_dtype == torch.bfloat16

    @property
    def fp16(self) -> bool:
        return self.device == "cuda" and self.compute_dtype == torch.float16

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        return {"device": self.device, "device_name": name, "compute_dtype": str(self.compute_dtype).removeprefix("torch."),
                "optimizer": self.optimizer}


def detect(model: ModelSection, training: TrainingSection | None = None) -> Hardware:
    cuda = torch.cuda.is_available()
    if model.compute_dtype != "auto":
        dtype = _DTYPES[model.compute_dtype]
    elif cuda:
        # Ampere and newer run bfloat16 natively; older GPUs fall back to float16.
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        # CPUs without native bf16 run float32 several times faster than emulated bf16.
        dtype = torch.float32
    optimizer = (training or TrainingSection()).optimizer
    if optimizer == "auto":
        optimizer = "paged_adamw_8bit" if cuda else "adamw_torch"
    elif not cuda:
        # Paging needs unified CUDA memory; the unpaged optimizer is the same maths.
        optimizer = {"paged_adamw_8bit": "adamw_8bit", "paged_adamw_32bit": "adamw_torch"}.get(optimizer, optimizer)
    return Hardware("cuda" if cuda else "cpu", dtype, optimizer)


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (taskset, a scheduler's cpuset), capped by its
    cgroup's CPU quota (a container's `--cpus`, a Space's vCPUs). os.cpu_count() sees neither: threads
    beyond the quota are throttled together, and a thread per host core fights for a few."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, int(quota))) if quota else cpus


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: str | None = None) -> float | None:
    """CPUs' worth of time per period that this process's cgroup may use (the tightest limit on its way
    up the hierarchy), or None when unlimited. `membership` is /proc/self/cgroup's text."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            membership = ""
    limits = []
    for line in membership.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: cpu.max holds "max <period>" or "<quota> <period>"
            files = [("cpu.max", None)]
            base = root
        elif "cpu" in controllers.split(","):  # cgroup v1
            files = [("cpu.cfs_quota_us", "cpu.cfs_period_us")]
            base = next((root / name for name in (controllers, "cpu") if (root / name).is_dir()), None)
        else:
            continue
        if base is None:
            continue
        folder = base / path.lstrip("/")
        for level in [folder, *folder.parents]:
            if not level.is_relative_to(base):
                break
            for quota_file, period_file in files:
                try:
                    if period_file is None:
                        quota, period = (level / quota_file).read_text().split()
                    else:
                        quota, period = (level / quota_file).read_text(), (level / period_file).read_text()
                    if quota.strip() not in ("max", "-1") and int(period) > 0:
                        limits.append(int(quota) / int(period))
                except (OSError, ValueError):
                    pass
    return min(limits) if limits else None


def cpu_threads(processes: int = 1) -> int:
    """Threads for each of `processes` training processes on this machine: the usable CPUs shared out,
    unless OMP_NUM_THREADS says otherwise (an explicit choice, or accelerate's for CPU processes)."""
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return max(1, usable_cpus() // max(1, processes))
