"""Axolotl's `rl:` configs (DPO, ORPO, KTO, GRPO) and the keys converted examples gained a hubtune meaning
for: each read into the run config, written back as Axolotl keys, and, where it runs on a CPU, run
through the code that uses it (data files, system messages, reasoning keys, rewards, early stopping,
LoftQ). What needs a GPU or the Hub (Hub kernels, FlashAttention 3, a mistral-common tokenizer, MXFP4
bases) is checked up to the library call: the arguments hubtune passes, and the error when a package is
missing."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.interop import axolotl

GRPO = {
    "base_model": "Qwen/Qwen2.5-0.5B-Instruct", "adapter": "lora", "lora_r": 16, "lora_alpha": 32,
    "lora_target_linear": True, "learning_rate": 1e-5, "rl": "grpo",
    "datasets": [{"path": "mhenrichsen/alpaca_2k_test", "type": "alpaca"}],
    "trl": {"beta": 0.001, "max_completion_length": 256, "num_generations": 4, "use_vllm": True,
            "vllm_server_host": "0.0.0.0", "reward_funcs": ["rewards.correct", "hubtune.evaluation.rewards.f1"],
            "reward_weights": [1.0, 0.5], "loss_type": "dr_grpo", "scale_rewards": False, "log_completions": True},
    "vllm": {"host": "0.0.0.0", "port": 8000},
}


def convert(data: dict) -> cfg.RunConfig:
    return axolotl.from_axolotl(data).run_config()


def refused(data: dict) -> dict[str, str]:
    return dict(axolotl.from_axolotl(data).unsupported)


def round_trip(config: cfg.RunConfig, formats: list[str]) -> cfg.RunConfig:
    return axolotl.from_axolotl(yaml.safe_load(yaml.safe_dump(axolotl.to_axolotl(config, formats)))).run_config()


def test_grpo_config_reads_its_trl_block_and_module_rewards():
    translation = axolotl.from_axolotl(GRPO)
    config = translation.run_config()
    t = config.training
    assert (t.method, t.beta) == ("grpo", 0.001)
    assert (t.grpo.num_generations, t.grpo.max_completion_length, t.grpo.loss_type, t.grpo.scale_rewards) == (
        4, 256, "dr_grpo", "none")
    # A {file}.{function} reward is the user's, called as TRL calls it; hubtune's own come back by name.
    (mine, f1) = t.grpo.rewards
    assert (mine.name, mine.callable, mine.signature, mine.weight) == ("callable", "rewards:correct", "trl", 1.0)
    assert (f1.name, f1.weight) == ("f1", 0.5)
    assert any("vLLM" in n for n in translation.notes)
    assert config.data.format == "alpaca"
    assert round_trip(config, ["alpaca"]) == config


def test_grpo_defaults_are_trls_and_what_it_cannot_take_is_refused():
    config = convert({**GRPO, "trl": {"max_completion_length": 64, "reward_funcs": ["r.a"]}})
    assert (config.training.grpo.num_generations, config.training.beta) == (8, None)  # TRL's 8; beta 0.0
    assert config.training.method_beta() == 0.0
    no_cap = refused({**GRPO, "trl": {"reward_funcs": ["r.a"]}})
    assert "without a cap" in no_cap["trl.max_completion_length"]
    weights = refused({**GRPO, "trl": {"max_completion_length": 8, "reward_funcs": ["r.a"], "reward_weights": [1, 2]}})
    assert "one weight per reward function (1)" in weights["trl.reward_weights"]
    transform = refused({**GRPO, "datasets": [{"path": "openai/gsm8k", "type": "rewards.oai_gsm8k_transform"}]})
    assert "a Python transform" in transform["datasets[0].type"]
    assert "data.columns {completion: answer}" in transform["datasets[0].type"]
    other = refused({**GRPO, "trl": {**GRPO["trl"], "multi_objective_aggregation": "normalize_then_sum"}})
    assert other["trl.multi_objective_aggregation"].startswith("'normalize_then_sum'")


def test_dpo_kto_orpo_types_read_as_hubtunes_pairs_with_their_template():
    base = {"base_model": "m/x", "adapter": "qlora", "load_in_4bit": True, "lora_r": 8, "lora_alpha": 16}
    intel = convert({**base, "rl": "dpo", "rl_beta": 0.2,
                     "datasets": [{"path": "Intel/orca_dpo_pairs", "type": "chatml.intel"}]})
    assert (intel.training.method, intel.training.beta, intel.data.format) == ("dpo", 0.2, "preference")
    assert (intel.data.columns, intel.data.chat_template) == ({"prompt": "question"}, "chatml")
    kto = convert({**base, "rl": "kto", "kto_desirable_weight": 0.2, "trl": {"beta": 0.3}, "rl_beta": 0.5,
                   "datasets": [{"path": "a/kto", "type": "llama3.argilla"}]})
    t = kto.training
    assert (t.method, t.beta, t.desirable_weight, t.undesirable_weight) == ("kto", 0.3, 0.2, 1.0)  # trl.beta first
    assert (kto.data.format, kto.data.columns, kto.data.chat_template) == ("kto", {"prompt": "instruction"}, "llama3")
    orpo = convert({**base, "rl": "orpo", "orpo_alpha": 0.1, "chat_template": "chatml",
                    "datasets": [{"path": "argilla/ultrafeedback", "type": "chat_template.argilla"}]})
    assert (orpo.training.method, orpo.training.beta, orpo.data.columns) == ("orpo", 0.1, {})
    for config in (intel, kto, orpo):
        assert round_trip(config, [config.data.format]) == config
    assert "hubtune reads the DPO dataset types" in refused(
        {**base, "rl": "dpo", "datasets": [{"path": "a/b", "type": "zephyr.nectar"}]})["datasets[0].type"]
    assert "not trained by hubtune" in refused({**base, "rl": "simpo", "datasets": [{"path": "a/b", "type": "x"}]})["rl"]


def test_trl_style_reward_functions_are_called_as_trl_calls_them(tmp_path, monkeypatch):
    (tmp_path / "axolotl_rewards.py").write_text(textwrap.dedent("""
        def correct(completions, reference=None, **kwargs):
            return [1.0 if c[-1]["content"].strip() == r else 0.0 for c, r in zip(completions, reference)]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from hubtune.evaluation.rewards import build_rewards

    spec = cfg.RewardSpec(name="callable", callable="axolotl_rewards:correct", signature="trl")
    (fn,), _ = build_rewards([spec], cfg.EvalSection())
    completions = [[{"role": "assistant", "content": "42"}], [{"role": "assistant", "content": "7"}]]
    assert fn(["q1", "q2"], completions, reference=["42", "8"]) == [1.0, 0.0]
    sys.modules.pop("axolotl_rewards", None)


def test_method_settings_reach_trls_configs(tmp_path):
    from hubtune import methods

    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    kto = cfg.build({"training": {"method": "kto", "desirable_weight": 0.2, "beta": 0.5}})
    args = methods.method_args(kto, common, None)
    assert (args.desirable_weight, args.undesirable_weight, args.beta) == (0.2, 1.0, 0.5)
    grpo = cfg.build({"training": {"method": "grpo", "grpo": {"loss_type": "dr_grpo", "scale_rewards": "none",
                                                               "epsilon": 0.1, "num_generations": 2}}})
    args = methods.method_args(grpo, common, None)
    assert (args.loss_type, args.scale_rewards, args.epsilon) == ("dr_grpo", "none", 0.1)


# ---- keys of the supervised examples -----------------------------------------------------------------
def test_example_keys_read_into_the_run_config():
    data = yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/gpt-oss/gpt-oss-20b-sft-lora-singlegpu.yaml")
                          .read_text())
    config = convert(data)
    assert config.training.attention_kernel == "kernels-community/vllm-flash-attn3"
    assert (config.model.use_kernels, config.model.dequantize, config.model.quantization) == (True, True, "none")
    assert (config.data.reasoning_field, config.data.template_reasoning_key) == ("thinking", "thinking")
    falcon = convert(yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/archived/falcon/config-7b-qlora.yml")
                                    .read_text()))
    assert falcon.data.sources[0].data_files == ["Chain-of-Thought/formatted_cot_data/gsm8k_train.json"]
    assert falcon.training.early_stopping_patience == 3
    gemma2 = convert(yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/gemma2/qlora.yml").read_text()))
    assert gemma2.data.sources[0].drop_system_message is True
    moe = convert(yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/minimax/m2-qlora.yaml").read_text()))
    assert (moe.lora.target_modules, moe.lora.target_parameters) == ([], ["mlp.experts.gate_up_proj",
                                                                          "mlp.experts.down_proj"])
    mistral = convert(yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/devstral/devstral-small-qlora.yml")
                                     .read_text()))
    assert mistral.model.tokenizer_backend == "mistral-common"
    for config, formats in ((config, ["messages"]), (falcon, ["alpaca"]), (gemma2, ["messages"]), (moe, ["messages"]),
                            (mistral, ["messages"])):
        assert round_trip(config, formats) == config


def test_keys_axolotl_itself_ignores_are_noted_not_refused():
    translation = axolotl.from_axolotl({"base_model": "m/x", "adapter": "lora", "lora_r": 8, "lora_alpha": 8,
                                        "context_parapllel_size": 2,
                                        "datasets": [{"path": "a/b", "type": "alpaca"}]})
    assert not translation.unsupported
    assert any("did you mean context_parallel_size" in n for n in translation.notes)


def test_data_files_system_messages_and_reasoning_keys_reach_the_rows(tmp_path):
    from hubtune.data.pipeline import stream_examples

    folder = tmp_path / "set"
    (folder / "part").mkdir(parents=True)
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                        {"role": "assistant", "content": "4", "thinking": "two and two"}]}
    (folder / "part" / "a.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "not this file"}]}\n')
    data = cfg.DataSection(sources=[{"path": str(folder), "data_files": ["part/*.jsonl"], "drop_system_message": True}],
                           reasoning_field="thinking", val_set_size=0)
    got: list = []
    stream_examples(data.sources, data, lambda ex, where, n: got.append((ex, where)), [], [])
    (ex, where), = got
    assert "a.jsonl" in where
    assert [m["role"] for m in ex.prompt] == ["user"]
    assert ex.completion[0]["reasoning_content"] == "two and two"
    with pytest.raises(Exception, match="no file matches data_files 'nope.json'"):
        stream_examples([cfg.DataSource(path=str(folder), data_files=["nope.json"])], data, lambda *a: None, [], [])
    with pytest.raises(ConfigError, match="a path inside the dataset"):
        cfg.build({"data": {"sources": [{"path": str(folder), "data_files": ["../x.json"]}]}})


def test_the_template_gets_the_reasoning_under_its_own_key():
    from transformers import AutoTokenizer

    from hubtune.data.chat import ChatFormat

    tokenizer = AutoTokenizer.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"))
    chat = ChatFormat(tokenizer, reasoning_key="thinking")
    (message,) = chat.messages([{"role": "assistant", "content": "4", "reasoning_content": "two and two"}])
    assert message == {"role": "assistant", "content": "4", "thinking": "two and two"}


def test_preference_rows_in_axolotls_layouts():
    from hubtune.data.formats import to_example

    one_message = to_example({"conversation": None, "prompt": [{"role": "user", "content": "Hi"}],
                              "chosen": {"role": "assistant", "content": "Hello"},
                              "rejected": {"role": "assistant", "content": "Go away"}}, "preference", None, "r 1")
    assert (one_message.completion, one_message.rejected) == ([{"role": "assistant", "content": "Hello"}],
                                                              [{"role": "assistant", "content": "Go away"}])
    ultra = to_example({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"}],
                        "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No"}]},
                       "preference", None, "r 2")
    assert ultra.prompt == [{"role": "user", "content": "Hi"}] and ultra.rejected[0]["content"] == "No"


def test_early_stopping_watches_the_held_out_loss(tmp_path):
    from hubtune.hardware import Hardware
    from hubtune.train import early_stopping, trainer_args

    config = cfg.build({"training": {"early_stopping_patience": 3, "evals_per_epoch": 4, "saves_per_epoch": 1,
                                     "epochs": 2}})
    hw = Hardware("cpu", __import__("torch").float32, "adamw_torch")
    args = trainer_args(config, hw, tmp_path, has_eval=True)
    # A checkpoint every half of the steps falls on an evaluation (every eighth): the best one is loaded at the end.
    assert (args["metric_for_best_model"], args["greater_is_better"], args["load_best_model_at_end"]) == (
        "eval_loss", False, True)
    apart = cfg.build({"training": {"early_stopping_patience": 3, "eval_steps": 10, "save_steps": 15}})
    assert trainer_args(apart, hw, tmp_path, has_eval=True)["load_best_model_at_end"] is False
    (callback,) = early_stopping(config, has_eval=True)
    assert callback.early_stopping_patience == 3
    with pytest.raises(ConfigError, match="evaluates none during training"):
        early_stopping(config, has_eval=False)


def test_loftq_starts_the_adapter_on_a_16_bit_base_on_a_gpu():
    from hubtune.train import lora_config, loftq_device

    with pytest.raises(ConfigError, match="needs model.quantization: none"):
        cfg.build({"lora": {"init_weights": "loftq"}})
    config = cfg.build({"model": {"quantization": "none"}, "lora": {"init_weights": "loftq", "loftq_bits": 4,
                                                                    "target_modules": ["q_proj"]}})
    peft_config = lora_config(config.lora)
    assert (peft_config.init_lora_weights, peft_config.loftq_config["loftq_bits"]) == ("loftq", 4)
    # PEFT computes LoftQ's starting adapter on CUDA only: here it stops with the reason, before any download.
    with pytest.raises(ConfigError, match="on a CUDA GPU, and this run is on cpu"):
        loftq_device(config.lora, "cpu")
    loftq_device(config.lora, "cuda")


@pytest.mark.gpu
def test_loftq_initialises_the_adapter_on_cuda():
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from hubtune.train import lora_config

    config = cfg.build({"model": {"quantization": "none"}, "lora": {"init_weights": "loftq", "target_modules": ["q_proj"]}})
    model = AutoModelForCausalLM.from_pretrained(cfg.resolve_builtin("hubtune:tiny-llama"), dtype=torch.float32).cuda()
    layer = get_peft_model(model, lora_config(config.lora)).base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_B["default"].weight.abs().sum() > 0  # PEFT's default starts B at zero; LoftQ does not


def test_hub_code_and_optional_tokenizers_say_what_to_install(tmp_path):
    from hubtune.train import hub_kernels_needed, load_tokenizer

    config = cfg.build({"model": {"use_kernels": True}, "training": {"attention_kernel": "kernels-community/flash-attn3"}})
    if importlib.util.find_spec("kernels") is None:
        with pytest.raises(ConfigError, match="pip install kernels") as err:
            hub_kernels_needed(config.model, config.training)
        assert "model.use_kernels" in str(err.value) and "training.attention_kernel" in str(err.value)
    mistral = cfg.build({"model": {"tokenizer_backend": "mistral-common"}})
    if importlib.util.find_spec("mistral_common") is None:
        with pytest.raises(ConfigError, match="pip install mistral-common"):
            load_tokenizer(cfg.resolve_builtin("hubtune:tiny-llama"), mistral.model)
    else:
        with pytest.raises(ConfigError, match="tekken.json"):
            load_tokenizer(cfg.resolve_builtin("hubtune:tiny-llama"), mistral.model)
    with pytest.raises(ConfigError, match="needs model.quantization: none"):
        cfg.build({"model": {"dequantize": True}})


def test_a_saved_mxfp4_base_is_dequantized_on_load(tmp_path):
    from hubtune.train import dequantized

    for name, saved in (("mxfp4", {"quant_method": "mxfp4"}),
                        ("bnb", {"quant_method": "bitsandbytes", "load_in_4bit": True})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "quantization_config": saved}))
    config = dequantized(str(tmp_path / "mxfp4"))
    assert (type(config).__name__, config.dequantize) == ("Mxfp4Config", True)
    with pytest.raises(ConfigError, match="are not dequantized on load by transformers"):
        dequantized(str(tmp_path / "bnb"))


def test_a_16_bit_base_is_not_dequantized_and_experts_implementation_reaches_transformers(tmp_path):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from hubtune.hardware import Hardware
    from hubtune.train import load_base

    hw = Hardware("cpu", __import__("torch").float32, "adamw_torch")
    with pytest.raises(ConfigError, match="is not saved quantized"):
        load_base(cfg.resolve_builtin("hubtune:tiny-llama"), cfg.ModelSection(quantization="none", dequantize=True), hw)
    tiny = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=32, moe_intermediate_size=16,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, num_experts=4,
                          num_experts_per_tok=2, head_dim=16)
    Qwen3MoeForCausalLM(tiny).save_pretrained(tmp_path / "moe")
    base = load_base(str(tmp_path / "moe"), cfg.ModelSection(quantization="none", experts_implementation="eager"), hw)
    assert base.config._experts_implementation == "eager"


@pytest.mark.slow
def test_an_axolotl_dpo_config_trains_as_converted(tmp_path, one_torch_thread):
    """Axolotl's chat_template.default layout (the prompt as a list of turns, chosen and rejected as one
    message each) through the converted config, TRL's DPOTrainer and a few steps on the tiny base."""
    import hubtune

    pairs = [json.loads(line) for line in Path(cfg.resolve_builtin("hubtune:data/invoices/preferences_train.jsonl"))
             .read_text().splitlines()[:40]]
    rows = [{"conversation": [{"role": "user", "content": p["prompt"]}],
             "chosen": {"role": "assistant", "content": p["chosen"]},
             "rejected": {"role": "assistant", "content": p["rejected"]}} for p in pairs]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = axolotl.from_axolotl({
        "base_model": "hubtune:tiny-llama", "adapter": "lora", "lora_r": 8, "lora_alpha": 16,
        "lora_target_linear": True, "rl": "dpo", "rl_beta": 0.2, "sequence_len": 256, "val_set_size": 0.2,
        "micro_batch_size": 4, "learning_rate": 1e-3, "max_steps": 3, "warmup_steps": 0, "output_dir": str(tmp_path / "run"),
        "datasets": [{"path": str(tmp_path / "pairs.jsonl"), "type": "chat_template.default",
                      "field_messages": "conversation", "field_chosen": "chosen", "field_rejected": "rejected"}],
    }).run_config(["eval.tasks=[]", "eval.regression_set=null", "training.logging_steps=1"])
    run = hubtune.train(config)
    s = run.summary
    assert (s.training_method, s.method_settings["beta"], s.global_steps) == ("dpo", 0.2, 3)
    assert s.held_out["before"]["preference"]["pairs"] == 8  # 20% of the 40 pairs held out


def test_hubtunes_own_preference_runs_export_as_axolotl_types():
    pairs = "hubtune:data/invoices/preferences_train.jsonl"
    dpo = cfg.build({"data": {"sources": [pairs]}, "training": {"method": "dpo", "beta": 0.2}})
    written = axolotl.to_axolotl(dpo, ["preference"])
    # Axolotl's chat_template.default takes a prompt given as text as the user's turn, and answers as text.
    assert (written["rl"], written["rl_beta"]) == ("dpo", 0.2)
    assert written["datasets"][0]["type"] == "chat_template.default"
    assert written["datasets"][0]["field_messages"] == "prompt"
    assert round_trip(dpo, ["preference"]) == dpo
    chatml = cfg.build({"data": {"sources": [pairs], "chat_template": "chatml"}, "training": {"method": "orpo"}})
    assert axolotl.to_axolotl(chatml, ["preference"])["datasets"][0]["type"] == "chatml.prompt_pairs"
    assert round_trip(chatml, ["preference"]) == chatml
    kto = cfg.build({"data": {"sources": [pairs]}, "training": {"method": "kto"}})
    with pytest.raises(Exception, match="Axolotl's KTO reads unpaired rows"):
        axolotl.to_axolotl(kto, ["preference"])
    grpo = cfg.build({"training": {"method": "grpo", "grpo": {"rewards": ["exact_match", {"name": "regex",
                                                                                            "pattern": "^P"}]}}})
    with pytest.raises(Exception, match=r"rewards\[1\]: regex: Axolotl calls reward functions as TRL does"):
        axolotl.to_axolotl(grpo, ["alpaca"])


def test_a_quadratic_warm_up_squares_the_linear_rise_and_leaves_the_rest(tmp_path):
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler

    from hubtune.callbacks import QuadraticWarmup

    gptq = convert(yaml.safe_load((Path(__file__).parent / "data/axolotl_examples/llama-2/gptq-lora.yml").read_text()))
    assert (gptq.training.warmup_shape, gptq.training.lr_scheduler, gptq.model.tokenizer_legacy) == (
        "quadratic", "cosine", True)
    assert round_trip(gptq, ["alpaca"]) == gptq
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=10, num_training_steps=100)
    linear = [scheduler.lr_lambdas[0](step) for step in range(100)]
    state = TrainerState()
    state.max_steps = 100
    QuadraticWarmup().on_train_begin(TrainingArguments(str(tmp_path), warmup_steps=10, report_to="none"), state,
                                     TrainerControl(), lr_scheduler=scheduler)
    squared = [scheduler.lr_lambdas[0](step) for step in range(100)]
    assert squared[5] == pytest.approx(0.25) and linear[5] == pytest.approx(0.5)
    assert squared[10:] == linear[10:]


def test_the_tokenizers_legacy_flag_reaches_autotokenizer():
    from hubtune.train import load_tokenizer

    tokenizer = load_tokenizer(cfg.resolve_builtin("hubtune:tiny-llama"), cfg.ModelSection(tokenizer_legacy=True))
    assert tokenizer.init_kwargs.get("legacy") is True


def test_a_modelopt_base_hubtune_cannot_read_is_refused_before_loading(tmp_path):
    """ModelOpt checkpoints other than NVFP4 (FP8, mixed precision): transformers has no ModelOpt quantizer and
    hubtune.nvfp4 reads NVFP4 only, so a ConfigError, not transformers' ValueError, and never a silent
    16-bit load; an NVFP4 one is never dequantized on load (it is read packed)."""
    import torch

    from hubtune.hardware import Hardware
    from hubtune.train import load_base

    hw = Hardware("cpu", torch.float32, "adamw_torch")
    for algo in ("FP8", "MIXED_PRECISION"):
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "quantization_config": {
            "quant_method": "modelopt", "quant_algo": algo}}))
        for model in (cfg.ModelSection(), cfg.ModelSection(quantization="none", dequantize=True)):
            with pytest.raises(ConfigError, match=rf"saved by NVIDIA ModelOpt as {algo} \(quant_method modelopt\): "
                                                  r"hubtune reads ModelOpt's NVFP4 checkpoints only"):
                load_base(str(tmp_path), model, hw)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    (tmp_path / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": {
        "quant_algo": "NVFP4", "group_size": 16}}))
    with pytest.raises(ConfigError, match=r"saved in NVFP4 by NVIDIA ModelOpt: hubtune keeps its weights packed"):
        load_base(str(tmp_path), cfg.ModelSection(quantization="none", dequantize=True), hw)
