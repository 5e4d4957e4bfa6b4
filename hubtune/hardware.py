"""What the machine can do: device, compute dtype, mixed precision and optimizer."""

from __future__ import annotations

from dataclasses import dataclass

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
