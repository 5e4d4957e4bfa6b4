"""Run by tests/test_expert_parallel.py under torchrun (2 processes, gloo): LoRA on attention and on the experts
(hubtune.expert_lora) of a tiny mixture-of-experts base whose experts are split over the 2 processes, against the
same base loaded whole in each process with the same adapter, for a 16-bit base (transformers' expert
parallelism, DTensor experts) and for the same weights saved in ModelOpt's NVFP4 layout (hubtune.nvfp4 reads
each process's share). Per base: the adapter each process starts from is the whole one's share; two AdamW steps
over both processes' batches (each process's expert factors' gradients divided as hubtune divides them, the
replicated ones averaged as the Trainer averages them, all clipped by the whole adapter's norm) give the whole
model's losses, gradients and norms; after a checkpoint (the adapter gathered, the optimizer per process) a model
built anew and resumed from it takes the second step to the same factors; the adapter gathered at the end is
the whole one. Each process prints what it holds and the largest differences.

    torchrun --nproc_per_node 2 tests/ep_lora_steps.py SIXTEEN_BIT_FOLDER NVFP4_FOLDER OUT
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft.utils.save_and_load import get_peft_model_state_dict
from safetensors.torch import save_file

from hubtune import config as cfg
from hubtune import distributed, expert_lora, optimizer_shards
from hubtune.hardware import Hardware
from hubtune.train import attach_lora, load_base

CLIP = 0.01  # below the adapter's gradient norm: the clip acts
dist.init_process_group("gloo")
torch.set_num_threads(1)
rank, world = dist.get_rank(), dist.get_world_size()
hw = Hardware("cpu", torch.float32, "adamw_torch")
ids = torch.randint(3, 900, (4, 16), generator=torch.Generator().manual_seed(0))


def split_model(config):
    model = load_base(config.model.id, config.model, hw,
                      distributed_config=distributed.expert_parallel_config(config.training))
    held = distributed.experts_held(model, 2)
    torch.manual_seed(0)
    model = attach_lora(model, config, "hf", False)
    adapters = expert_lora.shard(model)
    expert_lora.divide_gradients(adapters, world)
    return model, adapters, held


def shares(model, adapters):
    """name -> this process's part of the whole model's tensor of that name."""
    held = expert_lora.expert_parameters(adapters)

    def part(name, param, value):
        if id(param) not in held:
            return value
        adapter, kind = held[id(param)]
        cut = expert_lora.local_rows if kind == "A" else expert_lora.local_columns
        return cut(value, adapter.total, adapter.start, adapter.local)

    return {n: (lambda value, n=n, p=p: part(n, p, value)) for n, p in model.named_parameters() if p.requires_grad}


def step(model, adapters, optimizer):
    """One step of the split model on this process's batch: the mean loss, the gradients (before the clip), the norm."""
    held = expert_lora.expert_parameters(adapters)
    loss = model(ids[rank::world], labels=ids[rank::world]).loss
    loss.backward()
    for p in model.parameters():
        if p.requires_grad and id(p) not in held:
            dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    norm = expert_lora.global_grad_norm(model, adapters, CLIP)
    optimizer.step()
    optimizer.zero_grad()
    mean = loss.detach().clone()
    dist.all_reduce(mean, op=dist.ReduceOp.AVG)
    return mean.item(), grads, norm.item()


def whole_step(model, optimizer):
    loss = sum(model(ids[r::world], labels=ids[r::world]).loss / world for r in range(world))
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item(), grads, norm.item()


for kind, folder in (("16-bit", sys.argv[1]), ("nvfp4", sys.argv[2])):
    config = cfg.build({"model": {"id": folder, "quantization": "none"},
                        "lora": {"target_modules": ["q_proj", "v_proj"], "dropout": 0.0, "r": 4,
                                 "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]},
                        "training": {"distributed": "ddp", "expert_parallel_size": 2}})
    split, adapters, held = split_model(config)
    whole = load_base(folder, config.model, hw)
    torch.manual_seed(0)
    whole = attach_lora(whole, config, "hf", False)
    part = shares(split, adapters)
    mine, everything = dict(split.named_parameters()), dict(whole.named_parameters())
    start = max((mine[n] - part[n](everything[n])).abs().max().item() for n in part)
    with torch.no_grad():  # B starts at zero: give it values so every factor gets a gradient
        for name in part:
            if "lora_B" in name:
                everything[name].normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
                mine[name].copy_(part[name](everything[name]))
    adam = torch.optim.AdamW([p for p in split.parameters() if p.requires_grad], lr=1e-2)
    whole_adam = torch.optim.AdamW([p for p in whole.parameters() if p.requires_grad], lr=1e-2)
    losses, grads, norms = zip(step(split, adapters, adam), whole_step(whole, whole_adam))
    difference = max((grads[0][n] - part[n](grads[1][n])).abs().max().item() for n in part)
    # The checkpoint: the adapter gathered in PEFT's format, the optimizer per process.
    out = Path(sys.argv[3]) / kind
    gathered = expert_lora.gathered_state(split, adapters)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(split, state_dict=gathered).items()},
                  out / "adapter_model.safetensors")
    dist.barrier()
    optimizer_shards.save(adam, None, out)
    second = step(split, adapters, adam)[0], whole_step(whole, whole_adam)[0]
    resumed, resumed_adapters, _ = split_model(config)
    expert_lora.load_sliced(resumed, resumed_adapters, str(out))
    resumed_adam = torch.optim.AdamW([p for p in resumed.parameters() if p.requires_grad], lr=1e-2)
    optimizer_shards.load(resumed_adam, None, out)
    step(resumed, resumed_adapters, resumed_adam)
    again = dict(resumed.named_parameters())
    resume = max((again[n] - mine[n]).abs().max().item() for n in part)
    gathered = expert_lora.gathered_state(split, adapters)
    end = max((gathered[n] - everything[n].detach()).abs().max().item() for n in part)
    factors = sum(1 for n, p in mine.items() if id(p) in expert_lora.expert_parameters(adapters))
    print(f"rank {os.environ['RANK']} {kind}: experts {held}; {factors} expert factors of {len(part)}; start "
          f"{start:.2e}; losses {losses[0]:.6f} {second[0]:.6f} whole {losses[1]:.6f} {second[1]:.6f}; gradient "
          f"{difference:.2e}; norm {norms[0]:.6f} whole {norms[1]:.6f}; resumed {resume:.2e}; gathered {end:.2e}",
          flush=True)
dist.destroy_process_group()
