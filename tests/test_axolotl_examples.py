"""Axolotl's own example configs (tests/data/axolotl_examples, copied with their licence and source
commit), converted as written: every supervised LoRA / QLoRA example and every DPO / ORPO / KTO / GRPO
one on an adapter converts unless it asks for something hubtune cannot honour (each listed in
CANNOT_HONOUR with why), and what decides the training matches what Axolotl would train, its schema's
defaults filled in. Pure parsing: nothing is downloaded or trained. The counts by family are printed
(pytest -s) and are the ones docs/interop.md gives."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import yaml

from hubtune import config as cfg
from hubtune import distributed, recurrent
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
    # Optimizer states FSDP cannot shard here: torchao's 8- and 4-bit AdamW outside FSDP2 (hubtune launches FSDP2
    # for quantized experts and context parallelism, its FSDP1 preset otherwise); hubtune refuses them at launch,
    # so the converter does too. bitsandbytes' run on both (each process checkpoints its own states; on FSDP2
    # they step each process's local shards: tests/test_distributed.py).
    "8- and 4-bit optimizer states under FSDP (optimizer)": {"optimizer"},
    # An 8-bit base partitioned by ZeRO-3 (bitsandbytes keeps its row constants on the weight object): hubtune
    # refuses it at launch, so the converter does too. Under FSDP it runs on FSDP2 (hubtune.sharded_int8).
    "8-bit bases under ZeRO-3 (load_in_8bit)": {"load_in_8bit"},
}
# Keys with which Axolotl itself would train nothing: refused with that said, never converted to a run
# that trains something else.
AXOLOTL_TRAINS_NOTHING = {
    # Axolotl matches unfrozen_parameters against the PEFT-wrapped model's names (base_model.model....) and
    # freezes the rest, the adapter included: ^model.language_model.* and ^lm_head.* match nothing there.
    "unfrozen_parameters that match no parameter of the adapter-wrapped model (Axolotl trains nothing)": {
        "unfrozen_parameters"},
}
LIMITS = {key: why for group in (CANNOT_HONOUR, AXOLOTL_TRAINS_NOTHING) for why, keys in group.items() for key in keys}


SUPERVISED, PREFERENCE = "supervised LoRA / QLoRA", "DPO / ORPO / KTO / GRPO on LoRA / QLoRA"
OTHER_RL = "reward models and other RL methods (EBFT, GDPO)"
CONVERTING = (SUPERVISED, PREFERENCE)  # the families whose every example converts but for CANNOT_HONOUR


def family(data) -> str:
    if not isinstance(data, dict) or "base_model" not in data:
        return "not a training config"
    rl = str(data.get("rl") or "").lower()
    if rl and rl not in axolotl.RL_METHODS or data.get("reward_model") or data.get("process_reward_model"):
        return OTHER_RL
    if data.get("processor_type"):
        return "vision / audio models"
    if data.get("adapter") not in ("lora", "qlora"):
        return "full fine-tuning"
    return PREFERENCE if rl else SUPERVISED


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


PACKED_OVER_STATE = {  # supervised examples that pack rows for a model with recurrent layers, by their layers
    "LiquidAI/lfm2-8b-a1b-lora.yaml": "short-convolution", "falcon-h1/falcon-h1-1b-qlora-cp.yaml": "Mamba-2",
    "jamba/qlora_fsdp_large.yaml": "Mamba", "kimi-linear/kimi-48b-lora.yaml": "Kimi Delta Attention",
    **{f"qwen3-next/qwen3-next-80b-a3b-{n}.yaml": "Gated DeltaNet" for n in ("nvfp4-lora", "qlora")},
    **{f"qwen3.5/{n}.yaml": "Gated DeltaNet" for n in ("122b-a10b-moe-qlora-fsdp", "122b-a10b-moe-qlora",
                                                      "27b-qlora-fsdp", "27b-qlora", "35b-a3b-moe-qlora-fsdp",
                                                      "35b-a3b-moe-qlora")},
}


def test_packed_rows_over_layers_that_carry_state_convert_packed(results):
    """Axolotl packs these rows, and its monkeypatches pass the examples' boundaries to some of these layers'
    kernels; hubtune restarts every recurrent layer at each packed example (hubtune.recurrent, and Nemotron-H's
    Mamba-2 through hubtune.context_parallel), so each converts with packing, as Nemotron-H's do."""
    packed = {name: config for name, kind, data, config, _ in results
              if kind == SUPERVISED and data.get("sample_packing") and
              recurrent.model_type_of(data["base_model"]) in recurrent.STATEFUL}
    assert set(packed) == set(PACKED_OVER_STATE) | {name for name in packed if name.startswith("nemotron-h/")}
    assert len(packed) == len(PACKED_OVER_STATE) + 3
    assert all(config is not None and config.data.packing for config in packed.values())
    bases = {name: data["base_model"] for name, _, data, _, _ in results if name in PACKED_OVER_STATE}
    for name, layers in PACKED_OVER_STATE.items():
        assert recurrent.STATEFUL[recurrent.model_type_of(bases[name])].startswith(layers), name


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
        if kind in CONVERTING and refused:
            reasons.update({LIMITS.get(key, key) for key, _ in refused})
    print("\nAxolotl's example configs, converted / refused, by family:")
    for kind, c in sorted(counts.items()):
        print(f"  {kind}: {c['converted']} converted, {c['refused']} refused")
    print("LoRA / QLoRA examples refused, by what they ask for (one example can ask for several):")
    for why, n in reasons.most_common():
        print(f"  {n:3d}  {why}")
    sft, rl = counts[SUPERVISED], counts[PREFERENCE]
    assert sft["converted"] + sft["refused"] == 137 and sft["converted"] >= 111
    assert (rl["converted"], rl["refused"]) == (7, 0)
    for kind in (OTHER_RL, "vision / audio models", "full fine-tuning", "not a training config"):
        assert counts[kind]["converted"] == 0, kind



def test_the_docs_and_the_readme_give_these_counts(results):
    """docs/interop.md's family table and the README's line are the counts this file computes."""
    root = EXAMPLES.parents[2]
    counts = collections.defaultdict(collections.Counter)
    for _, kind, _, config, _ in results:
        counts[kind]["converted" if config else "refused"] += 1
    table = {}
    for line in (root / "docs" / "interop.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        kind = next((k for k in counts if cells[0].startswith(k)), None)
        if kind and len(cells) == 3 and cells[1].isdigit():
            table[kind] = (int(cells[1]), int(cells[2].split()[0]))
    assert table == {k: (c["converted"], c["refused"]) for k, c in counts.items()}
    sft = counts[SUPERVISED]
    assert (f"{sft['converted']} of Axolotl's {sft['converted'] + sft['refused']} supervised LoRA / QLoRA example "
            f"configs") in " ".join((root / "README.md").read_text().split())

def test_supervised_examples_are_refused_only_for_what_hubtune_cannot_honour(results):
    wrong = {name: [k for k, _ in refused if k not in LIMITS]
             for name, kind, _, _, refused in results if kind in CONVERTING and refused}
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


def test_unfrozen_parameters_axolotl_would_train_nothing_with_are_refused_saying_so(results):
    """gemma3's three QLoRA examples name ^model.language_model.* and ^lm_head.* ("Freeze vision tower"): under
    the adapter those match no parameter, so Axolotl freezes everything, the adapter included."""
    seen = []
    for name, kind, data, config, refused in results:
        if kind in CONVERTING and data.get("unfrozen_parameters"):
            why = dict(refused)["unfrozen_parameters"]
            assert config is None and "trains nothing" in why and "[^model.language_model.*, ^lm_head.*]" in why
            seen.append(name)
    assert sorted(seen) == ["gemma3/gemma-3-1b-qlora.yml", "gemma3/gemma-3-270m-qlora.yml",
                            "gemma3/gemma-3-4b-qlora.yml"]


def test_reward_models_and_other_rl_methods_are_refused_by_name(results):
    seen = 0
    for name, kind, data, _, refused in results:
        if kind != OTHER_RL:
            continue
        seen += 1
        keys = dict(refused)
        if data.get("rl"):
            assert str(data["rl"]) in keys["rl"] and "not trained by hubtune" in keys["rl"], name
        for flag in ("reward_model", "process_reward_model"):
            if data.get(flag):
                assert "reward-model training" in keys[flag], name
        if data.get("datasets"):
            assert "datasets" in keys and "none of them is data hubtune can read" in keys["datasets"], name
    assert seen == 14


def expected(data: dict) -> dict:
    """What Axolotl trains for a config: its values, its schema's defaults where it is silent."""
    get = lambda key: data[key] if data.get(key) is not None else SCHEMA[key]  # noqa: E731
    bits = "nf4" if data.get("load_in_4bit") else "int8" if data.get("load_in_8bit") else "none"
    modules = data.get("lora_target_modules")
    targets = ("all-linear" if data.get("lora_target_linear") else
               [modules] if isinstance(modules, str) and modules.isidentifier() else
               modules if isinstance(modules, list) else
               [] if data.get("lora_target_parameters") and not modules else "all-linear")  # the parameters only
    regex = modules if isinstance(modules, str) and not modules.isidentifier() and not data.get("lora_target_linear") else None
    rl = str(data.get("rl") or "").lower()
    pairs = {"dpo": "preference", "orpo": "preference", "kto": "kto"}.get(rl)
    sources = [(d["path"], d.get("split", "train"), pairs or TYPE_FORMAT.get(d["type"], "chat")) for d in data["datasets"]]
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
        # Axolotl's multipack sampler fills rows in the order it draws (curriculum_sampling: the data's order).
        "packing_order": "sequential" if get("sample_packing") and data.get("sample_packing_sequentially") else "bfd",
        "shuffle": not data.get("curriculum_sampling"),
        "context_parallel": data.get("context_parallel_size") or 1,
        "expert_parallel": data.get("expert_parallel_size") or 1,
        # Expert parallelism launches plain processes; context parallelism DDP, or FSDP2 where Axolotl shards.
        "launch": "ddp" if (data.get("expert_parallel_size") or 1) > 1 else (
            ("fsdp" if data.get("fsdp") or data.get("fsdp_config") else "ddp")
            if (data.get("context_parallel_size") or 1) > 1 else None),
        "validation": get("val_set_size"), "epochs": get("num_epochs"), "max_steps": data.get("max_steps"),
        "batch": get("micro_batch_size"),
        "accumulation": data.get("gradient_accumulation_steps") or (data["batch_size"] // get("micro_batch_size")
                                                                   if data.get("batch_size") else 1),
        "learning_rate": float(data["learning_rate"]), "schedule": get("lr_scheduler"), "warmup": warmup,
        # Axolotl squares the warm-up of its cosine schedule when lr_quadratic_warmup is set (its scheduler mixin).
        "warmup_shape": "quadratic" if data.get("lr_quadratic_warmup") and get("lr_scheduler") == "cosine" else "linear",
        "optimizer": SAME_OPTIMIZER[get("optimizer")], "weight_decay": get("weight_decay"),
        "max_grad_norm": get("max_grad_norm"), "checkpointing": checkpointing, "saves": saves,
        "save_total_limit": get("save_total_limit"), "precision": precision, "tf32": get("tf32"), "seed": get("seed"),
        "quantize_experts": bool(data.get("quantize_moe_experts")),
        "modules_to_save": data.get("lora_modules_to_save") or [],
        # Axolotl builds Llama 4's experts one linear layer each (its patched Llama4TextExperts) when this is set.
        "linearized_experts": bool(data.get("llama4_linearized_experts")),
        # The NVFP4 base's effective weight fake-quantized in the forward (Axolotl's merge-aware LoRA).
        "merge_aware": bool(data.get("nvfp4_merge_aware")),
        # Under an adapter Axolotl matches these against PEFT's names: the base weights are those named after
        # base_model.model. (the adapter's own weights train in hubtune anyway).
        "unfrozen": [p.removeprefix("^").removeprefix("base_model.model.") for p in data.get("unfrozen_parameters") or []
                     if p.removeprefix("^").startswith("base_model.model.") and "lora_" not in p],
        # ReLoRA's cycle and its learning-rate restarts, with Axolotl's `or 10` / `or 1` (its scheduler mixin), and
        # the optimizer pruning of its callback (ratio None: 0.9, or 0.999 for reset).
        "relora": (data["jagged_restart_steps"], data.get("jagged_restart_warmup_steps") or 10,
                   data.get("jagged_restart_anneal_steps") or 1, data.get("relora_prune_ratio"),
                   data.get("relora_prune_method") or "magnitude") if data.get("relora") else None,
    }


def trained(c: cfg.RunConfig) -> dict:
    t = c.training
    return {
        "base": c.model.id, "bits": c.model.quantization, "r": c.lora.r, "alpha": c.lora.alpha,
        "dropout": c.lora.dropout, "targets": c.lora.target_modules, "regex": c.lora.target_regex,
        "sequence_len": c.data.max_seq_len, "packing": c.data.packing, "packing_order": c.data.packing_strategy,
        "shuffle": t.shuffle, "context_parallel": t.context_parallel_size, "expert_parallel": t.expert_parallel_size,
        "launch": t.distributed if t.expert_parallel_size > 1 or t.context_parallel_size > 1 else None,
        "sources": [(s.path, s.split, {"sharegpt": "chat", "messages": "chat"}.get(f, f))
                    for s, f in zip(c.data.sources, [c.data.format] * len(c.data.sources))],
        "validation": c.data.val_set_size, "epochs": t.epochs, "max_steps": t.max_steps,
        "batch": t.micro_batch_size, "accumulation": t.gradient_accumulation_steps,
        "learning_rate": t.learning_rate, "schedule": t.lr_scheduler,
        "warmup": ("ratio", t.warmup_ratio) if t.warmup_ratio is not None else ("steps", t.warmup_steps),
        "warmup_shape": t.warmup_shape,
        "optimizer": t.optimizer, "weight_decay": t.weight_decay, "max_grad_norm": t.max_grad_norm,
        "checkpointing": t.gradient_checkpointing,
        "saves": ("per epoch", t.saves_per_epoch) if t.saves_per_epoch else ("steps", t.save_steps),
        "save_total_limit": t.save_total_limit, "precision": c.model.compute_dtype, "tf32": t.tf32, "seed": t.seed,
        "quantize_experts": c.model.quantize_experts,
        "modules_to_save": c.lora.modules_to_save, "linearized_experts": c.model.linearized_experts,
        "merge_aware": c.lora.nvfp4_merge_aware, "unfrozen": c.lora.unfrozen_parameters,
        "relora": (t.relora.restart_steps, t.relora.warmup_steps, t.relora.anneal_steps, t.relora.prune_ratio,
                   t.relora.prune_method) if t.relora else None,
    }


# What Axolotl's preference types read (src/axolotl/prompt_strategies/{dpo,kto,orpo}/): the prompt column, or
# None where chosen and rejected hold whole conversations whose shared turns are the prompt.
PROMPT_COLUMN = {"intel": "question", "icr": "input", "prompt_pairs": "prompt", "argilla": "instruction",
                 "ultra": "prompt", "argilla_chat": None}


def expected_method(data: dict) -> dict:
    """The method settings Axolotl trains with: rl, beta (trl.beta, else rl_beta, else orpo_alpha), KTO's
    weights (1.0 unset), GRPO's trl block, and per dataset the columns and the template it renders with."""
    rl = str(data.get("rl") or "sft").lower()
    trl = data.get("trl") or {}
    beta = next((b for b in (trl.get("beta"), data.get("rl_beta"), data.get("orpo_alpha")) if b is not None), None)
    out = {"method": rl, "beta": beta}
    if rl == "kto":
        out["weights"] = (data.get("kto_desirable_weight") or 1.0, data.get("kto_undesirable_weight") or 1.0)
    if rl not in ("dpo", "orpo", "kto"):
        return out
    out["template"] = data.get("chat_template") or "tokenizer_default"
    columns = []
    for d in data["datasets"]:
        prefix, _, suffix = d["type"].partition(".")
        if prefix in ("chatml", "llama3"):
            out["template"] = prefix  # these types write the template's markers themselves
            prompt = PROMPT_COLUMN[suffix]
            columns.append({"prompt": prompt} if prompt not in (None, "prompt") else {})
        elif d["type"] == "chat_template.default":
            named = {"prompt": d.get("field_messages", "messages"), "chosen": d.get("field_chosen", "chosen"),
                     "rejected": d.get("field_rejected", "rejected")}
            columns.append({k: v for k, v in named.items() if k != v})
        else:
            columns.append({})
    out["columns"] = columns[0] if columns and all(c == columns[0] for c in columns) else columns
    return out


def trained_method(c: cfg.RunConfig) -> dict:
    t = c.training
    out = {"method": t.method, "beta": t.beta}
    if t.method == "kto":
        out["weights"] = (t.desirable_weight, t.undesirable_weight)
    if t.method in ("dpo", "orpo", "kto"):
        out |= {"template": "tokenizer_default" if c.data.chat_template == "auto" else c.data.chat_template,
                "columns": c.data.columns}
    return out


def converted_examples():
    return [(name, data) for name, data in load_all() if family(data) in CONVERTING
            and convert(data)[0] is not None]


@pytest.mark.parametrize("name,data", converted_examples(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_converted_example_trains_what_axolotl_would(name, data):
    config, _ = convert(data)
    assert trained(config) == expected(data)
    assert trained_method(config) == expected_method(data)
    # Axolotl runs none of hubtune's own data filters, so neither does the converted run.
    assert (config.data.near_dup_threshold, config.data.min_response_tokens) == (None, 0)
    assert config.data.dedup_exact == bool(data.get("dataset_exact_deduplication"))
    # And the round trip is exact: hubtune -> Axolotl -> hubtune.
    formats = [{"chat": config.data.format}.get(TYPE_FORMAT.get(d["type"], "chat"), TYPE_FORMAT.get(d["type"]))
               for d in data["datasets"]] if config.training.method == "sft" else [config.data.format] * len(data["datasets"])
    assert axolotl.from_axolotl(axolotl.to_axolotl(config, formats)).run_config() == config


# On FSDP2 with torchao's 8-bit AdamW (glm47-flash, on a 4-bit and on an 8-bit base) or 4-bit AdamW (qwen3.5),
# whose states FSDP2 shards.
EXPERTS_UNDER_FSDP = {"glm47-flash/qlora_fsdp.yaml": ("nf4", "adamw_torch_8bit"),
                      "glm47-flash/lora_fsdp.yaml": ("int8", "adamw_torch_8bit"),
                      "qwen3.5/35b-a3b-moe-qlora-fsdp.yaml": ("nf4", "adamw_torch_4bit"),
                      "qwen3.5/122b-a10b-moe-qlora-fsdp.yaml": ("nf4", "adamw_torch_4bit")}


def test_quantized_experts_convert_under_fsdp_on_4_and_8_bit_bases(results):
    asked = {name: (config, dict(refused)) for name, kind, data, config, refused in results
             if kind == SUPERVISED and data.get("quantize_moe_experts")}
    assert len(asked) == 16
    assert not any(why for _, why in asked.values())
    converted = {name: config for name, (config, _) in asked.items()}
    assert len(converted) == 16 and all(c.model.quantize_experts for c in converted.values())
    # Axolotl's QLoRA and 8-bit LoRA on FSDP2 (fsdp_version 2, cpu_ram_efficient_loading false): hubtune's FSDP2
    # launch in which every GPU loads the quantized base, and its export says so back.
    for name, (quantization, optimizer) in EXPERTS_UNDER_FSDP.items():
        config = converted[name]
        assert config.training.distributed == "fsdp" and config.model.quantization == quantization, name
        assert config.training.optimizer == optimizer, name
        plan = distributed.plan_launch(config.training.distributed, 2, whole_base=distributed.loads_whole_base(config.model, config.training))
        assert plan.preset.name == "fsdp2-quantized-experts.yaml", name
        fsdp = axolotl.to_axolotl(config)["fsdp_config"]
        assert (fsdp["fsdp_version"], fsdp["fsdp_cpu_ram_efficient_loading"]) == (2, False), name
        assert distributed.fsdp_optimizer_problem(config.training.optimizer, fsdp2=True) is None, name
    assert converted["glm47-flash/lora.yaml"].model.quantization == "int8"
    # LoRA on the quantized experts, as Axolotl trains them: named, or moved there by PEFT from the shared
    # expert's names on Qwen3-Next.
    assert converted["gemma4/26b-a4b-moe-qlora.yaml"].lora.target_parameters == ["experts.gate_up_proj",
                                                                                 "experts.down_proj"]
    assert "shared_expert.down_proj" in converted["qwen3-next/qwen3-next-80b-a3b-qlora.yaml"].lora.target_modules


# torchao's 4-bit AdamW on a QLoRA base without quantized experts: FSDP2 with every process loading the base.
TORCHAO_QLORA_UNDER_FSDP = ("llama-4/scout-qlora-flexattn-fsdp2.yaml", "qwen3.5/27b-qlora-fsdp.yaml")


def test_torchaos_low_bit_adamw_under_fsdp_launches_fsdp2(results):
    """Axolotl's examples with torchao's 8- or 4-bit AdamW under FSDP (all of them FSDP2 there) convert to
    hubtune's FSDP2 launch in which every GPU loads the quantized base; GLM-5.2's (over an NVFP4 base, with
    expert parallelism) to plain processes with its experts spread, where each process steps its own share."""
    asked = {name: (config, dict(refused)) for name, kind, data, config, refused in results
             if kind == SUPERVISED and data.get("optimizer") in ("adamw_torch_8bit", "adamw_torch_4bit")
             and (data.get("fsdp") or data.get("fsdp_config"))}
    assert not [name for name, (config, _) in asked.items() if config is None]
    assert set(asked) == {*EXPERTS_UNDER_FSDP, *TORCHAO_QLORA_UNDER_FSDP, "glm_moe_dsa/glm-5.2-nvfp4-lora.yaml"}
    glm = asked["glm_moe_dsa/glm-5.2-nvfp4-lora.yaml"][0].training
    assert (glm.distributed, glm.expert_parallel_size, glm.optimizer) == ("ddp", 8, "adamw_torch_8bit")
    for name in TORCHAO_QLORA_UNDER_FSDP:
        config = asked[name][0]
        m, t = config.model, config.training
        assert (m.quantization, m.quantize_experts, t.distributed, t.optimizer) == (
            "nf4", False, "fsdp", "adamw_torch_4bit"), name
        assert distributed.loads_whole_base(m, t), name
        plan = distributed.plan_launch(t.distributed, 2, whole_base=distributed.loads_whole_base(m, t))
        assert plan.preset.name == "fsdp2-quantized-experts.yaml", name
        fsdp = axolotl.to_axolotl(config)["fsdp_config"]
        assert (fsdp["fsdp_version"], fsdp["fsdp_cpu_ram_efficient_loading"]) == (2, False), name
    # Without torchao's optimizer the same base keeps hubtune's FSDP1 preset (rank-0 loading).
    config = asked[TORCHAO_QLORA_UNDER_FSDP[0]][0]
    assert not distributed.loads_whole_base(config.model, config.training.model_copy(update={"optimizer": "adamw_torch"}))


def test_an_8_bit_base_under_fsdp_converts_to_fsdp2(results):
    """Axolotl's 8-bit LoRA under FSDP runs on hubtune's FSDP2 launch in which every GPU loads the int8 base
    (hubtune.sharded_int8; tests/test_experts.py int8-base measures it). dbrx's example is an FSDP1 config,
    which cannot run an int8 base in Axolotl either ('Cannot flatten integer dtype tensors', torch 2.13); it
    converts to hubtune's FSDP2 launch (the same full sharding of each layer), where its paged 8-bit AdamW steps
    each process's local shards (optimizer_shards.on_local_shards; tests/test_distributed.py measures it)."""
    asked = {name: (config, dict(why)) for name, kind, data, config, why in results
             if kind == SUPERVISED and data.get("load_in_8bit") and (data.get("fsdp") or data.get("fsdp_config"))}
    assert sorted(asked) == ["archived/dbrx/8bit-lora.yaml", "glm47-flash/lora_fsdp.yaml"]
    config, why = asked["archived/dbrx/8bit-lora.yaml"]
    assert why == {}
    m, t = config.model, config.training
    assert (m.quantization, t.distributed, t.optimizer) == ("int8", "fsdp", "paged_adamw_8bit")
    assert distributed.loads_whole_base(m, t) and distributed.fsdp_optimizer_problem(t.optimizer, True) is None
    assert distributed.plan_launch("fsdp", 2, whole_base=True).preset.name == "fsdp2-quantized-experts.yaml"
    config = asked["glm47-flash/lora_fsdp.yaml"][0]
    m, t = config.model, config.training
    assert (m.quantization, m.quantize_experts, t.distributed) == ("int8", True, "fsdp")
    assert distributed.plan_launch("fsdp", 2, whole_base=distributed.loads_whole_base(m, t)).preset.name == (
        "fsdp2-quantized-experts.yaml")
    # The same base with quantized experts left out launches so too.
    assert distributed.loads_whole_base(m.model_copy(update={"quantize_experts": False}), t)


NVFP4_EXAMPLES = ("gemma4/26b-a4b-moe-nvfp4-lora.yaml", "deepseek-v4/v4-flash-nvfp4-lora.yaml",
                  "qwen3/30b-a3b-nvfp4-lora.yaml", "qwen3-next/qwen3-next-80b-a3b-nvfp4-lora.yaml",
                  "glm_moe_dsa/glm-5.2-nvfp4-lora.yaml")


def test_nvfp4_examples_convert_under_fsdp_deepseek_v4s_fp8_declared_base_included(results):
    """The NVFP4 bases load through hubtune.nvfp4: the grouped NVFP4 experts kernel is noted (Axolotl computes
    the same on all but sm100 GPUs, which the note says) and merge-aware LoRA is lora.nvfp4_merge_aware; under
    FSDP hubtune launches FSDP2 with every process loading the packed base whole (its 8-bit torchao optimizer
    shards there). DeepSeek V4's, declared fp8 with NVFP4 experts inside, loads through hubtune.nvfp4 too
    (tests/test_fp8.py); Hub kernels (use_kernels) are left out for these bases, whose layers read their weights
    through hubtune's parametrizations. GLM-5.2's runs with its experts spread over 8 GPUs, each reading its
    share of the packed experts and holding its share of the experts' LoRA (tests/test_expert_parallel.py)."""
    by_name = {name: (config, dict(refused)) for name, _, _, config, refused in results}
    config, refused = by_name[NVFP4_EXAMPLES[1]]
    assert not refused and config is not None
    m, t, lora = config.model, config.training, config.lora
    assert (m.id, m.quantization, m.use_kernels, m.experts_implementation) == (
        "nvidia/DeepSeek-V4-Flash-NVFP4", "none", False, None)
    assert lora.target_parameters == ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] and not lora.target_modules
    assert (lora.r, lora.alpha, lora.dropout, lora.nvfp4_merge_aware) == (16, 32, 0.0, False)
    assert (t.kernels, t.distributed, t.optimizer, t.gradient_checkpointing) == (["eager"], "fsdp", "adamw_torch", True)
    assert (config.data.max_seq_len, config.data.packing, t.learning_rate, t.lr_scheduler) == (
        4096, True, 1e-4, "constant")
    assert distributed.loads_whole_base(m, t, nvfp4=True)
    notes = axolotl.from_axolotl(yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[1]).read_text())).notes
    assert any(n.startswith("dsv4_fp4_grouped_mode: nvfp4 on DeepSeek V4 (use_dsv4_kernels): DeepSeek V4's NVFP4 "
                            "release (nvidia/DeepSeek-V4-Flash-NVFP4) declares quant_method fp8 with NVFP4 experts")
               and "hubtune through hubtune.nvfp4" in n for n in notes)
    assert any(n.startswith("use_kernels: True: transformers' Hub kernels only speed up the same layers") for n in notes)
    assert any(n.startswith("dsv4_fp4_grouped_mode: nvfp4 with fsdp: hubtune launches FSDP2") for n in notes)
    config, _ = by_name[NVFP4_EXAMPLES[0]]
    notes = axolotl.from_axolotl(yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[0]).read_text())).notes
    assert any(n.startswith("dsv4_fp4_grouped_mode: nvfp4: Axolotl's grouped NVFP4 experts kernel") and
               "fp8 activations against the experts re-quantized to MXFP4" in n for n in notes)
    assert config.lora.target_parameters == ["experts.gate_up_proj", "experts.down_proj"]
    assert not config.lora.nvfp4_merge_aware
    for name in NVFP4_EXAMPLES[2:4]:
        config, _ = by_name[name]
        assert config.lora.nvfp4_merge_aware and config.model.experts_implementation == "sonicmoe", name
        assert config.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
        assert axolotl.to_axolotl(config)["nvfp4_merge_aware"] is True
    config, refused = by_name[NVFP4_EXAMPLES[4]]
    assert not refused and config is not None
    m, t, lora = config.model, config.training, config.lora
    assert (m.id, m.quantization, m.use_kernels, m.experts_implementation) == (
        "Mapika/GLM-5.2-NVFP4", "none", False, None)
    assert (t.distributed, t.expert_parallel_size, t.context_parallel_size) == ("ddp", 8, 1)
    # Its LoRA: MLA attention and the shared and dense MLPs by regex (not the DSA indexer), the routed experts'
    # stacks by parameter; dropout 0, as PEFT needs on stacked experts.
    assert lora.target_regex == (r"model.layers.[\d]+.(self_attn.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|"
                                 r"o_proj)|mlp.(shared_experts.)?(gate_proj|up_proj|down_proj))")
    assert lora.target_parameters == ["experts.gate_up_proj", "experts.down_proj"]
    assert (lora.r, lora.alpha, lora.dropout, lora.nvfp4_merge_aware) == (16, 32, 0.0, False)
    assert (t.optimizer, t.gradient_checkpointing, t.micro_batch_size, t.gradient_accumulation_steps) == (
        "adamw_torch_8bit", True, 1, 4)
    assert (config.data.max_seq_len, config.data.packing, t.learning_rate, t.lr_scheduler) == (
        4096, True, 2e-4, "cosine")
    notes = axolotl.from_axolotl(yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[4]).read_text())).notes
    assert any(n.startswith("expert_parallel_size 8 over an NVFP4 base: each of 8 GPUs reads its share") for n in notes)
    assert any(n.startswith("lora_target_parameters with expert_parallel_size 8: each GPU holds and trains the LoRA "
                            "of its own experts") for n in notes)
    assert any(n.startswith("expert_parallel_num_nvl_bytes: settings of DeepEP's kernels") for n in notes)
    assert not any("FSDP2" in n and n.startswith(("fsdp with expert_parallel_size", "expert_parallel_size 8:"))
                   for n in notes)
    back = axolotl.to_axolotl(config)
    assert back["expert_parallel_size"] == 8 and "axolotl.integrations.expert_parallel.ExpertParallelPlugin" in back[
        "plugins"]
    # Without expert parallelism (the plugin and its keys dropped, as its comment says) GLM-5.2's converts: FSDP2
    # with every process loading the NVFP4 base, so torchao's 8-bit AdamW shards with its parameters.
    glm = yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[4]).read_text())
    glm = {k: v for k, v in glm.items() if not k.startswith("expert_parallel")}
    glm["plugins"] = [p for p in glm["plugins"] if "expert_parallel" not in p]
    plain = axolotl.from_axolotl(glm)
    assert not plain.unsupported, plain.unsupported
    t = plain.run_config().training
    assert (t.distributed, t.optimizer) == ("fsdp", "adamw_torch_8bit")
    assert any(n.startswith("dsv4_fp4_grouped_mode: nvfp4 with fsdp: hubtune launches FSDP2") for n in plain.notes)
    zero3 = dict(axolotl.from_axolotl({**{k: v for k, v in glm.items() if not k.startswith("fsdp")},
                                       "deepspeed": "deepspeed_configs/zero3_bf16.json"}).unsupported)
    assert "under deepspeed-zero3: ZeRO-3 partitions" in zero3["dsv4_fp4_grouped_mode"]
    gemma = yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[0]).read_text())
    assert axolotl.from_axolotl({**gemma, "dsv4_fp4_grouped_mode": "fp8"}).unsupported[0][0] == "dsv4_fp4_grouped_mode"
    # What Axolotl itself refuses beside nvfp4_merge_aware: its fused LoRA kernels (gemma4's example sets them),
    # another experts backend, and a delayed start, which hubtune does not run.
    qwen = yaml.safe_load((EXAMPLES / NVFP4_EXAMPLES[2]).read_text())
    for change, key, why in (({"lora_qkv_kernel": True}, "nvfp4_merge_aware", "True with lora_qkv_kernel"),
                             ({"use_sonicmoe": None}, "nvfp4_merge_aware", "True without use_sonicmoe"),
                             ({"nvfp4_merge_aware_start_step": 0.1}, "nvfp4_merge_aware_start_step", "0.1: hubtune")):
        refused = dict(axolotl.from_axolotl({**qwen, **change}).unsupported)
        assert why in refused.get(key, ""), (change, refused)
    assert not axolotl.from_axolotl({**qwen, "nvfp4_merge_aware_start_step": 0}).unsupported


def test_nemotron_h_context_parallelism_over_packed_examples_converts(results):
    """Nemotron-H's QLoRA with context_parallel_size: 2 over packed rows: hubtune's context parallelism (packed
    examples kept apart, Mamba-2 state passed between the GPUs; tests/test_context_parallel.py measures it) under
    DDP, each GPU holding the whole 4-bit base with its quantized experts, as Axolotl runs it without fsdp."""
    from transformers import NemotronHConfig

    from hubtune.train import check_against_model

    by_name = {name: (config, dict(refused)) for name, _, _, config, refused in results}
    config, refused = by_name["nemotron-h/nano-30b-a3b-qlora-cp.yaml"]
    assert refused == {}
    m, d, t = config.model, config.data, config.training
    assert (m.quantization, m.quantize_experts, d.packing, d.max_seq_len) == ("nf4", True, True, 4096)
    assert (t.context_parallel_size, t.distributed, t.kernels, t.optimizer) == (2, "ddp", ["sdpa", "liger"],
                                                                               "adamw_torch_4bit")
    plan = distributed.plan_launch(t.distributed, 4, context_parallel_size=2)
    assert plan.preset.name == "ddp.yaml"
    # Its base's layers (Mamba-2, attention, experts) all split: nothing refused once the config is read.
    check_against_model(config, NemotronHConfig(layers_block_type=["linear_attention", "moe", "full_attention"]))
    notes = axolotl.from_axolotl(yaml.safe_load((EXAMPLES / "nemotron-h/nano-30b-a3b-qlora-cp.yaml").read_text())).notes
    assert any("packed examples kept apart" in n and "Mamba-2" in n for n in notes)
    assert axolotl.to_axolotl(config)["context_parallel_size"] == 2
    # The other example with context parallelism stays refused, for its tensor parallelism.
    config, refused = by_name["distributed-parallel/qwen3-8b-fsdp-tp-cp.yaml"]
    assert config is None and "context_parallel_size" not in refused
