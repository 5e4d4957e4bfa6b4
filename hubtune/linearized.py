"""Llama 4 bases re-saved with one linear layer per expert (Axolotl's `llama4_linearized_experts`, e.g.
axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16): transformers' Llama 4 keeps each MoE layer's
experts as two stacked parameters (gate_up_proj, down_proj), which bitsandbytes cannot quantize and LoRA
cannot target by module. The linearized layout stores `experts.gate_projs.N`, `experts.up_projs.N` and
`experts.down_projs.N` as plain nn.Linear weights, so a 4-bit copy can be saved and loaded pre-quantized.

    model = load(path, quantization_config=...)      # AutoModelForCausalLM with LinearizedLlama4Experts
    fuse_experts(model)                               # a 16-bit model back to transformers' layout, for saving
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from hubtune.errors import ConfigError

MODEL_TYPES = ("llama4", "llama4_text")


# Adapted from Axolotl's src/axolotl/monkeypatch/models/llama4/modeling.py (Llama4TextExperts) at commit
# 067b021c8b87a9e5e380b9173c704cf7340e30f5, Apache-2.0 (github.com/axolotl-ai-cloud/axolotl). Same parameter
# names (so its checkpoints load) and the same computation; renamed so that transformers' own pre-quantized
# Llama 4 conversion, which matches the class name Llama4TextExperts, leaves it alone.
class LinearizedLlama4Experts(nn.Module):
    """transformers' Llama4TextExperts with one nn.Linear per expert for the gate, up and down projections."""

    def __init__(self, config):
        from transformers.activations import ACT2FN

        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        self.expert_dim = config.intermediate_size
        self.gate_projs = nn.ModuleList(nn.Linear(self.hidden_size, self.expert_dim, bias=False)
                                        for _ in range(self.num_experts))
        self.up_projs = nn.ModuleList(nn.Linear(self.hidden_size, self.expert_dim, bias=False)
                                      for _ in range(self.num_experts))
        self.down_projs = nn.ModuleList(nn.Linear(self.expert_dim, self.hidden_size, bias=False)
                                        for _ in range(self.num_experts))
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # The router's output comes sorted by expert: (num_experts * tokens, hidden), as Llama4TextExperts takes it.
        hidden_states = hidden_states.view(self.num_experts, -1, self.hidden_size)
        out = torch.zeros_like(hidden_states)
        for i in range(self.num_experts):
            x = hidden_states[i]
            out[i] = self.down_projs[i](self.up_projs[i](x) * self.act_fn(self.gate_projs[i](x)))
        return out.view(-1, self.hidden_size)


def check_model_type(model_config, field: str = "model.linearized_experts") -> None:
    """A ConfigError unless the base is a Llama 4 (the only architecture saved this way)."""
    model_type = getattr(model_config, "model_type", None)
    if model_type not in MODEL_TYPES:
        raise ConfigError([(field, f"the base is a {model_type or 'model of unknown type'}, and linearized experts "
                                   f"are a layout of Llama 4 bases (model_type llama4); leave it out")])


@contextmanager
def linearized_llama4():
    """transformers' Llama 4 MoE layers take LinearizedLlama4Experts for their experts while the block runs,
    so from_pretrained places a linearized checkpoint's weights (16-bit, or pre-quantized 4-bit) as saved.
    The layer is swapped in its constructor (on the meta device under from_pretrained, before any weight
    loads); the class name Llama4TextExperts stays transformers' own, which its weight initialisation checks."""
    from transformers.models.llama4 import modeling_llama4

    original = modeling_llama4.Llama4TextMoe.__init__

    def __init__(self, config):
        original(self, config)
        self.experts = LinearizedLlama4Experts(config)

    modeling_llama4.Llama4TextMoe.__init__ = __init__
    try:
        yield
    finally:
        modeling_llama4.Llama4TextMoe.__init__ = original


def checkpoint_keys(path: str | Path) -> list[str]:
    """The tensor names of a local checkpoint (its safetensors index, else its safetensors files)."""
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return list(json.loads(index.read_text()).get("weight_map", {}))
    from safetensors import safe_open

    keys: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            keys.extend(f.keys())
    return keys


def check_layout(path: str | Path) -> None:
    """A ConfigError when the checkpoint's experts are not in the linearized layout: transformers' fused
    experts (gate_up_proj), or the list of per-expert MLPs (experts.N.gate_proj) transformers itself saves and
    loads for a pre-quantized Llama 4. Either loads without linearized_experts."""
    keys = checkpoint_keys(path)
    if not keys or any(".experts.gate_projs." in k for k in keys):
        return
    layout = ("Llama 4's fused experts (gate_up_proj)" if any(k.endswith(".experts.gate_up_proj") for k in keys) else
              "transformers' own per-expert MLPs (experts.N.gate_proj)" if any(".experts.0.gate_proj." in k for k in keys)
              else "no linearized experts (experts.gate_projs.N)")
    raise ConfigError([("model.linearized_experts", f"{path} holds {layout}, which transformers loads as saved; "
                                                    f"leave linearized_experts out")])


def load(path: str, **kwargs):
    """AutoModelForCausalLM.from_pretrained of a linearized Llama 4 checkpoint (its text model)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    where = {k: kwargs[k] for k in ("revision", "token", "trust_remote_code") if k in kwargs}
    check_model_type(AutoConfig.from_pretrained(path, **where))
    check_layout(path)
    with linearized_llama4():
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def fuse_experts(model) -> int:
    """Every LinearizedLlama4Experts of a 16-bit model replaced by transformers' Llama4TextExperts holding the
    same weights stacked (gate_up_proj = [gate | up] per expert, transposed), as Axolotl's delinearize_llama4
    writes them: the model then saves in the layout transformers and other tools load. Returns how many."""
    from transformers.models.llama4.modeling_llama4 import Llama4TextExperts

    count = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, LinearizedLlama4Experts):
            continue
        gate = torch.stack([m.weight.t() for m in module.gate_projs])
        up = torch.stack([m.weight.t() for m in module.up_projs])
        down = torch.stack([m.weight.t() for m in module.down_projs])
        config = _text_config(model)
        with torch.device("meta"):
            fused = Llama4TextExperts(config)
        fused.gate_up_proj = nn.Parameter(torch.cat((gate, up), dim=-1).contiguous(), requires_grad=False)
        fused.down_proj = nn.Parameter(down.contiguous(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, fused)
        count += 1
    return count


def _text_config(model):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config
