"""NVIDIA ModelOpt NVFP4 bases (hubtune.nvfp4): the format read against hand-computed values and an independent
reading, a tiny Qwen3-MoE written in ModelOpt's layout (tests/nvfp4_checkpoint.py) loaded through hubtune's
normal path with its weights packed, computing as the 16-bit model of its dequantized weights, and LoRA on its
Linear layers and stacked experts training, saving in the 16-bit base's names and loading onto that base."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune import nvfp4
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

CPU = Hardware("cpu", torch.float32, "adamw_torch")


def test_a_known_block_dequantizes_to_its_hand_computed_values():
    """Byte 0x21 holds codes 1 (low nibble, the even column: 0.5) and 2 (1.0); 0xF8 holds 8 (-0) and 15 (-6);
    0x7B holds 11 (-1.5) and 7 (6). E4M3 0x40 is 2.0 and 0x38 is 1.0; the global scale is 0.25."""
    packed = torch.tensor([[0x21, 0xF8, 0x7B, 0x00, 0x00, 0x00, 0x00, 0x00,
                            0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21, 0x21]], dtype=torch.uint8)
    scales = torch.tensor([[0x40, 0x38]], dtype=torch.uint8).view(torch.float8_e4m3fn)
    weight = nvfp4.dequantize(packed, scales, torch.tensor(0.25))
    first = [0.5, 1.0, -0.0, -6.0, -1.5, 6.0] + [0.0] * 10
    expected = torch.tensor([[v * 2.0 * 0.25 for v in first] + [v * 0.25 for v in [0.5, 1.0] * 8]])
    assert weight.shape == (1, 32)
    assert torch.equal(weight, expected)


def test_the_reading_equals_the_tests_own_and_torchaos_where_installed():
    from nvfp4_checkpoint import dequantize, quantize

    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    packed, scales, scale2 = quantize(weight)
    mine = nvfp4.dequantize(packed, scales, scale2)
    torch.testing.assert_close(mine, dequantize(packed, scales, scale2), rtol=0, atol=0)
    assert (mine - weight).abs().max() < weight.abs().max() / 4  # the quantizer's own error, for sanity
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor
    except ImportError:
        return
    theirs = NVFP4Tensor(packed, scales, 16, torch.float32, per_tensor_scale=scale2).dequantize(torch.float32)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.fixture(scope="module")
def nvfp4_moe(tmp_path_factory) -> tuple[Path, Path]:
    """(ModelOpt NVFP4 folder, 16-bit folder of the weights it dequantizes to) of a tiny Qwen3-MoE."""
    from nvfp4_checkpoint import write
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tiny = Path(cfg.resolve_builtin("hubtune:tiny-llama"))
    root = tmp_path_factory.mktemp("nvfp4")
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=902, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=512,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    Qwen3MoeForCausalLM(config).save_pretrained(root / "original")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(tiny / name, root / "original" / name)
    write(root / "original", root / "nvfp4", root / "sixteen")
    return root / "nvfp4", root / "sixteen"


def load(path, **model):
    from hubtune.train import load_base

    return load_base(str(path), cfg.ModelSection(id=str(path), **model), CPU)


IDS = torch.randint(3, 902, (2, 12), generator=torch.Generator().manual_seed(1))


def lora_steps(model, lr: float, gradients_reach_every_weight: bool = False) -> list[float]:
    """Four AdamW steps over IDS, their losses; checks after the first step that every trainable weight got a
    gradient where asked (merge-aware LoRA's straight-through path)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(4):
        loss = model(IDS, labels=IDS).loss
        loss.backward()
        if gradients_reach_every_weight and step:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_the_base_loads_packed_and_computes_as_its_dequantized_16_bit_model(nvfp4_moe):
    from transformers import AutoModelForCausalLM

    folder, sixteen = nvfp4_moe
    model = load(folder)
    assert getattr(model, "hubtune_nvfp4", False)
    weights = nvfp4.nvfp4_weights(model)
    assert len(weights) == 2 * (4 + 2)  # per layer: q, k, v, o and the two expert stacks
    assert "model.layers.0.mlp.experts.gate_up_proj" in weights
    layer = model.model.layers[0]
    packed = layer.mlp.experts.parametrizations.gate_up_proj.original
    assert packed.dtype == torch.uint8 and tuple(packed.shape) == (4, 64, 32)
    assert layer.self_attn.q_proj.parametrizations.weight.original.dtype == torch.uint8
    assert getattr(layer.mlp.experts, "_hubtune_dequantize_cache", False)  # once per forward, not per expert
    assert layer.mlp.gate.weight.dtype == torch.float32  # the router, left out as ModelOpt leaves it
    reference = AutoModelForCausalLM.from_pretrained(sixteen, dtype=torch.float32).eval()
    torch.testing.assert_close(layer.mlp.experts.gate_up_proj, reference.model.layers[0].mlp.experts.gate_up_proj,
                               rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)


def test_a_checkpoint_the_model_does_not_hold_is_refused_with_what_is_wrong(nvfp4_moe, tmp_path):
    import json

    folder, _ = nvfp4_moe
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    config = json.loads((broken / "config.json").read_text())
    config["num_local_experts"] = 8
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"experts holds 8 experts in Qwen3MoeForCausalLM, and the checkpoint"):
        load(broken)
    config["num_local_experts"], config["moe_intermediate_size"] = 4, 64
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"which do not hold the model's \(4, 128, 64\) weight"):
        load(broken)
    with pytest.raises(ConfigError, match=r"saved in NVFP4 by NVIDIA ModelOpt: its experts load as saved"):
        load(folder, quantize_experts=True)
    # NVFP4 weights in a checkpoint declared as another method (as DeepSeek V4's NVFP4 release declares fp8)
    config.update(num_local_experts=4, moe_intermediate_size=32, quantization_config={
        "quant_method": "fp8", "weight_block_size": [128, 128]})
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "hf_quant_config.json").unlink()
    with pytest.raises(ConfigError, match=r"declared 'fp8' but holding NVFP4 weights \(model\.layers\.\d"):
        load(broken)


def test_tensors_the_models_class_leaves_out_are_left_out_as_transformers_does(nvfp4_moe, tmp_path, monkeypatch):
    """Qwen3-Next's NVFP4 checkpoints hold multi-token prediction layers its transformers class ignores
    (`_keys_to_ignore_on_load_unexpected`, as Gemma 4's shared key/value projections): hubtune skips them too,
    quantized or not, and refuses any other tensor the model lacks."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3MoeForCausalLM

    folder, _ = nvfp4_moe
    extra = tmp_path / "extra"
    shutil.copytree(folder, extra)
    tensors = load_file(extra / "model.safetensors")
    for leaf in ("weight", "weight_scale", "weight_scale_2", "input_scale"):
        tensors[f"mtp.layers.0.mlp.experts.0.gate_proj.{leaf}"] = tensors[
            f"model.layers.0.mlp.experts.0.gate_proj.{leaf}"].clone()
    tensors["mtp.norm.weight"] = torch.ones(64)
    save_file(tensors, extra / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"mtp.layers.0.mlp.experts.0.gate_proj is quantized but "
                                          r"Qwen3MoeForCausalLM has no such layer"):
        load(extra)
    monkeypatch.setattr(Qwen3MoeForCausalLM, "_keys_to_ignore_on_load_unexpected", [r"^mtp.*"])
    assert len(nvfp4.nvfp4_weights(load(extra))) == 12


def test_lora_trains_on_the_packed_base_and_its_adapter_loads_on_the_16_bit_one(nvfp4_moe, tmp_path):
    """LoRA on the quantized attention layers (target_modules) and stacked experts (target_parameters): the
    loss falls, the base stays packed and frozen, the adapter's names are those PEFT gives on the 16-bit base,
    and it computes the same there."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from hubtune.train import attach_lora

    folder, sixteen = nvfp4_moe
    lora = {"target_modules": ["q_proj", "v_proj"], "target_parameters": ["experts.gate_up_proj",
                                                                          "experts.down_proj"],
            "dropout": 0.0, "r": 4}
    model = attach_lora(load(folder), cfg.build({"model": {"id": str(folder)}, "lora": lora}), "hf", True)
    model.train()
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    losses = lora_steps(model, lr=1e-2)
    assert losses[-1] < losses[0]
    experts = model.base_model.model.model.layers[0].mlp.experts.get_base_layer()
    assert {name: len(chain) for name, chain in experts.parametrizations.items()} == {"gate_up_proj": 1,
                                                                                    "down_proj": 1}
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    reference = attach_lora(load(sixteen, quantization="none"),
                            cfg.build({"model": {"id": str(sixteen), "quantization": "none"}, "lora": lora}),
                            "hf", True)
    reference.save_pretrained(tmp_path / "sixteen-adapter")
    assert set(load_file(tmp_path / "adapter" / "adapter_model.safetensors")) == set(
        load_file(tmp_path / "sixteen-adapter" / "adapter_model.safetensors"))
    on_sixteen = PeftModel.from_pretrained(load(sixteen, quantization="none"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(on_sixteen(IDS).logits, model(IDS).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("merge_aware", [False, True], ids=["lora", "merge-aware"])
def test_a_run_on_an_nvfp4_base_trains_and_its_adapter_loads_back(nvfp4_moe, tmp_path, one_torch_thread, merge_aware):
    """A run trains, its adapter loads back for evaluation (merge-aware: computing with Q(W + s·B·A) again), the
    card loads the base with hubtune, and the merge writes a 16-bit model that computes what base and adapter
    computed (merge-aware: with the snapped weights)."""
    if merge_aware:
        pytest.importorskip("torchao")
    from data_rows import tiny_config

    import hubtune
    from hubtune.evaluation import load_tuned

    folder, _ = nvfp4_moe
    config = tiny_config(tmp_path, rows=32, model={"id": str(folder)},
                         lora={"target_modules": "attention", "dropout": 0.0, "nvfp4_merge_aware": merge_aware,
                               "target_parameters": ["experts.gate_up_proj", "experts.down_proj"]},
                         data={"val_set_size": 8},
                         training={"max_steps": 4, "micro_batch_size": 8, "learning_rate": 5e-3,
                                   "eval_steps": 4, "logging_steps": 2, "gradient_checkpointing": True},
                         eval={"tasks": [], "regression_set": None})
    run = hubtune.train(config)
    assert run.summary.global_steps == 4
    assert run.summary.final_eval_loss < run.summary.initial_eval_loss
    model, _ = load_tuned(run.path)
    assert len(nvfp4.nvfp4_weights(model.base_model.model)) == 12
    assert any(hasattr(m, "_hubtune_global_scale") for m in model.modules()) == merge_aware
    from hubtune import card as cards

    assert run.summary.base_quantization == "modelopt NVFP4"
    text = str(cards.build_card(run, "alice/nvfp4-invoices", cards.publishing_verdict(run)))
    assert "from hubtune.nvfp4 import load" in text and "vllm serve" not in text
    assert ("merge_aware(model)" in text) == merge_aware
    # The merge writes the dequantized base plus the adapter in 16 bits, a model stock transformers loads.
    from transformers import AutoModelForCausalLM

    from hubtune.merge import merge

    merged = merge(run.path, tmp_path / "merged")
    assert merged.max_logit_difference is not None and merged.max_logit_difference < 1e-4
    assert any("stored in NVFP4" in w for w in merged.warnings)
    assert any("trained merge-aware" in w for w in merged.warnings) == merge_aware
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert getattr(stock.config, "quantization_config", None) is None
    assert stock.model.layers[0].mlp.experts.gate_up_proj.dtype != torch.uint8


def test_the_memory_estimate_counts_the_packed_weights(nvfp4_moe):
    """A run on the NVFP4 folder is estimated with its decoder and expert weights at 4.5 bits (the codes and
    one E4M3 scale per 16), not as the 16-bit base nor as a QLoRA of it."""
    from hubtune import memory

    folder, sixteen = nvfp4_moe
    arch = memory.read_architecture(str(folder))
    config = cfg.build({"model": {"id": str(folder)}, "lora": {"target_modules": ["q_proj"], "dropout": 0.0}})
    settings = memory.Settings.from_run_config(config)
    assert settings.base_nvfp4 and settings.method == "lora"
    parts = memory.estimate(arch, settings).breakdown
    p = arch.parameters()
    decoder = next(v for k, v in parts.items() if k.startswith("weights: NVFP4 decoder layers"))
    assert decoder == int(p["decoder_linear"] * (0.5 + 1 / 16) + 2 * (p["total"] - p["decoder_linear"]
                                                                      - p["experts"]))
    experts = next(v for k, v in parts.items() if k.startswith("weights: routed experts") and "NVFP4" in k)
    assert experts == int(p["experts"] * (0.5 + 1 / 16)) + 2 * 4 * (2 * 32 + 64) * 4
    assert not memory.Settings.from_run_config(cfg.build({"model": {"id": str(sixteen)}})).base_nvfp4
    # Short of memory, the fit search offers what applies to a base that loads as saved: no 4-bit reload of
    # it, no quantize_experts; FSDP where nothing less fits (each process loads the packed base whole).
    from hubtune import fit

    tight = memory.estimate(arch, settings).total - 1
    suggestion = fit.suggest(arch, replace(settings, seq_len=4096, micro_batch=8), tight)
    assert suggestion is not None and not suggestion.settings.method == "qlora"
    assert "quantize_experts" not in suggestion.change and "FSDP" not in suggestion.change
    least = replace(settings, seq_len=256, micro_batch=1, gradient_checkpointing=True, optimizer="adamw_8bit")
    sharded = fit.suggest(arch, settings, memory.estimate(arch, replace(least, gpus=8)).total)
    assert sharded is not None and "8 GPUs with FSDP" in sharded.change and sharded.settings.base_nvfp4
    assert any("loads the whole packed NVFP4 base" in n for n in memory.estimate(arch, sharded.settings).notes)
    # A Hub base is known by its config.json alone (all the estimate downloads): the default settings
    # (nf4 QLoRA) are estimated as what loads, the NVFP4 base.
    assert arch.saved_nvfp4 and memory.estimate(arch).settings.base_nvfp4
    assert not memory.read_architecture(str(sixteen)).saved_nvfp4


def test_the_documented_config_trains_lora_on_attention_and_experts_of_an_nvfp4_base(nvfp4_moe):
    """docs/training.md's NVFP4 example, its base replaced by the tiny NVFP4 folder: nothing else to set."""
    import yaml
    from readme_blocks import section_blocks

    from hubtune.train import attach_lora

    (body,) = [body for lang, body in section_blocks("NVFP4 bases") if lang == "yaml"]
    data = yaml.safe_load(body)
    assert data["model"] == {"id": "nvidia/Qwen3-30B-A3B-NVFP4"}
    folder, _ = nvfp4_moe
    data["model"]["id"] = str(folder)
    config = cfg.build(data)
    model = attach_lora(load(folder), config, "hf", False)
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if "lora_A" in name}
    assert {"q_proj", "k_proj", "v_proj", "o_proj"} <= adapted and len(nvfp4.nvfp4_weights(model)) == 12
    assert any("experts" in name for name, _ in model.named_parameters() if "lora_A" in name)


def test_the_merge_aware_quantizer_is_torchaos_nvfp4_rounding():
    """Q of merge-aware training equals torchao's NVFP4Tensor.to_nvfp4 round trip (the encoder Axolotl's
    merge-identity quantizer is bit-identical to), per tensor and per expert, and is idempotent."""
    pytest.importorskip("torchao")
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    x = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(2))
    pts = x.flatten(1).abs().amax(1) / (6 * 448)
    q = nvfp4.fake_quantize(x, pts)
    for e in range(3):
        theirs = NVFP4Tensor.to_nvfp4(x[e].contiguous(), per_tensor_scale=pts[e]).dequantize(torch.float32)
        torch.testing.assert_close(q[e], theirs, rtol=0, atol=0)
        torch.testing.assert_close(nvfp4.fake_quantize(x[e], pts[e]), q[e], rtol=0, atol=0)
    torch.testing.assert_close(nvfp4.fake_quantize(q, pts), q, rtol=0, atol=0)
    assert not torch.equal(q, x)


def test_merge_aware_lora_computes_with_the_snapped_weight_and_trains_through_it(nvfp4_moe):
    """lora.nvfp4_merge_aware: every adapted NVFP4 layer computes with Q(W + s·B·A): the model's logits equal the
    16-bit model holding exactly those weights; the adapter still gets gradients (straight through Q), the loss
    falls, and the layers stay one parametrization long after each step."""
    pytest.importorskip("torchao")
    from transformers import AutoModelForCausalLM

    from hubtune.train import attach_lora

    folder, sixteen = nvfp4_moe
    lora = {"target_modules": ["q_proj", "o_proj"], "target_parameters": ["experts.gate_up_proj",
                                                                          "experts.down_proj"],
            "dropout": 0.0, "r": 4, "nvfp4_merge_aware": True}
    model = attach_lora(load(folder), cfg.build({"model": {"id": str(folder)}, "lora": lora}), "hf", False)
    model.train()
    losses = lora_steps(model, lr=2e-2, gradients_reach_every_weight=True)
    assert losses[-1] < losses[0]
    experts = model.base_model.model.model.layers[0].mlp.experts.get_base_layer()
    assert {name: len(chain) for name, chain in experts.parametrizations.items()} == {"gate_up_proj": 1,
                                                                                    "down_proj": 1}
    model.eval()
    snapped = nvfp4.merge_aware_weights(model)
    assert len(snapped) == 2 * 4  # per layer: q_proj, o_proj and the two expert stacks
    reference = AutoModelForCausalLM.from_pretrained(sixteen, dtype=torch.float32).eval()
    moved = 0
    with torch.no_grad():
        for name, value in snapped.items():
            moved += not torch.equal(reference.get_parameter(name), value)
            reference.get_parameter(name).copy_(value)
        torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=1e-5)
    assert moved == len(snapped)
    weight = model.base_model.model.model.layers[1].self_attn.q_proj
    w = weight.get_base_layer().weight
    expected = nvfp4.fake_quantize(w + (weight.lora_B["default"].weight @ weight.lora_A["default"].weight)
                                   * weight.scaling["default"], weight._hubtune_global_scale)
    torch.testing.assert_close(snapped["model.layers.1.self_attn.q_proj.weight"], expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"merge-aware training needs an NVFP4 base"):
        attach_lora(load(sixteen, quantization="none"),
                    cfg.build({"model": {"id": str(sixteen), "quantization": "none"}, "lora": lora}), "hf", False)


@pytest.mark.slow  # PEFT counts the adapter on the meta-device model: 48 layers of 128 experts
def test_the_documented_estimate_of_axolotls_qwen3_nvfp4_example():
    """docs/memory.md's figures: the qwen3 NVFP4 example on Qwen3-30B-A3B's config, as NVFP4 and as 16 bits."""
    import json

    import yaml

    from hubtune import memory
    from hubtune.interop import axolotl

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "tests/data/axolotl_examples/qwen3/30b-a3b-nvfp4-lora.yaml").read_text())
    settings = memory.Settings.from_run_config(axolotl.from_axolotl(data).run_config())
    config = json.loads((root / "hubtune/assets/model_configs/Qwen3-30B-A3B.json").read_text())
    sixteen = memory.estimate(memory.architecture(config), settings)
    packed = memory.estimate(memory.architecture({**config, "quantization_config": {
        "quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16}}), settings)
    assert (round(packed.total_gb, 2), round(sixteen.total_gb, 2)) == (33.77, 78.77)
    experts = next(v for k, v in packed.breakdown.items() if k.startswith("weights: routed experts"))
    assert round(experts / 1e9, 2) == 16.40
    assert "33.77 GB" in (root / "docs/memory.md").read_text()


def test_under_fsdp_an_nvfp4_base_launches_fsdp2_with_every_process_loading_it(nvfp4_moe, monkeypatch):
    """Known by its saved format (nothing in the run config says NVFP4), the base makes fsdp launch the FSDP2
    preset in which every process loads it (tests/test_experts.py's nvfp4-base case trains on it); any other
    sharded launch (FSDP1, rank-0 loading, ZeRO-3) is refused at load, naming that preset."""
    from hubtune import distributed
    from hubtune.train import load_base

    folder, sixteen = nvfp4_moe
    fsdp = cfg.TrainingSection(distributed="fsdp")
    assert distributed.loads_whole_base(cfg.ModelSection(id=str(folder), quantization="none"), fsdp)
    assert not distributed.loads_whole_base(cfg.ModelSection(id=str(sixteen), quantization="none"), fsdp)
    assert not distributed.loads_whole_base(cfg.ModelSection(id=str(folder), quantization="none"),
                                            cfg.TrainingSection(distributed="ddp"))
    assert not nvfp4.declared("nvidia/Qwen3-30B-A3B-NVFP4")  # a Hub id is read only with read_hub (the launch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for version, ram_efficient in (("1", "false"), ("2", "true")):
        monkeypatch.setenv("FSDP_VERSION", version)
        monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", ram_efficient)
        with pytest.raises(ConfigError, match="shards under FSDP2 only, every process loading it whole") as err:
            load_base(str(folder), cfg.ModelSection(id=str(folder), quantization="none"), CPU, sharded=True)
        assert "fsdp2-quantized-experts.yaml" in str(err.value)
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    base = load_base(str(folder), cfg.ModelSection(id=str(folder), quantization="none"), CPU, sharded=True)
    assert len(nvfp4.nvfp4_weights(base)) == 12
