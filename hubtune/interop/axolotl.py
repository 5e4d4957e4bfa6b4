"""Axolotl configs in and out.

`from_axolotl` translates an Axolotl YAML (base_model, datasets, adapter, lora_*, sequence_len, ...)
into hubtune's run config, key by key, with Axolotl's own defaults for what the file leaves out, so
the run trains what Axolotl would. Every key it cannot honour is listed, never dropped in silence;
`notes` say where hubtune behaves differently although the key translated.

`to_axolotl` writes the Axolotl config of a run config, for moving on to Axolotl's multi-GPU
features. Settings Axolotl has no key for go under a `hubtune:` block, which Axolotl ignores and
`from_axolotl` reads back, so hubtune -> Axolotl -> hubtune gives the same run config.

    translation = read("axolotl.yml")           # Translation(tree, notes, unsupported)
    config = translation.run_config(["training.max_steps=10"], ignore_unsupported=False)
    text = yaml.safe_dump(to_axolotl(config))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubtune import config as cfg
from hubtune.errors import ConfigError, HubtuneError

HUBTUNE_BLOCK = "hubtune"  # settings Axolotl has no key for; Axolotl ignores unknown keys
RUN_SECTIONS = set(cfg.RunConfig.model_fields)

# Where an Axolotl config leaves a key out, Axolotl's default applies (its pydantic schema and
# trainer builder), not hubtune's: these are the ones that differ.
AXOLOTL_DEFAULTS = {
    "lora_dropout": 0.0, "sequence_len": 512, "sample_packing": False, "val_set_size": 0.0,
    "num_epochs": 1.0, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "lr_scheduler": "cosine",
    "weight_decay": 0.0, "max_grad_norm": 1.0, "gradient_checkpointing": False, "seed": 42,
}
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch", "adamw_hf": "adamw_torch",
              "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit", "adafactor": "adafactor", "sgd": "sgd"}
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DTYPE_TO_AXOLOTL = {"auto": {"bf16": "auto"}, "bfloat16": {"bf16": True}, "float16": {"bf16": False, "fp16": True},
                    "float32": {"bf16": False, "fp16": False}}
FORMAT_TO_TYPE = {"alpaca": "alpaca", "messages": "chat_template", "sharegpt": "chat_template", "text": "completion"}
SHAREGPT_FIELDS = {"role": "from", "content": "value"}
MESSAGE_FIELDS = {"role": "role", "content": "content"}

# Keys that do not change what is trained (caches, process counts, padding), accepted with any value,
# and keys accepted only at the value that matches what hubtune does.
NO_EFFECT = {"strict", "dataset_prepared_path", "dataset_processes", "dataset_num_proc", "hf_use_auth_token",
             "pad_to_sequence_len", "eval_sample_packing", "is_llama_derived_model", "is_mistral_derived_model",
             "is_qwen_derived_model", "is_falcon_derived_model", "shuffle_merged_datasets"}
MATCHING = {
    "load_in_8bit": (False,), "train_on_inputs": (False,), "group_by_length": (False,), "tf32": (False, "auto"),
    "flash_attention": (False,), "xformers_attention": (False,), "sdp_attention": (True, False),
    "s2_attention": (False,), "flex_attention": (False,), "sage_attention": (False,), "peft_use_dora": (False,),
    "peft_use_rslora": (False,), "lora_fan_in_fan_out": (False,), "debug": (False,), "gptq": (False,),
    "auto_resume_from_checkpoints": (False,), "torch_compile": (False,), "excess_length_strategy": ("drop",),
    "fp8": (False,), "bfloat16": (False,), "float16": (False,), "float32": (False,), "evals_per_epoch": (1,),
    "attn_implementation": ("sdpa",), "use_wandb": (False,), "use_mlflow": (False,), "use_tensorboard": (False,),
}
WHY = {  # the fix for the most common keys hubtune cannot honour
    "deepspeed": "multi-GPU training: run this config with Axolotl itself",
    "fsdp": "multi-GPU training: run this config with Axolotl itself",
    "fsdp_config": "multi-GPU training: run this config with Axolotl itself",
    "rl": "hubtune trains supervised fine-tuning (SFT) only",
    "load_in_8bit": "hubtune loads bases in 4 bits (QLoRA) or 16 bits (LoRA), not 8",
    "train_on_inputs": "hubtune learns the completions only (the prompt is context)",
    "warmup_ratio": "give warmup_steps instead",
    "evals_per_epoch": "give eval_steps instead (or 1: once per epoch)",
    "special_tokens": "hubtune keeps the base's tokenizer as it is (the pad token falls back to EOS)",
    "lora_model_dir": "hubtune starts new adapters; it does not continue a saved one",
    "flash_attention": "hubtune loads the base with transformers' default attention (sdpa)",
    "hub_model_id": "publish with `hubtune push RUN --repo OWNER/NAME` after training",
    "resume_from_checkpoint": "continue a hubtune run with `hubtune train --resume RUN`",
}


class UnsupportedAxolotlKeys(ConfigError):
    """Axolotl keys hubtune cannot honour, all of them at once, each with why or what to do.
    `blocking`: the config has no dataset hubtune can read, which --ignore-unsupported cannot skip."""

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None, blocking: bool = False):
        super().__init__(problems, source)
        where = f"{source}: " if source else ""
        lines = [f"{where}{len(problems)} Axolotl key{'s' if len(problems) != 1 else ''} hubtune cannot honour:"]
        lines += [f"  {key}: {why}" for key, why in problems]
        lines.append("No dataset is left to train on; hubtune never substitutes one. Point datasets at data of a "
                     "type hubtune reads." if blocking else
                     "Remove them from the config, or train without them with --ignore-unsupported.")
        self.args = ("\n".join(lines),)


@dataclass
class Translation:
    """An Axolotl config as a hubtune run config tree, what differs, and what cannot be honoured."""

    tree: dict
    notes: list[str] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (axolotl key, why)
    source: str | None = None

    def run_config(self, overrides: list[str] | None = None, ignore_unsupported: bool = False) -> cfg.RunConfig:
        """The validated RunConfig (overrides on top); UnsupportedAxolotlKeys unless ignore_unsupported."""
        if self.unsupported and not ignore_unsupported:
            raise UnsupportedAxolotlKeys(self.unsupported, self.source)
        if not cfg.merge(self.tree, cfg.parse_overrides(overrides or [])).get("data", {}).get("sources"):
            # Leaving data.sources out would fill in hubtune's demo data: a run on data nobody named.
            raise UnsupportedAxolotlKeys(self.unsupported or [("datasets", "missing: list at least one dataset: "
                                                               "[{path, type}]")], self.source, blocking=True)
        return cfg.build(self.tree, overrides, source=self.source)

    def report(self, ignored: bool = False) -> str:
        """The notes and the keys left out, as lines for a terminal or a YAML comment."""
        lines = [f"note: {n}" for n in self.notes]
        if ignored:
            lines += [f"ignored (--ignore-unsupported): {k}: {why}" for k, why in self.unsupported]
        return "\n".join(lines)


def is_axolotl(data: Any) -> bool:
    """An Axolotl config names a base_model at the top level; a hubtune one has sections (model, lora, ...)."""
    return isinstance(data, dict) and "base_model" in data and not set(data) & RUN_SECTIONS


def read(path: str | Path) -> Translation:
    """Read and translate an Axolotl YAML file."""
    p = Path(path)
    data = read_yaml(p)
    if not is_axolotl(data):
        raise ConfigError([("base_model", "missing: an Axolotl config names the model to fine-tune as base_model")],
                          str(p))
    translation = from_axolotl(data)
    translation.source = str(p)
    return translation


def read_yaml(p: Path) -> Any:
    if not p.is_file():
        raise ConfigError([("(file)", f"{p} does not exist; pass the path of a YAML config")], str(p))
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError([(where, f"not valid YAML: {getattr(err, 'problem', err)}")], str(p)) from None


def from_axolotl(data: dict) -> Translation:
    """Translate an Axolotl config (a dict as its YAML reads) into a hubtune run config tree."""
    return _Reader(data).translate()


class _Reader:
    """Takes keys out of the Axolotl dict as it translates them; whatever is left is unsupported."""

    def __init__(self, data: dict):
        self.data = {k: v for k, v in data.items() if k != HUBTUNE_BLOCK}
        self.extra = data.get(HUBTUNE_BLOCK) or {}
        self.notes: list[str] = []
        self.unsupported: list[tuple[str, str]] = []

    def take(self, key: str, default: Any = None) -> Any:
        value = self.data.pop(key, None)
        return default if value is None else value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def refuse(self, key: str, why: str) -> None:
        self.unsupported.append((key, why))

    def translate(self) -> Translation:
        tree = {"model": self.model(), "lora": self.lora(), "data": self.datasets(), "training": self.training()}
        if self.has("output_dir"):
            tree["output"] = {"dir": str(self.take("output_dir"))}
        self.leftovers()
        if not isinstance(self.extra, dict):
            self.refuse(HUBTUNE_BLOCK, "must be a mapping of hubtune run config sections")
        else:
            tree = cfg.merge(tree, self.extra)
        return Translation(tree, self.notes, self.unsupported)

    # ---- sections -------------------------------------------------------------------------------
    def model(self) -> dict:
        if not self.has("base_model"):
            self.refuse("base_model", "missing: the model to fine-tune (a Hub id or a local folder)")
        model = {"id": str(self.take("base_model", ""))}
        if self.has("revision_of_model"):
            model["revision"] = str(self.take("revision_of_model"))
        model["trust_remote_code"] = bool(self.take("trust_remote_code", False))
        for key in ("base_model_config", "tokenizer_config"):
            if self.data.get(key) == model["id"]:
                self.take(key)
        for key, suffix in (("model_type", "ForCausalLM"), ("tokenizer_type", "Tokenizer")):
            value = self.data.get(key)
            if value is None or suffix in str(value):
                self.take(key)  # the Auto* classes hubtune loads with resolve to these anyway

        adapter = self.take("adapter")
        four_bit = bool(self.take("load_in_4bit", False))
        if adapter not in ("lora", "qlora"):
            self.refuse("adapter", f"{adapter!r}: hubtune trains LoRA adapters; set adapter: lora or qlora"
                        if adapter else "not set (a full fine-tune): hubtune trains adapters; set adapter: lora or qlora")
        if adapter == "qlora" and not four_bit:
            self.refuse("load_in_4bit", "adapter: qlora needs load_in_4bit: true (as in Axolotl)")
        bnb = dict(self.take("bnb_config_kwargs", {}) or {})
        model["quantization"] = str(bnb.pop("bnb_4bit_quant_type", "nf4")) if four_bit else "none"
        model["double_quant"] = bool(bnb.pop("bnb_4bit_use_double_quant", True))
        if bnb.pop("llm_int8_has_fp16_weight", False):
            self.refuse("bnb_config_kwargs.llm_int8_has_fp16_weight", "8-bit weights are not used by hubtune")
        for key in bnb:
            self.refuse(f"bnb_config_kwargs.{key}", "hubtune sets the rest of the 4-bit config itself")
        model["compute_dtype"] = self.precision()
        return model

    def precision(self) -> str:
        bf16, fp16 = self.take("bf16", "auto"), self.take("fp16")
        for key in ("bfloat16", "float16", "float32"):  # the non-mixed-precision spellings
            if self.data.get(key) is True:
                self.take(key)
                return key
        if bf16 == "full":
            self.notes.append("bf16: full also evaluates in bf16 in Axolotl; hubtune computes in bfloat16")
            return "bfloat16"
        if bf16 is True:
            return "bfloat16"
        if fp16 is True:
            return "float16"
        return "auto" if bf16 == "auto" else "float32"

    def lora(self) -> dict:
        lora = {"dropout": float(self.take("lora_dropout", AXOLOTL_DEFAULTS["lora_dropout"]))}
        for key, name in (("lora_r", "r"), ("lora_alpha", "alpha")):
            if self.has(key):
                lora[name] = self.take(key)
            else:
                default = getattr(cfg.LoraSection(), name)
                self.notes.append(f"{key} not set: hubtune's default {default}")
        modules = self.take("lora_target_modules")
        if self.take("lora_target_linear", False):
            lora["target_modules"] = "all-linear"  # Axolotl adds the named ones to all linear layers: the same set
        elif isinstance(modules, str):
            if re.fullmatch(r"\w+", modules):
                lora["target_modules"] = [modules]
            else:
                self.refuse("lora_target_modules", f"{modules!r} is a pattern; list the module names instead")
        elif modules:
            lora["target_modules"] = [str(m) for m in modules]
        else:
            self.notes.append("neither lora_target_modules nor lora_target_linear set: hubtune targets all linear layers")
        return lora

    def datasets(self) -> dict:
        data: dict = {
            "max_seq_len": self.take("sequence_len", AXOLOTL_DEFAULTS["sequence_len"]),
            "packing": bool(self.take("sample_packing", AXOLOTL_DEFAULTS["sample_packing"])),
            # Axolotl runs none of hubtune's extra data checks; exact duplicates only when asked.
            "dedup_exact": bool(self.take("dataset_exact_deduplication", False)),
            "near_dup_threshold": None,
            "min_response_tokens": 0,
        }
        val = self.take("val_set_size", AXOLOTL_DEFAULTS["val_set_size"])
        if isinstance(val, (int, float)) and 0 <= val < 1:
            data["val_set_size"] = val
        else:
            self.refuse("val_set_size", f"{val!r}: give a share between 0 and 1")
        if self.data.get("excess_length_strategy") == "truncate":
            self.take("excess_length_strategy")
            data["truncate"] = True
        self.notes.append("hubtune's near-duplicate and short-answer filters are off, as in Axolotl "
                          "(turn them on with data.near_dup_threshold=0.8 data.min_response_tokens=2)")
        template = self.take("chat_template")
        if template is not None:
            if template == "tokenizer_default":
                data["chat_template"] = "auto"
            elif str(template).startswith("tokenizer_default_fallback_"):
                data["chat_template"] = "auto"
                self.notes.append(f"chat_template: {template}: a base without a template gets hubtune's default "
                                  f"template, not {str(template).rsplit('_', 1)[-1]}")
            else:
                self.refuse("chat_template", f"{template!r}: hubtune renders with the base's own template "
                                            f"(chat_template: tokenizer_default)")
        entries = self.take("datasets") or []
        if not isinstance(entries, list) or not entries:
            self.refuse("datasets", "list at least one dataset: [{path, type}]")
            return data
        sources, formats, columns = [], [], []
        for i, entry in enumerate(entries):
            got = self.dataset(i, entry if isinstance(entry, dict) else {"path": entry})
            if got:
                sources.append(got[0])
                formats.append(got[1])
                columns.append(got[2])
        if sources:
            data["sources"] = sources
        else:
            named = ", ".join(f"{e.get('path')} (type {e.get('type')})" if isinstance(e, dict) else str(e)
                              for e in entries)
            self.refuse("datasets", f"none of them is data hubtune can read: {named}")
        if len(set(formats)) == 1:
            data["format"] = formats[0]
        elif formats:
            data["format"] = "auto"
            self.notes.append(f"the datasets are of several types ({', '.join(sorted(set(formats)))}); hubtune "
                              f"detects each one's format from its columns")
        if any(columns) and any(c != columns[0] for c in columns):
            self.refuse("datasets", "the datasets map their columns differently; hubtune maps columns the same "
                                    "way for every source")
        elif columns and columns[0]:
            data["columns"] = columns[0]
        return data

    def dataset(self, i: int, entry: dict) -> tuple[dict, str, dict] | None:
        entry = {k: v for k, v in entry.items() if v is not None}
        where = f"datasets[{i}]"
        path, kind = entry.pop("path", None), entry.pop("type", None)
        if not path:
            self.refuse(f"{where}.path", "missing: a Hub dataset id or a local file")
            return None
        source = {"path": str(path), "split": str(entry.pop("split", "train"))}
        for key in ("name", "revision"):
            if key in entry:
                source[key] = str(entry.pop(key))
        entry.pop("ds_type", None)  # hubtune reads the file type from the extension
        entry.pop("trust_remote_code", None)  # datasets are read as data files, never as scripts
        if entry.pop("chat_template", "tokenizer_default") != "tokenizer_default":
            self.refuse(f"{where}.chat_template", "hubtune renders with the base's own template")
        columns: dict = {}
        if kind == "alpaca":
            fmt = "alpaca"
            self.notes.append(f"{where} (alpaca): hubtune renders rows with the base's chat template, "
                              f"not Axolotl's Alpaca prompt text")
        elif kind in ("chat_template", "sharegpt"):
            fmt, columns = self.chat_dataset(where, entry, kind)
        elif kind == "completion":
            fmt = "text"
            if entry.get("field", "text") != "text":
                columns = {"text": str(entry["field"])}
            entry.pop("field", None)
            self.notes.append(f"{where} (completion): texts longer than sequence_len are dropped, not split")
        else:
            self.refuse(f"{where}.type", f"{kind!r}: hubtune reads alpaca, sharegpt, chat_template and completion"
                        if kind else "missing: alpaca, sharegpt, chat_template or completion")
            return None
        for key in entry:
            self.refuse(f"{where}.{key}", "hubtune has no such dataset setting")
        return source, fmt, columns

    def chat_dataset(self, where: str, entry: dict, kind: str) -> tuple[str, dict]:
        mappings = dict(entry.pop("message_property_mappings", None) or {})
        for old, new in (("message_field_role", "role"), ("message_field_content", "content")):
            if old in entry:
                mappings[new] = entry.pop(old)
        sharegpt = kind == "sharegpt" or mappings == SHAREGPT_FIELDS
        expected = SHAREGPT_FIELDS if sharegpt else MESSAGE_FIELDS
        if {**expected, **mappings} != expected:
            self.refuse(f"{where}.message_property_mappings", f"{mappings}: hubtune reads turns as "
                        f"{{role, content}} or {{from, value}}")
        column = str(entry.pop("field_messages", "conversations" if sharegpt else "messages"))
        entry.pop("conversation", None)  # the legacy sharegpt template name: the base's template renders instead
        for key, allowed in (("roles_to_train", (["assistant"], ["gpt"])), ("train_on_eos", ("turn", "last"))):
            if key in entry and entry.pop(key) not in allowed:
                self.refuse(f"{where}.{key}", "hubtune learns the assistant's last turn")
        if "roles" in entry:
            self.refuse(f"{where}.roles", "hubtune maps roles itself (human/user, gpt/assistant, system)")
            entry.pop("roles")
        self.notes.append(f"{where} ({kind}): hubtune learns the last assistant turn of each conversation; "
                          f"earlier turns are context (Axolotl trains on every assistant turn)")
        fmt = "sharegpt" if sharegpt else "messages"
        home = "conversations" if sharegpt else "messages"
        return fmt, ({home: column} if column != home else {})

    def training(self) -> dict:
        t: dict = {
            "epochs": self.take("num_epochs", AXOLOTL_DEFAULTS["num_epochs"]),
            "micro_batch_size": self.take("micro_batch_size", AXOLOTL_DEFAULTS["micro_batch_size"]),
            "gradient_accumulation_steps": self.take("gradient_accumulation_steps",
                                                     AXOLOTL_DEFAULTS["gradient_accumulation_steps"]),
            "weight_decay": self.take("weight_decay", AXOLOTL_DEFAULTS["weight_decay"]),
            "max_grad_norm": self.take("max_grad_norm", AXOLOTL_DEFAULTS["max_grad_norm"]),
            "seed": self.take("seed", AXOLOTL_DEFAULTS["seed"]),
        }
        if self.has("learning_rate"):
            t["learning_rate"] = float(self.take("learning_rate"))
        else:
            self.notes.append(f"learning_rate not set: hubtune's default {cfg.TrainingSection().learning_rate}")
        for key in ("max_steps", "logging_steps", "save_steps", "save_total_limit"):
            if self.has(key):
                t[key] = self.take(key)
        if isinstance(self.data.get("eval_steps"), int):
            t["eval_steps"] = self.take("eval_steps")
        if self.data.get("evals_per_epoch") == 1:
            self.take("evals_per_epoch")
        scheduler = self.take("lr_scheduler", AXOLOTL_DEFAULTS["lr_scheduler"])
        if scheduler in SCHEDULERS:
            t["lr_scheduler"] = scheduler
        else:
            self.refuse("lr_scheduler", f"{scheduler!r}: hubtune schedules {', '.join(SCHEDULERS)}")
        optimizer = self.take("optimizer", "adamw_torch_fused")
        if optimizer in OPTIMIZERS:
            t["optimizer"] = OPTIMIZERS[optimizer]
            if OPTIMIZERS[optimizer] != optimizer:
                self.notes.append(f"optimizer {optimizer}: hubtune runs {OPTIMIZERS[optimizer]} (the same update)")
        else:
            self.refuse("optimizer", f"{optimizer!r}: hubtune runs {', '.join(sorted(set(OPTIMIZERS.values())))}")
        if self.has("warmup_steps"):
            t["warmup_steps"] = self.take("warmup_steps")
        elif not self.has("warmup_ratio"):
            self.notes.append(f"warmup_steps not set: Axolotl warms up for 3% of the steps (at most 100); hubtune "
                              f"uses {cfg.TrainingSection().warmup_steps} steps (set warmup_steps to choose)")
        checkpointing = self.take("gradient_checkpointing", AXOLOTL_DEFAULTS["gradient_checkpointing"])
        if isinstance(checkpointing, bool):
            t["gradient_checkpointing"] = checkpointing
        else:
            self.refuse("gradient_checkpointing", f"{checkpointing!r}: hubtune checkpoints on the GPU (true) or not")
        t["report_to"] = self.trackers()
        return t

    def trackers(self) -> list[str]:
        found = []
        if self.data.get("use_tensorboard") is True:
            self.take("use_tensorboard")
            found.append("tensorboard")
        for key, tracker, env in (("wandb_project", "wandb", "WANDB_PROJECT"), ("wandb_entity", "wandb", "WANDB_ENTITY"),
                                  ("mlflow_tracking_uri", "mlflow", "MLFLOW_TRACKING_URI"),
                                  ("mlflow_experiment_name", "mlflow", "MLFLOW_EXPERIMENT_NAME")):
            if self.has(key):
                value = self.take(key)
                if tracker not in found:
                    found.append(tracker)
                self.notes.append(f"{key}: {value}: transformers reads it from the environment; "
                                  f"export {env}={value} before training")
        return found

    def leftovers(self) -> None:
        for key, value in self.data.items():
            if value is None or key in NO_EFFECT or value in MATCHING.get(key, ()):
                continue
            self.refuse(key, f"{shown(value)}: {WHY.get(key, 'hubtune has no such setting')}")


def shown(value: Any) -> str:
    """A value in full, as YAML writes it on one line (a dict of tokens or plugins included)."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return repr(value)


# ---- hubtune -> Axolotl -------------------------------------------------------------------------
def to_axolotl(config: cfg.RunConfig, formats: list[str] | None = None) -> dict:
    """The Axolotl config of a run config. `formats` gives each source's row format when data.format
    is auto (a run's data_report.json knows them); otherwise each source's first rows are read.
    Raises HubtuneError listing what Axolotl cannot express."""
    problems: list[tuple[str, str]] = []
    m, lo, d, t = config.model, config.lora, config.data, config.training
    out: dict[str, Any] = {"base_model": _axolotl_path(m.id)}
    if m.revision:
        out["revision_of_model"] = m.revision
    if m.trust_remote_code:
        out["trust_remote_code"] = True
    quantized = m.quantization != "none"
    out.update(adapter="qlora" if quantized else "lora", load_in_4bit=quantized, load_in_8bit=False)
    if quantized:
        out["bnb_config_kwargs"] = {"bnb_4bit_quant_type": m.quantization, "bnb_4bit_use_double_quant": m.double_quant}
    out.update(DTYPE_TO_AXOLOTL[m.compute_dtype])
    out.update(lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout)
    if lo.target_modules == "all-linear":
        out["lora_target_linear"] = True
    else:
        out["lora_target_modules"] = lo.peft_target_modules()

    found = formats or [None] * len(d.sources)
    out["datasets"] = []
    for i, source in enumerate(d.sources):
        fmt = d.format if d.format != "auto" else (found[i] if i < len(found) and found[i] else _detect(source, d))
        entry = _axolotl_dataset(source, fmt, d.columns, f"data.sources[{i}]", problems)
        if entry:
            out["datasets"].append(entry)
    if d.val_set_size >= 1:
        problems.append(("data.val_set_size", f"{d.val_set_size:g} rows: Axolotl takes a share (0-1) of the data"))
    if d.chat_template == "default":
        problems.append(("data.chat_template", "hubtune's default template has no Axolotl name; use auto"))
    out.update(val_set_size=d.val_set_size if d.val_set_size < 1 else 0.0, sequence_len=d.max_seq_len,
               sample_packing=d.packing, chat_template="tokenizer_default",
               excess_length_strategy="truncate" if d.truncate else "drop")
    if d.dedup_exact:
        out["dataset_exact_deduplication"] = True

    out.update(num_epochs=t.epochs, micro_batch_size=t.micro_batch_size,
               gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
               lr_scheduler=t.lr_scheduler, warmup_steps=t.warmup_steps,
               optimizer="paged_adamw_8bit" if t.optimizer == "auto" else t.optimizer,
               weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
               gradient_checkpointing=t.gradient_checkpointing is not False, logging_steps=t.logging_steps,
               save_steps=t.save_steps, save_total_limit=t.save_total_limit, seed=t.seed, train_on_inputs=False)
    if t.max_steps:
        out["max_steps"] = t.max_steps
    if t.eval_steps:
        out["eval_steps"] = t.eval_steps
    else:
        out["evals_per_epoch"] = 1
    if "tensorboard" in t.report_to:
        out["use_tensorboard"] = True
    if config.output.dir:
        out["output_dir"] = config.output.dir
    if problems:
        lines = [f"  {path}: {why}" for path, why in problems]
        raise HubtuneError("cannot write this run config as an Axolotl config:\n" + "\n".join(lines))

    # What Axolotl has no key for rides along under `hubtune:`, so that reading the file back is exact.
    back = cfg.build(from_axolotl(out).tree, check_paths=False).model_dump(mode="json")
    extra = _difference(config.model_dump(mode="json"), back)
    if extra:
        out[HUBTUNE_BLOCK] = extra
    if cfg.build(from_axolotl(out).tree, check_paths=False) != config:
        raise HubtuneError("the Axolotl config would not read back as the same run config; please report this")
    return out


def hubtune_only(axolotl: dict) -> list[str]:
    """The settings kept under `hubtune:` (Axolotl ignores them) as section.key, for a note to the user."""
    block = axolotl.get(HUBTUNE_BLOCK) or {}
    found = []
    for section, keys in block.items():
        found += [f"{section}.{key}" for key in keys] if isinstance(keys, dict) else [section]
    return found


def _axolotl_path(ref: str) -> str:
    """A `hubtune:<asset>` reference is written as it is, never as the file inside the installed package
    (a path that holds on this machine only); `hubtune_assets` names them for the user to replace."""
    return ref


def hubtune_assets(axolotl: dict) -> list[str]:
    """The keys of an exported Axolotl config that name one of hubtune's own assets (hubtune:...), which
    Axolotl cannot read: the user points them at a Hub repo or a file of their own."""
    found = [f"base_model: {axolotl['base_model']}"] if str(axolotl.get("base_model", "")).startswith("hubtune:") else []
    found += [f"datasets[{i}].path: {d['path']}" for i, d in enumerate(axolotl.get("datasets") or [])
              if str(d.get("path", "")).startswith("hubtune:")]
    return found


def _axolotl_dataset(source: cfg.DataSource, fmt: str, columns: dict, where: str,
                     problems: list[tuple[str, str]]) -> dict | None:
    kind = FORMAT_TO_TYPE.get(fmt)
    if kind is None:
        problems.append((where, f"format {fmt} has no Axolotl dataset type; convert the rows to messages"))
        return None
    entry: dict[str, Any] = {"path": _axolotl_path(source.path), "type": kind}
    path = Path(entry["path"])
    if path.suffix in (".json", ".jsonl", ".csv", ".parquet"):
        entry["ds_type"] = "json" if path.suffix == ".jsonl" else path.suffix[1:]
    if source.split != "train":
        entry["split"] = source.split
    for key in ("name", "revision"):
        if getattr(source, key):
            entry[key] = getattr(source, key)
    unused = dict(columns)
    if fmt == "sharegpt":
        entry["field_messages"] = unused.pop("conversations", "conversations")
        entry["message_property_mappings"] = dict(SHAREGPT_FIELDS)
    elif fmt == "messages" and "messages" in unused:
        entry["field_messages"] = unused.pop("messages")
    elif fmt == "text" and "text" in unused:
        entry["field"] = unused.pop("text")
    if unused:
        problems.append(("data.columns", f"{unused}: Axolotl's {kind} type cannot rename these columns; "
                                         f"rename them in the data"))
    return entry


def _detect(source: cfg.DataSource, data: cfg.DataSection) -> str:
    """A source's row format from its first row (reads the source, downloading a Hub dataset)."""
    from hubtune.data.formats import resolve_format
    from hubtune.data.sources import read_source

    rows = read_source(source, data.skip_bad_rows).rows
    if not rows:
        raise HubtuneError(f"{source.path} holds no rows to tell its format from; set data.format")
    return resolve_format(rows[0], "auto", data.columns, source.path)


def _difference(wanted: dict, got: dict) -> dict:
    """The parts of `wanted` that `got` lacks or holds differently, section by section."""
    out = {}
    for key, value in wanted.items():
        if isinstance(value, dict) and isinstance(got.get(key), dict) and key in RUN_SECTIONS:
            sub = _difference(value, got[key])
            if sub:
                out[key] = sub
        elif got.get(key) != value:
            out[key] = value
    return out


def export(run_or_config: str | Path) -> dict:
    """The Axolotl config of a run folder (its config.yaml; row formats from its data_report.json)
    or of a run config YAML file."""
    import json

    path = Path(run_or_config)
    config_file = path / "config.yaml" if path.is_dir() else path
    if not config_file.is_file():
        raise HubtuneError(f"{path} is neither a run folder (with config.yaml) nor a run config file")
    config = cfg.load(config_file, check_paths=not path.is_dir())  # a run's record: its data may have moved
    report = path / "data_report.json" if path.is_dir() else None
    formats = None
    if report is not None and report.is_file():
        formats = [s.get("format") for s in json.loads(report.read_text()).get("sources", [])]
    return to_axolotl(config, formats)
