"""Llama 4 bases re-saved with one linear layer per expert (model.linearized_experts, Axolotl's
llama4_linearized_experts), on a tiny Llama 4 built here: its Hub layout (Llama4ForConditionalGeneration,
fused experts), the same weights linearized in 16 bits and saved pre-quantized to bitsandbytes nf4."""

from __future__ import annotations

import shutil

import pytest
import torch

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.hardware import Hardware

TINY = cfg.resolve_builtin("hubtune:tiny-llama")
IDS = torch.tensor([[1, 17, 240, 33, 5, 98, 411, 7, 60, 2]])


def text_config(vocab_size: int) -> dict:
    # Sizes that are multiples of bitsandbytes' 64-value blocks, so its CPU kernels take every layer.
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=64, intermediate_size_mlp=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                num_experts_per_tok=1, interleave_moe_layer_step=1, max_position_embeddings=512, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, attention_chunk_size=512, no_rope_layers=[1, 1])


def linearized_state(state: dict, experts: int, width: int) -> dict:
    """A fused Llama 4 state dict in the linearized layout (experts.gate_projs.N.weight, ...)."""
    out = {}
    for key, value in state.items():
        if key.endswith("experts.gate_up_proj"):
            prefix = key.removesuffix("gate_up_proj")
            for e in range(experts):
                out[f"{prefix}gate_projs.{e}.weight"] = value[e][:, :width].t().contiguous()
                out[f"{prefix}up_projs.{e}.weight"] = value[e][:, width:].t().contiguous()
        elif key.endswith("experts.down_proj"):
            prefix = key.removesuffix("down_proj")
            for e in range(experts):
                out[f"{prefix}down_projs.{e}.weight"] = value[e].t().contiguous()
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """{fused, lin16, lin4}: three folders of one tiny Llama 4 (with tiny-llama's tokenizer and card), saved as
    Axolotl saves them: the whole vision-language class."""
    from transformers import BitsAndBytesConfig, Llama4Config, Llama4ForConditionalGeneration

    from hubtune.linearized import linearized_llama4

    root = tmp_path_factory.mktemp("llama4")
    torch.manual_seed(0)
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=28,
                  patch_size=14, projector_input_dim=64, projector_output_dim=64, vision_output_dim=64,
                  pixel_shuffle_ratio=0.5, rope_theta=10000)
    config = Llama4Config(text_config=text_config(902), vision_config=vision)
    fused = Llama4ForConditionalGeneration(config)
    with linearized_llama4():
        linear = Llama4ForConditionalGeneration(config)
    linear.load_state_dict(linearized_state(fused.state_dict(), 4, 64), strict=True)
    folders = {name: root / name for name in ("fused", "lin16", "lin4")}
    fused.save_pretrained(folders["fused"])
    linear.save_pretrained(folders["lin16"])
    with linearized_llama4():
        quantized = Llama4ForConditionalGeneration.from_pretrained(
            folders["lin16"], quantization_config=BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32))
    quantized.save_pretrained(folders["lin4"])
    for folder in folders.values():
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
            shutil.copy(f"{TINY}/{name}", folder / name)
    return folders


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_a_linearized_base_computes_what_the_fused_llama_4_computes(bases):
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    from hubtune.linearized import LinearizedLlama4Experts
    from hubtune.train import load_base

    hw = Hardware("cpu", torch.float32, "adamw_torch")
    fused = logits(AutoModelForCausalLM.from_pretrained(bases["fused"]))
    linear = load_base(str(bases["lin16"]), cfg.ModelSection(quantization="none", linearized_experts=True), hw,
                       for_training=False)
    experts = linear.model.layers[0].feed_forward.experts
    assert isinstance(experts, LinearizedLlama4Experts) and len(experts.gate_projs) == 4
    assert torch.allclose(logits(linear), fused, atol=1e-5)
    # transformers' own class does not place these weights: its stacked experts stay as initialised.
    assert not torch.allclose(logits(AutoModelForCausalLM.from_pretrained(bases["lin16"])), fused, atol=1e-3)

    # Saved pre-quantized: every expert loads as a 4-bit layer, and computes what quantizing on load computes.
    saved = load_base(str(bases["lin4"]), cfg.ModelSection(linearized_experts=True), hw, for_training=False)
    on_load = load_base(str(bases["lin16"]), cfg.ModelSection(linearized_experts=True), hw, for_training=False)
    for model in (saved, on_load):
        experts = model.model.layers[1].feed_forward.experts
        assert all(isinstance(m, Linear4bit) for m in [*experts.gate_projs, *experts.up_projs, *experts.down_projs])
    assert torch.equal(logits(saved), logits(on_load))
    assert (logits(saved) - fused).abs().max() < 0.5  # nf4 rounding, not different weights


def test_experts_written_back_stacked_load_in_transformers_own_class(bases, tmp_path):
    from transformers import AutoModelForCausalLM

    from hubtune import linearized

    model = linearized.load(str(bases["lin16"]))
    assert linearized.fuse_experts(model) == 2
    model.save_pretrained(tmp_path / "fused")
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "fused")),
                       logits(AutoModelForCausalLM.from_pretrained(bases["fused"])))


def test_a_base_that_is_not_linearized_is_refused_with_what_it_holds(bases):
    from transformers import AutoConfig

    from hubtune import linearized

    with pytest.raises(ConfigError, match=r"holds Llama 4's fused experts \(gate_up_proj\), which transformers loads"):
        linearized.load(str(bases["fused"]))
    with pytest.raises(ConfigError, match="the base is a llama, and linearized experts are a layout of Llama 4"):
        linearized.check_model_type(AutoConfig.from_pretrained(TINY))


@pytest.mark.slow
def test_an_axolotl_linearized_llama_4_config_trains_and_merges(bases, tmp_path, one_torch_thread):
    """The Scout QLoRA example's model settings on the tiny pre-quantized base: a few QLoRA steps through
    hubtune.train, then a merge whose output loads in transformers' own Llama 4 class."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    import hubtune
    from hubtune.interop import axolotl
    from hubtune.merge import merge
    from data_rows import invoice_file

    data = invoice_file(tmp_path / "invoices.jsonl", 24)
    translation = axolotl.from_axolotl({
        "base_model": str(bases["lin4"]), "model_type": "Llama4ForConditionalGeneration",
        "llama4_linearized_experts": True, "load_in_4bit": True, "adapter": "qlora", "lora_r": 8, "lora_alpha": 16,
        "lora_target_modules": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj"],
        "sequence_len": 384, "micro_batch_size": 4, "learning_rate": 1e-3, "max_steps": 3, "warmup_steps": 0,
        "output_dir": str(tmp_path / "run"), "datasets": [{"path": str(data), "type": "alpaca"}]})
    assert any("Llama4ForConditionalGeneration" in n for n in translation.notes)
    config = translation.run_config(["eval.tasks=[]", "eval.regression_set=null"])
    assert (config.model.linearized_experts, config.model.quantization) == (True, "nf4")
    run = hubtune.train(config)
    assert run.summary.global_steps == 3
    with safe_open(str(run.adapter / "adapter_model.safetensors"), "pt") as f:
        names = list(f.keys())
        assert any("shared_expert.gate_proj.lora_B" in n for n in names)
        assert any(f.get_tensor(n).abs().max() > 0 for n in names if "lora_B" in n)  # it trained

    from hubtune import card as cards

    text = str(cards.build_card(run, "alice/scout-invoices", cards.publishing_verdict(run)))
    assert "from hubtune.linearized import load" in text and "vllm serve" not in text

    result = merge(run.path, tmp_path / "merged", dtype="float32")
    assert result.max_logit_difference < 1e-4  # the stacked merged model computes what base + adapter computes
    assert any("transformers' own Llama 4 layout" in w for w in result.warnings)
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), "pt") as f:
        assert any(k.endswith("experts.gate_up_proj") for k in f.keys())
    AutoModelForCausalLM.from_pretrained(tmp_path / "merged")


def test_the_routers_load_balancing_loss_is_added_only_when_asked(tmp_path):
    """TRL adds a mixture-of-experts router's loss unless told 0.0; Axolotl's Llama 4 configs do not ask for it."""
    from hubtune.train import sft_args

    hw = Hardware("cpu", torch.float32, "adamw_torch")
    for asked, coef in ((False, 0.0), (True, None)):  # None: the architecture's own coefficient
        config = cfg.build({"model": {"router_aux_loss": asked}, "data": {"sources": ["hubtune:data/invoices/train.jsonl"]}})
        assert sft_args(config, hw, tmp_path, has_eval=False).router_aux_loss_coef == coef


def test_the_documented_setting_is_a_valid_run_config():
    import yaml

    from readme_blocks import section_blocks

    (block,) = [body for lang, body in section_blocks("Llama 4 bases with linearized experts") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(block))
    assert (config.model.id, config.model.linearized_experts) == (
        "axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16", True)

