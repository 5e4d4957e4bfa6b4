"""Axolotl's own example configs (tests/data/axolotl_examples, copied with their licence and source
commit), converted as written: every supervised LoRA / QLoRA example converts unless it asks for
something hubtune cannot honour (each listed in CANNOT_HONOUR with why), and what decides the training
matches what Axolotl would train, its schema's defaults filled in. Pure parsing: nothing is downloaded
or trained. The counts by family are printed (pytest -s) and are the ones docs/interop.md gives."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

from hubtune import config as cfg
from hubtune.errors import ConfigError
from hubtune.interop import axolotl

EXAMPLES = Path(__file__).resolve().parent / "data" / "axolotl_examples"

# Axolotl's defaults for what a config leaves out, read from its schema (src/axolotl/utils/schemas/
# config.py, training.py, peft.py) and trainer builder (core/builders/base.py) at the commit in SOURCE.
SCHEMA = {"sequence_len": 512, "sample_packing": False, "val_set_size": 0.0, "num_epochs": 1.0,
          "micro_batch_size": 1, "gradient_accumulation_steps": 1, "lr_scheduler": "cosine", "weight_decay": 0.0,
          "max_grad_norm": 1.0, "gradient_checkpointing": False, "seed": 42, "lora_dropout": 0.0,
          "optimizer": "adamw_torch_fused", "save_total_limit": 4, "bf16": "auto", "tf32": "auto",
          "warmup_ratio": 0.03}  # warm-up: 3% of the steps when neither warmup_steps nor warmup_ratio is set
# Axolotl optimizer names and the same update under hubtune's names.
SAME_OPTIMIZER = {"adamw_torch_fused": "adamw_torch", "adamw_bnb_8bit": "adamw_8bit", "adamw_torch": "adamw_torch",
                  "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
                  "paged_adamw_32bit": "paged_adamw_32bit", "adamw_torch_8bit": "adamw_torch_8bit",
                  "adamw_torch_4bit": "adamw_torch_4bit"}
TYPE_FORMAT = {"alpaca": "alpaca", "alpaca:chat": "alpaca", "alpaca:phi": "alpaca", "completion": "text"}

# Keys that stop a supervised LoRA / QLoRA example from converting, by what hubtune lacks. A key
# refused outside this list is a regression: a setting hubtune can honour was turned away.
CANNOT_HONOUR = {
    "mixture-of-experts kernels, quantized experts and expert parallelism": {
        "quantize_moe_experts", "use_scattermoe", "use_sonicmoe", "experts_implementation", "use_kernels",
        "plugins", "expert_parallel_size", "expert_parallel_num_nvl_bytes", "expert_parallel_token_capacity",
        "lora_target_parameters", "llama4_linearized_experts", "use_dsv4_kernels",
        "use_glm_dsa_kernels"},
    "FP4 (NVFP4 / MXFP4), GPTQ and quantization-aware bases": {
        "dsv4_fp4_grouped_mode", "nvfp4_merge_aware", "model_quantization_config",
        "model_quantization_config_kwargs", "gptq", "gptq_disable_exllama"},
    "attention and kernels transformers does not offer": {
        "attn_implementation", "flex_attn_compile_kwargs"},
    "vision-language model classes": {"model_type"},
    "the mistral-common tokenizer": {"tokenizer_use_mistral_common", "tokenizer_legacy"},
    "context parallelism": {"context_parallel_size", "context_parapllel_size"},
    "other trainers and schedules (ReLoRA, LoftQ, Ray, early stopping, curricula, quadratic warm-up)": {
        "relora", "relora_prune_ratio", "relora_cpu_offload", "jagged_restart_steps", "jagged_restart_warmup_steps",
        "jagged_restart_anneal_steps", "peft", "use_ray", "ray_num_workers", "early_stopping_patience",
        "sample_packing_sequentially", "curriculum_sampling", "test_value", "lr_quadratic_warmup",
        "eval_causal_lm_metrics", "do_causal_lm_eval", "use_swanlab"},
    "training chosen base weights in full": {"unfrozen_parameters"},
    "dataset settings (data_files, dropped system messages, reasoning fields)": {
        "datasets[0].data_files", "datasets[0].drop_system_message", "datasets[0].field_thinking",
        "datasets[0].template_thinking_key"},
}
LIMITS = {key: why for why, keys in CANNOT_HONOUR.items() for key in keys}


def family(data) -> str:
    if not isinstance(data, dict) or "base_model" not in data:
        return "not a training config"
    if data.get("rl") or data.get("reward_model") or data.get("process_reward_model"):
        return "preference / reward training"
    if data.get("processor_type"):
        return "vision / audio models"
    if data.get("adapter") not in ("lora", "qlora"):
        return "full fine-tuning"
    return "supervised LoRA / QLoRA"


def load_all() -> list[tuple[str, object]]:
    files = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in (".yml", ".yaml"))
    return [(str(p.relative_to(EXAMPLES)), yaml.safe_load(p.read_text())) for p in files]


def convert(data: dict) -> tuple[cfg.RunConfig | None, list[tuple[str, str]]]:
    translation = axolotl.from_axolotl(data)
    if translation.unsupported:
        return None, translation.unsupported
    try:
        return translation.run_config(), []
    except ConfigError as err:
        return None, err.problems


@pytest.fixture(scope="module")
def results():
    out = []
    for name, data in load_all():
        kind = family(data)
        config, refused = convert(data) if kind != "not a training config" else (None, [("base_model", "missing")])
        out.append((name, kind, data, config, refused))
    return out


def test_the_copy_is_axolotls_examples_with_licence_and_commit():
    source = (EXAMPLES / "SOURCE").read_text()
    assert "axolotl-ai-cloud/axolotl" in source and "067b021c8b87a9e5e380b9173c704cf7340e30f5" in source
    assert "Apache License" in (EXAMPLES / "LICENSE").read_text()
    assert len(load_all()) == 252


def test_counts_by_family(results):
    counts = collections.defaultdict(collections.Counter)
    reasons = collections.Counter()
    for name, kind, _, config, refused in results:
        counts[kind]["converted" if config else "refused"] += 1
        if kind == "supervised LoRA / QLoRA" and refused:
            reasons.update({LIMITS.get(key, key) for key, _ in refused})
    print("\nAxolotl's example configs, converted / refused, by family:")
    for kind, c in sorted(counts.items()):
        print(f"  {kind}: {c['converted']} converted, {c['refused']} refused")
    print("supervised LoRA / QLoRA examples refused, by what they ask for (one example can ask for several):")
    for why, n in reasons.most_common():
        print(f"  {n:3d}  {why}")
    sft = counts["supervised LoRA / QLoRA"]
    assert sft["converted"] + sft["refused"] == 137 and sft["converted"] >= 84
    for kind in ("preference / reward training", "vision / audio models", "full fine-tuning", "not a training config"):
        assert counts[kind]["converted"] == 0, kind


def test_supervised_examples_are_refused_only_for_what_hubtune_cannot_honour(results):
    wrong = {name: [k for k, _ in refused if k not in LIMITS]
             for name, kind, _, _, refused in results if kind == "supervised LoRA / QLoRA" and refused}
    assert not {name: keys for name, keys in wrong.items() if keys}


def test_every_refusal_names_the_value_and_the_reason_in_full(results):
    for name, kind, data, config, refused in results:
        if config is not None:
            continue
        assert refused, name
        for key, why in refused:
            assert why and "'...'" not in why and why.strip(" :"), (name, key, why)
            top = key.split(".")[0].split("[")[0]
            value = data.get(top) if isinstance(data, dict) else None
            if value is not None and not isinstance(value, (dict, list)) and "." not in key and "[" not in key:
                assert repr(value) in why or str(value) in why, (name, key, why)


def test_preference_and_reward_configs_are_refused_by_name(results):
    for name, kind, data, _, refused in results:
        if kind != "preference / reward training":
            continue
        keys = dict(refused)
        if data.get("rl"):
            assert str(data["rl"]) in keys["rl"] and "not converted from Axolotl configs" in keys["rl"], name
        if data.get("datasets"):
            assert "datasets" in keys and "none of them is data hubtune can read" in keys["datasets"], name


def expected(data: dict) -> dict:
    """What Axolotl trains for a config: its values, its schema's defaults where it is silent."""
    get = lambda key: data[key] if data.get(key) is not None else SCHEMA[key]  # noqa: E731
    bits = "nf4" if data.get("load_in_4bit") else "int8" if data.get("load_in_8bit") else "none"
    modules = data.get("lora_target_modules")
    targets = ("all-linear" if data.get("lora_target_linear") else
               [modules] if isinstance(modules, str) and modules.isidentifier() else
               modules if isinstance(modules, list) else "all-linear")
    regex = modules if isinstance(modules, str) and not modules.isidentifier() and not data.get("lora_target_linear") else None
    sources = [(d["path"], d.get("split", "train"), TYPE_FORMAT.get(d["type"], "chat")) for d in data["datasets"]]
    steps, ratio = data.get("warmup_steps"), data.get("warmup_ratio")
    warmup = (("ratio", steps) if isinstance(steps, float) and steps < 1 else ("steps", steps) if steps is not None
              else ("ratio", ratio) if ratio is not None else ("ratio", SCHEMA["warmup_ratio"]))
    checkpointing = get("gradient_checkpointing") in (True, "offload", "offload_disk") or any(
        (data.get("fsdp_config") or {}).get(k) for k in ("activation_checkpointing", "fsdp_activation_checkpointing"))
    # Axolotl's builder: save_steps, else save_strategy (steps: transformers' 500), else once per epoch.
    saves = (("steps", data["save_steps"]) if data.get("save_steps") else
             ("per epoch", data["saves_per_epoch"]) if data.get("saves_per_epoch") else
             ("steps", 500) if data.get("save_strategy") == "steps" else ("per epoch", 1))
    precision = ("bfloat16" if data.get("bf16") is True or data.get("bfloat16") else
                 "float16" if data.get("fp16") is True or data.get("float16") else
                 "auto" if get("bf16") == "auto" else "float32")
    return {
        "base": data["base_model"], "bits": bits, "r": data["lora_r"], "alpha": data["lora_alpha"],
        "dropout": float(get("lora_dropout")), "targets": targets, "regex": regex,
        "sequence_len": get("sequence_len"), "packing": bool(get("sample_packing")), "sources": sources,
        "validation": get("val_set_size"), "epochs": get("num_epochs"), "max_steps": data.get("max_steps"),
        "batch": get("micro_batch_size"),
        "accumulation": data.get("gradient_accumulation_steps") or (data["batch_size"] // get("micro_batch_size")
                                                                   if data.get("batch_size") else 1),
        "learning_rate": float(data["learning_rate"]), "schedule": get("lr_scheduler"), "warmup": warmup,
        "optimizer": SAME_OPTIMIZER[get("optimizer")], "weight_decay": get("weight_decay"),
        "max_grad_norm": get("max_grad_norm"), "checkpointing": checkpointing, "saves": saves,
        "save_total_limit": get("save_total_limit"), "precision": precision, "tf32": get("tf32"), "seed": get("seed"),
    }


def trained(c: cfg.RunConfig) -> dict:
    t = c.training
    return {
        "base": c.model.id, "bits": c.model.quantization, "r": c.lora.r, "alpha": c.lora.alpha,
        "dropout": c.lora.dropout, "targets": c.lora.target_modules, "regex": c.lora.target_regex,
        "sequence_len": c.data.max_seq_len, "packing": c.data.packing,
        "sources": [(s.path, s.split, {"sharegpt": "chat", "messages": "chat"}.get(f, f))
                    for s, f in zip(c.data.sources, [c.data.format] * len(c.data.sources))],
        "validation": c.data.val_set_size, "epochs": t.epochs, "max_steps": t.max_steps,
        "batch": t.micro_batch_size, "accumulation": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate, "schedule": t.lr_scheduler,
        "warmup": ("ratio", t.warmup_ratio) if t.warmup_ratio is not None else ("steps", t.warmup_steps),
        "optimizer": t.optimizer, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        "checkpointing": t.gradient_checkpointing,
        "saves": ("per epoch", t.saves_per_epoch) if t.saves_per_epoch else ("steps", t.save_steps),
        "save_total_limit": t.save_total_limit, "precision": c.model.compute_dtype, "tf32": t.tf32, "seed": t.seed,
    }


def converted_examples():
    return [(name, data) for name, data in load_all() if family(data) == "supervised LoRA / QLoRA"
            and convert(data)[0] is not None]


@pytest.mark.parametrize("name,data", converted_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_converted_example_trains_what_axolotl_would(name, data):
    config, _ = convert(data)
    assert trained(config) == expected(data)
    # Axolotl runs none of hubtune's own data filters, so neither does the converted run.
    assert (config.data.near_dup_threshold, config.data.min_response_tokens) == (None, 0)
    assert config.data.dedup_exact == bool(data.get("dataset_exact_deduplication"))
    # And the round trip is exact: hubtune -> Axolotl -> hubtune.
    formats = [{"chat": config.data.format}.get(TYPE_FORMAT.get(d["type"], "chat"), TYPE_FORMAT.get(d["type"]))
               for d in data["datasets"]]
    assert axolotl.from_axolotl(axolotl.to_axolotl(config, formats)).run_config() == config
