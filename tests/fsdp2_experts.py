"""One process of a 2-process FSDP2 run over a base with quantized experts, started by torchrun from
tests/test_experts.py with the environment `accelerate launch` makes of hubtune's preset: the base loads
whole in every process with its experts quantized (as hubtune loads it under FSDP), LoRA goes on, and
accelerate's own FSDP2 preparation (fsdp2_prepare_model, with the plugin the preset's environment gives)
shards it. accelerate selects FSDP on GPUs only, so the Accelerator is stood in for by the attributes its
FSDP functions read. Then one batch per process: forward, backward, an AdamW step; the optimizer saved with
accelerate's save_fsdp_optimizer (torch's distributed checkpoint) and loaded back by load_fsdp_optimizer into a
new optimizer, as a resumed run does; a second step with it, a last forward; the model saved with accelerate's
save_fsdp_model and loaded back by load_fsdp_model over a zeroed adapter, and a forward again.
Rank 0 writes the mean losses, the full LoRA gradients and what each process held to OUT.

    torchrun --nproc_per_node 2 tests/fsdp2_experts.py MODEL QUANTIZATION LORA_JSON OPTIMIZER OUT [EXPERTS]

EXPERTS "quantized" (the default) or "16-bit": a QLoRA base whose experts stay in 16 bits, launched the same
way for torchao's low-bit AdamW (distributed.loads_whole_base). QUANTIZATION "nvfp4": MODEL is a ModelOpt NVFP4
folder, loaded packed by hubtune.nvfp4 (attention and experts), also launched that way; "dsv4": MODEL is DeepSeek V4's
NVFP4 release layout (block-wise FP8 weights, NVFP4 experts), loaded the same way.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist


def prepared(model_path: str, quantization: str, lora: dict, quantize_experts: bool = True):
    """The base and adapter exactly as the single-process reference builds them (same seed, same factors)."""
    from hubtune import config as cfg
    from hubtune.hardware import Hardware
    from hubtune.train import attach_lora, load_base

    if quantization in ("nvfp4", "dsv4"):  # an NVFP4 folder (ModelOpt's, or DeepSeek V4's fp8 with NVFP4 experts):
        # it loads as saved (hubtune.nvfp4), nothing to set
        model = {"id": model_path, "quantization": "none"}
    else:
        model = {"id": model_path, "quantization": quantization, "quantize_experts": quantize_experts}
    config = cfg.build({"model": model, "lora": lora})
    base = load_base(model_path, config.model, Hardware("cpu", torch.float32, "adamw_torch"), sharded=True)
    torch.manual_seed(0)
    peft_model = attach_lora(base, config, "hf", False)
    with torch.no_grad():  # B starts at zero: give it values so every factor gets a gradient at once
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    return peft_model


def optimizer(model, name: str):
    """AdamW over the adapter: torch's, or torchao's 8- or 4-bit one (adamw_torch_8bit, adamw_torch_4bit) with
    the block size transformers' Trainer gives them (256)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name in ("adamw_torch_8bit", "adamw_torch_4bit"):
        from torchao.optim import AdamW4bit, AdamW8bit

        return (AdamW8bit if name == "adamw_torch_8bit" else AdamW4bit)(params, lr=1e-2, block_size=256)
    return torch.optim.AdamW(params, lr=1e-2)


def state_types(adam) -> list[str]:
    return sorted({type(v.to_local() if hasattr(v, "to_local") else v).__name__
                   for state in adam.state.values() for v in state.values()})


def batches() -> torch.Tensor:
    return torch.randint(3, 902, (4, 16), generator=torch.Generator().manual_seed(0))


def main(model_path: str, quantization: str, lora_json: str, optimizer_name: str, out: str,
         experts: str = "quantized") -> None:
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import FSDPModule

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    from accelerate import PartialState

    from hubtune import distributed

    PartialState(cpu=True)  # accelerate's logging, which its FSDP saving uses, needs it

    # What hubtune's training does before the Trainer builds a torchao optimizer under FSDP2.
    separate = distributed.separate_optimizer_compiles("fsdp", optimizer_name)
    model = prepared(model_path, quantization, json.loads(lora_json), experts == "quantized")
    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables of the preset's launch
    assert plugin.fsdp_version == 2 and not plugin.cpu_ram_efficient_loading
    accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                  parallelism_config=None, mixed_precision="no", is_main_process=rank == 0,
                                  process_index=rank, wait_for_everyone=dist.barrier)
    model = fsdp2_prepare_model(accelerator, model)
    assert all(isinstance(layer, FSDPModule) for layer in model.base_model.model.model.layers)
    held = {name: [tuple(param.shape), tuple(param.to_local().shape), str(param.dtype)]
            for name, param in model.named_parameters() if "parametrizations" in name or param.dtype == torch.int8}
    # The parametrizations' constants (NVFP4 block and global scales, FP8 block scales) are buffers: FSDP2 leaves
    # them whole.
    constants = {name: [tuple(buf.shape), type(buf).__name__] for name, buf in model.named_buffers()
                 if "parametrizations" in name}
    adam = optimizer(model, optimizer_name)
    ids = batches()[rank::world]

    def mean(loss) -> float:
        value = torch.tensor([loss.item()])
        dist.all_reduce(value)
        return value.item() / world

    losses = []
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {name: param.grad.full_tensor() for name, param in model.named_parameters() if param.requires_grad}
    adam.step()
    adam.zero_grad()
    losses.append(mean(loss))
    states = state_types(adam)
    # The checkpoint and the resume, as the Trainer does them through accelerate under FSDP2.
    from accelerate.utils.fsdp_utils import load_fsdp_optimizer, save_fsdp_optimizer

    save_fsdp_optimizer(plugin, accelerator, adam, model, f"{out}.checkpoint")
    resumed = optimizer(model, optimizer_name)
    load_fsdp_optimizer(plugin, accelerator, resumed, model, f"{out}.checkpoint")
    loaded = state_types(resumed)
    dtensor_keys = None
    if optimizer_name == "adamw_torch_4bit":  # what torch's compile cache keys a 4-bit state by, and an 8-bit one
        from torch.distributed.tensor import DTensor
        from torchao.optim.subclass_8bit import OptimState8bit

        four = next(v for state in resumed.state.values() for v in state.values()
                    if type(getattr(v, "_local_tensor", None)).__name__ == "OptimState4bit")
        eight = DTensor.from_local(OptimState8bit.zeros(four.to_local().shape, block_size=256), four.device_mesh,
                                   four.placements, run_check=False, shape=four.shape, stride=four.stride())
        dtensor_keys = [four._stable_hash_for_caching(), eight._stable_hash_for_caching()]
    loss = model(ids, labels=ids).loss
    loss.backward()
    resumed.step()
    resumed.zero_grad()
    losses.append(mean(loss))
    with torch.no_grad():
        losses.append(mean(model(ids, labels=ids).loss))
    # What a checkpoint and the saved adapter take from the model (accelerate's FSDP2 saving): the sharded state
    # through torch's distributed checkpoint, and the full state gathered onto the CPU.
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=f"{out}.model")
    # The model's checkpoint as the Trainer writes and resumes it (accelerate's save_fsdp_model / load_fsdp_model),
    # the quantized base in it: loaded over a zeroed adapter, the last loss comes back.
    from accelerate.utils.fsdp_utils import load_fsdp_model, save_fsdp_model

    accelerator.is_fsdp2 = True
    save_fsdp_model(plugin, accelerator, model, f"{out}.trainer")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.zero_()
    load_fsdp_model(plugin, accelerator, model, f"{out}.trainer")
    with torch.no_grad():
        losses.append(mean(model(ids, labels=ids).loss))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    adapter = {name: value for name, value in full.items() if "lora_" in name}
    if rank == 0:
        torch.save({"losses": losses, "grads": grads, "held": held, "states": states, "loaded": loaded,
                    "adapter": adapter, "separate": separate, "dtensor_keys": dtensor_keys,
                    "constants": constants}, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
