"""Facts about the environment a run records: library versions and peak memory."""

from __future__ import annotations

import resource
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

LIBRARIES = ("hubtune", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets",
             "huggingface_hub")


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process, and peak GPU memory allocated when on CUDA."""
    peak = {"process_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device == "cuda":
        peak["gpu_allocated"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak
