"""The GPUs hubtune knows, as data: memory, bfloat16 support, nominal tensor throughput and the Hugging Face
hardware flavors that carry each. The memory estimate (hubtune.memory) reads memory and bfloat16, the Jobs
run-time estimate (hubtune.jobs) throughput by flavor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    memory_mib: int  # nvidia-smi's total (variants differ by a few MiB)
    bf16: bool  # computes in bfloat16 (Ampere and newer); else float16
    tflops: float  # nominal dense bfloat16 (float16 on the T4) tensor TFLOP/s
    flavor: str | None = None  # the prefix of the Jobs / Spaces flavors with this GPU (a10g-small, l40sx4, ...)


GPUS = (
    GPU("T4", 15_360, False, 65, "t4"),
    GPU("L4", 23_034, True, 121, "l4"),
    GPU("A10G", 23_028, True, 70, "a10g"),
    GPU("RTX 3090", 24_576, True, 71),
    GPU("RTX 4090", 24_564, True, 165),
    GPU("A100 40GB", 40_960, True, 312),
    GPU("A100 80GB", 81_920, True, 312, "a100"),
    GPU("H100 80GB", 81_559, True, 989),
    GPU("H200", 143_771, True, 989, "h200"),
    GPU("L40S", 46_068, True, 362, "l40s"),
    GPU("RTX PRO 6000", 97_887, True, 500, "rtx-pro-6000"),
)
CPU_TFLOPS = 0.2  # a CPU flavor's token figure: training there is for toy models


def by_flavor(flavor: str) -> GPU | None:
    """The GPU of a Jobs / Spaces flavor (`a10g-small`, `l40sx4`, `cpu-basic`: None)."""
    return next((g for g in sorted((g for g in GPUS if g.flavor), key=lambda g: len(g.flavor), reverse=True)
                 if flavor.startswith(g.flavor)), None)


def by_device_name(name: str, memory_mib: float | None = None) -> GPU | None:
    """The GPU torch names (`NVIDIA H100 80GB HBM3`, `NVIDIA L4`), the nearest in memory where several match."""
    import re

    def model(gpu: GPU) -> str:  # "A100 40GB" -> "A100"
        return re.escape(re.sub(r" \d+GB$", "", gpu.name))

    found = [g for g in GPUS if re.search(rf"\b{model(g)}\b", name)]
    return min(found, key=lambda g: abs(g.memory_mib - (memory_mib or g.memory_mib)), default=None)

