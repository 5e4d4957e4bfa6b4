"""Block-wise FP8 weights (hubtune.fp8) read against transformers' own dequantization and the tests' own, and DeepSeek
V4's NVFP4 release layout (block-wise FP8 weights, NVFP4 routed experts, DeepSeek's tensor names, config.json
declaring fp8): a tiny DeepSeek V4 written in that layout (tests/nvfp4_checkpoint.py) loads through hubtune's normal
path computing as the 16-bit model of its dequantized weights, other layouts are refused naming what differs, and a
LoRA run trains on it and saves an adapter in the 16-bit base's names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune import fp8, nvfp4
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

CPU = Hardware("cpu", torch.float32, "adamw_torch")


def test_a_known_block_dequantizes_to_its_hand_computed_values():
    """E4M3 0x40 is 2.0 and 0xB8 is -1.0; UE8M0 byte 125 is 2**-2, 130 is 2**3. A 2 x 3 weight in 1 x 2 blocks."""
    codes = torch.tensor([[0x40, 0xB8, 0x40], [0x38, 0x00, 0x40]], dtype=torch.uint8)
    scale = torch.tensor([[125, 130]], dtype=torch.uint8).view(torch.float8_e8m0fnu)
    weight = fp8.dequantize(codes, fp8.scales(scale), block=(2, 2))
    assert torch.equal(weight, torch.tensor([[0.5, -0.25, 16.0], [0.25, 0.0, 16.0]]))
    assert torch.equal(fp8.scales(scale.view(torch.uint8)), torch.tensor([[0.25, 8.0]]))  # the raw exponent bytes


@pytest.mark.parametrize("stored", ["ue8m0", "ue8m0-bytes", "float"])
def test_the_reading_equals_transformers_fp8_dequantization_and_the_tests_own(stored):
    """On the same codes and scales, hubtune.fp8 gives exactly what transformers' Fp8Dequantize gives where the
    128 x 128 blocks divide the weight; a partial last block (DeepSeek's 576-wide and the like) is read by index
    as the tests' own reading reads it."""
    from nvfp4_checkpoint import dequantize_fp8_blocks, quantize_fp8_blocks
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    g = torch.Generator().manual_seed(0)
    for shape in ((256, 384), (200, 130)):
        weight = torch.randn(*shape, generator=g) * torch.logspace(-3, 1, shape[1])  # blocks of unlike ranges
        codes, scale = quantize_fp8_blocks(weight)
        if stored == "ue8m0-bytes":
            scale = scale.view(torch.uint8)
        elif stored == "float":
            scale = scale.to(torch.float32) * 0.75  # any float scale
        mine = fp8.dequantize(codes, fp8.scales(scale))
        assert scale.shape == fp8.grid(shape)
        torch.testing.assert_close(mine, dequantize_fp8_blocks(codes, fp8.scales(scale)), rtol=0, atol=0)
        if shape == (256, 384):
            theirs = Fp8Dequantize(None)._dequantize_one(codes, scale, torch.float32)
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
        if stored != "float":
            assert (mine - weight).abs().max() <= weight.abs().max() / 8  # the quantizer's own error, for sanity


@pytest.fixture(scope="module")
def dsv4(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the mixed-layout folder, the 16-bit folder of the weights it dequantizes to, the original 16-bit folder) of
    a tiny random DeepSeek V4 (nvfp4_checkpoint.tiny_deepseek_v4)."""
    from nvfp4_checkpoint import tiny_deepseek_v4

    return tiny_deepseek_v4(tmp_path_factory.mktemp("dsv4"))


def load(path, **model):
    from hubtune.train import load_base

    return load_base(str(path), cfg.ModelSection(id=str(path), **model), CPU)


IDS = torch.randint(3, 902, (2, 12), generator=torch.Generator().manual_seed(1))


def test_deepseek_v4s_mixed_layout_loads_packed_and_computes_as_its_16_bit_twin(dsv4):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder, sixteen, original = dsv4
    with safe_open(folder / "model.safetensors", framework="pt") as f:  # the layout as written: DeepSeek's names
        keys = set(f.keys())
        assert f.get_tensor("layers.1.attn.wq_a.weight").dtype == torch.float8_e4m3fn
        assert f.get_tensor("layers.1.attn.wq_a.scale").dtype == torch.float8_e8m0fnu
        assert f.get_tensor("layers.1.ffn.experts.3.w3.weight").dtype == torch.uint8
    assert {"embed.weight", "head.weight", "hc_head_fn", "layers.0.ffn.gate.tid2eid", "mtp.0.ffn.experts.0.w1.scale",
            "layers.1.ffn.experts.0.w1.weight_scale_2"} <= keys and not any(k.startswith("model.") for k in keys)
    assert nvfp4.declared(str(folder)) and nvfp4.saved_format(folder)["moe_quant_algo"] == "NVFP4"
    from hubtune import distributed  # under FSDP: the FSDP2 launch in which every process loads the base

    assert distributed.loads_whole_base(cfg.ModelSection(id=str(folder), quantization="none"),
                                        cfg.TrainingSection(distributed="fsdp"))

    model = load(folder)
    assert getattr(model, "hubtune_nvfp4", False)
    assert sorted(nvfp4.nvfp4_weights(model)) == [f"model.layers.{i}.mlp.experts.{p}"
                                                  for i in (0, 1) for p in ("down_proj", "gate_up_proj")]
    fp8_weights = nvfp4.fp8_weights(model)
    assert len(fp8_weights) == 2 * 8 + 1  # per layer q_a, q_b, kv, o_a, o_b and the shared expert's 3; the indexer's q_b
    assert "model.layers.0.self_attn.compressor.indexer.q_b_proj.weight" in fp8_weights
    layer = model.model.layers[1]
    assert layer.self_attn.q_a_proj.parametrizations.weight.original.dtype == torch.uint8  # the FP8 bytes
    assert tuple(layer.self_attn.o_a_proj.parametrizations.weight[0].scale.shape) == (2, 1)
    assert tuple(layer.mlp.experts.parametrizations.gate_up_proj.original.shape) == (4, 128, 64)
    assert layer.self_attn.compressor.kv_proj.weight.dtype == torch.float32  # left 16/32-bit, as DeepSeek saves it

    reference = AutoModelForCausalLM.from_pretrained(sixteen, dtype=torch.float32).eval()
    first = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32).eval()
    torch.testing.assert_close(layer.self_attn.o_a_proj.weight, reference.model.layers[1].self_attn.o_a_proj.weight,
                               rtol=0, atol=0)
    with torch.no_grad():
        logits = model(IDS).logits
        torch.testing.assert_close(logits, reference(IDS).logits, rtol=0, atol=1e-5)
        assert (logits - first(IDS).logits).abs().max() > 1e-3  # the quantization did change the weights


def _copy(folder: Path, to: Path, config=None) -> Path:
    shutil.copytree(folder, to)
    if config:
        data = json.loads((to / "config.json").read_text())
        config(data)
        (to / "config.json").write_text(json.dumps(data))
    return to


def test_other_layouts_are_refused_naming_what_differs(dsv4, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _, _ = dsv4
    with pytest.raises(ConfigError, match=r"saved in block-wise FP8 with NVFP4 experts \(DeepSeek V4's NVFP4 release\): "
                                          r"hubtune keeps its weights packed.*leave dequantize out"):
        load(folder, dequantize=True, quantization="none")  # transformers' fp8 dequantizing would drop their scales

    def model_type(data):
        data["model_type"] = "deepseek_v3"

    with pytest.raises(ConfigError, match=r"model_type 'deepseek_v3'; hubtune reads that layout under DeepSeek V4's"):
        load(_copy(folder, tmp_path / "v3", model_type))

    def blocks(data):
        data["quantization_config"]["weight_block_size"] = [64, 64]

    with pytest.raises(ConfigError, match=r"shared_experts.down_proj: the FP8 weight is \(128, 64\) "
                                          r"torch.float8_e4m3fn with block scales \(1, 1\).*\(64, 64\) blocks "
                                          r"\(\(2, 1\) scales\)"):
        load(_copy(folder, tmp_path / "blocks", blocks))

    def group(data):
        data["quantization_config"]["group_size"] = 32

    with pytest.raises(ConfigError, match="NVFP4 experts of group_size 32; the format's block is 16"):
        load(_copy(folder, tmp_path / "group", group))

    # A routed expert saved block-wise FP8 (DeepSeek's FP8 release) instead of NVFP4.
    fp8_expert = _copy(folder, tmp_path / "fp8-expert")
    tensors = load_file(fp8_expert / "model.safetensors")
    for key in [k for k in tensors if k.startswith("layers.1.ffn.experts.2.w2.")]:
        del tensors[key]
    from nvfp4_checkpoint import quantize_fp8_blocks

    codes, scale = quantize_fp8_blocks(torch.randn(128, 64))
    tensors.update({"layers.1.ffn.experts.2.w2.weight": codes, "layers.1.ffn.experts.2.w2.scale": scale})
    save_file(tensors, fp8_expert / "model.safetensors")
    with pytest.raises(ConfigError, match=r"the routed expert model.layers.1.mlp.experts.2.down_proj is block-wise "
                                          r"FP8; hubtune reads this layout with NVFP4 routed experts"):
        load(fp8_expert)

    # Declared fp8 without saying its experts are NVFP4: transformers' quantizer would drop their scales.
    def undeclared(data):
        del data["quantization_config"]["moe_quant_algo"]

    with pytest.raises(ConfigError, match=r"declared 'fp8' but holding NVFP4 weights \(layers.0.ffn.experts.0.w1"):
        load(_copy(folder, tmp_path / "undeclared", undeclared))


@pytest.mark.slow
def test_a_lora_run_trains_on_it_and_its_adapter_loads_on_the_16_bit_twin(dsv4, tmp_path, one_torch_thread):
    """Axolotl's example's LoRA (the experts' stacks through target_parameters) plus two FP8 attention projections:
    the run trains, and its adapter, in the 16-bit base's names, computes on the 16-bit twin what it computes on
    the mixed base; its card loads the base with hubtune, and its merge is a 16-bit model."""
    from data_rows import tiny_config
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    import hubtune
    from hubtune.evaluation import load_tuned

    folder, sixteen, _ = dsv4
    config = tiny_config(tmp_path, rows=16, model={"id": str(folder)},
                         lora={"target_modules": ["q_a_proj", "o_b_proj"], "dropout": 0.0,
                               "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]},
                         data={"val_set_size": 4},
                         training={"max_steps": 3, "micro_batch_size": 2, "learning_rate": 5e-3, "eval_steps": 3,
                                   "logging_steps": 1, "gradient_checkpointing": True, "kernels": "eager"},
                         eval={"tasks": [], "regression_set": None})
    run = hubtune.train(config)
    assert run.summary.global_steps == 3
    assert run.summary.final_eval_loss < run.summary.initial_eval_loss
    assert run.summary.base_quantization == "fp8 with NVFP4 experts"
    with safe_open(run.path / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        names = set(f.keys())
    assert "base_model.model.model.layers.1.self_attn.q_a_proj.lora_A.weight" in names
    assert "base_model.model.model.layers.0.self_attn.o_b_proj.lora_B.weight" in names
    assert any(".mlp.experts.lora_A" in n for n in names) and not any("parametrizations" in n for n in names)
    tuned, _ = load_tuned(run.path)
    twin = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sixteen, dtype=torch.float32),
                                     run.path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(IDS).logits, twin(IDS).logits, rtol=0, atol=1e-4)
        adapted = twin(IDS).logits
        with twin.disable_adapter():
            assert (adapted - twin(IDS).logits).abs().max() > 1e-4  # the adapter trained
    # The card loads the base with hubtune, saying why; the merge writes a 16-bit model stock transformers loads.
    from hubtune import card as cards
    from hubtune.merge import merge

    text = str(cards.build_card(run, "alice/dsv4-invoices", cards.publishing_verdict(run)))
    assert "from hubtune.nvfp4 import load" in text and "its fp8 quantizer drops the experts' scales" in text
    merged = merge(run.path, tmp_path / "merged")
    assert merged.max_logit_difference is not None and merged.max_logit_difference < 1e-4
    assert any("is stored in FP8 with NVFP4 experts" in w for w in merged.warnings)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    assert getattr(stock.config, "quantization_config", None) is None
