"""An 8-bit (LLM.int8()) base under FSDP2.

bitsandbytes' Linear8bitLt keeps each layer's row constants on its weight object (Int8Params.CB, .SCB) and
moves them into the layer's MatmulLtState on the first forward. FSDP2 replaces that weight by plain Parameters
(its shard, and the all-gathered whole one), so those attributes are lost ("'Parameter' object has no attribute
'CB'"). Here each layer keeps its row scales (SCB, one float32 absmax per output row) as a buffer, which FSDP2
leaves whole in every process, and each forward points the layer's state at the weight FSDP2 has just
all-gathered (the int8 rows, CB) and at those scales: bnb.matmul then runs LLM.int8() exactly as in one process.
"""

from __future__ import annotations

import torch


def _linear8bit():
    from bitsandbytes.nn import Linear8bitLt

    return Linear8bitLt


class ShardableLinear8bitLt(_linear8bit()):
    """A Linear8bitLt whose row scales are a buffer and whose int8 rows are read from the weight at each forward
    (as FSDP2 all-gathers it), never from attributes of the weight object."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import bitsandbytes as bnb

        self.state.is_training = self.training
        # The whole int8 weight (FSDP2 all-gathers it before this layer's forward and again before its backward,
        # into the same storage, which MatMul8bitLt's backward reads through state.CB).
        self.state.CB = self.weight.data
        self.state.SCB = self.SCB
        bias = self.bias
        if bias is not None and bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
        return bnb.matmul(x, self.weight, bias=bias, state=self.state)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # weight (int8), bias and the SCB buffer, under bitsandbytes' own keys; without its weight_format marker,
        # which no parameter or buffer holds (torch's distributed state dict reads keys from the modules).
        torch.nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)


def make_shardable(model: torch.nn.Module) -> int:
    """Turn every quantized Linear8bitLt of `model` into a ShardableLinear8bitLt before FSDP2 shards it (and
    before LoRA wraps it: PEFT sees a Linear8bitLt still). Returns how many layers it turned."""
    Linear8bitLt = _linear8bit()
    turned = 0
    for module in model.modules():
        if not isinstance(module, Linear8bitLt) or isinstance(module, ShardableLinear8bitLt):
            continue
        if module.state.has_fp16_weights:
            continue  # 16-bit weights quantized at each forward: nothing is kept beside them
        scb = module.weight.SCB if getattr(module.weight, "SCB", None) is not None else module.state.SCB
        if scb is None:
            raise ValueError("a Linear8bitLt whose weight is not quantized yet: load the base with its "
                             "quantization before sharding it")
        module.weight.CB = module.weight.SCB = None  # CB is weight.data itself
        module.state.CB = module.state.SCB = None
        module.register_buffer("SCB", scb)
        module.__class__ = ShardableLinear8bitLt
        turned += 1
    return turned
