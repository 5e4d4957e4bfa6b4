"""Where the app runs and keeps its runs: the runs root (HUBTUNE_HOME, default ./runs), whether this is a
Space (SPACE_ID), whether the runs root is on a mounted volume, and the device in words."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from hubtune.errors import HubtuneError

DEFAULT_ROOT = "runs"
UPLOAD_LIMIT_MB = 200  # largest dataset upload accepted, per file


def runs_root() -> Path:
    return Path(os.environ.get("HUBTUNE_HOME") or DEFAULT_ROOT).resolve()


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def is_loopback(host: str) -> bool:
    """Whether an address to serve on is reachable from this machine only."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP))
    except (OSError, ValueError):
        return False


def check_address(host: str, share_token: bool) -> None:
    """Outside a Space the page acts with this machine's Hub token and reads its files for whoever reaches
    it: serving it beyond loopback needs the operator's explicit consent."""
    if on_space() or share_token or is_loopback(host):
        return
    raise HubtuneError(
        f"refusing to serve the page on {host or 'every address'}: outside a Space it acts with this machine's "
        f"Hugging Face token and reads its files for anyone who reaches it. Serve it on 127.0.0.1 (the default; "
        f"reach it through an SSH tunnel), or pass --share-token-with-visitors if everyone who can reach "
        f"{host} may use your token and files.")


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


SPACE_GPU = "L4"  # the GPU of the Space's suggested hardware (l4x1), for the estimate on a CPU machine


def memory_estimate_line(config) -> str:
    """Will it fit: the estimated peak GPU memory of these settings (hubtune.memory, from config.json alone)
    against this machine's GPU, or, without one, against an L4; with the nearest settings that fit."""
    from hubtune import fit, memory
    from hubtune.errors import HubtuneError

    if config is None:
        return "**Will it fit:** check a model to see its memory estimate."
    try:
        arch = memory.read_architecture(config.model.id, config.model.revision)
        settings = memory.Settings.from_run_config(config)
        gpu, where, note = _gpu()
        report = fit.fit_report(arch, settings, gpu)
    except HubtuneError as err:
        return f"**Will it fit:** no estimate: {err}"
    verdict = "fits" if report["fits"] else "does **not** fit"
    line = (f"**Will it fit:** about {report['total_gb']:.1f} GB peak on the GPU ({settings.describe()}); "
            f"{verdict} {where} ({report['gpu_gib']:.0f} GiB){note}.")
    if report["suggestion"]:
        s = report["suggestion"]
        line += f" To fit: {s['change']} (about {s['total_gb']:.1f} GB)."
    elif not report["fits"]:
        line += " No single change fits: choose a larger GPU."
    return line


def _gpu() -> tuple[str | float, str, str]:
    """(GPU name or size in GB for hubtune.memory, which GPU in words, a note) for this machine."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.total_memory / 10**9, f"this machine's {props.name}", ""
    except Exception:  # no usable CUDA: estimate for the Space's GPU
        pass
    return SPACE_GPU, f"an {SPACE_GPU}", "; this machine has no GPU, so training here runs on the CPU"
