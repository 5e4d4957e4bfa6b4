"""Where the app runs and keeps its runs: the runs root (HUBTUNE_HOME, default ./runs), whether this is a
Space (SPACE_ID), whether the runs root is on a mounted volume, and the device in words."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ROOT = "runs"
UPLOAD_LIMIT_MB = 200  # largest dataset upload accepted, per file


def runs_root() -> Path:
    return Path(os.environ.get("HUBTUNE_HOME") or DEFAULT_ROOT).resolve()


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def mount_of(path: Path) -> Path | None:
    """The mount point holding `path` other than the root filesystem, or None."""
    path = path.resolve()
    for p in [path, *path.parents]:
        if p != Path("/") and os.path.ismount(p):
            return p
    return None


def storage_notice(root: Path, space: bool | None = None) -> str:
    """One line on where runs live and whether they survive a restart."""
    space = on_space() if space is None else space
    mount = mount_of(root)
    if space and mount is None:
        return (f"**Runs vanish when this Space restarts**: {root} is on the Space's ephemeral disk. Attach a "
                f"storage volume to the Space and set `HUBTUNE_HOME` to a folder on it to keep them.")
    where = f" (on the volume mounted at {mount})" if space and mount else ""
    return f"Runs are kept in `{root}`{where}; set `HUBTUNE_HOME` to keep them elsewhere."


def device_line() -> str:
    """The device training will use, in words."""
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            memory = torch.cuda.get_device_properties(0).total_memory / 2**30
            return f"{len(names)} x {names[0]} ({memory:.0f} GiB each)"
    except Exception as err:  # a broken CUDA install reads as CPU, and says why
        return f"CPU (CUDA unavailable: {err})"
    return f"CPU ({os.cpu_count()} cores, no GPU)"


def memory_estimate_line(config) -> str:
    """The memory estimate for a config against this device; none until the estimator ships."""
    return ("**Will it fit:** no estimate yet. This version of hubtune has no memory estimator; "
            "on a GPU, start with the quick preset and watch peak memory on the Train tab.")
