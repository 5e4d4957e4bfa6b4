"""LoRA dropout where PEFT puts the adapter on a mixture-of-experts model's stacked parameters, on a tiny
Mixtral and a tiny Qwen3-MoE (random weights, the embedded tiny base's tokenizer and licence): PEFT 0.21
moves all-linear and the names transformers 5 fused into the experts onto those parameters (ParamWrapper)
and refuses any dropout there once the base has loaded; hubtune refuses the same settings before loading,
naming the fixes, and Axolotl's mixtral.yml trains as Axolotl trains it once its targets are written out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.interop import axolotl
from hubtune.train import check_against_model, lora_config

INVOICES = "hubtune:data/invoices/train.jsonl"
MIXTRAL_YML = Path(__file__).resolve().parent / "data" / "axolotl_examples" / "mistral" / "mixtral" / "mixtral.yml"


def mixtral_config():
    from transformers import MixtralConfig

    return MixtralConfig(vocab_size=902, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                         num_experts_per_tok=2, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)


def qwen3_moe_config():
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=902, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          num_experts=4, num_experts_per_tok=2, max_position_embeddings=4096,
                          bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(model_config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config)


def axolotl_linear_names(model) -> list[str]:
    """Axolotl's lora_target_linear (src/axolotl/loaders/adapter.py, find_all_linear_names, at the commit in
    tests/data/axolotl_examples/SOURCE): the last name of every Linear module (bitsandbytes' Linear4bit and
    Linear8bitLt are nn.Linear subclasses) or module whose class name has Linear, less the output head."""
    names = {key.rsplit(".", 1)[-1] for key, m in model.named_modules()
             if key and (isinstance(m, torch.nn.Linear) or "Linear" in type(m).__name__)}
    return sorted(names - {"lm_head"})


def converted_mixtral() -> cfg.RunConfig:
    return axolotl.from_axolotl(yaml.safe_load(MIXTRAL_YML.read_text())).run_config()


CASES = [(mixtral_config, "all-linear", ["mlp.experts.down_proj", "mlp.experts.gate_up_proj", "mlp.gate.weight"]),
         (mixtral_config, ["w1", "w2", "w3", "q_proj"], ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]),
         (qwen3_moe_config, "all-linear", ["mlp.experts.down_proj", "mlp.experts.gate_up_proj", "mlp.gate.weight"]),
         (qwen3_moe_config, ["down_proj", "q_proj"], ["mlp.experts.down_proj"])]


@pytest.mark.parametrize("make,targets,wrapped", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_peft_puts_these_targets_on_the_experts_and_refuses_dropout_there(make, targets, wrapped):
    from peft import get_peft_model
    from peft.tuners.lora.layer import ParamWrapper

    model_config = make()
    lora = cfg.LoraSection(r=4, target_modules=targets, dropout=0.0)
    adapted = get_peft_model(build(model_config), lora_config(lora, model_config=model_config))
    params = {f"{k.split('.layers.0.')[1].removesuffix('.base_layer')}.{m.parameter_name}"
              for k, m in adapted.named_modules() if isinstance(m, ParamWrapper) and ".layers.0." in k}
    assert sorted(params) == wrapped
    # What the pre-load check guards against: the same adapter with dropout fails only as it is attached.
    with pytest.raises(ValueError, match="ParamWrapper does not work with lora_dropout != 0"):
        get_peft_model(build(model_config), lora_config(lora.model_copy(update={"dropout": 0.05}),
                                                        model_config=model_config))


@pytest.mark.parametrize("make,targets,wrapped", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_dropout_on_the_experts_is_refused_before_loading_with_both_fixes(make, targets, wrapped):
    model_config = make()
    config = cfg.build({"model": {"id": "hubtune:tiny-llama"}, "data": {"sources": [INVOICES], "max_seq_len": 256},
                        "lora": {"r": 4, "target_modules": targets, "dropout": 0.05}})
    with pytest.raises(ConfigError) as err:
        check_against_model(config, model_config)
    ((path, message),) = err.value.problems
    assert path == "lora.dropout"
    assert f"stacked parameters ({', '.join(wrapped)}) through its ParamWrapper" in message
    assert "set lora.dropout: 0" in message
    assert "keep the experts out with lora.target_modules: [q_proj]" in message or targets == "all-linear"
    # Either fix passes the check.
    check_against_model(config.model_copy(update={"lora": config.lora.model_copy(update={"dropout": 0.0})}),
                        model_config)
    check_against_model(config.model_copy(update={"lora": config.lora.model_copy(
        update={"target_modules": ["q_proj"]})}), model_config)


def test_explicit_target_parameters_with_dropout_are_refused_without_building_the_model():
    config = cfg.build({"model": {"id": "hubtune:tiny-llama"}, "data": {"sources": [INVOICES], "max_seq_len": 256},
                        "lora": {"target_modules": "attention", "dropout": 0.1,
                                 "target_parameters": ["experts.gate_up_proj"]}})
    with pytest.raises(ConfigError, match=r"lora.target_parameters: experts.gate_up_proj\): PEFT's ParamWrapper "
                                          r"refuses any dropout"):
        check_against_model(config, qwen3_moe_config())


def test_names_moved_onto_the_experts_count_as_found_and_half_a_fused_pair_is_refused():
    config = cfg.build({"model": {"id": "hubtune:tiny-llama"}, "data": {"sources": [INVOICES], "max_seq_len": 256},
                        "lora": {"r": 4, "target_modules": ["w1", "w2", "w3"], "dropout": 0.0}})
    check_against_model(config, mixtral_config())  # no module is named w1 any more: PEFT adapts the experts
    half = config.model_copy(update={"lora": config.lora.model_copy(update={"target_modules": ["w1", "q_proj"]})})
    with pytest.raises(ConfigError, match=r"lora.target_modules: Cannot convert PEFT target\(s\) w1 without also "
                                          r"targeting w3 .* Name both, or neither"):
        check_against_model(half, mixtral_config())


def test_a_dense_base_with_dropout_and_all_linear_passes():
    from transformers import AutoConfig

    dense = AutoConfig.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    check_against_model(cfg.build({"model": {"id": "hubtune:tiny-llama"},
                                   "data": {"sources": [INVOICES], "max_seq_len": 256}, "lora": {"dropout": 0.05}}),
                        dense)


def test_axolotls_mixtral_example_is_refused_naming_the_layers_axolotl_trains():
    """Axolotl's lora_target_linear lists the Linear layers itself: on transformers 5's Mixtral the attention
    projections only (the experts are 3D parameters, the router a module of its own), which PEFT adapts with
    dropout. hubtune's all-linear is PEFT's, which also puts LoRA on the experts and the router, where dropout
    cannot run: the converted config is refused before loading, its second fix being Axolotl's own layers."""
    config = converted_mixtral()
    assert (config.lora.target_modules, config.lora.dropout) == ("all-linear", 0.05)
    model_config = mixtral_config()
    axolotls = axolotl_linear_names(build(model_config))
    assert axolotls == ["k_proj", "o_proj", "q_proj", "v_proj"]
    with pytest.raises(ConfigError) as err:
        check_against_model(config, model_config)
    ((path, message),) = err.value.problems
    assert path == "lora.dropout" and f"lora.target_modules: [{', '.join(axolotls)}]" in message


@pytest.fixture(scope="module")
def tiny_mixtral(tmp_path_factory) -> Path:
    tiny = Path(cfg.resolve_builtin("hubtune:tiny-llama"))
    out = tmp_path_factory.mktemp("mixtral") / "tiny-mixtral"
    build(mixtral_config()).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(tiny / name, out / name)
    return out


@pytest.mark.slow
def test_the_mixtral_example_trains_as_axolotl_does_with_its_layers_written_out(tiny_mixtral, tmp_path,
                                                                                 one_torch_thread, monkeypatch):
    from data_rows import tiny_config

    import importlib

    import hubtune

    train_module = importlib.import_module("hubtune.train")  # the module: hubtune.train is also the function

    lora = converted_mixtral().lora.model_dump(exclude_defaults=True)
    settings = dict(model={"id": str(tiny_mixtral)}, data={"val_set_size": 8},
                    training={"max_steps": 3, "micro_batch_size": 4, "eval_steps": 3, "logging_steps": 1},
                    eval={"tasks": [], "regression_set": None})
    # As converted: refused before the base loads.
    loads = []
    original = train_module.load_base
    monkeypatch.setattr(train_module, "load_base", lambda *a, **k: loads.append(a) or original(*a, **k))
    with pytest.raises(ConfigError, match="lora.dropout"):
        hubtune.train(tiny_config(tmp_path, rows=24, run="refused", lora=lora, **settings))
    assert loads == []
    # With the layers Axolotl's lora_target_linear adapts here, its r, alpha and dropout: LoRA on those alone.
    fixed = {**lora, "target_modules": axolotl_linear_names(build(mixtral_config()))}
    run = hubtune.train(tiny_config(tmp_path, rows=24, lora=fixed, **settings))
    assert run.summary.global_steps == 3 and loads
    from safetensors.torch import load_file

    saved = load_file(run.adapter / "adapter_model.safetensors")
    assert {k.split(".")[-3] for k in saved} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert all(v.shape[0] == 32 or v.shape[1] == 32 for v in saved.values())  # Axolotl's lora_r
    import json

    assert json.loads((run.adapter / "adapter_config.json").read_text())["lora_dropout"] == 0.05
