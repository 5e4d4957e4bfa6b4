"""One process of a 2-process FSDP run with a bitsandbytes optimizer, started by torchrun from
tests/test_distributed.py with the environment `accelerate launch` makes of hubtune's FSDP1 preset (fsdp.yaml)
or an FSDP2 one: the tiny base with LoRA, wrapped as accelerate and the Trainer wrap it (FSDP1: PEFT's wrap
policy, as transformers' update_fsdp_plugin_peft sets it, and the plugin's arguments; FSDP2: accelerate's
fsdp2_prepare_model), with bitsandbytes' AdamW and the Trainer's cosine schedule.

FSDP1: two steps, a checkpoint, two more steps; then a fresh model and optimizer resume from the checkpoint
and take the same two steps. The checkpoint is written and read by a Trainer's own methods
(_save_optimizer_and_scheduler, _save_rng_state, _load_from_checkpoint, _load_optimizer_and_scheduler,
_load_rng_state) with hubtune's per-process optimizer state (optimizer_shards.keep_per_process). accelerate
runs FSDP on GPUs only, so the Trainer is told of the plugin the way its FSDP launch would (is_fsdp_enabled,
the accelerator state's distributed type and fsdp_plugin) and handed the wrapped model, optimizer and schedule.
Then the adapter at the end, gathered whole and written by the main process. Also what
accelerate's own save_fsdp_optimizer / load_fsdp_optimizer (the Trainer's FSDP path) make of the optimizer,
and a resume under another FSDP layout (use_orig_params flipped). FSDP2: the optimizer steps each process's local
shards (optimizer_shards.on_local_shards), after clipping the whole (DTensor) gradient's norm as accelerate clips
it; the same checkpoint, steps and resume. Rank 0 writes what happened to OUT.

    torchrun --nproc_per_node 2 tests/fsdp_bnb_optimizer.py OPTIMIZER OUT
"""

from __future__ import annotations

import copy
import json
import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist

STEPS = 4  # the uninterrupted run; the checkpoint after SAVED of them
SAVED = 2
CLIP = 1.0  # FSDP2's max gradient norm, below the tiny model's (so the clip acts)
# Trained in full beside the adapter (PEFT's modules_to_save, without LoRA): a projection inside a decoder layer, an
# FSDP1 unit within a unit. (Each process's share is whole 8-bit blocks, as for the LoRA factors; a norm's 192
# values would be 96 per process, under min_8bit_size, and take 32-bit states where one process takes 8-bit ones.)
UNFROZEN = ["model.layers.1.mlp.down_proj.weight"]


def prepared(seed: int = 0):
    """The tiny base with LoRA and a projection trained in full, without dropout (each process would draw its own), B
    given values."""
    from hubtune import config as cfg
    from hubtune.hardware import Hardware
    from hubtune.refs import resolve_builtin
    from hubtune.train import attach_lora, load_base

    config = cfg.build({"model": {"quantization": "none"}, "lora": {"dropout": 0.0, "unfrozen_parameters": UNFROZEN}})
    base = load_base(resolve_builtin(config.model.id), config.model, Hardware("cpu", torch.float32, "adamw_torch"),
                     sharded=True)
    torch.manual_seed(seed)
    model = attach_lora(base, config, "hf", False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.train()
    return model


def optimizer(model, name: str):
    """bitsandbytes' AdamW as the Trainer builds it for adamw_8bit / paged_adamw_32bit; 8-bit states from 128
    values on (the default, 4096, is above every tiny LoRA factor, which would keep 32-bit states)."""
    import bitsandbytes as bnb

    params = [p for p in model.parameters() if p.requires_grad]
    bits = 32 if name.endswith("32bit") else 8
    return bnb.optim.AdamW(params, lr=1e-2, optim_bits=bits, is_paged=name.startswith("paged"), min_8bit_size=128)


def schedule(adam):
    from transformers import get_scheduler

    return get_scheduler("cosine", adam, num_warmup_steps=1, num_training_steps=STEPS)


def batches() -> torch.Tensor:
    return torch.randint(3, 400, (4, 16), generator=torch.Generator().manual_seed(0))


def wrapped(model, plugin, accelerator):
    if plugin.fsdp_version == 2:
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        return fsdp2_prepare_model(accelerator, model)
    from peft.utils.other import fsdp_auto_wrap_policy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    plugin.auto_wrap_policy = fsdp_auto_wrap_policy(model)
    return FSDP(model, sharding_strategy=plugin.sharding_strategy, cpu_offload=plugin.cpu_offload,
                auto_wrap_policy=plugin.auto_wrap_policy, mixed_precision=plugin.mixed_precision_policy,
                sync_module_states=plugin.sync_module_states, backward_prefetch=plugin.backward_prefetch,
                forward_prefetch=plugin.forward_prefetch, use_orig_params=plugin.use_orig_params,
                param_init_fn=plugin.param_init_fn, ignored_modules=plugin.ignored_modules,
                limit_all_gathers=plugin.limit_all_gathers, device_id=torch.device("cpu"))


def main(optimizer_name: str, out: str) -> None:
    from accelerate import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import load_fsdp_optimizer, save_fsdp_optimizer

    from hubtune import compat, optimizer_shards
    from hubtune.errors import ConfigError

    PartialState(cpu=True)  # the gloo group, and the state accelerate's logging needs
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of the launch
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                  parallelism_config=None, mixed_precision="no", is_main_process=rank == 0,
                                  process_index=rank, num_processes=world, is_fsdp2=plugin.fsdp_version == 2,
                                  wait_for_everyone=dist.barrier)
    ids = batches()[rank::world]
    fsdp2 = plugin.fsdp_version == 2
    result: dict = {"fsdp_version": plugin.fsdp_version, "use_orig_params": plugin.use_orig_params, "norms": []}

    def step(model, adam, sched) -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if fsdp2:  # as accelerate's clip_grad_norm_ clips FSDP2's gradients (one mesh): over the whole DTensors
            norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), CLIP)
            result["norms"].append(norm.full_tensor().item() if hasattr(norm, "full_tensor") else norm.item())
        adam.step()
        sched.step()
        adam.zero_grad()
        mean = torch.tensor([loss.item()])
        dist.all_reduce(mean)
        return mean.item() / world

    def attempt(what: str, call) -> bool:
        try:
            call()
            return True
        except Exception as err:  # what fails, and how, is the result
            result[what] = f"{type(err).__name__}: {err}"
            return False

    compat.peft_keys_under_nested_fsdp()  # as hubtune's FSDP runs do
    model = wrapped(prepared(), plugin, accelerator)
    adam, losses = optimizer(model, optimizer_name), []
    result["local_shards"] = optimizer_shards.on_local_shards(adam)  # FSDP2's DTensors; FSDP1's are plain
    sched = schedule(adam)
    if not attempt("step_error", lambda: losses.extend(step(model, adam, sched) for _ in range(SAVED))):
        return finish(rank, out, result)
    result["states"] = sorted({f"{k}:{v.dtype}" for s in adam.state.values() for k, v in s.items() if torch.is_tensor(v)})
    shards = optimizer_shards.layout(adam, plugin)
    result["shard_sizes" if "shard_sizes" in shards else "shard_shapes"] = shards.get("shard_sizes", shards.get("shard_shapes"))
    checkpoint = f"{out}.checkpoints/checkpoint-{SAVED}"
    trainer = fsdp_trainer(model, adam, sched, plugin, out)
    trainer._save_optimizer_and_scheduler(checkpoint)  # the model (save_fsdp_model), the optimizer, the schedule
    trainer._save_rng_state(checkpoint)
    drawn = torch.rand(3).tolist()  # what the random state saved draws next
    at_checkpoint = [_local(p).clone() for p in model.parameters() if p.requires_grad]
    losses += [step(model, adam, sched) for _ in range(STEPS - SAVED)]
    result["losses"] = losses
    uninterrupted = [_local(p).clone() for p in model.parameters() if p.requires_grad]
    del model, adam

    # Resumed: another adapter initialisation, a fresh optimizer and schedule, then the checkpoint.
    dist.barrier()
    torch.manual_seed(1)
    model = wrapped(prepared(seed=1), plugin, accelerator)
    adam = optimizer(model, optimizer_name)
    optimizer_shards.on_local_shards(adam)
    sched = schedule(adam)
    trainer.model = trainer.model_wrapped = model
    trainer.optimizer, trainer.lr_scheduler = adam, sched
    trainer._load_from_checkpoint(checkpoint, model)
    trainer._load_optimizer_and_scheduler(checkpoint)
    trainer._load_rng_state(checkpoint)
    result["rng_restored"] = torch.rand(3).tolist() == drawn
    result["resumed_lr"] = sched.get_last_lr()
    result["resumed_losses"] = [step(model, adam, sched) for _ in range(STEPS - SAVED)]
    after = [_local(p) for p in model.parameters() if p.requires_grad]
    gap = torch.tensor([max((a - b).abs().max().item() for a, b in zip(after, uninterrupted, strict=True))])
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    result["adapter_gap"] = gap.item()
    if fsdp2:
        return finish(rank, out, result)
    # The adapter at the end, as the Trainer's save_model writes it once hubtune asks for the whole state dict
    # (distributed.adapter_saved_whole): gathered onto the main process as accelerate's get_state_dict gathers it,
    # but for its offload to CPU (which, on a model already on CPU, frees what it gathered: torch 2.13), and
    # written by the Trainer's _save.
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    whole = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, whole):
        trainer._save(f"{out}.adapter", state_dict=model.state_dict())
    # Best-checkpoint selection: the checkpoint's adapter in PEFT's format, read by the main process alone
    # (training.select), and the Trainer's load_best_model_at_end (training.early_stopping_patience).
    if rank == 0:  # as the Trainer calls CheckpointSelection.on_save, with the model it was given (the PeftModel)
        from pathlib import Path

        from hubtune.callbacks import CheckpointSelection

        Path(f"{out}.run").mkdir()
        state = SimpleNamespace(is_world_process_zero=True, global_step=SAVED,
                                log_history=[{"eval_loss": 1.0, "step": SAVED}])
        CheckpointSelection(Path(f"{out}.run"), "eval_loss", [], None, None).on_save(
            SimpleNamespace(output_dir=f"{out}.checkpoints"), state, None, model=model.module)
    trainer.state.best_model_checkpoint = checkpoint
    trainer._load_best_model()
    best = [p.detach() for p in model.parameters() if p.requires_grad]
    gap = torch.tensor([max((a - b).abs().max().item() for a, b in zip(best, at_checkpoint, strict=True))])
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    result["best_gap"] = gap.item()
    # What the Trainer's own FSDP path makes of this optimizer: it saves, but cannot load back.
    accelerate_path = f"{out}.accelerate"
    if attempt("save_error", lambda: save_fsdp_optimizer(plugin, accelerator, adam, model, accelerate_path)):
        attempt("load_error", lambda: load_fsdp_optimizer(plugin, accelerator, adam, model, accelerate_path))
    del model, adam

    # The same checkpoint under another FSDP layout: the optimizer sees the original parameters.
    other = copy.copy(plugin)
    other.use_orig_params = not plugin.use_orig_params
    model = wrapped(prepared(), other, accelerator)
    adam = optimizer(model, optimizer_name)
    step(model, adam, schedule(adam))  # the states exist on this layout too
    result["other_layout_shard_sizes"] = optimizer_shards.layout(adam, other)["shard_sizes"]
    try:
        optimizer_shards.load(adam, other, checkpoint)
    except ConfigError as err:
        result["other_layout_error"] = str(err)
    finish(rank, out, result)


def _local(param) -> torch.Tensor:
    """This process's values of a parameter (FSDP2: its local shard)."""
    param = param.detach()
    return param.to_local() if hasattr(param, "to_local") else param


def fsdp_trainer(model, adam, sched, plugin, out: str):
    """A Trainer holding the FSDP-wrapped model, optimizer and schedule, told of the FSDP plugin as accelerate
    tells it on GPUs, saving and resuming the optimizer as hubtune's Trainer does."""
    from transformers import Trainer, TrainingArguments

    from hubtune import optimizer_shards

    from accelerate.utils import DistributedType

    trainer = Trainer(model=model, args=TrainingArguments(output_dir=f"{out}.trainer", use_cpu=True, report_to=[]))
    trainer.accelerator.state.distributed_type = DistributedType.FSDP
    trainer.accelerator.state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True
    trainer.model = trainer.model_wrapped = model
    trainer.optimizer, trainer.lr_scheduler = adam, sched
    optimizer_shards.keep_per_process(trainer)
    return trainer


def finish(rank: int, out: str, result: dict) -> None:
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
