"""Run by tests/test_expert_parallel.py under torchrun (2 processes, gloo): a tiny NVFP4 mixture-of-experts base
(ModelOpt's layout) loaded by hubtune.train.load_base with its experts split over the 2 processes (hubtune.nvfp4
reads each process's share; transformers' dispatch exchanges the tokens all-to-all), LoRA on attention and on the
experts (hubtune.expert_lora), against the same base loaded whole in each process with the same adapter: the
adapter each process starts from is the whole one's share; the loss, and after a backward the gradient of every
factor a process holds (its experts' share divided as hubtune divides it; the replicated ones averaged over the
processes, as the Trainer averages them), are the whole model's over both processes' batches; the adapter
gathered from both is the whole one. Each process prints what it holds and the largest differences.

    torchrun --nproc_per_node 2 tests/ep_nvfp4_step.py NVFP4_FOLDER
"""

import os
import sys

import torch
import torch.distributed as dist

from hubtune import config as cfg
from hubtune import distributed, expert_lora
from hubtune.hardware import Hardware
from hubtune.train import attach_lora, load_base

dist.init_process_group("gloo")
torch.set_num_threads(1)
rank, world = dist.get_rank(), dist.get_world_size()
config = cfg.build({"model": {"id": sys.argv[1], "quantization": "none"},
                    "lora": {"target_modules": ["q_proj", "v_proj"], "dropout": 0.0, "r": 4,
                             "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]},
                    "training": {"distributed": "ddp", "expert_parallel_size": 2}})
hw = Hardware("cpu", torch.float32, "adamw_torch")
split = load_base(sys.argv[1], config.model, hw, distributed_config=distributed.expert_parallel_config(config.training))
held = distributed.experts_held(split, 2)
torch.manual_seed(0)
split = attach_lora(split, config, "hf", False)
adapters = expert_lora.shard(split)
whole = load_base(sys.argv[1], config.model, hw)
torch.manual_seed(0)
whole = attach_lora(whole, config, "hf", False)
share = expert_lora.expert_parameters(adapters)
mine, everything = dict(split.named_parameters()), dict(whole.named_parameters())


def shared(name, value):
    """This process's part of one of the whole model's adapter tensors."""
    param = mine[name]
    if id(param) not in share:
        return value
    adapter, kind = share[id(param)]
    return (expert_lora.local_rows if kind == "A" else expert_lora.local_columns)(value, adapter.total,
                                                                                 adapter.start, adapter.local)


trainable = [n for n, p in mine.items() if p.requires_grad]
start = max((mine[n] - shared(n, everything[n])).abs().max().item() for n in trainable)
with torch.no_grad():  # B starts at zero: give it values so every factor gets a gradient
    for name in trainable:
        if "lora_B" in name:
            everything[name].normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            mine[name].copy_(shared(name, everything[name]))
expert_lora.divide_gradients(adapters, world)
ids = torch.randint(3, 900, (4, 16), generator=torch.Generator().manual_seed(0))
loss = split(ids[rank::world], labels=ids[rank::world]).loss
loss.backward()
for name in trainable:
    if id(mine[name]) not in share:
        dist.all_reduce(mine[name].grad, op=dist.ReduceOp.AVG)
mean = loss.detach().clone()
dist.all_reduce(mean, op=dist.ReduceOp.AVG)
reference = sum(whole(ids[r::world], labels=ids[r::world]).loss / world for r in range(world))
reference.backward()
grads = max((mine[n].grad - shared(n, everything[n].grad)).abs().max().item() for n in trainable)
gathered = expert_lora.gathered_state(split, adapters)
whole_state = max((gathered[n] - everything[n].detach()).abs().max().item() for n in trainable)
experts = sum(1 for n in trainable if id(mine[n]) in share)
print(f"rank {os.environ['RANK']}: experts {held}; {experts} expert factors of {len(trainable)}; start difference "
      f"{start:.2e}; loss {mean.item():.6f} whole {reference.item():.6f}; gradient difference {grads:.2e}; "
      f"gathered difference {whole_state:.2e}", flush=True)
dist.destroy_process_group()
