"""model.quantize_experts on a tiny Qwen3-MoE saved in the test's folder (random weights, the embedded tiny
base's tokenizer and licence): the stacked expert weights load quantized, compute as their dequantized
values, stay frozen under LoRA, and a run's adapter loads back onto a base loaded the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune import experts
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

CPU = Hardware("cpu", torch.float32, "adamw_torch")
STORAGE = {"nf4": torch.uint8, "fp4": torch.uint8, "int8": torch.int8}


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory) -> Path:
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tiny = Path(cfg.resolve_builtin("hubtune:tiny-llama"))
    out = tmp_path_factory.mktemp("moe") / "tiny-moe"
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=902, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    Qwen3MoeForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(tiny / name, out / name)
    return out


def load(path, **model):
    from hubtune.train import load_base

    return load_base(str(path), cfg.ModelSection(id=str(path), **model), CPU)


def expert_weights(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": getattr(layer.mlp.experts, name).detach().clone()
            for i, layer in enumerate(model.model.layers) for name in ("gate_up_proj", "down_proj")}


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_experts_load_quantized_and_compute_as_their_dequantized_values(tiny_moe, quantization):
    import transformers.core_model_loading as loading

    before = loading.set_param_for_module
    base = load(tiny_moe, quantization=quantization, quantize_experts=True)
    assert loading.set_param_for_module is before  # the loader's hook is gone after the load
    names = experts.quantized_experts(base)
    assert sorted(names) == [f"model.layers.{i}.mlp.experts.{n}" for i in (0, 1) for n in ("down_proj", "gate_up_proj")]
    stored = base.model.layers[0].mlp.experts.parametrizations.gate_up_proj.original
    assert stored.dtype == STORAGE[quantization] and not stored.requires_grad
    # The same base with 16-bit experts (its Linear layers quantized alike), the experts then set to the
    # dequantized values: the logits are the same.
    reference = load(tiny_moe, quantization=quantization)
    sixteen_bit = expert_weights(reference)
    dequantized = expert_weights(base)
    # Quantized for real (they differ), to within a fifth of the weights' mean size on average.
    assert all(0 < (dequantized[k] - sixteen_bit[k]).abs().mean() < 0.25 * sixteen_bit[k].abs().mean()
               for k in dequantized)
    with torch.no_grad():
        for i, layer in enumerate(reference.model.layers):
            for name in ("gate_up_proj", "down_proj"):
                getattr(layer.mlp.experts, name).copy_(dequantized[f"{i}.{name}"])
        ids = torch.randint(3, 902, (2, 12), generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(base(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
    # What the experts hold: 4 bits (plus constants) or 8 bits a weight instead of the checkpoint's 32.
    quantized_bytes = sum(p.numel() * p.element_size() for n, p in base.named_parameters() if "experts" in n)
    full_bytes = sum(v.numel() * v.element_size() for v in sixteen_bit.values())
    assert quantized_bytes <= full_bytes / (8 if quantization == "nf4" else 4)


def test_the_loader_quantizes_each_expert_as_it_is_set(tiny_moe):
    from transformers import AutoModelForCausalLM

    with experts.quantizing_on_load("nf4", True, torch.float32) as done:
        AutoModelForCausalLM.from_pretrained(tiny_moe, dtype=torch.float32)
    assert len(done) == 4  # all four during the load, none left for the pass after it
    import transformers.core_model_loading as loading

    with pytest.raises(OSError), experts.quantizing_on_load("nf4", True, torch.float32):
        AutoModelForCausalLM.from_pretrained(tiny_moe / "missing")
    assert loading.set_param_for_module.__name__ == "set_param_for_module"  # restored after a failed load too


def test_quantized_experts_are_refused_where_they_cannot_work(tiny_moe):
    with pytest.raises(ConfigError, match="set model.quantization to nf4, fp4 or int8"):
        cfg.build({"model": {"quantization": "none", "quantize_experts": True}})
    with pytest.raises(ConfigError, match="fsdp neither shards nor places"):
        cfg.build({"model": {"quantize_experts": True}, "training": {"distributed": "fsdp"}})
    with pytest.raises(ConfigError, match="PEFT cannot yet train LoRA on quantized expert weights"):
        cfg.build({"model": {"quantize_experts": True}, "lora": {"target_parameters": ["experts.down_proj"]}})
    with pytest.raises(ConfigError, match="already quantizes; leave quantize_experts out"):
        cfg.build({"model": {"quantize_experts": True, "linearized_experts": True}})
    with pytest.raises(ConfigError, match="has no stacked expert weights"):
        load(cfg.resolve_builtin("hubtune:tiny-llama"), quantize_experts=True)


def test_lora_names_that_end_like_a_quantized_expert_reach_linear_layers_only(tiny_moe):
    from hubtune.train import attach_lora

    base = load(tiny_moe, quantize_experts=True)
    run = cfg.build({"model": {"quantize_experts": True}, "lora": {"target_modules": ["q_proj", "o_proj"]}})
    model = attach_lora(base, run, "hf", gradient_checkpointing=False)
    adapted = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A") and "parametrizations" not in n}
    assert adapted == {"q_proj", "o_proj"}
    assert not any(".parametrizations." in n for n, p in model.named_parameters() if p.requires_grad)
    # PEFT moves down_proj onto the stacked experts of Qwen-MoE-like bases: refused, not dropped.
    onto_experts = cfg.build({"model": {"quantize_experts": True}, "lora": {"target_modules": ["q_proj", "down_proj"]}})
    with pytest.raises(ConfigError, match="LoRA would reach the quantized experts"):
        attach_lora(load(tiny_moe, quantize_experts=True), onto_experts, "hf", gradient_checkpointing=False)


@pytest.mark.slow
def test_a_run_on_quantized_experts_trains_and_its_adapter_loads_back(tiny_moe, tmp_path, one_torch_thread):
    from data_rows import tiny_config

    import hubtune
    from hubtune.evaluation import load_tuned

    config = tiny_config(tmp_path, rows=48, model={"id": str(tiny_moe), "quantize_experts": True},
                         lora={"target_modules": "attention"}, data={"val_set_size": 8},
                         training={"max_steps": 6, "micro_batch_size": 8, "learning_rate": 5e-3,
                                   "eval_steps": 6, "logging_steps": 2},
                         eval={"tasks": [], "regression_set": None})
    run = hubtune.train(config)
    assert run.summary.global_steps == 6
    assert run.summary.final_eval_loss < run.summary.initial_eval_loss
    model, _ = load_tuned(run.path)
    assert len(experts.quantized_experts(model.base_model.model)) == 4
    from safetensors.torch import load_file

    saved = load_file(run.adapter / "adapter_model.safetensors")
    assert saved and not any("experts" in k for k in saved)
    loaded = dict(model.named_parameters())
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(loaded[name].detach().to(value.dtype), value), key


def test_the_documented_moe_config_builds():
    import yaml
    from readme_blocks import section_blocks

    (body,) = [body for lang, body in section_blocks("Mixture-of-experts bases") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(body))
    assert (config.model.quantization, config.model.quantize_experts, config.model.experts_implementation) == (
        "nf4", True, "grouped_mm")
    assert config.lora.target_modules == "attention"
