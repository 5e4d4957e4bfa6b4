"""Checkpoints that keep each process's optimizer state in a file of its own, as DeepSpeed keeps its optimizer
partitions: how a bitsandbytes optimizer (adamw_8bit, paged_adamw_8bit, paged_adamw_32bit) steps, is saved and
resumed under FSDP.

FSDP1 hands each process its shard of every wrapped module's flattened trainable parameters, and bitsandbytes
keeps its states (8-bit with their block constants, or 32-bit) for that shard. The Trainer's own FSDP path,
accelerate's save_fsdp_optimizer / load_fsdp_optimizer, goes through FSDP.optim_state_dict and
optim_state_dict_to_load, which cannot load back the nested dict bitsandbytes wraps its quantization state in
('__bnb_optimizer_quant_state__': "unhashable type: 'dict'"). Here each process saves optimizer.state_dict() of
its own shard as it is, with the layout it was taken under (processes, FSDP sharding, the size of each
parameter shard), and loads its own file back; a launch with another layout is a ConfigError naming the
checkpoint and what it was saved with, never a fresh optimizer.

FSDP2 hands each process its shard of every parameter as a DTensor, which bitsandbytes' kernels do not take
('optimizer_update_8bit_blockwise got mixed torch.Tensor and DTensor'). Its update is elementwise per parameter, so
the optimizer runs over each process's local shards instead (on_local_shards): a plain tensor per parameter sharing
the shard's storage, given the shard of the gradient at each step, updated in place. That is the update one process
computes for those values, except that 8-bit states are quantized in blocks of the local shard (as under FSDP1's
flattened shards), not of the whole parameter. The gradient norm for clipping is still taken over the whole
(DTensor) gradients, before the step.

    on_local_shards(optimizer)            -> a bitsandbytes optimizer over FSDP2's parameters steps their local shards
    applies(optimizer, plugin)            -> True for a bitsandbytes optimizer under FSDP1, or FSDP2 on local shards
    save(optimizer, plugin, folder)       -> folder/optimizer-rank{R}-of-{N}.pt, one per process
    load(optimizer, plugin, folder)       -> this process's file, after checking the layout
    problem(folder, processes)            -> why a launch of `processes` cannot resume from folder, or None
    keep_per_process(trainer)             -> the Trainer saves and resumes that way where applies() holds
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

from hubtune.errors import ConfigError

FILE = "optimizer-rank{rank}-of-{processes}.pt"
PATTERN = re.compile(r"optimizer-rank(\d+)-of-(\d+)\.pt$")
FIX = "resume with the launch it was saved with, or start a new run"


def _inner(optimizer):
    """The optimizer itself, out of accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def bitsandbytes_optimizer(optimizer) -> bool:
    if "bitsandbytes" not in sys.modules:  # not imported: this optimizer cannot be one of its
        return False
    from bitsandbytes.optim.optimizer import Optimizer8bit  # the base of its 8-bit, 32-bit and paged optimizers

    return isinstance(_inner(optimizer), Optimizer8bit)


def applies(optimizer, plugin) -> bool:
    """A bitsandbytes optimizer over FSDP1's sharded parameters, or over FSDP2's local shards (on_local_shards)."""
    if plugin is None or not bitsandbytes_optimizer(optimizer):
        return False
    return getattr(plugin, "fsdp_version", 1) == 1 or hasattr(_inner(optimizer), LOCAL)


LOCAL = "_hubtune_local_shards"  # on an optimizer stepping FSDP2's local shards: [(shard, parameter), ...]


def on_local_shards(optimizer) -> bool:
    """Make a bitsandbytes optimizer over FSDP2's sharded (DTensor) parameters step each process's local shards;
    True when it did (False: no DTensor parameter, or already done). Call it before the first step and before a
    learning-rate schedule wraps its step."""
    import torch
    from torch.distributed.tensor import DTensor

    inner = _inner(optimizer)
    if hasattr(inner, LOCAL) or not any(isinstance(p, DTensor) for g in inner.param_groups for p in g["params"]):
        return False
    if inner.state:
        raise ValueError("on_local_shards: the optimizer has already stepped; call it before the first step")
    pairs = []
    for group in inner.param_groups:
        shards = []
        for param in group["params"]:
            if isinstance(param, DTensor):
                # state is keyed by the shard; its data is re-pointed at the parameter's local tensor at each step
                shard = param.to_local().detach().requires_grad_(param.requires_grad)
                pairs.append((shard, param))
                param = shard
            shards.append(param)
        group["params"] = shards
    setattr(inner, LOCAL, pairs)
    step_on_shards, zero_on_shards = inner.step, inner.zero_grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # the gradients it makes land on the parameters, handed over below
            with torch.enable_grad():
                loss = closure()
        _overrides_to_shards(self, pairs)
        for shard, param in pairs:
            local = param.to_local()
            shard.data = local  # the same storage: FSDP2 may have re-made the local tensor since the last step
            grad = param.grad
            grad = grad.to_local() if isinstance(grad, DTensor) else grad
            shard.grad = grad if grad is not None and local.numel() else None  # an empty shard takes no step
        try:
            step_on_shards()
        finally:
            for shard, param in pairs:
                local = param.to_local()
                if shard.data_ptr() != local.data_ptr():  # the update went to a copy (bnb makes it contiguous)
                    local.copy_(shard)
                shard.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True):
        zero_on_shards(set_to_none)
        for _, param in pairs:
            if param.grad is not None:
                if set_to_none:
                    param.grad = None
                else:
                    param.grad.zero_()

    # bound, as the methods they replace (a learning-rate schedule wraps step's __func__)
    inner.step, inner.zero_grad = types.MethodType(step, inner), types.MethodType(zero_grad, inner)
    return True


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _overrides_to_shards(optimizer, pairs) -> None:
    """bitsandbytes' per-parameter settings (GlobalOptimManager: the Trainer keeps embeddings' states 32-bit)
    name the model's parameters, by identity; give each its shard's."""
    from bitsandbytes.optim import GlobalOptimManager

    manager = GlobalOptimManager.get_instance()
    shard_of = {id(param): shard for shard, param in pairs}
    for module, attr, config in manager.module_weight_config_triple:
        if (shard := shard_of.get(id(getattr(module, attr, None)))) is not None:
            manager.pid2config[id(shard)] = config
    for pid, shard in shard_of.items():
        if pid in manager.pid2config:
            manager.pid2config[id(shard)] = manager.pid2config[pid]


def layout(optimizer, plugin) -> dict:
    """What a process's optimizer state depends on: the processes, how FSDP shards (FSDP1: strategy, and whether
    the optimizer sees the original parameters or FSDP's flattened ones; FSDP2: each local shard's shape), the size
    of each parameter shard; without FSDP (plugin None: LoRA on experts split over the processes,
    hubtune.expert_lora), the shape of each parameter this process holds."""
    if plugin is None:
        return {"processes": _world()[1], "optimizer": type(_inner(optimizer)).__name__,
                "shapes": [[list(p.shape) for p in group["params"]] for group in _inner(optimizer).param_groups]}
    if getattr(plugin, "fsdp_version", 1) == 2:
        return {"processes": _world()[1], "optimizer": type(_inner(optimizer)).__name__, "fsdp_version": 2,
                "shard_shapes": [[list(p.shape) for p in group["params"]] for group in _inner(optimizer).param_groups]}
    strategy = getattr(plugin.sharding_strategy, "name", str(plugin.sharding_strategy))
    return {"processes": _world()[1], "optimizer": type(_inner(optimizer)).__name__, "fsdp_version": 1,
            "sharding_strategy": strategy, "use_orig_params": bool(plugin.use_orig_params),
            "shard_sizes": [[p.numel() for p in group["params"]] for group in _inner(optimizer).param_groups]}


def saved(folder: str | Path) -> dict[int, list[Path]]:
    """The per-process optimizer files in a checkpoint, by the process count they were saved with."""
    found: dict[int, list[Path]] = {}
    for path in sorted(Path(folder).glob("optimizer-rank*-of-*.pt")):
        if m := PATTERN.match(path.name):
            found.setdefault(int(m.group(2)), []).append(path)
    return found


def incomplete(folder: str | Path) -> str | None:
    """Why the per-process optimizer states in `folder` do not make one whole checkpoint; None when they do (or
    there are none)."""
    found = saved(folder)
    if len(found) > 1:
        return (f"it holds optimizer states per process from launches of {' and '.join(map(str, found))} "
                f"processes")
    for count, files in found.items():
        if len(files) != count:
            return f"it holds the optimizer states of {len(files)} of its {count} processes"
    return None


def problem(folder: str | Path, processes: int) -> str | None:
    """Why a launch of `processes` processes cannot load the per-process optimizer states in `folder`; None when
    it can, or when the checkpoint keeps its optimizer another way."""
    found = saved(folder)
    if not found:
        return None
    if why := incomplete(folder):
        return f"{folder} is incomplete: {why}; resume from another checkpoint"
    (count, _), = found.items()
    if count != processes:
        return (f"{folder} was saved by {count} processes, each with its own share of the optimizer state "
                f"(bitsandbytes under FSDP, or LoRA on experts split over the processes), and this launch has "
                f"{processes}; {FIX} (--num-processes {count})")
    return None


def save(optimizer, plugin, folder: str | Path) -> Path:
    """This process's optimizer state, bitsandbytes' quantization state included, in a file of its own."""
    import torch

    rank, processes = _world()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE.format(rank=rank, processes=processes)
    torch.save({"layout": layout(optimizer, plugin), "optimizer": _inner(optimizer).state_dict()}, path)
    return path


def load(optimizer, plugin, folder: str | Path) -> None:
    """This process's optimizer state from `folder`, saved under the same layout."""
    import torch

    rank, processes = _world()
    where = "training.distributed"
    if why := problem(folder, processes):
        raise ConfigError([(where, why)])
    path = Path(folder) / FILE.format(rank=rank, processes=processes)
    if not path.is_file():
        raise ConfigError([(where, f"{folder} holds no optimizer state per process (bitsandbytes under FSDP "
                                   f"saves one file per process); it was saved by another launch or optimizer: "
                                   f"{FIX}")])
    state = torch.load(path, map_location="cpu", weights_only=True)
    was, now = state["layout"], layout(optimizer, plugin)
    changed = [f"{key} {was.get(key)!r} then, {value!r} now" for key, value in now.items() if was.get(key) != value]
    if changed:
        raise ConfigError([(where, f"{path} was saved under another FSDP layout ({'; '.join(changed)}): each "
                                   f"process's optimizer state holds the values of the shards it was saved with; "
                                   f"{FIX}")])
    inner = _inner(optimizer)
    inner.load_state_dict(state["optimizer"])  # moves the quantization state onto each parameter's device
    if getattr(inner, "is_paged", False):
        _page(inner)


def _page(optimizer) -> None:
    """Loaded states are plain device tensors: put them back in paged memory, as bitsandbytes allocates a paged
    optimizer's large states (get_state_buffer), so they still page out to CPU under memory pressure."""
    for state in optimizer.state.values():
        for key in ("state1", "state2"):
            value = state.get(key)
            if value is not None and value.device.type == "cuda" and not getattr(value, "is_paged", False):
                paged = optimizer.get_state_buffer(value, dtype=value.dtype)
                paged.copy_(value)
                state[key] = paged


def keep_per_process(trainer) -> None:
    """The Trainer saves and resumes a bitsandbytes optimizer under FSDP per process (its model through
    accelerate's save_fsdp_model as before, its scheduler as before), and under FSDP2 steps it on each process's
    local shards; every other case goes on as the Trainer does, except that a checkpoint saved per process never
    resumes with a fresh optimizer."""
    save_as_trainer, load_as_trainer = trainer._save_optimizer_and_scheduler, trainer._load_optimizer_and_scheduler
    create_as_trainer = trainer.create_optimizer

    def plugin():
        return trainer.accelerator.state.fsdp_plugin if trainer.is_fsdp_enabled else None

    def create_optimizer(model=None):
        optimizer = create_as_trainer(model)
        if trainer.is_fsdp_enabled and getattr(plugin(), "fsdp_version", 1) == 2 and bitsandbytes_optimizer(optimizer):
            on_local_shards(optimizer)
        return optimizer

    def save_optimizer_and_scheduler(output_dir: str) -> None:
        if not applies(trainer.optimizer, plugin()):
            return save_as_trainer(output_dir)
        import torch
        from accelerate.utils import save_fsdp_model
        from transformers.distributed.fsdp import get_fsdp_ckpt_kwargs
        from transformers.trainer import SCHEDULER_NAME

        save_fsdp_model(plugin(), trainer.accelerator, trainer.model, output_dir, **get_fsdp_ckpt_kwargs())
        save(trainer.optimizer, plugin(), output_dir)
        if trainer.args.should_save:
            torch.save(trainer.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))

    def load_optimizer_and_scheduler(checkpoint: str | None) -> None:
        if checkpoint is None:
            return None
        if not applies(trainer.optimizer, plugin()):
            if saved(checkpoint):
                raise ConfigError([("training.optimizer", f"{checkpoint} keeps its optimizer state per process, "
                                                          f"as bitsandbytes' optimizers under FSDP save it, and "
                                                          f"this run is not one: {FIX}")])
            return load_as_trainer(checkpoint)
        import torch
        from transformers.trainer import SCHEDULER_NAME

        load(trainer.optimizer, plugin(), checkpoint)
        trainer.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))

    trainer.create_optimizer = create_optimizer
    trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    trainer._load_optimizer_and_scheduler = load_optimizer_and_scheduler
