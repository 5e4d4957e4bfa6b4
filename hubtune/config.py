"""The one typed config for a run: loaded from YAML, overridden as `key.path=value`,
or built in Python. Every problem is reported at once as a ConfigError with its path.

Defaults follow the QLoRA guidance: NF4 with double quantization, LoRA r 16 / alpha 32
on all linear layers, lr 2e-4 with cosine decay and warm-up, effective batch 8, <= 3 epochs.
"""

from __future__ import annotations

import difflib
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from hubtune.errors import ConfigError
from hubtune.refs import ASSETS, RepoRef, resolve_builtin  # noqa: F401  (ASSETS, resolve_builtin: re-exported)

TARGET_PRESETS = {
    "qv": ["q_proj", "v_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "all-linear": "all-linear",  # every linear layer but the output head, resolved on the base by name
}


class Section(BaseModel):
    # Unknown keys are errors, never silently ignored; assignment is validated too.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers' set_seed passes the seed to
STEPS_CEILING = (10_000_000, "ten million steps is months of training; a larger number is a typo")
BATCH_CEILING = (4096, "no accelerator holds more examples in one pass; raise gradient_accumulation_steps instead")


def _at_most(value, ceiling: tuple[int, str]):
    limit, why = ceiling
    if value is not None and value > limit:
        raise ValueError(f"at most {limit:,}: {why}")
    return value


def _on_off(value):
    """YAML reads a bare on / off as true / false."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _revision(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise ValueError("is empty: leave it out (null) for the default branch, or give a branch, tag or commit sha")
    return value


class ModelSection(Section):
    id: str = Field("hubtune:tiny-llama", description="Hub repo id, local folder, or hubtune:<asset>.")
    revision: str | None = Field(None, description="Branch, tag or commit sha to pin; None means main.")
    quantization: Literal["nf4", "fp4", "int8", "none"] = Field(
        "nf4", description="4-bit base (QLoRA: nf4, fp4), 8-bit base (int8, LLM.int8()) or none (16-bit LoRA).")
    double_quant: bool = Field(True, description="Quantize the quantization constants too (saves ~0.4 bit/param).")
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="auto: bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU.")
    trust_remote_code: bool = Field(False, description="Run code shipped in the model repo. Off unless you trust it.")
    special_tokens: dict[Literal["bos_token", "eos_token", "pad_token", "unk_token"], str] = Field(
        default_factory=dict, description="Set the tokenizer's bos/eos/pad/unk token, e.g. {pad_token: <|end_of_text|>}; "
        "a token the vocabulary lacks is added, and the embedding and output head then train with the adapter.")
    added_tokens: list[str] = Field(default_factory=list, description="Tokens added to the vocabulary where the "
        "tokenizer lacks them (end-of-turn markers, tags); the embedding and output head then train with the adapter.")
    router_aux_loss: bool = Field(False, description="Mixture-of-experts bases: add the router's load-balancing "
        "loss to the training loss (transformers' output_router_logits); off, the loss is the language-model loss "
        "alone.")
    experts_implementation: Literal["eager", "grouped_mm", "batched_mm", "sonicmoe", "deepgemm"] | None = Field(
        None, description="Mixture-of-experts bases: how transformers computes the experts (the same result); "
        "None: transformers' default (grouped_mm where it can run).")
    quantize_experts: bool = Field(False, description="Mixture-of-experts bases: quantize the stacked expert "
        "weights (3D parameters such as mlp.experts.gate_up_proj, which BitsAndBytesConfig leaves in 16 bits) as they "
        "load, at the base's quantization (nf4 / fp4 with double_quant, or int8); they stay frozen, and LoRA reaches "
        "them through lora.target_parameters as on a 16-bit base. One GPU, DDP or FSDP (launched on FSDP2: every GPU "
        "loads the quantized base, then it is sharded; nf4 / fp4 only), not ZeRO-3.")
    use_kernels: bool = Field(False, description="Swap layers for the kernels transformers maps them to on the "
        "Hub (transformers' use_kernels, the `kernels` package): the same computation, faster. Hub code: "
        "off unless you trust kernels-community.")
    dequantize: bool = Field(False, description="A base saved quantized in a format LoRA cannot train on (MXFP4, "
        "FP8) loads dequantized to the compute dtype (transformers' dequantize=True).")
    linearized_experts: bool = Field(False, description="A Llama 4 base re-saved with one linear layer per "
        "expert (Axolotl's linearized Llama 4, e.g. axolotl-quants/Llama-4-Scout-17B-16E-Linearized-bnb-nf4-bf16): "
        "its experts load as one nn.Linear each (4-bit when saved so) instead of transformers' stacked experts.")
    tokenizer_legacy: bool | None = Field(None, description="transformers' `legacy` flag of SentencePiece-based "
        "tokenizers (Llama, T5): how text after special tokens is split when the tokenizer is built from a "
        "SentencePiece model; None: the tokenizer's own setting.")
    tokenizer_backend: Literal["auto", "mistral-common"] = Field("auto", description="auto: AutoTokenizer as the base "
        "saved it; mistral-common: Mistral's own tokenizer (tekken.json) through transformers' MistralCommonBackend "
        "(pip install mistral-common).")

    @field_validator("special_tokens", "added_tokens")
    @classmethod
    def _non_empty_tokens(cls, v):
        if any(not t for t in (v.values() if isinstance(v, dict) else v)):
            raise ValueError("a token is a non-empty string")
        return v

    def new_token_texts(self) -> list[str]:
        """Every token the run asks for, special ones first, each once."""
        return list(dict.fromkeys([*self.special_tokens.values(), *self.added_tokens]))

    @field_validator("id")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        if problem := RepoRef.parse(v).problem("folder"):
            raise ValueError(problem)
        return v

    _revision = field_validator("revision")(_revision)


class LoraSection(Section):
    r: int = Field(16, ge=1, le=1024, description="Adapter rank.", json_schema_extra={"typical": [8, 64]})
    alpha: int = Field(32, ge=1, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter input.")
    target_modules: Literal["qv", "attention", "all-linear"] | list[str] = Field(
        "all-linear", description="A preset (qv | attention | all-linear) or explicit module names.")
    init_from: str | None = Field(None, description="Continue training this adapter (a run folder or adapter folder), "
                                  "e.g. an SFT run before DPO or GRPO; None: a fresh adapter.")
    target_regex: str | None = Field(None, description="A regular expression matched against full module names "
        "(PEFT's full match), used instead of target_modules, e.g. model.layers.\\d+.(self_attn|mlp).\\w+_proj.")
    target_parameters: list[str] = Field(default_factory=list, description="Parameters (not modules) to adapt too, "
        "such as a mixture-of-experts layer's stacked experts.gate_up_proj (PEFT's target_parameters).")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full and saved with "
        "the adapter, e.g. [embed_tokens, lm_head].")
    nvfp4_merge_aware: bool = Field(False, description="On an NVFP4 base (saved by NVIDIA ModelOpt): train "
        "with the effective weight quantized to NVFP4 again, Q(W + s·B·A), the gradient passing straight through Q "
        "(Axolotl's nvfp4_merge_aware), so a merge quantized back to NVFP4 holds what was trained.")
    unfrozen_parameters: list[str] = Field(default_factory=list, description="Base parameters trained in full beside "
        "the adapter and saved with it, by name as the base names them (not base_model.model.): regular expressions "
        "matched from the start, dots literal unless followed by + (as Axolotl's unfrozen_parameters), e.g. "
        "[model.norm.weight, lm_head]; a row range of the input embedding trains those token rows only "
        "(model.embed_tokens.weight[:32000]). Quantized weights cannot train in full.")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    init_weights: Literal["default", "loftq"] = Field("default", description="default: PEFT's (B = 0, the adapter "
        "starts as a no-op); loftq: LoftQ, an adapter that starts by cancelling the error of quantizing the base to "
        "loftq_bits (the base then loads unquantized: model.quantization none).")
    loftq_bits: int = Field(4, ge=2, le=8, description="With init_weights: loftq, the bits LoftQ quantizes to.")

    @field_validator("target_regex")
    @classmethod
    def _compiles(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as err:
                raise ValueError(f"{v!r} is not a regular expression ({err})") from None
        return v

    @field_validator("unfrozen_parameters")
    @classmethod
    def _patterns(cls, v):
        from hubtune.unfreeze import parse

        for pattern in v:
            parse(pattern)  # a ValueError names what is wrong with it
        return [p.removeprefix("^") for p in v]  # matched from the start either way

    @model_validator(mode="after")
    def _something_to_adapt(self):
        if isinstance(self.target_modules, list) and not self.target_modules and not self.target_parameters:
            raise ValueError("target_modules: give a preset (qv, attention, all-linear) or at least one module name "
                             "(an empty list only with target_parameters)")
        return self

    def peft_target_modules(self, model_config=None) -> str | list[str]:
        """What PEFT's target_modules takes: the regular expression, the listed names, or a preset's names, which
        resolve to the architecture's own modules when the model's config is given (Phi-3's fused qkv_proj for
        qv / attention; see hubtune.families)."""
        if self.target_regex is not None:
            return self.target_regex
        if not isinstance(self.target_modules, str):
            return self.target_modules
        if model_config is None:
            return TARGET_PRESETS[self.target_modules]
        from hubtune.families import target_modules

        return target_modules(self.target_modules, model_config)


SPLIT_SLICE = re.compile(r"(?P<name>[\w.-]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


class DataSource(Section):
    path: str = Field(description="Hub dataset id, local JSON/JSONL/CSV/Parquet file or folder, or hubtune:<asset>.")
    split: str = Field("train", description="Split to read from a Hub dataset or folder; a slice as in "
                       "`datasets`: train[:20%], train[100:500], train[-10%:].")
    name: str | None = Field(None, description="Dataset config name on the Hub.")
    revision: str | None = Field(None, description="Dataset revision to pin.")
    data_files: list[str] = Field(default_factory=list, description="Read only these files of the dataset or folder "
        "(paths or glob patterns inside it, as load_dataset's data_files), instead of the split's files.")
    drop_system_message: bool = Field(False, description="Drop the rows' system messages (the model learns without them).")

    @field_validator("data_files", mode="before")
    @classmethod
    def _file_list(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("data_files")
    @classmethod
    def _inside_the_dataset(cls, v):
        for pattern in v:
            if not pattern or Path(pattern).is_absolute() or ".." in Path(pattern).parts:
                raise ValueError(f"{pattern!r}: a data file is a path inside the dataset (relative, without ..), "
                                 f"such as data/train.jsonl or data/*.parquet")
        return v

    @field_validator("path")
    @classmethod
    def _source_exists(cls, v: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("check_paths") is False:  # a finished run's record: its data may have moved
            return v
        if problem := RepoRef.parse(v).problem("file or folder"):
            raise ValueError(problem.replace("Hub repo id", "Hub dataset id"))
        return v

    _revision = field_validator("revision")(_revision)

    @field_validator("split")
    @classmethod
    def _split_spec(cls, v: str) -> str:
        m = SPLIT_SLICE.fullmatch(v.replace(" ", ""))
        if not m:
            raise ValueError(f"{v!r} is not a split: give a name (train) or a slice such as train[:20%] or train[10:500]")
        for bound in (m["start"], m["stop"]):
            if bound and bound.endswith("%") and not -100 <= int(bound[:-1]) <= 100:
                raise ValueError(f"{v!r}: a percentage lies between -100% and 100%")
        return v

    @property
    def split_name(self) -> str:
        """The split without its slice: train for train[:20%]."""
        return SPLIT_SLICE.fullmatch(self.split.replace(" ", ""))["name"]

    @property
    def split_slice(self) -> str | None:
        """The slice part of the split (train[:20%] -> [:20%]), or None for the whole split."""
        spec = self.split.replace(" ", "")
        return spec[len(self.split_name):] or None


CHAT_TEMPLATES = ASSETS / "chat_templates"


def chat_template_names() -> list[str]:
    """The named chat templates shipped in hubtune/assets/chat_templates (Axolotl's, by its names)."""
    return sorted(p.stem for p in CHAT_TEMPLATES.glob("*.jinja"))


FIELD_NAMES = ("instruction", "input", "output", "system", "conversations", "messages", "prompt", "completion", "text",
               "chosen", "rejected", "label")


class ScorerSection(Section):
    callable: str = Field(description="A scoring function as module:function; it takes a list of "
                          "{prompt, completion} rows and returns one number per row.")
    threshold: float = Field(description="Rows scoring below this are dropped.")
    batch_size: int = Field(64, ge=1, description="Rows passed to the scorer per call.")


class MixSection(Section):
    source: DataSource | None = Field(None, description="A general instruction dataset mixed into training against forgetting.")
    ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the training set drawn from source (0: off; 0.05-0.1 is usual).")

    @field_validator("source", mode="before")
    @classmethod
    def _path_as_source(cls, v):
        return {"path": v} if isinstance(v, str) else v

    @field_validator("ratio")
    @classmethod
    def _source_when_mixing(cls, v, info):
        if v > 0 and info.data.get("source") is None:
            raise ValueError("set data.mix.source to a general instruction dataset to mix in")
        return v


class DataSection(Section):
    sources: list[DataSource] = Field(
        default_factory=lambda: [DataSource(path="hubtune:data/invoices/train.jsonl")],
        description="Training data; plain strings are read as paths.")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text", "preference", "kto"] = Field(
        "auto", description="Row format; auto detects it from the columns (preference: prompt/chosen/rejected "
                            "pairs; kto: prompt/completion/label).")
    columns: dict[str, str] = Field(default_factory=dict,
        description="Map hubtune's field names to your columns, e.g. {output: answer, instruction: question}.")
    skip_bad_rows: bool = Field(False, description="Skip and count malformed rows instead of stopping at the first one.")
    chat_template: str = Field(
        "auto", description="auto: the base model's own template (hubtune's default when it has none); default: hubtune's; "
        "or a named template (chatml, llama3, qwen_25, gemma3, ...: hubtune/assets/chat_templates).")
    thinking: Literal["auto", "on", "off"] = Field(
        "auto", description="Reasoning models (Qwen3, DeepSeek-R1): auto trains rows with reasoning in thinking mode and "
                            "the rest with thinking off; on / off: every row.")

    _thinking = field_validator("thinking", mode="before")(lambda v: _on_off(v))
    reasoning_field: str = Field("reasoning_content", min_length=1, description="The key of an assistant turn that "
        "holds its reasoning in the data (e.g. thinking).")
    template_reasoning_key: str = Field("reasoning_content", min_length=1, description="The key the chat template "
        "reads an assistant turn's reasoning from (gpt-oss's template: thinking).")
    val_set_size: float = Field(0.05, ge=0.0, description="Held-out share (< 1) or row count (>= 1) for the held-out loss.")
    max_seq_len: int = Field(2048, ge=16, le=131072, json_schema_extra={"typical": [2048, 8192]},
        description="Longest tokenized example; longer ones are dropped, or kept and truncated with truncate: true.")
    truncate: bool = Field(False, description="Keep examples over max_seq_len (cut in training) instead of dropping them.")
    packing: bool = Field(False, description="Pack several examples into each sequence (faster, same loss).")
    packing_strategy: Literal["bfd", "bfd_split", "wrapped", "sequential"] = Field(
        "bfd", description="With packing: bfd fits whole examples best-first, bfd_split splits the overflow, wrapped cuts "
                           "anywhere, sequential fills each row with whole examples in the data's order.")
    padding_free: bool | Literal["auto"] = Field(
        "auto", description="Batches as one row of examples with position ids, no padding; auto: with FlashAttention on CUDA.")
    dedup_exact: bool = Field(True, description="Drop exact duplicates of normalised prompt + response.")
    near_dup_threshold: float | None = Field(0.8, gt=0.0, le=1.0,
        description="Drop near duplicates at this Jaccard similarity of word shingles (MinHash LSH); null: off.")
    shingle_words: int = Field(3, ge=1, le=10, description="Words per shingle for near-duplicate detection.")
    min_response_tokens: int = Field(2, ge=0, description="Drop responses with fewer tokens (empty ones, one-token ones).")
    short_relative: bool = Field(True,
        description="Short answers are dropped only as outliers: the bar falls to the answers' own 10th percentile, so labels, names and numbers that are the bulk stay; false: min_response_tokens as an absolute bar.")
    max_length_percentile: float | None = Field(None, gt=0.0, lt=100.0,
        description="Drop examples longer than this percentile of token lengths (e.g. 99); null: off.")
    scorer: ScorerSection | None = Field(None, description="Score rows (a reward model, an LLM judge) and drop low scorers.")
    task_column: str = Field("task", description="Column naming each row's task type, for the balance report and cap.")
    max_task_share: float = Field(1.0, gt=0.0, le=1.0, description="Downsample any task above this share of the data (1: no cap).")
    mix: MixSection = Field(default_factory=MixSection, description="Mix in general instruction data at a ratio.")

    def trained_sources(self) -> list[tuple[DataSource, str]]:
        """(source, role) for every dataset that reaches training: the task data, then the general data
        mixed in when mixing is on. The licence gate, the summary and the card all read this list."""
        mixing = self.mix.source is not None and self.mix.ratio > 0
        return [(s, "task") for s in self.sources] + ([(self.mix.source, "mix")] if mixing else [])

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        return [{"path": s} if isinstance(s, str) else s for s in v] if isinstance(v, list) else v

    @field_validator("sources")
    @classmethod
    def _at_least_one(cls, v):
        if not v:
            raise ValueError("list at least one dataset")
        return v

    @field_validator("chat_template")
    @classmethod
    def _known_template(cls, v):
        names = chat_template_names()
        if v not in ("auto", "default", *names):
            raise ValueError(f"{v!r} is not a chat template hubtune has: auto, default, or one of {', '.join(names)}")
        return v

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v):
        unknown = sorted(set(v) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown field {', '.join(unknown)}; map any of {', '.join(FIELD_NAMES)} "
                             f"to a column of yours (task type: use task_column)")
        return v


METHODS = ("sft", "dpo", "orpo", "kto", "grpo")
REWARDS = ("exact_match", "f1", "regex", "json", "length", "judge", "callable")


class RewardSpec(Section):
    name: Literal["exact_match", "f1", "regex", "json", "length", "judge", "callable"] = Field(
        description="exact_match | f1 (against the row's reference), regex | json (format), length, judge, callable.")
    weight: float = Field(1.0, description="Weight of this reward in the sum GRPO optimises.")
    pattern: str | None = Field(None, description="regex: the pattern a completion must match (re.search).")
    target_chars: int | None = Field(None, ge=1, description="length: completions longer than this lose reward in proportion.")
    callable: str | None = Field(None, description="callable: module:function(prompts, completions, references) -> floats. "
                                 "Command line and local page only: never on a shared Space.")
    signature: Literal["hubtune", "trl"] = Field("hubtune", description="callable: hubtune: called as "
        "f(prompts, completions, references) with texts; trl: TRL's (and Axolotl's) convention, "
        "f(prompts=..., completions=..., reference=..., **row columns), completions as TRL gives them.")

    @field_validator("callable")
    @classmethod
    def _module_function(cls, v):
        if v is not None and not re.fullmatch(r"[\w.]+:[\w]+", v):
            raise ValueError(f"{v!r} is not module:function, e.g. my_rewards:short_answers")
        return v

    @model_validator(mode="after")
    def _settings_for_name(self):
        needs = {"regex": "pattern", "length": "target_chars", "callable": "callable"}
        if self.name in needs and getattr(self, needs[self.name]) is None:
            raise ValueError(f"the {self.name} reward needs {needs[self.name]}")
        if self.name == "regex":
            try:
                re.compile(self.pattern)
            except re.error as err:
                raise ValueError(f"pattern {self.pattern!r} is not a valid regular expression ({err})") from None
        return self

    @property
    def label(self) -> str:
        """The reward's name in metrics and the card: exact_match, regex, my_rewards:short_answers."""
        return self.callable if self.name == "callable" else self.name


class ReLoRASection(Section):
    restart_steps: int = Field(ge=1, description="Every this many steps the adapter is merged into the base, starts "
                               "afresh, and the optimizer's state of it is pruned (Axolotl's jagged_restart_steps).")
    warmup_steps: int = Field(10, ge=1, description="The learning rate rises again over this many steps after each "
                              "restart (from 0.001 of the schedule's).")
    anneal_steps: int = Field(1, ge=1, description="The learning rate falls over this many steps before each restart.")
    prune_ratio: float | None = Field(None, gt=0.0, lt=1.0, description="Share of Adam's moments of the adapter "
                                      "zeroed at each restart; None: 0.9 (0.999 with prune_method: reset).")
    prune_method: Literal["magnitude", "random", "reset"] = Field("magnitude", description="magnitude: the smallest "
                                                                  "are zeroed; random, reset: a random share.")


class GRPOSection(Section):
    rewards: list[RewardSpec] = Field(default_factory=lambda: [RewardSpec(name="exact_match")],
        description="Reward functions and their weights; GRPO maximises the weighted sum.")
    num_generations: int = Field(4, ge=2, le=256, description="Completions sampled per prompt (the group).")
    max_completion_length: int = Field(128, ge=1, le=131072, description="Longest sampled completion, in tokens.")
    temperature: float = Field(1.0, gt=0.0, le=5.0, description="Sampling temperature of the generations.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens only; 0: all of them. Keeps "
                       "near-tied junk tokens out of the samples of a model whose right token wins by a hair.")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = Field("dapo", description="How token losses are averaged "
        "(TRL's loss_type): dapo over the batch's tokens, grpo per sequence, dr_grpo by a constant, bnpo per local batch.")
    scale_rewards: Literal["group", "batch", "none"] = Field("group", description="Divide the advantages by the "
        "rewards' standard deviation in each group, over the batch, or not at all.")
    epsilon: float = Field(0.2, gt=0.0, lt=1.0, description="Clipping range of the policy ratio.")

    @field_validator("rewards", mode="before")
    @classmethod
    def _names_as_specs(cls, v):
        return [{"name": r} if isinstance(r, str) else r for r in v] if isinstance(v, list) else v

    @field_validator("rewards")
    @classmethod
    def _at_least_one(cls, v):
        if not v:
            raise ValueError("list at least one reward, e.g. [exact_match]")
        return v


class TrainingSection(Section):
    method: Literal["sft", "dpo", "orpo", "kto", "grpo"] = Field(
        "sft", description="sft: supervised; dpo, orpo, kto: preference data; grpo: sampled answers scored by rewards.")
    beta: float | None = Field(None, ge=0.0, le=100.0, description="dpo/kto: strength of the pull to the reference "
                               "(0.1); orpo: weight of the odds-ratio term (0.1); grpo: KL weight (0: no reference). "
                               "None: the method's default.")
    grpo: GRPOSection = Field(default_factory=GRPOSection, description="GRPO: rewards, group size, sampling.")
    relora: ReLoRASection | None = Field(None, description="ReLoRA: restarts of the adapter, merged into the base "
                                         "each time; the run's adapter holds every cycle (rank r x cycles).")

    def method_beta(self) -> float:
        """beta as set, or the method's default (TRL's: 0.1 for the preference methods, 0 for GRPO)."""
        return self.beta if self.beta is not None else (0.0 if self.method == "grpo" else 0.1)
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate of the adapter.",
                                 json_schema_extra={"typical": [1e-4, 3e-4]})
    epochs: float = Field(3.0, gt=0.0, le=100.0, description="Passes over the training data (ignored when max_steps is set).",
                          json_schema_extra={"typical": [1, 5], "usually_below": 3})
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    micro_batch_size: int = Field(2, ge=1, description="Examples per device per forward pass.")
    gradient_accumulation_steps: int = Field(4, ge=1, description="Micro-batches per optimizer step (effective batch = product).")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field("cosine", description="Learning-rate schedule.")
    warmup_steps: int = Field(50, ge=0, description="Linear warm-up steps.", json_schema_extra={"typical": [50, 100]})
    warmup_shape: Literal["linear", "quadratic"] = Field("linear", description="How the learning rate rises over "
        "the warm-up: linear, or quadratic (the square of the linear rise: slower at first).")
    warmup_ratio: float | None = Field(None, ge=0.0, lt=1.0,
        description="Warm-up as a share of all optimizer steps (rounded up), instead of warmup_steps; null: warmup_steps.")
    optimizer: Literal["auto", "adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_torch_8bit",
                       "adamw_torch_4bit", "adafactor", "sgd"] = Field(
        "auto", description="auto: paged_adamw_8bit on CUDA, adamw_torch on CPU. adamw_8bit: bitsandbytes' 8-bit states; "
        "adamw_torch_8bit / adamw_torch_4bit: torchao's 8- and 4-bit states (pip install 'hubtune[lowbit]').")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam's first-moment decay.")
    adam_beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam's second-moment decay (0.95 for less memory of old gradients).")
    adam_epsilon: float = Field(1e-8, gt=0.0, lt=1.0, description="Adam's epsilon.")
    max_grad_norm: float = Field(0.3, gt=0.0, description="Gradient clipping (QLoRA paper: 0.3).")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute activations to save memory (slower); auto: only when the memory estimate needs it.")
    group_by_length: bool = Field(True, description="Sort each step's examples by length into its micro-batches: same loss, little padding.")
    shuffle: bool = Field(True, description="Draw the examples in random order; false: in the order of the data "
        "(a curriculum).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop when the held-out loss has not improved "
        "for this many evaluations (needs eval_steps or evals_per_epoch); None: train the steps or epochs given.")
    kernels: Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "liger", "eager"] | list[
        Literal["sdpa", "flash_attention_2", "flex_attention", "eager", "liger"]] = Field(
        "auto", description="auto: FlashAttention 2 and Liger kernels on CUDA when installed, else SDPA; liger: SDPA + "
        "Liger; a list names one attention and optionally liger, e.g. [flash_attention_2, liger].")
    attention_kernel: str | None = Field(None, description="An attention kernel from the Hub, used instead of the "
        "attention in kernels, e.g. kernels-community/vllm-flash-attn3 (FlashAttention 3; the `kernels` package "
        "fetches it). Hub code: only from a repo you trust.")
    tf32: bool | Literal["auto"] = Field(False, description="TensorFloat-32 float32 matrix products (10-bit mantissa, "
        "faster); true or auto: on Ampere and newer GPUs, off elsewhere.")
    logging_steps: int = Field(10, ge=1, description="Write a metrics.jsonl line every N steps.")
    eval_steps: int | None = Field(None, ge=1, description="Held-out loss every N steps; None: once per epoch and at the end.")
    evals_per_epoch: int | None = Field(None, ge=0, description="Held-out loss N times per epoch (0: not during "
        "training), spaced over all steps as 1 / (N x epochs) of them; instead of eval_steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps (resume starts from the last one).")
    saves_per_epoch: int | None = Field(None, ge=1, description="Checkpoint N times per epoch, spaced over all steps "
        "as 1 / (N x epochs) of them; instead of save_steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    seed: int = Field(42, description="Seed for data order, adapter init and dropout (0 to 2**32 - 1).")
    backend: Literal["auto", "hf", "unsloth"] = Field(
        "auto", description="auto: Unsloth where it can run (CUDA GPU, unsloth installed), else hf (transformers + PEFT).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio", "swanlab"]] = Field(default_factory=list,
        description="Experiment trackers to log to, through transformers' integrations; [] or none: no tracker.")
    distributed: Literal["none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"] = Field(
        "none", description="Multi-GPU strategy: the accelerate preset `hubtune train` launches with (none: one process).")
    context_parallel_size: int = Field(1, ge=1, description="Split each sequence over this many GPUs, for "
        "sequences one GPU cannot hold (hubtune's context parallelism: packed examples kept apart, Mamba-2 state "
        "passed on): needs distributed: ddp or fsdp, SDPA attention, SFT; the GPUs of a launch must be a multiple "
        "of it.")
    expert_parallel_size: int = Field(1, ge=1, description="Spread each mixture-of-experts layer's experts over this "
        "many GPUs, tokens sent to them all-to-all (transformers' expert parallelism, applied as the base loads, "
        "with FSDP2 on the other weights): needs distributed: ddp and a 16-bit base; the GPUs of a launch and the "
        "experts must be multiples of it. LoRA on the experts (lora.target_parameters) is held per GPU, its own "
        "experts' share, and needs it equal to the GPUs of the launch.")
    push_checkpoints: str | None = Field(
        None, description="OWNER/REPO: mirror the latest checkpoint and the finished run to this private Hub repo.")
    select: Literal["last", "eval_loss", "task"] = Field(
        "last", description="Checkpoint the run keeps: the last, the lowest held-out loss, or task: the best exact "
                            "match on a held-out slice whose regression-set verdict passes (each save is scored).")
    select_examples: int = Field(32, ge=1, le=10_000,
                                 description="With select: task, held-out examples each checkpoint is scored on.")
    desirable_weight: float = Field(1.0, gt=0.0, description="kto: weight of the desirable completions' loss.")
    undesirable_weight: float = Field(1.0, gt=0.0, description="kto: weight of the undesirable completions' loss.")

    @field_validator("kernels")
    @classmethod
    def _one_attention(cls, v):
        if isinstance(v, list) and (not v or len([k for k in v if k != "liger"]) > 1 or len(set(v)) != len(v)):
            raise ValueError("a list of kernels names one attention (sdpa, flash_attention_2, flex_attention, eager), "
                             "once, and optionally liger")
        return v

    def kernel_choice(self) -> tuple[str, bool] | None:
        """(attention, liger) as the config asks for them; None for auto."""
        if self.kernels == "auto":
            return None
        chosen = self.kernels if isinstance(self.kernels, list) else [self.kernels]
        return next((k for k in chosen if k != "liger"), "sdpa"), "liger" in chosen

    @field_validator("attention_kernel")
    @classmethod
    def _kernel_repo(cls, v):
        if v is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?(:[\w.-]+)?", v):
            raise ValueError(f"{v!r} is not a Hub kernel repo: give OWNER/NAME, e.g. kernels-community/vllm-flash-attn3")
        return v

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_list(cls, v):
        if v is None or v == "none":
            return []
        return [v] if isinstance(v, str) else v

    @field_validator("push_checkpoints")
    @classmethod
    def _repo_id(cls, v):
        if v is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", v):
            raise ValueError(f"{v!r} is not a Hub repo id: give OWNER/REPO, e.g. alice/my-run-checkpoints")
        return v

    @field_validator("max_steps", "warmup_steps", "logging_steps", "eval_steps", "save_steps")
    @classmethod
    def _steps_ceiling(cls, v):
        return _at_most(v, STEPS_CEILING)

    @field_validator("micro_batch_size", "gradient_accumulation_steps")
    @classmethod
    def _batch_ceiling(cls, v):
        return _at_most(v, BATCH_CEILING)

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v <= SEED_MAX:
            raise ValueError(f"a seed is a whole number from 0 to {SEED_MAX:,} (numpy's seed range)")
        return v


class RightsDeclaration(Section):
    file: str = Field(description="The data file's name, as the card shows it.")
    sha256: str = Field(description="Its content hash: the declaration covers these bytes only.")
    by: str | None = Field(None, description="Who declared it (the signed-in account; None when not signed in).")
    at: str = Field(description="When, as an ISO 8601 UTC time.")


class LicenceSection(Section):
    use: Literal["personal", "research", "commercial"] = Field("personal", description="What the tuned adapter is for.")
    acknowledge: list[str] = Field(default_factory=list,
        description="Repo ids or data file names whose warn/block licence verdict you accept explicitly.")
    declared: list[RightsDeclaration] = Field(default_factory=list,
        description="Your own files: the uploader's declaration that they hold the rights to use and publish them.")


class OutputSection(Section):
    dir: str | None = Field(None, description="Run folder; None: runs/<timestamp>.")

    def run_dir(self) -> Path:
        return Path(self.dir) if self.dir else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


class EvalSection(Section):
    test: DataSource | None = Field(None, description="Test set for exact match, F1 and the judge; None: the held-out split of data.sources.")
    limit: int | None = Field(None, ge=1, description="Score at most this many test examples per measure (None: all).")
    few_shot_k: int = Field(3, ge=0, le=32, description="Training examples in the base model's few-shot prompt (0: no few-shot column).")
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer, in tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per generation or scoring batch.")
    tasks: list[str] = Field(default_factory=lambda: ["hubtune_general_mc"],
        description="lm-eval harness tasks: harness names (hellaswag, ...) or names in evals/tasks/; [] skips the harness.")
    thinking: Literal["auto", "on", "off"] = Field(
        "auto", description="Reasoning models: generate with thinking on or off; auto: on when training rows carried reasoning.")

    _thinking = field_validator("thinking", mode="before")(lambda v: _on_off(v))
    harness_chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: chat template for generation tasks, raw text for multiple choice.")
    regression_set: str | None = Field("evals:regression/general_mc.jsonl",
        description="Multiple-choice rows {context, choices, label} the base already gets right; None skips it.")
    regression_threshold: float = Field(0.05, ge=0.0, le=1.0,
        description="Largest accuracy drop on the regression set before the run is marked regressed.")
    judge: str | None = Field(None, description="Judge: OpenAI-compatible base URL, Hub model id, or local model folder; None: no judge.")
    judge_model: str | None = Field(None, description="Model name sent to a base-URL judge (as the server expects it).")
    judge_max_items: int = Field(50, ge=1, description="Test examples the judge grades (4 judge calls each).")
    judge_timeout: float = Field(60.0, gt=0.0, description="Seconds to wait for one judge reply.")
    judge_retries: int = Field(3, ge=0, description="Retries of a failed judge call, with exponential backoff.")
    judge_backoff: float = Field(2.0, ge=0.0, description="Seconds before the first retry; doubles each time.")

    @field_validator("batch_size")
    @classmethod
    def _batch_ceiling(cls, v):
        return _at_most(v, BATCH_CEILING)

    @field_validator("max_new_tokens")
    @classmethod
    def _tokens_ceiling(cls, v):
        return _at_most(v, (131_072, "longer than any model's context"))

    @field_validator("test", mode="before")
    @classmethod
    def _path_as_source(cls, v):
        return {"path": v} if isinstance(v, str) else v


class RunConfig(Section):
    """Everything a run needs. `RunConfig()` is the embedded demo: the tiny base on invoices."""

    model: ModelSection = Field(default_factory=ModelSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    data: DataSection = Field(default_factory=DataSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    licence: LicenceSection = Field(default_factory=LicenceSection)
    output: OutputSection = Field(default_factory=OutputSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @model_validator(mode="after")
    def _sixteen_bit_base(self):
        """LoftQ and a dequantized base both start from a 16-bit base; quantized experts from a quantized one,
        loaded whole on each GPU."""
        if self.model.quantization != "none":
            for wanted, on in (("lora.init_weights: loftq (LoftQ quantizes the base itself)", self.lora.init_weights == "loftq"),
                               ("model.dequantize (the base loads dequantized to 16 bits)", self.model.dequantize)):
                if on:
                    raise ValueError(f"{wanted} needs model.quantization: none, not {self.model.quantization}")
        if self.model.quantize_experts:
            if self.model.quantization == "none" or self.model.dequantize:
                raise ValueError("model.quantize_experts quantizes the experts at the base's quantization: set "
                                 "model.quantization to nf4, fp4 or int8")
            if self.training.distributed == "deepspeed-zero3":
                raise ValueError("model.quantize_experts with deepspeed-zero3: ZeRO-3 partitions the base as it is "
                                 "built (deepspeed.zero.Init), before any expert is quantized, and moves parameters "
                                 "only, not a quantized expert's constants; use training.distributed: fsdp (FSDP2: "
                                 "every GPU loads the quantized base, then it is sharded) or ddp")
            if self.model.linearized_experts:
                raise ValueError("model.quantize_experts with model.linearized_experts: those experts are linear "
                                 "layers, which model.quantization already quantizes; leave quantize_experts out")
            if self.training.backend == "unsloth":
                raise ValueError("model.quantize_experts: the Unsloth backend loads the base its own way; "
                                 "use training.backend: hf")
        return self

    @model_validator(mode="after")
    def _under_fsdp(self):
        """What the fsdp presets cannot run, checked before any download or launch (docs/scaling.md)."""
        t = self.training
        if t.distributed != "fsdp":
            return self
        from hubtune.distributed import loads_whole_base
        from hubtune.unfreeze import parse

        fsdp1 = t.context_parallel_size == 1 and not loads_whole_base(self.model, t)  # else an FSDP2 preset
        rows = [p for p in self.lora.unfrozen_parameters if parse(p).rows is not None]
        if fsdp1 and rows:
            raise ValueError(f"lora.unfrozen_parameters {rows[0]} trains embedding rows as a delta beside the frozen "
                             f"embedding (PEFT's trainable_token_indices), and under fsdp (FSDP1, use_orig_params: "
                             f"false) a unit's parameters must all train or all be frozen: wrapping fails with `Must "
                             f"flatten tensors with uniform requires_grad`; name the whole embedding "
                             f"(model.embed_tokens.weight), or use training.distributed: ddp or deepspeed-zero2")
        if t.select == "task":
            raise ValueError("training.select: task scores each checkpoint by generating answers on the main "
                             "process, and under fsdp every forward pass gathers weights from all processes, so the "
                             "others would wait forever; use select: eval_loss (the held-out loss every process "
                             "computes), or training.distributed: ddp")
        return self

    @model_validator(mode="after")
    def _context_parallel(self):
        """What hubtune's context parallelism (hubtune.context_parallel) can run, checked before any launch: the
        processes that share a sequence train one model under DDP or FSDP2, attention runs as SDPA over the
        gathered keys and values, and only the SFT trainer's input_ids and labels are split."""
        t = self.training
        if t.context_parallel_size == 1:
            return self
        from hubtune.distributed import loads_whole_base

        wrong = []
        if t.distributed not in ("ddp", "fsdp"):
            wrong.append(f"training.distributed: ddp or fsdp (not {t.distributed}): the processes that share a "
                         f"sequence each hold the whole model (ddp) or FSDP2's shards of it")
        if t.method != "sft":
            wrong.append(f"training.method: sft (not {t.method}): each process takes its chunk of input_ids and "
                         f"labels, not of the {t.method} trainer's own batch columns")
        attention = (t.kernel_choice() or ("sdpa", False))[0]
        if attention != "sdpa" or t.attention_kernel:
            wrong.append(f"training.kernels: auto, sdpa or liger (not {t.attention_kernel or attention}): each "
                         f"chunk's queries attend over the gathered keys and values with SDPA under the packed "
                         f"examples' mask")
        if t.distributed == "fsdp" and self.model.quantization != "none" and not loads_whole_base(self.model, t):
            wrong.append(f"model.quantization: none (not {self.model.quantization}) under fsdp, or training."
                         f"distributed: ddp: FSDP2 shards a 4- or 8-bit base only when every process loads it "
                         f"(model.quantize_experts, or torchao's low-bit AdamW)")
        if wrong:
            raise ValueError(f"training.context_parallel_size {t.context_parallel_size} needs "
                             + "; ".join(wrong))
        return self

    @model_validator(mode="after")
    def _expert_parallel(self):
        """What transformers' expert parallelism (from_pretrained(distributed_config=...)) can run, checked
        before any launch: it shards the model itself as it loads, so accelerate launches plain processes."""
        t = self.training
        if t.expert_parallel_size == 1:
            return self
        wrong = []
        if t.distributed != "ddp":
            wrong.append(f"training.distributed: ddp (not {t.distributed}): transformers shards the model as it "
                         f"loads (experts over the expert-parallel GPUs, the other weights FSDP2 over all), so the "
                         f"launch must not shard or wrap it again")
        if t.method != "sft":
            wrong.append(f"training.method: sft (not {t.method})")
        if self.model.quantization != "none":
            wrong.append(f"model.quantization: none (not {self.model.quantization}): the experts are sharded as "
                         f"16-bit tensors")
        if t.context_parallel_size > 1:
            wrong.append("training.context_parallel_size: 1: expert and context parallelism are not combined")
        if t.backend == "unsloth":
            wrong.append("training.backend: hf or auto (not unsloth)")
        if wrong:
            raise ValueError(f"training.expert_parallel_size {t.expert_parallel_size} needs " + "; ".join(wrong))
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _problems(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors(include_url=False):
        path = _loc(e["loc"])
        if e["type"] == "extra_forbidden":
            section = _section_for(e["loc"][:-1])
            fields = list(section.model_fields) if section else []
            close = difflib.get_close_matches(str(e["loc"][-1]), fields, n=1)
            guess = f"did you mean {close[0]}? " if close else ""
            out.append((path, f"unknown key; {guess}allowed here: {', '.join(fields)}"))
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) or repr(got) in e["msg"] else f" (got {got!r})"
            out.append((path, e["msg"].removeprefix("Value error, ") + shown))
    return out


def _section_for(loc: tuple) -> type[BaseModel] | None:
    """The model class at a location like ("data", "sources", 0), to list its allowed keys."""
    cls: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue  # an index into a list of sections (data.sources.N)
        field = cls.model_fields.get(part)
        cls = _model_in(field.annotation) if field else None
        if cls is None:
            return None
    return cls


def _model_in(annotation) -> type[BaseModel] | None:
    """The section class inside an annotation: X, list[X], X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if found := _model_in(arg):
            return found
    return None


def parse_overrides(pairs: list[str]) -> dict:
    """`training.learning_rate=1e-4 lora.r=8` -> nested dict; values are read as YAML scalars."""
    tree: dict = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            problems.append((pair, "overrides look like section.key=value"))
            continue
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as err:
            problems.append((key, f"the value {raw!r} is not valid YAML ({getattr(err, 'problem', None) or err}); "
                                  f"write a list as [a, b], and quote text that holds [ ] {{ }} : or #"))
            continue
        node = tree
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                problems.append((key, "a value was already set above this key"))
                break
        else:
            node[leaf] = value
    if problems:
        raise ConfigError(problems, "command-line overrides")
    return tree


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build(data: dict | None = None, overrides: list[str] | None = None, source: str | None = None,
          check_paths: bool = True) -> RunConfig:
    """Validate a dict (plus overrides) into a RunConfig, or raise ConfigError listing every problem.
    check_paths=False: local data paths need not exist (the record of a run trained from them)."""
    tree = merge(data or {}, parse_overrides(overrides or []))
    try:
        return RunConfig.model_validate(tree, context={"check_paths": check_paths})
    except ValidationError as err:
        raise ConfigError(_problems(err), source) from None


def load(path: str | Path | None = None, overrides: list[str] | None = None, check_paths: bool = True) -> RunConfig:
    """Read a YAML run config (None: the defaults) and apply `key.path=value` overrides."""
    if path is None:
        return build({}, overrides)
    p = Path(path)
    if not p.is_file():
        raise ConfigError([("(file)", f"{p} does not exist; pass the path of a YAML run config")], str(p))
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError([(where, f"not valid YAML: {getattr(err, 'problem', err)}")], str(p)) from None
    if not isinstance(data, dict):
        raise ConfigError([("(top level)", "a run config is a mapping of sections (model, lora, data, ...)")], str(p))
    return build(data, overrides, source=str(p), check_paths=check_paths)


def field_at(path: str):
    """The pydantic FieldInfo at a dotted path (`licence.use`, `data.sources.split`), for the CLI and UI
    to take their choices, defaults and help from the config itself."""
    cls: Any = RunConfig
    *parents, leaf = path.split(".")
    for part in parents:
        cls = _model_in(cls.model_fields[part].annotation)
    return cls.model_fields[leaf]
