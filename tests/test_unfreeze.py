"""lora.unfrozen_parameters: base parameters named as the base names them, trained in full beside the
adapter (PEFT's modules_to_save, or trainable_token_indices for embedding rows) and saved with it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hubtune import config as cfg
from hubtune import unfreeze
from hubtune.errors import ConfigError
from data_rows import invoice_file, tiny_tree


@pytest.fixture(scope="module")
def base():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))


@pytest.fixture(scope="module")
def untied(untied_tiny_base):
    return untied_tiny_base


def test_patterns_read_as_axolotl_reads_them():
    p = unfreeze.parse("^model.embed_tokens.weight$[:32]")
    assert p.rows == (0, 32) and p.match("model.embed_tokens.weight") and not p.match("modelXembed_tokens.weight")
    assert unfreeze.parse("lm_head[5]").rows == (5, 6)
    assert unfreeze.parse("model.layers.+.input_layernorm").match("model.layers.3.input_layernorm.weight")  # .+: any
    with pytest.raises(ValidationError, match="must end after it starts"):
        cfg.LoraSection(unfrozen_parameters=["model.embed_tokens.weight[8:4]"])
    with pytest.raises(ValidationError, match="not a regular expression"):
        cfg.LoraSection(unfrozen_parameters=["model.(norm"])


def test_whole_modules_and_embedding_rows_resolve_on_the_base(base, untied):
    from transformers import AutoModelForCausalLM

    found = unfreeze.resolve(AutoModelForCausalLM.from_pretrained(untied),
                             ["model.norm.weight", "^model.layers.+.input_layernorm", "model.embed_tokens.weight[4:8]"])
    assert found.modules == ["model.norm", "model.layers.0.input_layernorm", "model.layers.1.input_layernorm",
                             "model.layers.2.input_layernorm", "model.layers.3.input_layernorm"]
    assert found.token_rows == {"embed_tokens": [4, 5, 6, 7]}
    head = unfreeze.resolve(base, ["^lm_head.weight$"])  # the tiny base ties its head to the embedding
    assert head.modules == ["lm_head"] and head.tied
    with pytest.raises(ConfigError, match="ties its output head to the input embedding, and TRL's fused loss"):
        unfreeze.resolve(base, ["model.embed_tokens.weight[4:8]"])


def test_what_cannot_train_in_full_is_a_config_error_naming_it(base):
    with pytest.raises(ConfigError) as err:
        unfreeze.resolve(base, ["^base_model.model.model.norm", "model.norm.weight[:4]"])
    problems = dict(err.value.problems)  # both problems, at once
    text = " ".join(why for _, why in err.value.problems)
    assert set(problems) == {"lora.unfrozen_parameters"}
    assert "^base_model.model.model.norm matches no parameter of the base" in text
    assert "model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight" in text  # what names look like
    assert "model.norm.weight[:4]: a row range trains token rows of the input embedding only" in text


def test_a_quantized_weight_is_refused_and_a_lora_target_trains_in_full_instead(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hubtune.train import attach_lora

    quantized = AutoModelForCausalLM.from_pretrained(
        cfg.resolve_builtin("hubtune:tiny-llama"),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    with pytest.raises(ConfigError, match=r"matches model\.layers\.0\.mlp\.down_proj\.weight, a 4-bit weight of "
                                          r"the quantized base, which cannot train in full"):
        unfreeze.resolve(quantized, ["model.layers.0.mlp.down_proj.weight"])
    plain = AutoModelForCausalLM.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    config = cfg.build(tiny_tree(invoice_file(tmp_path / "rows.jsonl", 4),
                                 lora={"target_modules": "all-linear",
                                       "unfrozen_parameters": ["model.layers.0.mlp.down_proj.weight"]}))
    model = attach_lora(plain, config, "hf", False)
    down = model.base_model.model.model.layers[0].mlp.down_proj
    assert type(down).__name__ == "ModulesToSaveWrapper" and not hasattr(down.modules_to_save["default"], "lora_A")
    assert down.modules_to_save["default"].weight.requires_grad and hasattr(model.base_model.model.model.layers[1]
                                                                            .mlp.down_proj, "lora_A")


@pytest.mark.slow
def test_unfrozen_parameters_train_in_full_and_come_back_with_the_adapter(tmp_path, untied, one_torch_thread):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import hubtune
    from hubtune.evaluation.generate import load_tuned

    config = cfg.build(tiny_tree(invoice_file(tmp_path / "rows.jsonl", 16), tmp_path / "run",
                                 model={"id": str(untied), "quantization": "none"},
                                 lora={"target_modules": "qv", "unfrozen_parameters": [
                                     "model.norm.weight", "model.layers.1.post_attention_layernorm",
                                     "model.embed_tokens.weight[10:20]"]},
                                 training={"max_steps": 3, "learning_rate": 1e-2},
                                 eval={"tasks": [], "regression_set": None}))
    run = hubtune.train(config)
    base = AutoModelForCausalLM.from_pretrained(untied)
    saved = load_file(run.adapter / "adapter_model.safetensors")
    names = sorted(saved)
    norm = next(w for n, w in saved.items() if n.endswith("model.norm.weight"))
    post = next(w for n, w in saved.items() if n.endswith("layers.1.post_attention_layernorm.weight"))
    rows = next(w for n, w in saved.items() if "embed_tokens.token_adapter" in n)
    assert not torch.equal(norm, base.model.norm.weight)  # trained in full, saved whole
    assert not torch.equal(post, base.model.layers[1].post_attention_layernorm.weight)
    assert rows.shape == (10, 192) and not torch.equal(rows, base.model.embed_tokens.weight[10:20])
    assert not any("layers.0.post_attention_layernorm" in n or "mlp.down_proj" in n for n in names)  # nothing else
    model, _ = load_tuned(run.path)
    merged = model.merge_and_unload()
    assert torch.equal(merged.model.norm.weight, norm)
    embedding = merged.model.embed_tokens.weight
    assert torch.equal(embedding[10:20], rows) and torch.equal(embedding[:10], base.model.embed_tokens.weight[:10])
    assert torch.equal(embedding[20:], base.model.embed_tokens.weight[20:])  # the other rows as the base had them


ALPACA = {"base_model": "hubtune:tiny-llama", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
          "lora_target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-4,
          "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}]}


def test_axolotl_patterns_on_peft_names_convert_to_base_names_and_export_back():
    """Axolotl matches unfrozen_parameters against the PEFT-wrapped model. Patterns that keep the adapter
    training and name base weights after base_model.model. convert; the export's patterns, matched as Axolotl
    matches them on the wrapped tiny base, unfreeze exactly the adapter and the named weights."""
    import yaml
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from hubtune.interop import axolotl
    from hubtune.train import lora_config

    translation = axolotl.from_axolotl({**ALPACA, "unfrozen_parameters": [
        "^base_model.model.+lora_", "^base_model.model.model.norm.weight$", "^model.layers.0"]})
    config = translation.run_config()
    assert config.lora.unfrozen_parameters == ["model.norm.weight$"]
    assert any("^model.layers.0 matches no parameter of the adapter-wrapped model" in n for n in translation.notes)
    out = axolotl.to_axolotl(config, ["alpaca"])
    assert out["unfrozen_parameters"] == ["^base_model.model.+lora_", "^base_model.model.model.norm.weight$"]
    assert axolotl.from_axolotl(yaml.safe_load(yaml.safe_dump(out))).run_config() == config
    base = AutoModelForCausalLM.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    wrapped = get_peft_model(base, lora_config(config.lora, model=base))
    patterns = [unfreeze.parse(p) for p in out["unfrozen_parameters"]]
    names = [n for n, _ in wrapped.named_parameters()]
    kept = {n for n in names if any(p.match(n) for p in patterns)}
    assert kept == {n for n in names if "lora_" in n} | {"base_model.model.model.norm.weight"}


def test_axolotl_patterns_that_would_train_nothing_or_only_the_base_are_refused():
    from hubtune.interop import axolotl

    nothing = dict(axolotl.from_axolotl({**ALPACA, "unfrozen_parameters": ["^model.language_model.*", "^lm_head.*"]})
                   .unsupported)["unfrozen_parameters"]
    assert "freezes every parameter, the adapter's included, and trains nothing" in nothing
    frozen_adapter = dict(axolotl.from_axolotl({**ALPACA, "unfrozen_parameters": ["^base_model.model.lm_head"]})
                          .unsupported)["unfrozen_parameters"]
    assert "^base_model.model.lm_head trains in full while the adapter stays frozen" in frozen_adapter
    unclear = dict(axolotl.from_axolotl({**ALPACA, "unfrozen_parameters": [".+norm", "^base_model.model.+lora_"]})
                   .unsupported)["unfrozen_parameters"]
    assert ".+norm does not start with base_model.model.<base name>" in unclear


def test_a_continued_adapter_does_not_take_new_unfrozen_parameters(tmp_path, base):
    from hubtune.train import attach_lora

    config = cfg.build(tiny_tree(invoice_file(tmp_path / "rows.jsonl", 4),
                                 lora={"init_from": str(tmp_path), "unfrozen_parameters": ["model.norm.weight"]}))
    with pytest.raises(ConfigError, match="a continued adapter .lora.init_from. trains what it was saved with"):
        attach_lora(base, config, "hf", False)


def test_the_training_page_example_is_a_run_config_that_resolves_on_an_untied_base(untied):
    """docs/training.md, "Base weights trained beside the adapter": a valid config whose patterns name the
    final norm, every input norm and 32 embedding rows of a base with its own head."""
    import yaml
    from readme_blocks import section_blocks
    from transformers import AutoModelForCausalLM

    (text,) = [body for lang, body in section_blocks("Base weights trained beside the adapter") if lang == "yaml"]
    config = cfg.build(yaml.safe_load(text))
    assert config.model.quantization == "none"
    found = unfreeze.resolve(AutoModelForCausalLM.from_pretrained(untied), config.lora.unfrozen_parameters)
    assert found.modules[0] == "model.norm" and len(found.modules) == 5
    assert found.token_rows == {"embed_tokens": list(range(32))}
