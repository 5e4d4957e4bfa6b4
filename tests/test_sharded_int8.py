"""hubtune.sharded_int8 in one process: an int8 base whose layers keep their row scales as a buffer computes
exactly as bitsandbytes' own Linear8bitLt (LLM.int8(), eval and training paths, and LoRA's gradients over it),
and saves the same state. Under FSDP2: tests/test_experts.py (int8-base)."""

from __future__ import annotations

import pytest
import torch

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

CPU = Hardware("cpu", torch.float32, "adamw_torch")


def lora_model(sharded: bool):
    from hubtune.train import attach_lora, load_base

    config = cfg.build({"model": {"quantization": "int8"}, "lora": {"dropout": 0.0}})
    base = load_base(cfg.resolve_builtin(config.model.id), config.model, CPU, sharded=sharded)
    torch.manual_seed(0)
    model = attach_lora(base, config, "hf", False)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


@pytest.mark.slow
def test_an_int8_base_kept_for_fsdp2_computes_as_bitsandbytes_own_layers():
    from bitsandbytes.nn import Linear8bitLt

    from hubtune.sharded_int8 import ShardableLinear8bitLt

    plain, shardable = lora_model(False), lora_model(True)
    layers = [m for m in shardable.modules() if isinstance(m, Linear8bitLt)]
    assert layers and all(isinstance(m, ShardableLinear8bitLt) for m in layers)
    assert not any(isinstance(m, ShardableLinear8bitLt) for m in plain.modules())
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    plain.eval(), shardable.eval()  # MatMul8bitLt: int8 x int8 products
    with torch.no_grad():
        torch.testing.assert_close(shardable(ids).logits, plain(ids).logits, rtol=0, atol=0)
    plain.train(), shardable.train()  # bitsandbytes' training path on this device
    for model in (plain, shardable):
        model(ids, labels=ids).loss.backward()
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    assert grads and all(g.abs().sum() > 0 for g in grads.values())
    for name, param in shardable.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=0, atol=0)
    # The same weights and row scales under bitsandbytes' keys (less its weight_format marker), as buffers
    # and parameters, which torch's distributed state dict reads.
    mine, theirs = shardable.state_dict(), plain.state_dict()
    assert sorted(mine) == sorted(k for k in theirs if not k.endswith("weight_format"))
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key
    assert {n for n, _ in shardable.named_buffers() if n.endswith("SCB")} == {k for k in mine if k.endswith("SCB")}


def test_an_int8_base_is_refused_where_it_cannot_shard(monkeypatch):
    """In a launch that is not FSDP2 with every process loading the base (FSDP1, ZeRO-3), before any weight
    loads."""
    from hubtune.train import load_base

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("FSDP_VERSION", "1")
    model = cfg.ModelSection(quantization="int8")
    with pytest.raises(ConfigError, match="an int8 base shards under FSDP2 only.*fsdp2-quantized-experts.yaml"):
        load_base(cfg.resolve_builtin(model.id), model, CPU, sharded=True)
