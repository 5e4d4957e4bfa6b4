"""The recipe's levers: how a run uses the machine, its config's `auto` settings (kernels, padding-free
rows, gradient checkpointing) resolved for this device and base. The checkpointing policy reads the memory
estimate (hubtune.memory)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hubtune import config as cfg
from hubtune.errors import ConfigError, HubtuneError
from hubtune.memory import Settings, estimate, read_architecture

if TYPE_CHECKING:
    from hubtune.hardware import Hardware


@dataclass(frozen=True)
class Levers:
    """How a run uses the machine: the config's auto settings resolved for this device and base."""

    attention: str | None  # sdpa | flash_attention_2 | eager; None: the model has no attention (Mamba)
    liger: bool  # Liger's fused kernels (RMSNorm, RoPE, SwiGLU) through TRL
    padding_free: bool  # each batch one row with position ids
    gradient_checkpointing: bool

    def describe(self) -> str:
        attention = f"{self.attention} attention" if self.attention else "no attention layers"
        return (f"{attention}{', Liger kernels' if self.liger else ''}"
                f"{', padding-free rows' if self.padding_free else ''}, gradient checkpointing "
                f"{'on' if self.gradient_checkpointing else 'off'}")


def recipe_levers(config: cfg.RunConfig, hw: Hardware, model_path: str, family=None) -> Levers:
    """FlashAttention and Liger on CUDA when installed; padding-free batches where attention has a
    variable-length kernel (FlashAttention: with SDPA a flat row would attend over the whole batch);
    checkpointing only when the memory estimate needs it (checkpointing_needed)."""
    from importlib.util import find_spec

    t, d = config.training, config.data
    cuda = hw.device == "cuda"
    if t.kernels == "auto":
        attention = "flash_attention_2" if cuda and find_spec("flash_attn") else "sdpa"
        if family is not None and family.attention:  # Gemma 2's soft-capped attention has no SDPA kernel
            attention = family.attention
        liger = cuda and find_spec("liger_kernel") is not None
    else:
        attention, liger = t.kernel_choice()
    if t.attention_kernel:
        attention = t.attention_kernel  # a Hub kernel repo, which transformers loads through the kernels package
    if t.context_parallel_size > 1 and attention != "sdpa":  # kernels: auto (the config check named the rest)
        if family is not None and family.attention:
            raise ConfigError([("training.context_parallel_size", f"{t.context_parallel_size}: this model family's "
                                f"attention needs {family.attention} (e.g. Gemma 2's soft-capping), and hubtune's "
                                f"context parallelism attends with SDPA only; set it to 1")])
        attention = "sdpa"  # auto under context parallelism: the kernel it attends over gathered keys with
    if d.padding_free == "auto":
        padding_free = attention == "flash_attention_2" and not d.truncate and t.context_parallel_size == 1
    elif d.padding_free and d.truncate and not d.packing:
        raise ConfigError([("data.padding_free", "padding-free rows are not cut to data.max_seq_len; set data.truncate: "
                                                 "false (over-long examples are dropped) or data.padding_free: auto")])
    else:
        padding_free = d.padding_free
    checkpointing = t.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = checkpointing_needed(config, model_path, hw.device)
    return Levers(attention, liger, padding_free, checkpointing)


def device_memory(device: str) -> int:
    """Bytes of the GPU (CUDA), or of the machine's RAM on a CPU."""
    import os

    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def checkpointing_needed(config, model_path: str, device: str, device_bytes: int | None = None) -> bool:
    """training.gradient_checkpointing: auto. Off when the run without it takes at most 80% of the
    device's memory; on otherwise, and for an architecture the estimate does not know."""
    try:
        arch = read_architecture(model_path)
    except HubtuneError:
        return True
    settings = replace(Settings.from_run_config(config, model_path), gradient_checkpointing=False)
    limit = device_memory(device) if device_bytes is None else device_bytes
    return estimate(arch, settings).total > 0.8 * limit
