"""What fits: over the memory estimate (hubtune.memory), whether a run fits a GPU, and when it does not,
the nearest settings that do, before loading (a warning) and after running out of memory (the advice).

    report = fit.fit_report(memory.read_architecture("meta-llama/Llama-3.1-8B"), memory.Settings(), "T4")
    report["fits"], report["suggestion"]          # False, {"change": "...", "total_gb": ..., "settings": {...}}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from hubtune.errors import HubtuneError
from hubtune.levers import checkpointing_needed
from hubtune.memory import (CUDA_OPTIMIZER, GB, GIB, Architecture, Settings, estimate, gpu_spec, on_gpu,
                            read_architecture)


@dataclass
class Suggestion:
    change: str  # what to change, in words
    settings: Settings
    total: int

    def to_dict(self) -> dict:
        return {"change": self.change, "total_gb": round(self.total / GB, 2), "settings": asdict(self.settings)}


def fit_report(arch: Architecture, settings: Settings, gpu: str | float) -> dict:
    """Whether the run fits the GPU, and when it does not, the nearest settings that do."""
    name, limit, _ = gpu_spec(gpu)
    settings = on_gpu(settings, gpu)
    total = estimate(arch, settings).total
    tip = None if total <= limit else suggest(arch, settings, limit)
    return {"gpu": name, "gpu_gib": round(limit / GIB, 1), "compute_dtype": settings.compute_dtype,
            "total_gb": round(total / GB, 2), "fits": total <= limit, "suggestion": tip.to_dict() if tip else None}


def suggest(arch: Architecture, s: Settings, limit: int) -> Suggestion | None:
    """The nearest settings that fit in `limit` bytes. Changes are added one at a time, cheapest for
    the run first: an 8-bit optimizer, checkpointing, smaller micro-batches with more accumulation
    (the same effective batch), 4-bit (QLoRA), shorter sequences, more GPUs. The first set that fits
    is then pruned of every change it does not need."""
    effective = s.micro_batch * s.gradient_accumulation
    options: list[tuple[str, str, dict]] = []  # (kind, phrase, Settings fields), in order of cost
    if s.optimizer not in ("adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"):
        options.append(("optimizer", f"an 8-bit optimizer (training.optimizer: {CUDA_OPTIMIZER})",
                        {"optimizer": CUDA_OPTIMIZER}))
    if not s.gradient_checkpointing:
        options.append(("checkpointing", "gradient checkpointing (training.gradient_checkpointing: true)",
                        {"gradient_checkpointing": True}))
    micro = s.micro_batch
    while micro > 1:
        micro //= 2
        accum = max(1, effective // micro)
        options.append(("batch", f"micro-batch {micro} with {accum} accumulation steps (training.micro_batch_size: "
                                 f"{micro}, training.gradient_accumulation_steps: {accum})",
                        {"micro_batch": micro, "gradient_accumulation": accum}))
    nvfp4 = s.base_nvfp4 or arch.saved_nvfp4  # loads as saved: no other quantization
    if s.method != "qlora" and not nvfp4 and _quantizable(arch, s):
        options.append(("method", "LoRA on the base loaded in 4 bits (model.quantization: nf4)",
                        {"method": "qlora", "quantization": "nf4", "double_quant": True}))
    if arch.moe and s.method == "qlora" and s.expert_quantization == "none" and not nvfp4:
        options.append(("experts", "the stacked experts stored in 4 bits too (model.quantize_experts: true)",
                        {"expert_quantization": s.quantization}))
    seq = s.seq_len
    while seq > 256:
        seq //= 2
        options.append(("seq", f"sequences of at most {seq} tokens (data.max_seq_len: {seq})", {"seq_len": seq}))
    options += [("gpus", f"{n} GPUs with FSDP sharding weights and optimizer states", {"gpus": n})
                for n in (2, 4, 8)]

    def build(chosen: dict[str, tuple[str, dict]]) -> Settings:
        return replace(s, **{k: v for _, fields in chosen.values() for k, v in fields.items()})

    chosen: dict[str, tuple[str, dict]] = {}  # a later option of the same kind replaces the earlier one
    for kind, phrase, fields in options:
        chosen[kind] = (phrase, fields)
        if estimate(arch, build(chosen)).total <= limit:
            for k in list(chosen)[:-1]:  # drop what the fit does not need ...
                rest = {k2: v for k2, v in chosen.items() if k2 != k}
                if estimate(arch, build(rest)).total <= limit:
                    chosen = rest
            for k in list(chosen):  # ... and soften the rest: the mildest option of each kind that fits
                for kind2, phrase2, fields2 in options:
                    softer = {**chosen, k: (phrase2, fields2)}
                    if kind2 == k and estimate(arch, build(softer)).total <= limit:
                        chosen = softer
                        break
            settings = build(chosen)
            return Suggestion("; ".join(p for p, _ in chosen.values()), settings, estimate(arch, settings).total)
    return None


def _quantizable(arch: Architecture, s: Settings) -> bool:
    """Whether the run can load its base in 4 bits: not when it trains a quantized module in full."""
    try:
        estimate(arch, replace(s, method="qlora", quantization="nf4"))
    except HubtuneError:
        return False
    return True


def device_warning(config, model_path: str, device_bytes: int | None = None) -> str | None:
    """Before loading: a warning when the estimated peak exceeds the GPU's memory, with the nearest
    settings that fit. None on a CPU (no `device_bytes` and no CUDA), when it fits, or for an
    architecture the estimate does not know."""
    if device_bytes is None:
        import torch

        if not torch.cuda.is_available():
            return None
        device_bytes = torch.cuda.get_device_properties(0).total_memory
    try:
        arch = read_architecture(model_path)
    except HubtuneError:
        return None
    settings = Settings.from_run_config(config, model_path)
    if config.training.gradient_checkpointing == "auto":
        settings = replace(settings, gradient_checkpointing=checkpointing_needed(config, model_path, "cuda", device_bytes))
    total = estimate(arch, settings).total
    if total <= device_bytes:
        return None
    tip = suggest(arch, settings, device_bytes)
    fix = f"; try {tip.change} (about {tip.total / GB:.1f} GB)" if tip else "; no single change fits: use a larger GPU"
    return (f"estimated peak memory {total / GB:.1f} GB ({settings.describe()}) exceeds this GPU's "
            f"{device_bytes / GB:.1f} GB and will likely run out of memory{fix}. "
            f"See `hubtune estimate {config.model.id}` for the breakdown")


def oom_advice(config, device_bytes: int) -> str | None:
    """After running out of memory: the nearest settings the fit search finds that need at least a fifth
    less than this run was estimated to need (the run has shown it needs more than the estimate), within
    the device. None for an architecture the estimate does not know, or when no change is enough."""
    try:
        arch = read_architecture(config.model.id, config.model.revision)
    except HubtuneError:
        return None
    settings = Settings.from_run_config(config)
    if config.training.gradient_checkpointing == "auto":
        settings = replace(settings, gradient_checkpointing=checkpointing_needed(config, config.model.id, "cuda",
                                                                                 device_bytes))
    target = min(device_bytes, int(0.8 * estimate(arch, settings).total))
    tip = suggest(arch, settings, target)
    return f"{tip.change} (estimated {tip.total / GB:.1f} GB)" if tip else None
