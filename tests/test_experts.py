"""model.quantize_experts on a tiny Qwen3-MoE saved in the test's folder (random weights, the embedded tiny
base's tokenizer and licence): the stacked expert weights load quantized, compute as their dequantized
values, stay frozen under LoRA, and a run's adapter loads back onto a base loaded the same way."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune import distributed, experts
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

CPU = Hardware("cpu", torch.float32, "adamw_torch")
STORAGE = {"nf4": torch.uint8, "fp4": torch.uint8, "int8": torch.int8, "nvfp4": torch.uint8, "dsv4": torch.uint8}


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
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    linear_4bit = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    with experts.quantizing_on_load("nf4", True, torch.float32) as done:
        AutoModelForCausalLM.from_pretrained(tiny_moe, dtype=torch.float32, quantization_config=linear_4bit)
    assert len(done) == 4  # all four during the load (beside bitsandbytes' Linear layers), none left for after
    import transformers.core_model_loading as loading

    with pytest.raises(OSError), experts.quantizing_on_load("nf4", True, torch.float32):
        AutoModelForCausalLM.from_pretrained(tiny_moe / "missing")
    assert loading.set_param_for_module.__name__ == "set_param_for_module"  # restored after a failed load too


def test_quantized_experts_are_refused_where_they_cannot_work(tiny_moe):
    with pytest.raises(ConfigError, match="set model.quantization to nf4, fp4 or int8"):
        cfg.build({"model": {"quantization": "none", "quantize_experts": True}})
    with pytest.raises(ConfigError, match="quantize_experts with deepspeed-zero3: ZeRO-3 partitions the base"):
        cfg.build({"model": {"quantize_experts": True}, "training": {"distributed": "deepspeed-zero3"}})
    with pytest.raises(ConfigError, match="already quantizes; leave quantize_experts out"):
        cfg.build({"model": {"quantize_experts": True, "linearized_experts": True}})
    with pytest.raises(ConfigError, match="has no stacked expert weights"):
        load(cfg.resolve_builtin("hubtune:tiny-llama"), quantize_experts=True)


def test_torchs_distributed_state_dict_reads_the_experts_once_bitsandbytes_hook_is_gone(tiny_moe):
    """accelerate saves FSDP2 checkpoints and the adapter through torch's get_model_state_dict, which resolves
    bitsandbytes' renamed keys (gate_up_proj.absmax, ...) by attribute and fails; without that hook (as
    hubtune loads the base under FSDP) the keys are the modules' own and the state dict is read."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    base = load(tiny_moe, quantization="nf4", quantize_experts=True)
    with pytest.raises(AttributeError, match="no attribute 'absmax'"):  # bitsandbytes 0.50 with torch 2.13
        get_model_state_dict(base)
    assert experts.keep_state_dict_keys(base) == 4
    state = get_model_state_dict(base)
    stored = state["model.layers.0.mlp.experts.parametrizations.gate_up_proj.original"]
    assert stored.dtype == torch.uint8 and not any("experts" in k and k.endswith(".absmax") for k in state)


def launch_env(plan) -> dict[str, str]:
    """The environment `accelerate launch` gives each process of hubtune's launch command (its own parser)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    cmd = distributed.launch_command(plan, ["train", "run.yaml"])
    args = launch_command_parser().parse_args(cmd[cmd.index("--config_file"):])
    return prepare_multi_gpu_env(_validate_launch_command(args)[0])


def test_fsdp_with_quantized_experts_launches_fsdp2_with_every_process_loading(monkeypatch):
    """The launch accelerate makes of the plan: FSDP2 without rank-0-only loading (whose broadcast would not
    carry the experts' quantization constants); a process launched otherwise says how to launch it."""
    config = cfg.build({"model": {"quantize_experts": True}, "training": {"distributed": "fsdp"}})
    plan = distributed.plan_launch("fsdp", 4, whole_base=config.model.quantize_experts)
    cmd = distributed.launch_command(plan, ["train", "run.yaml"])
    assert cmd[cmd.index("--config_file") + 1] == str(distributed.PRESETS / "fsdp2-quantized-experts.yaml")
    assert distributed.plan_launch("fsdp", 4).preset.name == "fsdp.yaml"  # the others keep FSDP1's preset
    env = launch_env(plan)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false" and env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    distributed.check_quantized_experts(config)
    assert distributed.every_process_loads_the_base()  # load_base puts the whole base on each process's GPU
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    assert not distributed.every_process_loads_the_base()
    with pytest.raises(ConfigError, match="FSDP 2 with cpu_ram_efficient_loading; .*fsdp2-quantized-experts.yaml"):
        distributed.check_quantized_experts(config)
    monkeypatch.setenv("FSDP_VERSION", "1")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    with pytest.raises(ConfigError, match="needs FSDP2 with every process loading the base, but this launch has FSDP 1"):
        distributed.check_quantized_experts(config)
    # A 4-bit base with torchao's low-bit AdamW launches the same way (its states shard with FSDP2 only); with
    # another optimizer, or a 16-bit base, FSDP keeps its FSDP1 preset.
    qlora = cfg.build({"model": {"quantization": "nf4"}, "training": {"distributed": "fsdp",
                                                                      "optimizer": "adamw_torch_4bit"}})
    assert distributed.loads_whole_base(qlora.model, qlora.training)
    with pytest.raises(ConfigError, match="training.optimizer.*needs FSDP2 with every process loading the base"):
        distributed.check_quantized_experts(qlora)
    for model, optimizer in (({"quantization": "nf4"}, "adamw_torch"), ({"quantization": "none"}, "adamw_torch_4bit")):
        other = cfg.build({"model": model, "training": {"distributed": "fsdp", "optimizer": optimizer}})
        assert not distributed.loads_whole_base(other.model, other.training)
        distributed.check_quantized_experts(other)


def lora_layout(model) -> list[tuple[str, tuple]]:
    return sorted((k, tuple(v.shape)) for k, v in model.state_dict().items() if "lora_" in k)


def lora_pair(tiny_moe, lora: dict, quantization: str = "nf4"):
    """The same LoRA settings on the base with quantized experts and on the base with 16-bit ones."""
    from hubtune.train import attach_lora

    quantized = cfg.build({"model": {"id": str(tiny_moe), "quantization": quantization, "quantize_experts": True},
                           "lora": lora})
    sixteen = cfg.build({"model": {"id": str(tiny_moe), "quantization": quantization}, "lora": lora})
    return (attach_lora(load(tiny_moe, quantization=quantization, quantize_experts=True), quantized, "hf", False),
            attach_lora(load(tiny_moe, quantization=quantization), sixteen, "hf", False))


@pytest.mark.parametrize("lora", [{"target_modules": ["q_proj", "o_proj"]},
                                  {"target_modules": [], "target_parameters": ["experts.gate_up_proj",
                                                                               "experts.down_proj"], "dropout": 0.0},
                                  {"target_modules": ["q_proj", "down_proj"], "dropout": 0.0}],
                         ids=["attention", "expert-parameters", "names-peft-moves-onto-experts"])
def test_lora_lands_on_quantized_experts_as_on_16_bit_ones(tiny_moe, lora):
    """PEFT matches, nests and names the adapter exactly as on the 16-bit base (down_proj included: PEFT
    moves it onto Qwen-MoE experts), so the adapter loads onto either base; the experts stay quantized."""
    quantized, sixteen = lora_pair(tiny_moe, lora)
    assert lora_layout(quantized) == lora_layout(sixteen) and lora_layout(quantized)
    base = quantized.base_model.model
    assert len(experts.quantized_experts(base)) == 4
    assert not any(".parametrizations." in n for n, p in quantized.named_parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_lora_on_quantized_experts_trains_computes_as_dequantized_and_reloads(tiny_moe, tmp_path, quantization):
    """A few steps of LoRA on the quantized experts themselves: every LoRA factor gets a gradient, the loss
    falls, the parametrization chain stays one long (PEFT's proxy is removed after each forward), the
    forward equals the 16-bit base's with the experts set to their dequantized values and the same adapter,
    and the saved adapter loads back onto a base loaded the same way."""
    from peft import PeftModel

    from hubtune.train import attach_lora

    lora = {"target_modules": ["q_proj"], "target_parameters": ["experts.gate_up_proj", "experts.down_proj"],
            "dropout": 0.0, "r": 4}
    config = cfg.build({"model": {"id": str(tiny_moe), "quantization": quantization, "quantize_experts": True},
                        "lora": lora})
    model = attach_lora(load(tiny_moe, quantization=quantization, quantize_experts=True), config, "hf", True)
    model.train()
    ids = torch.randint(3, 902, (4, 16), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for step in range(4):
        loss = model(ids, labels=ids).loss
        loss.backward()
        if step:  # B starts at zero, so A's first gradient is zero
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        layer = model.base_model.model.model.layers[0].mlp.experts.get_base_layer()
        assert {name: len(chain) for name, chain in layer.parametrizations.items()} == {"gate_up_proj": 1,
                                                                                      "down_proj": 1}
    assert losses[-1] < losses[0]
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    reference = load(tiny_moe, quantization=quantization)
    with torch.no_grad():
        for mine, theirs in zip(model.base_model.model.model.layers, reference.model.layers):
            for name in ("gate_up_proj", "down_proj"):
                getattr(theirs.mlp.experts, name).copy_(getattr(mine.mlp.experts.get_base_layer(), name))
    sixteen = PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    again = load(tiny_moe, quantization=quantization, quantize_experts=True)
    reloaded = experts.under_lora(again, lambda: PeftModel.from_pretrained(again, tmp_path / "adapter")).eval()
    with torch.no_grad():
        logits = model(ids).logits
        torch.testing.assert_close(sixteen(ids).logits, logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(reloaded(ids).logits, logits, rtol=0, atol=0)


@pytest.mark.slow
def test_a_run_on_quantized_experts_trains_and_its_adapter_loads_back(tiny_moe, tmp_path, one_torch_thread):
    from data_rows import tiny_config

    import hubtune
    from hubtune.evaluation import load_tuned

    config = tiny_config(tmp_path, rows=48, model={"id": str(tiny_moe), "quantize_experts": True},
                         lora={"target_modules": "attention", "dropout": 0.0,
                               "target_parameters": ["experts.gate_up_proj", "experts.down_proj"]},
                         data={"val_set_size": 8},
                         training={"max_steps": 6, "micro_batch_size": 8, "learning_rate": 5e-3,
                                   "eval_steps": 6, "logging_steps": 2, "gradient_checkpointing": True},
                         eval={"tasks": [], "regression_set": None})
    run = hubtune.train(config)
    assert run.summary.global_steps == 6
    assert run.summary.final_eval_loss < run.summary.initial_eval_loss
    model, _ = load_tuned(run.path)
    assert len(experts.quantized_experts(model.base_model.model)) == 4
    from safetensors.torch import load_file

    saved = load_file(run.adapter / "adapter_model.safetensors")
    assert any("experts" in k for k in saved) and any("q_proj" in k for k in saved)
    loaded = dict(model.named_parameters())
    for key, value in saved.items():
        name = key.replace(".weight", ".default.weight")
        assert torch.equal(loaded[name].detach().to(value.dtype), value), key
    # The adapter merges into the 16-bit base, experts included, as an adapter trained on 16-bit experts would.
    from hubtune.merge import merge

    merged = merge(run.path, tmp_path / "merged")
    assert merged.max_logit_difference is not None and merged.max_logit_difference < 1e-3


def test_the_documented_moe_config_builds():
    import yaml
    from readme_blocks import section_blocks

    (body,) = [body for lang, body in section_blocks("Mixture-of-experts bases") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(body))
    assert (config.model.quantization, config.model.quantize_experts, config.model.experts_implementation) == (
        "nf4", True, "grouped_mm")
    assert config.lora.target_modules == "attention"
    assert config.lora.target_parameters == ["experts.gate_up_proj", "experts.down_proj"]


# r 128: A and B of q_proj hold 8192 values, 4096 per process, the least torchao quantizes (so one process
# quantizes the same tensors in the same blocks of 256; v_proj's B, 2048 per process, would stay float32 there).
TORCHAO_LORA = {"target_modules": ["q_proj"], "dropout": 0.0, "r": 128}


@pytest.mark.slow
@pytest.mark.parametrize("quantization,lora,optimizer", [
    ("nf4", {"target_modules": ["q_proj", "v_proj"], "target_parameters": ["experts.gate_up_proj",
                                                                           "experts.down_proj"], "dropout": 0.0, "r": 4},
     "adamw_torch"),
    ("nf4", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0, "r": 4}, "adamw_torch"),
    ("nf4", TORCHAO_LORA, "adamw_torch_8bit"),
    # A QLoRA base whose experts stay in 16 bits: hubtune launches the same FSDP2 for torchao's optimizers.
    ("nf4", TORCHAO_LORA, "adamw_torch_4bit"),
    # An LLM.int8() base with int8 experts (Axolotl's glm47-flash/lora_fsdp.yaml): hubtune.sharded_int8.
    ("int8", TORCHAO_LORA, "adamw_torch_8bit"),
    # A ModelOpt NVFP4 base (hubtune.nvfp4: packed uint8 attention and experts, their scales buffers).
    ("nvfp4", {"target_modules": ["q_proj", "v_proj"], "target_parameters": ["experts.gate_up_proj",
                                                                             "experts.down_proj"], "dropout": 0.0, "r": 4},
     "adamw_torch"),
    # DeepSeek V4's NVFP4 release layout: block-wise FP8 attention and shared expert (uint8 codes), NVFP4 experts.
    ("dsv4", {"target_modules": ["q_a_proj", "o_b_proj"], "target_parameters": ["mlp.experts.gate_up_proj",
                                                                                 "mlp.experts.down_proj"],
              "dropout": 0.0, "r": 4}, "adamw_torch")],
    ids=["lora-on-experts", "lora-on-attention", "torchao-8-bit-adamw", "torchao-4-bit-adamw", "int8-base",
         "nvfp4-base", "dsv4-fp8-nvfp4-base"])
def test_fsdp2_shards_quantized_experts_and_trains_as_one_process(tiny_moe, tmp_path, quantization, lora, optimizer):
    """Two processes (gloo, CPU) under FSDP2: each loads the base with its experts quantized, fully_shard
    splits the quantized storage between them (each keeps the whole constants), and after its all-gather
    the experts dequantize to the same weights: the loss, every LoRA gradient, the loss after an AdamW step,
    after a second step taken by an optimizer resumed from accelerate's sharded checkpoint, and the adapter
    gathered at the end equal one process's over the same two batches (gradient checkpointing on, as in
    Axolotl's examples). torchao's 8- and 4-bit AdamW quantize each process's shard of the adapter's states,
    save and load them quantized, and take the same steps (the 4-bit case over a QLoRA base whose experts stay
    in 16 bits, which hubtune launches the same way for them); the 4-bit case runs after the 8-bit one over the
    same parameter shapes with the machine's compile cache, which then holds the 8-bit updates under the keys
    the 4-bit ones look up (distributed.separate_optimizer_compiles)."""
    if optimizer.startswith("adamw_torch_"):
        pytest.importorskip("torchao")
    experts_16_bit = optimizer == "adamw_torch_4bit"
    base = tiny_moe
    if quantization == "nvfp4":
        from nvfp4_checkpoint import write

        base = tmp_path / "nvfp4"
        write(tiny_moe, base, tmp_path / "sixteen")
        # Known by its saved format alone: nothing in the run config says NVFP4.
        model_section = cfg.ModelSection(id=str(base), quantization="none")
    elif quantization == "dsv4":
        from nvfp4_checkpoint import tiny_deepseek_v4

        base = tiny_deepseek_v4(tmp_path)[0]
        model_section = cfg.ModelSection(id=str(base), quantization="none")
    else:
        model_section = cfg.ModelSection(quantization=quantization, quantize_experts=not experts_16_bit)
    assert distributed.loads_whole_base(model_section, cfg.TrainingSection(distributed="fsdp", optimizer=optimizer))
    import json
    import os
    import socket
    import subprocess
    import sys

    from fsdp2_experts import batches, prepared
    from fsdp2_experts import optimizer as adam_for

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "fsdp2.pt"
    worker = Path(__file__).parent / "fsdp2_experts.py"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(worker), str(base), quantization,
                    json.dumps(lora), optimizer, str(out), "16-bit" if experts_16_bit else "quantized"],
                   check=True, timeout=300,
                   env={**os.environ, **launch_env(distributed.plan_launch("fsdp", 2, whole_base=True))})
    sharded = torch.load(out)
    # Each process held half of every quantized expert's storage, in its quantized dtype (and of an int8 base's
    # linear layers: q, k, v, o of both layers).
    # DeepSeek V4's: 17 FP8 weights (per layer the attention's q_a, q_b, kv, o_a, o_b and the shared expert's three;
    # the indexer's q_b).
    assert len(sharded["held"]) == (0 if experts_16_bit else 4) + {"int8": 8, "nvfp4": 8, "dsv4": 17}.get(
        quantization, 0)
    for name, (full, local, dtype) in sharded["held"].items():
        assert ("experts" in name or "self_attn" in name) and dtype == str(STORAGE[quantization])
        assert local[0] * 2 == full[0]
    if quantization == "nvfp4":  # packed [N, K/2] and [E, N, K/2], split on dim 0; their scales whole in each
        assert {len(full) for full, _, _ in sharded["held"].values()} == {2, 3}
        scales = {name.rsplit(".", 1)[-1] for name in sharded["constants"]}
        assert scales == {"block_scale", "global_scale"} and len(sharded["constants"]) == 24
        for name, (shape, kind) in sharded["constants"].items():
            packed = sharded["held"][name.rsplit(".", 2)[0] + ".original"][0]  # ...weight.0.block_scale
            assert kind == "Tensor", name  # not a DTensor: each process holds all of it
            if name.endswith("block_scale"):  # one E4M3 scale per 16 weights (8 packed bytes) of the whole weight
                assert shape == (*packed[:-1], packed[-1] // 8), name
            else:  # one float32 scale per weight, or per expert and row of a stack
                assert shape == () or shape[0] == packed[0], name
    if quantization == "dsv4":  # FP8 codes [N, K] split on dim 0, one whole scale per 128 x 128 block in each
        scales = [name for name in sharded["constants"] if name.endswith(".0.scale")]
        assert len(scales) == 17 and len(sharded["constants"]) == 17 + 8
        for name in scales:
            shape, kind = sharded["constants"][name]
            full = sharded["held"][name.rsplit(".", 2)[0] + ".original"][0]
            assert kind == "Tensor" and shape == (-(-full[0] // 128), -(-full[1] // 128)), name

    model = prepared(str(base), quantization, lora, not experts_16_bit)
    adam = adam_for(model, optimizer)
    ids = batches()
    halves = [ids[rank::2] for rank in range(2)]

    def step() -> float:
        adam.zero_grad()
        loss = 0.0
        for half in halves:
            half_loss = model(half, labels=half).loss / 2
            half_loss.backward()
            loss += half_loss.item()
        adam.step()
        return loss

    first = step()
    grads = {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}
    second = step()
    with torch.no_grad():
        third = sum(model(half, labels=half).loss.item() / 2 for half in halves)
    assert sorted(grads) == sorted(sharded["grads"]) and any("experts" in n for n in grads) == ("target_parameters" in lora)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(sharded["grads"][name], grad, rtol=1e-4, atol=1e-6)
    assert sharded["losses"] == pytest.approx([first, second, third, third], abs=1e-5)
    assert first > second > third
    quantized = {"adamw_torch_8bit": "OptimState8bit", "adamw_torch_4bit": "OptimState4bit"}.get(optimizer)
    if quantized:  # quantized before the checkpoint and after the resume
        assert quantized in sharded["states"] and quantized in sharded["loaded"] and sharded["separate"]
    if optimizer == "adamw_torch_4bit":
        # The cause distributed.separate_optimizer_compiles works around: torch keys a DTensor in its compile
        # cache by its spec, not by the state it holds. Once this fails, torch tells them apart.
        four, eight = sharded["dtensor_keys"]
        assert four == eight, "torch now keys DTensors by their local tensor: separate_optimizer_compiles can go"
    # The adapter gathered from the shards after the steps is the one process's adapter.
    mine = {name: value for name, value in model.state_dict().items() if "lora_" in name}
    assert sorted(sharded["adapter"]) == sorted(mine) and mine
    for name, value in mine.items():
        # After two Adam steps (lr 1e-2); torchao's low-bit states can round a value into the next bucket. Where
        # the first gradient is within its comparison's atol of zero (1e-6, say 4e-8 on one side and 4.3e-8 on the
        # other from the order of summation), Adam's first step lr·g/(|g| + 1e-8) magnifies that rounding: those
        # entries are held to the bound of two steps.
        tiny = grads[name].abs() <= 1e-6
        torch.testing.assert_close(sharded["adapter"][name][~tiny], value[~tiny], rtol=1e-3,
                                   atol=1e-3 if quantized else 1e-5)
        assert ((sharded["adapter"][name] - value).abs() <= 2e-2).all(), name
