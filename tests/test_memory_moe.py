"""The memory estimate on mixture-of-experts bases: parameters counted as transformers builds each family, the
stacked experts' weights against a loaded tiny Qwen3-MoE (16-bit, NF4 and int8 experts), the trainable count
against PEFT's, expert and context parallelism per process, and `hubtune estimate` on Axolotl's MoE examples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hubtune import config as cfg
from hubtune import fit, memory, trained
from hubtune.memory import Settings, estimate
from test_experts import load, tiny_moe  # noqa: F401  (the tiny Qwen3-MoE fixture)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "data" / "axolotl_examples"
SMALL = {  # one small config per family, with its dense layers, shared experts and biases
    "qwen3_moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                      vocab_size=100, mlp_only_layers=[1], decoder_sparse_step=1),
    "qwen2_moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
                      num_experts_per_tok=2, vocab_size=100, decoder_sparse_step=2),
    "mixtral": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=100),
    "glm4_moe": dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_routed_experts=4, n_shared_experts=1,
                     num_experts_per_tok=2, first_k_dense_replace=1, vocab_size=100, attention_bias=True,
                     use_qk_norm=True),
}


@pytest.mark.parametrize("family", SMALL)
def test_each_family_is_counted_exactly_as_transformers_builds_it(family):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(family, **SMALL[family])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    arch = memory.architecture({"model_type": family, **SMALL[family]}, family)
    assert arch.moe and arch.parameters()["total"] == sum(p.numel() for p in model.parameters())
    assert trained.parameter_shapes(arch) == {n: tuple(p.shape) for n, p in model.named_parameters()}


def test_the_moe_families_not_modelled_are_refused_by_name_with_what_is_missing():
    for model_type, missing in {"qwen3_next": "Gated DeltaNet", "qwen3_5_moe": "vision tower",
                                "glm4_moe_lite": "latent attention", "nemotron_h": "Mamba-2",
                                "gpt_oss": "MXFP4"}.items():
        with pytest.raises(memory.UnknownArchitecture, match=missing):
            memory.architecture({"model_type": model_type}, model_type)


def weight_bytes(est: memory.Estimate) -> int:
    return sum(v for k, v in est.breakdown.items() if k.startswith("weights"))


def experts_line(est: memory.Estimate) -> int:
    (value,) = [v for k, v in est.breakdown.items() if k.startswith("weights: routed experts")]
    return value


def quant_state_bytes(model) -> int:
    """bitsandbytes' 4-bit constants, which live on the quant states rather than in parameters or buffers."""
    from bitsandbytes.functional import QuantState

    states = [m.weight.quant_state for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None)]
    states += [p.quant_state for m in model.modules() if hasattr(m, "parametrizations")
               for chain in m.parametrizations.values() for p in chain if hasattr(p, "quant_state")]
    assert all(isinstance(q, QuantState) for q in states)
    return sum(q.absmax.numel() * q.absmax.element_size()
               + (q.state2.absmax.numel() * q.state2.absmax.element_size() if q.nested else 0) for q in states), len(states)


@pytest.mark.parametrize("quantization,experts", [("none", False), ("nf4", False), ("nf4", True), ("int8", True)])
def test_the_weights_are_what_the_loaded_tiny_moe_holds(tiny_moe, quantization, experts):
    """On CPU the base computes in float32, so its 16-bit parts are 4-byte: the estimate is given that dtype."""
    base = load(tiny_moe, quantization=quantization, quantize_experts=experts)
    run = cfg.build({"model": {"id": str(tiny_moe), "quantization": quantization, "quantize_experts": experts},
                     "lora": {"dropout": 0.0, "target_modules": "attention"}})
    settings = Settings.from_run_config(run, compute_dtype="float32")
    est = estimate(memory.read_architecture(str(tiny_moe)), settings)
    rotary = sum(b.numel() * b.element_size() for n, b in base.named_buffers() if "rotary" in n)
    held = sum(t.numel() * t.element_size() for t in [*base.parameters(), *base.buffers()]) - rotary
    stacks = [getattr(layer.mlp.experts, "parametrizations", layer.mlp.experts) for layer in base.model.layers]
    if experts:
        stored = sum(t.numel() * t.element_size() for chain in stacks for name in ("gate_up_proj", "down_proj")
                     for t in [getattr(chain, name).original, *getattr(chain, name)[0].buffers()])
    else:
        stored = sum(getattr(s, n).numel() * getattr(s, n).element_size() for s in stacks for n in ("gate_up_proj", "down_proj"))
    if quantization == "none" or quantization == "int8" and experts:
        # 16-bit experts (here float32), or int8 rows with their float32 scales: exactly what the model holds
        assert experts_line(est) == stored
    if quantization == "none":
        assert weight_bytes(est) == held
    elif quantization == "nf4":
        # bitsandbytes' constants sit on quant states: with them, the bytes agree to within each state's rounding
        # of its blocks (a few bytes) and its 256-entry code table, which the estimate leaves out
        constants, states = quant_state_bytes(base)
        assert abs(weight_bytes(est) - (held + constants)) <= states * 64, (weight_bytes(est), held, constants)
        if not experts:
            assert "not quantized without model.quantize_experts" in "".join(est.breakdown)
            assert any("stay 16-bit" in n for n in est.notes)


LORA_CASES = {  # name: (lora section, quantized experts)
    "attention": ({"target_modules": "attention"}, False),
    "all-linear: the linear layers, the experts left out": ({"target_modules": "all-linear"}, False),
    "q_proj and down_proj": ({"target_modules": ["q_proj", "down_proj"]}, False),
    "target_parameters": ({"target_modules": ["q_proj"], "target_parameters": ["mlp.experts.gate_up_proj",
                                                                               "mlp.experts.down_proj"]}, False),
    "target_parameters on NF4 experts": ({"target_modules": [], "target_parameters": ["mlp.experts.gate_up_proj",
                                                                                    "mlp.experts.down_proj"]}, True),
}


@pytest.mark.parametrize("case", LORA_CASES)
def test_the_trainable_count_is_peft_s(tiny_moe, case):
    from transformers import AutoConfig

    from hubtune.train import attach_lora

    lora, quantized = LORA_CASES[case]
    model = {"id": str(tiny_moe), "quantization": "nf4" if quantized else "none", "quantize_experts": quantized}
    run = cfg.build({"model": model, "lora": {"r": 4, "dropout": 0.0, **lora}})
    base = load(tiny_moe, **{k: v for k, v in model.items() if k != "id"})
    peft_model = attach_lora(base, run, "hf", False, new_token_ids=[], model_config=AutoConfig.from_pretrained(tiny_moe))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    est = estimate(memory.read_architecture(str(tiny_moe)), Settings.from_run_config(run))
    assert est.trainable == trainable, case
    on_experts = any("experts" in n and p.requires_grad for n, p in peft_model.named_parameters())
    assert not (on_experts and case.startswith("all-linear")), case
    assert any("saved for its backward" in n for n in est.notes) == (on_experts or quantized), case


def test_expert_and_context_parallelism_divide_what_each_process_holds():
    arch = memory.architecture(json.loads(memory.reference_config("Qwen3-30B-A3B").read_text()), "Qwen3-30B-A3B")
    one = estimate(arch, Settings(method="lora", target_modules="attention", lora_dropout=0.0))
    four = estimate(arch, Settings(method="lora", target_modules="attention", lora_dropout=0.0, expert_parallel=4))
    assert experts_line(one) == arch.parameters()["experts"] * 2 and experts_line(four) == experts_line(one) // 4
    assert "32 of 128 per layer in each of 4 processes" in "".join(four.breakdown)
    rest = [v for k, v in four.breakdown.items() if k.startswith("weights: 16-bit (all but the routed experts), sharded")]
    assert rest == [(arch.parameters()["total"] - arch.parameters()["experts"]) * 2 // 4]
    long = Settings(method="lora", target_modules="attention", lora_dropout=0.0, seq_len=32768, micro_batch=1)
    split = estimate(arch, Settings(**{**long.__dict__, "context_parallel": 4}))
    acts = {k: v for k, v in estimate(arch, long).breakdown.items() if k.startswith("activations: 48")}
    (key, whole), = acts.items()
    assert split.breakdown[key] == math.ceil(whole / 4)
    assert experts_line(split) == math.ceil(experts_line(one) / 4)  # FSDP2 shards the weights over those GPUs
    assert any("per process" in n for n in split.notes)


def test_the_warning_before_loading_uses_the_per_process_figure(tmp_path):
    folder = tmp_path / "qwen3-30b-a3b"
    folder.mkdir()
    (folder / "config.json").write_bytes(memory.reference_config("Qwen3-30B-A3B").read_bytes())
    lora = {"target_modules": "attention", "dropout": 0.0}
    alone = cfg.build({"model": {"id": str(folder), "quantization": "none"}, "lora": lora})
    spread = cfg.build({"model": {"id": str(folder), "quantization": "none"}, "lora": lora,
                        "training": {"distributed": "ddp", "expert_parallel_size": 4}})
    a100 = 40 * 10**9  # 16-bit experts: about 66 GB in one process, about 20 GB with a quarter of them each
    warning = fit.device_warning(alone, str(folder), device_bytes=a100)
    assert warning and "exceeds this GPU's 40.0 GB" in warning
    assert fit.device_warning(spread, str(folder), device_bytes=a100) is None


def test_estimate_reads_an_axolotl_moe_example_with_a_shipped_base_config(capsys):
    from hubtune.cli import main

    example = EXAMPLES / "expert_parallel" / "qwen3_30ba3b_ep_lora_4gpu.yaml"
    code = main(["estimate", str(example), "--base-config", "hubtune:model_configs/Qwen3-30B-A3B.json",
                 "--gpu", "H100 80GB", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert code == 0 and got["model_type"] == "qwen3_moe" and got["settings"]["expert_parallel"] == 4
    assert got["parameters"]["experts"] == 28_991_029_248 and 10 < got["total_gb"] < 40


def docs_rows() -> list[tuple[str, str, str]]:
    """The page's MoE table: the Axolotl examples with a shipped base config, as `hubtune estimate` reads them."""
    from hubtune.cli.estimate import _run_config

    rows = []
    for example, base in DOC_EXAMPLES:
        config = _run_config(str(EXAMPLES / example))
        arch = memory.read_architecture(f"hubtune:model_configs/{base}.json")
        settings = Settings.from_run_config(config)
        est = estimate(arch, settings)
        rows.append((f"`{example}`", base, settings.describe(), f"{est.total_gb:.2f} GB ({est.total_gib:.2f} GiB)"))
    return rows


DOC_EXAMPLES = [("glm45/glm-45-air-qlora.yaml", "GLM-4.5-Air"),
                ("expert_parallel/qwen3_30ba3b_ep_lora_4gpu.yaml", "Qwen3-30B-A3B"),
                ("mistral/mixtral/mixtral.yml", "Mixtral-8x7B-v0.1")]


def test_the_memory_page_shows_the_moe_table_the_code_computes():
    page = (ROOT / "docs" / "memory.md").read_text()
    for row in docs_rows():
        assert f"| {' | '.join(row)} |" in page, row
