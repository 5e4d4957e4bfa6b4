"""The memory estimate's count of what a run trains beside the adapter (hubtune.trained), against the PEFT model
hubtune builds on the tiny base: modules_to_save, tokens new to the vocabulary, lora.unfrozen_parameters, ReLoRA."""

from __future__ import annotations

import math

import pytest

from hubtune import memory
from hubtune.config import resolve_builtin
from hubtune.memory import GB, Settings, estimate
from data_rows import tiny_config

TINY = resolve_builtin("hubtune:tiny-llama")  # ties its output head to the embedding

CASES = {  # name: (untied base, the run config's model and lora sections)
    "adapter only": (False, {}, {}),
    "a special token already in the vocabulary": (False, {"special_tokens": {"eos_token": "</s>"}}, {}),
    "modules_to_save lm_head": (False, {}, {"modules_to_save": ["lm_head"]}),
    "modules_to_save both, untied copies": (False, {}, {"modules_to_save": ["embed_tokens", "lm_head"]}),
    "modules_to_save matching every norm": (False, {}, {"modules_to_save": ["norm"]}),
    "modules_to_save a LoRA target": (False, {}, {"modules_to_save": ["q_proj"]}),
    "new tokens, tied head": (False, {"added_tokens": ["<x1>", "<x2>"], "special_tokens": {"pad_token": "<p>"}}, {}),
    "unfrozen norms": (False, {}, {"unfrozen_parameters": ["model.norm.weight", "^model.layers.+.input_layernorm"]}),
    "unfrozen tied head": (False, {}, {"unfrozen_parameters": ["^lm_head.weight$"]}),
    "new tokens, untied head": (True, {"added_tokens": ["<x1>", "<x2>"]}, {}),
    "embedding rows": (True, {}, {"unfrozen_parameters": ["model.embed_tokens.weight[4:8]",
                                                          "model.embed_tokens.weight[6:10]"]}),
    "unfrozen head beside a saved embedding": (True, {}, {"unfrozen_parameters": ["lm_head.weight"],
                                                          "modules_to_save": ["embed_tokens"]}),
    "one decoder weight of a 16-bit base": (True, {}, {"target_modules": ["v_proj"], "unfrozen_parameters":
                                                       ["model.layers.0.self_attn.q_proj.weight"]}),
}


def peft_model(path: str, config):
    """The PEFT model hubtune.train builds for `config` on the base at `path`, in bfloat16 as on a GPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubtune.train import add_tokens, attach_lora, load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    tokenizer = load_tokenizer(path, config.model)
    new = add_tokens(tokenizer, config.model)
    if new:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    return attach_lora(model, config, "hf", False, new_token_ids=tokenizer.convert_tokens_to_ids(new),
                             model_config=AutoConfig.from_pretrained(path))


@pytest.mark.parametrize("case", CASES)
def test_the_estimate_counts_what_peft_trains(case, tmp_path, untied_tiny_base):
    untied, model, lora = CASES[case]
    path = str(untied_tiny_base) if untied else TINY
    config = tiny_config(tmp_path, 4, model={"id": path, "quantization": "none", **model}, lora=lora)
    trainable = [p for p in peft_model(path, config).parameters() if p.requires_grad]

    settings = Settings.from_run_config(config)
    got = estimate(memory.read_architecture(path), settings)
    assert got.trainable == sum(p.numel() for p in trainable), case
    # 16-bit LoRA in bfloat16: adapters and token rows in float32 (PEFT's autocast), copies in bfloat16
    assert got.breakdown["gradients"] == sum(p.numel() * p.element_size() for p in trainable), case
    besides = [k for k in got.breakdown if k.startswith("trained in full beside the adapter")]
    assert bool(besides) == (case not in ("adapter only", "a special token already in the vocabulary")), case


def test_a_relora_run_trains_the_adapter_alone_and_keeps_its_cycles_off_the_gpu(tmp_path):
    training = {"relora": {"restart_steps": 2}, "select": "last"}
    config = tiny_config(tmp_path, 4, model={"quantization": "none"}, training=training)
    trainable = sum(p.numel() for p in peft_model(TINY, config).parameters() if p.requires_grad)
    settings = Settings.from_run_config(config)
    assert settings.relora
    got = estimate(memory.read_architecture(TINY), settings)
    plain = estimate(memory.read_architecture(TINY), Settings.from_run_config(tiny_config(tmp_path, 4)))
    assert got.trainable == trainable == plain.trainable
    assert any("kept in CPU memory" in n for n in got.notes)


def shipped(name: str) -> memory.Architecture:
    import json

    return memory.architecture(json.loads(memory.reference_config(name).read_text()), name)


def test_new_tokens_on_llama_31_8b_train_a_billion_parameters_beside_the_adapter():
    a = shipped("Llama-3.1-8B")
    base = Settings(seq_len=2048, micro_batch=2, lora_r=8)
    plain = estimate(a, base)
    tokens = estimate(a, Settings(**{**base.__dict__, "new_tokens": 2, "vocab": 128258}))
    rows = 128258 * 4096
    assert tokens.trainable - plain.trainable == 2 * rows  # its own embedding and head, both trained in full
    line = next(k for k in tokens.breakdown if k.startswith("trained in full"))
    assert line == "trained in full beside the adapter: embed_tokens, lm_head (1.05B parameters)"
    assert tokens.breakdown[line] == 2 * rows * 2  # bfloat16 copies
    # 8-bit AdamW keeps the embedding's moments in 32 bits (transformers' Trainer), the head's in 8 bits
    states = "optimizer states (paged_adamw_8bit)"
    optimizer = tokens.breakdown[states] - plain.breakdown[states]
    assert optimizer == pytest.approx(rows * 8 + rows * (2 + 8 / 256), rel=1e-6)
    assert tokens.total - plain.total > 10 * GB
    assert tokens.to_dict()["trained_in_full"] == {"modules": ["model.embed_tokens", "lm_head"], "embedding_rows": 0,
                                                   "parameters": 2 * rows}


def test_a_tied_base_trains_one_copy_for_its_embedding_and_head():
    a = shipped("Llama-3.2-1B")
    got = estimate(a, Settings(new_tokens=1, vocab=a.vocab + 1))
    assert got.trained_in_full["parameters"] == (a.vocab + 1) * a.hidden
    assert "embed_tokens, lm_head (one copy, tied)" in next(k for k in got.breakdown if k.startswith("trained in full"))


def test_a_module_with_4bit_weights_cannot_be_saved_in_full(tmp_path):
    """PEFT cannot make a 4-bit weight trainable: the estimate and training both say so, naming the modules."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hubtune.errors import ConfigError
    from hubtune.train import attach_lora

    quantized = AutoModelForCausalLM.from_pretrained(
        TINY, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    config = tiny_config(tmp_path, 4, lora={"modules_to_save": ["q_proj"]})
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.self_attn\.q_proj, model\.layers\.1\.self_attn\.q_proj, "
                                          r"model\.layers\.2\.self_attn\.q_proj and 1 more hold weights of the "
                                          r"quantized base"):
        attach_lora(quantized, config, "hf", False)
    with pytest.raises(ConfigError, match="q_proj and 29 more hold weights of the quantized base"):
        estimate(shipped("Llama-3.1-8B"), Settings(modules_to_save=("q_proj",)))
    with pytest.raises(memory.HubtuneError, match="cannot train in full"):
        estimate(shipped("Llama-3.1-8B"), Settings(unfrozen_parameters=("model.layers.0.mlp.down_proj.weight",)))


def test_parameter_names_are_those_transformers_builds():
    """On the tiny base (tests/test_memory.py checks every shipped config the same way)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubtune import trained

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY))
    built = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    assert trained.parameter_shapes(memory.read_architecture(TINY)) == built
    assert math.prod(built["lm_head.weight"]) == 902 * 192


def test_the_docs_table_is_what_the_estimate_says():
    """docs/memory.md's table of what trains beside the adapter, computed again."""
    from dataclasses import replace
    from pathlib import Path

    a = shipped("Llama-3.1-8B")
    base = Settings(seq_len=2048, micro_batch=2, lora_r=8)
    cases = {"the adapter alone": base,
             "new tokens (embedding and head trained)": replace(base, new_tokens=2, vocab=a.vocab + 2),
             "`lora.modules_to_save: [lm_head]`": replace(base, modules_to_save=("lm_head",)),
             "`lora.unfrozen_parameters: [model.norm.weight, 'model.embed_tokens.weight[128000:]']`":
                 replace(base, unfrozen_parameters=("model.norm.weight", "model.embed_tokens.weight[128000:]"))}
    docs = (Path(__file__).resolve().parent.parent / "docs" / "memory.md").read_text()
    for case, settings in cases.items():
        got = estimate(a, settings)
        row = f"| {case} | {got.trainable / 1e6:,.1f}M | {got.total_gb:.2f} GB ({got.total_gib:.2f} GiB) |"
        assert row in docs, row


def test_the_fit_search_does_not_offer_4_bits_to_a_run_that_trains_a_linear_layer_in_full():
    from hubtune import fit

    a = shipped("Llama-3.1-8B")
    saved = fit.suggest(a, Settings(method="lora", modules_to_save=("q_proj",)), 15 * GB)
    assert "4 bits" not in saved.change and saved.settings.method == "lora", saved.change
    assert "4 bits" in fit.suggest(a, Settings(method="lora"), 15 * GB).change
