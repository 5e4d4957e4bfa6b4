"""Run by tests/test_expert_parallel.py under torchrun (2 processes, gloo): one tiny mixture-of-experts base
loaded whole and loaded with transformers' expert parallelism (experts split over the 2 processes, tokens
exchanged all-to-all) gives the same logits. Prints, per process, how many experts it holds and the largest
logit difference."""

import os, sys, torch
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig
path = sys.argv[1]
torch.manual_seed(0)
ids = torch.randint(0, 900, (2, 24))
plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
ep = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                          distributed_config=DistributedConfig(ep_size=2, fsdp_size=2, ep_implementation="all_to_all"))
local = ep.model.layers[0].mlp.experts.gate_up_proj.to_local().shape[0]
with torch.no_grad():
    a = plain(ids).logits
    b = ep(ids).logits
print(f"rank {os.environ['RANK']}: experts held here {local} of 8, max logit difference {(a - b).abs().max().item():.2e}", flush=True)
