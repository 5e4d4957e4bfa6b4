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

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hubtune import config as cfg
from hubtune import recurrent
from hubtune.errors import ConfigError, HubtuneError

HUBTUNE_BLOCK = "hubtune"  # settings Axolotl has no key for; Axolotl ignores unknown keys
AXOLOTL_KEYS = frozenset(line for line in (Path(__file__).parent / "axolotl_keys.txt").read_text().splitlines()
                         if line and not line.startswith("#"))  # its schema's keys; it ignores the rest
RUN_SECTIONS = set(cfg.RunConfig.model_fields)

# Where an Axolotl config leaves a key out, Axolotl's default applies (its pydantic schema in
# src/axolotl/utils/schemas/ and its trainer builder), not hubtune's: these are the ones that differ.
AXOLOTL_DEFAULTS = {
    "lora_dropout": 0.0, "sequence_len": 512, "sample_packing": False, "val_set_size": 0.0,
    "num_epochs": 1.0, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "lr_scheduler": "cosine",
    "weight_decay": 0.0, "max_grad_norm": 1.0, "gradient_checkpointing": False, "seed": 42,
    "optimizer": "adamw_torch_fused", "warmup_ratio": 0.03, "save_total_limit": 4, "tf32": "auto",
}
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch", "adamw_hf": "adamw_torch",
              "adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit", "adamw_torch_8bit": "adamw_torch_8bit",
              "adamw_torch_4bit": "adamw_torch_4bit", "adafactor": "adafactor", "sgd": "sgd"}
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
DTYPE_TO_AXOLOTL = {"auto": {"bf16": "auto"}, "bfloat16": {"bf16": True}, "float16": {"bf16": False, "fp16": True},
                    "float32": {"bf16": False, "fp16": False}}
FORMAT_TO_TYPE = {"alpaca": "alpaca", "messages": "chat_template", "sharegpt": "chat_template", "text": "completion"}
SHAREGPT_FIELDS = {"role": "from", "content": "value"}
MESSAGE_FIELDS = {"role": "role", "content": "content"}

# Axolotl dataset types, by what hubtune does with them: the row format it reads them as (with a note
# where rendering differs), or why not. Preference and reward types name their training method; they
# convert once hubtune trains that method (add the type here with its format).
DATASET_TYPES = {
    "alpaca": "alpaca", "alpaca:chat": "alpaca", "alpaca:phi": "alpaca", "alpaca_chat": "alpaca",
    "sharegpt": "sharegpt", "chat_template": "chat", "chat_template.default": "chat", "completion": "text",
}
EXPERTS = ("eager", "grouped_mm", "batched_mm", "sonicmoe", "deepgemm")  # transformers' experts implementations
RL_METHODS = ("dpo", "orpo", "kto", "grpo")  # Axolotl's `rl:` values hubtune trains (training.method)
# Axolotl's preference dataset types that render with a fixed template (the prefix: chatml, llama3) and
# the columns each reads, as hubtune's data.columns: pairs for DPO / ORPO, unpaired rows for KTO. Rows
# that hold whole conversations in chosen and rejected (ultra, argilla_chat) read as hubtune's pairs
# without a prompt: the turns they share are the prompt. In the order export picks them.
TEMPLATED = ("chatml", "llama3")
PAIR_TYPES = {"prompt_pairs": {}, "intel": {"prompt": "question"}, "icr": {"prompt": "input"}, "ultra": {},
              "argilla_chat": {}}
KTO_TYPES = {"prompt_pairs": {}, "intel": {"prompt": "question"}, "argilla": {"prompt": "instruction"}, "ultra": {}}
CHAT_PAIR_TYPES = ("chat_template.default", "chat_template.argilla", "chat_template.argilla_chat", "passthrough")
REWARDS_MODULE = "hubtune.evaluation.rewards"  # hubtune's own rewards, as Axolotl names them (module.function)
BUILTIN_REWARDS = {"exact_match": "exact_match", "f1": "f1", "valid_json": "json"}
GRPO_LOSSES = ("dapo", "grpo", "dr_grpo", "bnpo")
PREFERENCE_METHODS = {  # Axolotl's `rl:` values and reward-model flags, as the refusal names them
    "dpo": "DPO", "ipo": "IPO", "kto": "KTO", "orpo": "ORPO", "simpo": "SimPO", "grpo": "GRPO", "gdpo": "GDPO",
    "ebft": "EBFT", "reward_model": "reward-model", "process_reward_model": "process reward-model",
}
PREFERENCE_TYPES = re.compile(r"(chatml|llama3|chat_template|phi3|zephyr|user_defined|bradley_terry|qwen|"
                              r"gemma|mistral)\.(intel|argilla\w*|ultra|icr|prompt_pairs|nectar|default|"
                              r"chat_template|\w+)$|.*\.transform$|stepwise_supervised|bradley_terry\.\w+")
ALPACA_NOTE = "hubtune renders rows with the base's chat template, not Axolotl's Alpaca prompt text"

# Keys that do not change what is trained (caches, worker counts, padding, logging of the data set),
# accepted with any value.
NO_EFFECT = {"strict", "dataset_prepared_path", "dataset_processes", "dataset_num_proc", "hf_use_auth_token",
             "pad_to_sequence_len", "eval_sample_packing", "is_llama_derived_model", "is_mistral_derived_model",
             "is_qwen_derived_model", "is_falcon_derived_model", "shuffle_merged_datasets", "low_cpu_mem_usage",
             "experimental_skip_move_to_device", "save_safetensors", "tokenizer_use_fast", "use_wandb", "use_mlflow",
             "wandb_name", "wandb_watch", "wandb_log_model", "wandb_run_id", "eval_table_size",
             "eval_max_new_tokens", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_prefetch_factor",
             "use_otel_metrics", "otel_metrics_host", "otel_metrics_port", "include_tokens_per_second"}
# Keys accepted at the values that are what hubtune does anyway.
MATCHING = {
    "load_in_8bit": (False,), "train_on_inputs": (False,), "group_by_length": (False,),
    "flash_attention": (False,), "xformers_attention": (False,), "sdp_attention": (False,),
    "s2_attention": (False,), "flex_attention": (False,), "sage_attention": (False,), "eager_attention": (False,),
    "peft_use_dora": (False,), "peft_use_rslora": (False,), "debug": (False, True), "gptq": (False,),
    "auto_resume_from_checkpoints": (False,), "torch_compile": (False,), "excess_length_strategy": ("drop",),
    "fp8": (False,), "bfloat16": (False,), "float16": (False,), "float32": (False,), "use_tensorboard": (False,),
    "lora_mlp_kernel": (False,), "lora_qkv_kernel": (False,), "lora_o_kernel": (False,), "dp_shard_size": (1,),
    "dp_replicate_size": (1,), "context_parallel_size": (1,), "tensor_parallel_size": (1,),
    "expert_parallel_size": (1,), "save_strategy": ("steps",), "activation_offloading": (False,),
    "cut_cross_entropy": (False,), "flash_attn_cross_entropy": (False,), "flash_attn_rms_norm": (False,),
    "flash_attn_fuse_mlp": (False,), "flash_attn_fuse_qkv": (False,), "use_kernels": (False,), "ddp": (False,),
    "quantize_moe_experts": (False,), "sample_packing_sequentially": (False,), "curriculum_sampling": (False,),
    "tokenizer_use_mistral_common": (False,), "lora_fan_in_fan_out": (False, True), "relora": (False,), "relora_cpu_offload": (False,),
    "save_only_model": (False,), "resize_token_embeddings_to_32x": (False,), "use_ray": (False,),
    "use_swanlab": (False,), "remove_unused_columns": (True,), "eval_causal_lm_metrics": ([],),
    "do_causal_lm_eval": (False,), "gradient_checkpointing_kwargs": ({"use_reentrant": False},),
    "nvfp4_merge_aware": (False,),
}
# Keys accepted at any value, with a note on what hubtune does instead: speed or memory settings that
# leave the computed updates as they are, and checks that only stop a run.
NOTED = {
    "lora_mlp_kernel": "Axolotl's fused LoRA kernels only speed up the same computation; hubtune runs PEFT's LoRA layers",
    "lora_qkv_kernel": "Axolotl's fused LoRA kernels only speed up the same computation; hubtune runs PEFT's LoRA layers",
    "lora_o_kernel": "Axolotl's fused LoRA kernels only speed up the same computation; hubtune runs PEFT's LoRA layers",
    "gradient_checkpointing_kwargs": "hubtune checkpoints with use_reentrant: false (the same gradients)",
    "activation_offloading": "hubtune keeps checkpointed activations on the GPU: the same training, more GPU memory",
    "flash_attn_cross_entropy": "flash-attn's fused kernels only speed up the same computation; hubtune runs transformers' own",
    "flash_attn_rms_norm": "flash-attn's fused kernels only speed up the same computation; hubtune runs transformers' own",
    "flash_attn_fuse_mlp": "flash-attn's fused kernels only speed up the same computation; hubtune runs transformers' own",
    "flash_attn_fuse_qkv": "flash-attn's fused kernels only speed up the same computation; hubtune runs transformers' own",
    "torch_compile": "hubtune does not compile the model with torch.compile (speed only)",
    "fused_attn_kernel": "Axolotl's fused RMSNorm + RoPE kernel only speeds up the same computation; hubtune runs "
                         "transformers' own",
    "torch_compile_mode": "hubtune does not compile the model with torch.compile (speed only)",
    "flex_attn_compile_kwargs": "transformers compiles flex attention with its own arguments (speed only)",
    "use_dsv4_kernels": "Axolotl's DeepSeek V4 kernels only speed up the same computation; hubtune runs transformers' own",
    "use_glm_dsa_kernels": "Axolotl's GLM sparse-attention kernels only speed up the same computation; hubtune runs "
                           "transformers' own",
    "gptq_disable_exllama": "GPTQModel picks the kernel GPTQ weights train with (ExLlama's serve inference only)",
    "ddp_find_unused_parameters": "hubtune lets DDP expect a gradient for every LoRA weight (each gets one every step)",
    "loss_watchdog_threshold": "hubtune does not stop a run whose loss passes a threshold; watch metrics.jsonl",
    "loss_watchdog_patience": "hubtune does not stop a run whose loss passes a threshold; watch metrics.jsonl",
    "lora_fan_in_fan_out": "PEFT sets fan_in_fan_out itself from the layer type (Conv1D or Linear)",
    "resize_token_embeddings_to_32x": "hubtune sizes the embedding to the vocabulary (padding rows are never used)",
    "eval_batch_size": "hubtune evaluates twice micro_batch_size examples at a time (the same loss)",
    "save_only_model": "hubtune also saves the optimizer state, so `hubtune train --resume` can continue",
    "auto_resume_from_checkpoints": "continue a run with `hubtune train --resume RUN`",
    "save_safetensors": "hubtune saves safetensors",
    "relora_cpu_offload": "where ReLoRA's merges compute (the same merged weights); hubtune merges where the "
                          "weight lives",
    "vllm": "hubtune samples GRPO's completions with transformers' generate (the same sampling, slower); "
            "no vLLM server is used",
}
NOT_CONVERTED = "not trained by hubtune, which trains DPO, ORPO, KTO and GRPO (rl: dpo | orpo | kto | grpo)"
# NVIDIA's NVFP4 checkpoints (nvidia/*-NVFP4), saved by ModelOpt, load through hubtune.nvfp4: the weights stay
# packed and are dequantized when read, and LoRA trains on that 16-bit weight. Axolotl's keys for them:
# dsv4_fp4_grouped_mode picks the expert GEMM kernel; nvfp4_merge_aware is lora.nvfp4_merge_aware.
FP4_GROUPED = ("Axolotl's grouped NVFP4 experts kernel: on Ampere, Ada, Hopper and RTX Blackwell GPUs its forward "
               "multiplies 16-bit activations by the dequantized NVFP4 experts (Marlin W4A16) and every backward "
               "dequantizes them to bf16, the computation hubtune runs (PEFT's LoRA over the dequantized weight); "
               "on B200-class GPUs (sm100) Axolotl's forward uses DeepGEMM, fp8 activations against the experts "
               "re-quantized to MXFP4, which hubtune does not reproduce")
NVFP4_SHARDED = ("hubtune launches FSDP2 with every process loading the packed NVFP4 base whole onto its GPU, then "
                 "sharding its uint8 weights (fsdp2-quantized-experts.yaml: fsdp_version 2, cpu_ram_efficient_loading "
                 "false); each weight's block and global scales stay whole in every process")
DSV4_FP8_BASE = ("DeepSeek V4's NVFP4 release (nvidia/DeepSeek-V4-Flash-NVFP4) declares quant_method fp8 with NVFP4 "
                 "experts inside (moe_quant_algo NVFP4), under DeepSeek's tensor names; Axolotl loads it through a "
                 "quantizer of its own (nvfp4_fp8_quantizer.py), hubtune through hubtune.nvfp4: the block-wise FP8 "
                 "weights stay FP8 and the NVFP4 experts packed, each dequantized to the compute dtype when read "
                 "(Axolotl holds the FP8 weights as torchao Float8Tensor, or bf16 with dsv4_fp8_nonexpert_mode: "
                 "bf16, and computes with them in bf16 as well)")
WHY = {  # the reason, and where there is one the fix, for keys hubtune cannot honour
    "rl": f"is {NOT_CONVERTED}",
    "reward_model": "reward-model training (a scoring head): hubtune trains adapters of causal language models with "
                    "sft, dpo, orpo, kto or grpo",
    "process_reward_model": "reward-model training (a scoring head): hubtune trains adapters of causal language "
                            "models with sft, dpo, orpo, kto or grpo",
    "train_on_inputs": "hubtune learns the completions only (the prompt is context)",
    "lora_model_dir": "not converted: continue a saved adapter with lora.init_from in a hubtune run config",
    "hub_model_id": "publish with `hubtune push RUN --repo OWNER/NAME` after training",
    "resume_from_checkpoint": "continue a hubtune run with `hubtune train --resume RUN`",
    "s2_attention": "shifted-sparse attention changes what the model attends to; hubtune runs full attention",
    "peft_use_dora": "DoRA adapters: hubtune trains LoRA",
    "processor_type": "a vision / audio model with a processor: hubtune trains text-only causal language models",
    "qat": "quantization-aware training: hubtune trains LoRA on a fixed (4-bit or 16-bit) base",
    "peft": "PEFT options beyond LoRA's (LoftQ initialisation): hubtune starts adapters as PEFT's default",
    "tiled_mlp": "Axolotl's tiled MLP: hubtune runs transformers' own MLP",
    "trl": "TRL trainer settings: hubtune reads them with rl: dpo, orpo, kto or grpo",

    "experts_implementation": f"transformers computes experts as {', '.join(EXPERTS)} (Axolotl's scattermoe: the "
                              f"same computation)",
    "model_config": "hubtune loads the model's config.json as saved (output_router_logits aside)",
    "model_quantization_config": "hubtune quantizes with bitsandbytes (load_in_4bit) or not at all",
    "model_quantization_config_kwargs": "hubtune quantizes with bitsandbytes (load_in_4bit) or not at all",
    "context_parallel_size": "give the number of GPUs that share each sequence, a whole number (1: none)",
    "tensor_parallel_size": "tensor parallelism: hubtune's launches are DDP, FSDP and DeepSpeed ZeRO",
    "expert_parallel_size": "give the number of GPUs the experts are spread over, a whole number (1: none)",
    "expert_parallel_num_nvl_bytes": "a setting of Axolotl's expert parallelism, read only with expert_parallel_size > 1",
    "expert_parallel_num_rdma_bytes": "a setting of Axolotl's expert parallelism, read only with expert_parallel_size > 1",
    "expert_parallel_token_capacity": "a setting of Axolotl's expert parallelism, read only with expert_parallel_size > 1",
    "dp_shard_size": "hubtune's FSDP shards over every GPU of the launch (dp_shard_size: 1 or the GPU count)",
    "dp_replicate_size": "hubtune's FSDP shards over every GPU of the launch (hybrid sharding is not offered)",
    "use_ray": "hubtune launches its processes with accelerate, not Ray",
    "early_stopping_patience": "hubtune trains for the epochs or steps given; it does not stop on a rising eval loss",
    "cosine_min_lr_ratio": "hubtune's cosine schedule decays to zero",
    "cosine_constant_lr_ratio": "hubtune's cosine schedule decays to zero",
    "lr_scheduler_kwargs": "hubtune runs transformers' schedules with their default arguments",
    "optim_args": "hubtune runs the optimizer with its default arguments",
    "test_datasets": "a separate held-out set for the loss: hubtune holds out val_set_size of the training data",
    "pretraining_dataset": "a streamed pre-training corpus: list it under datasets with type: completion instead",
    "min_sample_len": "hubtune keeps every example up to sequence_len, however short",
    "relora_prune_ratio": "a setting of ReLoRA, which runs with relora: true",
    "relora_prune_method": "a setting of ReLoRA, which runs with relora: true",
    "jagged_restart_steps": "without relora: true, Axolotl restarts the learning rate alone at these steps "
                            "(JaggedLRRestartScheduler), which hubtune does not run; with relora: true it is "
                            "ReLoRA's cycle (training.relora)",
    "jagged_restart_warmup_steps": "without relora: true, Axolotl's learning-rate restarts alone, which hubtune "
                                   "does not run",
    "jagged_restart_anneal_steps": "without relora: true, Axolotl's learning-rate restarts alone, which hubtune "
                                   "does not run",
    "chat_template_jinja": "hubtune renders with a named template or the base's own (chat_template)",
    "device_map": "hubtune places the base itself (one GPU per process)",
    "max_memory": "hubtune places the base itself (one GPU per process)",
    "remove_unused_columns": "keeping extra columns is for vision / audio collators: hubtune trains on text",
    "skip_prepare_dataset": "datasets prepared by the collator (vision / audio): hubtune prepares the text itself",
    "eval_causal_lm_metrics": "generation metrics during training (sacrebleu, comet, ter, chrf): run `hubtune eval "
                              "RUN` after training; perplexity alone is exp(eval_loss), which hubtune logs",
    "do_causal_lm_eval": "generation metrics during training: run `hubtune eval RUN` after training",
    "embedding_lr": "hubtune trains everything at one learning rate",
    "embedding_lr_scale": "hubtune trains everything at one learning rate",
    "lr_groups": "hubtune trains everything at one learning rate",
    "neftune_noise_alpha": "hubtune adds no noise to embeddings",
    "freeze_mm_modules": "a vision / audio model: hubtune trains text-only causal language models",
}
PLUGINS = {  # Axolotl plugins: the kernel hubtune runs in their place, "same" (what hubtune does anyway), None (why not)
    "axolotl.integrations.liger.LigerPlugin": ("liger", None),
    "axolotl.integrations.liger.plugin.LigerPlugin": ("liger", None),
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin": (
        "same", "Cut Cross Entropy: TRL's trainer already computes the loss through a fused, chunked LM head "
                "without materialising all logits (the same loss)"),
    "axolotl.integrations.kernels.KernelsPlugin": (
        "same", "KernelsPlugin: what it switches on is read from use_kernels, use_scattermoe and use_sonicmoe"),
    "axolotl.integrations.expert_parallel.ExpertParallelPlugin": ("expert_parallel", None),
    "axolotl.integrations.swanlab.SwanLabPlugin": (
        "same", "SwanLabPlugin: hubtune logs to SwanLab through transformers' integration when use_swanlab is true"),
}
LIGER_FLAGS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_rms_norm_gated",
               "liger_fused_linear_cross_entropy", "liger_cross_entropy", "liger_swiglu")
AXOLOTL_EXPERTS = {  # Axolotl's own experts kernels: the same experts computation as transformers' default
    "scattermoe": "Axolotl's ScatterMoE kernels compute the same experts (and their LoRA) faster; hubtune runs "
                  "transformers' default experts implementation (grouped_mm where it can run)",
}
ATTENTION = {"flash_attention_2": "flash_attention_2", "sdpa": "sdpa", "eager": "eager",
             "flex_attention": "flex_attention", "xformers": "sdpa"}
XFORMERS_NOTE = ("xformers: transformers has no xformers attention; hubtune runs PyTorch's SDPA, which computes "
                 "the same exact attention (its memory-efficient kernel)")
FSDP_OFFLOAD = ("offload_params", "fsdp_offload_params")


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
        self.given = dict(self.data)  # as written, for checks between keys already taken
        self.extra = data.get(HUBTUNE_BLOCK) or {}
        self.notes: list[str] = []
        self.unsupported: list[tuple[str, str]] = []
        self.base_model = ""
        self.nvfp4_base = False  # dsv4_fp4_grouped_mode: nvfp4 (the base is a ModelOpt NVFP4 checkpoint)

    def take(self, key: str, default: Any = None) -> Any:
        value = self.data.pop(key, None)
        return default if value is None else value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def refuse(self, key: str, why: str) -> None:
        self.unsupported.append((key, why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def translate(self) -> Translation:
        self.method()
        tree = {"model": self.model(), "lora": self.lora(), "data": self.datasets(), "training": self.training()}
        self.context_parallel(tree)
        self.expert_parallel(tree)
        self.fsdp_optimizer(tree)
        self.sharded_int8(tree)
        self.sharded_nvfp4(tree)
        if self.has("output_dir"):
            tree["output"] = {"dir": str(self.take("output_dir"))}
        self.leftovers()
        if not isinstance(self.extra, dict):
            self.refuse(HUBTUNE_BLOCK, "must be a mapping of hubtune run config sections")
        else:
            tree = cfg.merge(tree, self.extra)
        return Translation(tree, self.notes, self.unsupported)

    # ---- sections -------------------------------------------------------------------------------
    def method(self) -> None:
        """Preference and reward training, by name (their datasets are refused with them)."""
        self.preference = None  # a method hubtune does not train, by name
        self.rl = None  # dpo, orpo, kto or grpo: training.method
        self.type_templates: set[str] = set()  # the templates preference types render with (chatml, llama3)
        self.reasoning: dict[str, set[str]] = {}  # field_thinking / template_thinking_key of the datasets
        if self.has("rl"):
            rl = str(self.data["rl"])
            if rl.lower() in RL_METHODS:
                self.rl = rl.lower()
                self.take("rl")
            else:
                self.preference = PREFERENCE_METHODS.get(rl.lower(), rl)
                self.refuse("rl", f"{self.take('rl')!r}: {self.preference} {WHY['rl']}")
        for key in ("reward_model", "process_reward_model"):
            if self.data.get(key):
                self.preference = PREFERENCE_METHODS[key]
                self.refuse(key, f"{self.take(key)!r}: {WHY[key]}")

    def model(self) -> dict:
        if not self.has("base_model"):
            self.refuse("base_model", "missing: the model to fine-tune (a Hub id or a local folder)")
        model = {"id": str(self.take("base_model", ""))}
        self.base_model = model["id"]
        if self.has("revision_of_model"):
            model["revision"] = str(self.take("revision_of_model"))
        model["trust_remote_code"] = bool(self.take("trust_remote_code", False))
        for key in ("base_model_config", "tokenizer_config"):
            if self.data.get(key) == model["id"]:
                self.take(key)
        for key, suffix in (("model_type", "ForCausalLM"), ("tokenizer_type", "Tokenizer")):
            value = self.data.get(key)
            if value is None or str(value).endswith(suffix):
                self.take(key)  # the Auto* classes hubtune loads with resolve to these anyway
            elif key == "model_type" and value == "Llama4ForConditionalGeneration":
                self.take(key)
                self.note("model_type: Llama4ForConditionalGeneration: Axolotl loads Llama 4's vision-language class, "
                          "and on text-only rows it runs its language model alone; hubtune loads that language model "
                          "(AutoModelForCausalLM: Llama4ForCausalLM, without the unused vision tower): the same "
                          "computation and LoRA layers, the adapter's names relative to the text model "
                          "(model.layers.N..., not language_model.model.layers.N...)")
            elif key == "model_type":
                self.refuse(key, f"{self.take(key)!r}: hubtune trains causal language models (AutoModelForCausalLM); "
                                 f"a vision / audio model class is not loaded")

        adapter = self.take("adapter")
        four_bit = bool(self.take("load_in_4bit", False))
        if adapter not in ("lora", "qlora"):
            self.refuse("adapter", f"{adapter!r}: hubtune trains LoRA adapters; set adapter: lora or qlora"
                        if adapter else "not set (a full fine-tune): hubtune trains adapters; set adapter: lora or qlora")
        if adapter == "qlora" and not four_bit:
            self.refuse("load_in_4bit", "adapter: qlora needs load_in_4bit: true (as in Axolotl)")
        eight_bit = bool(self.take("load_in_8bit", False))
        if eight_bit and (four_bit or adapter == "qlora"):
            self.refuse("load_in_8bit", "True: contradicts load_in_4bit / adapter: qlora; give one of them")
        bnb = dict(self.take("bnb_config_kwargs", {}) or {})
        model["quantization"] = str(bnb.pop("bnb_4bit_quant_type", "nf4")) if four_bit else "int8" if eight_bit else "none"
        model["double_quant"] = bool(bnb.pop("bnb_4bit_use_double_quant", True))
        if bnb.pop("llm_int8_has_fp16_weight", False):
            self.refuse("bnb_config_kwargs.llm_int8_has_fp16_weight", "8-bit weights are not used by hubtune")
        for key, value in bnb.items():
            self.refuse(f"bnb_config_kwargs.{key}", f"{shown(value)}: hubtune sets the rest of the 4-bit config itself")
        model["compute_dtype"] = self.precision()
        model.update(self.tokens())
        model.update(self.model_extras(model))
        overrides = self.take("model_config")
        if overrides is not None:
            overrides = dict(overrides) if isinstance(overrides, dict) else {"(value)": overrides}
            if overrides.pop("output_router_logits", False) is True:
                model["router_aux_loss"] = True
            for key, value in overrides.items():
                self.refuse(f"model_config.{key}", f"{shown(value)}: {WHY['model_config']}")
        return model

    def model_extras(self, model: dict) -> dict:
        """Hub kernels, the experts' implementation, a dequantized MXFP4 base and Mistral's own tokenizer."""
        out: dict = {}
        if self.data.get("use_kernels") is True:
            out["use_kernels"] = bool(self.take("use_kernels"))
        experts = self.data.get("experts_implementation")
        if experts is not None:
            if experts in EXPERTS:
                out["experts_implementation"] = self.take("experts_implementation")
            elif experts in AXOLOTL_EXPERTS:
                self.take("experts_implementation")
                self.note(f"experts_implementation: {experts}: {AXOLOTL_EXPERTS[experts]}")
        if self.data.get("use_sonicmoe") is True:
            self.take("use_sonicmoe")
            if out.get("experts_implementation", "sonicmoe") != "sonicmoe":
                self.refuse("use_sonicmoe", f"True: contradicts experts_implementation {out['experts_implementation']}")
            out["experts_implementation"] = "sonicmoe"  # transformers' own SonicMoE experts forward
        if self.data.get("quantize_moe_experts") is True:
            self.take("quantize_moe_experts")
            if why := self.experts_stay_16_bit(model):
                self.refuse("quantize_moe_experts", f"True: {why}")
            else:
                out["quantize_experts"] = True
        if self.data.get("use_scattermoe") is True:
            self.take("use_scattermoe")
            self.note(f"use_scattermoe: {AXOLOTL_EXPERTS['scattermoe']}")
        if self.has("dsv4_fp4_grouped_mode"):
            mode = self.take("dsv4_fp4_grouped_mode")
            if str(mode).lower() != "nvfp4":
                self.refuse("dsv4_fp4_grouped_mode", f"{mode!r}: Axolotl trains with nvfp4 only (it rejects fp8 and "
                                                     f"any other value)")
            else:
                self.nvfp4_base = True
                self.note(f"dsv4_fp4_grouped_mode: nvfp4: {FP4_GROUPED}")
                if self.given.get("use_dsv4_kernels"):
                    self.note(f"dsv4_fp4_grouped_mode: nvfp4 on DeepSeek V4 (use_dsv4_kernels): {DSV4_FP8_BASE}")
                if out.pop("use_kernels", False):
                    self.note("use_kernels: True: transformers' Hub kernels only speed up the same layers, and an "
                              "NVFP4 base's layers read their weights through hubtune's dequantizing "
                              "parametrization, which Hub kernels do not; hubtune runs transformers' own layers")
        quantization = self.data.get("model_quantization_config")
        kwargs = self.data.get("model_quantization_config_kwargs") or {}
        if quantization == "Mxfp4Config" and kwargs == {"dequantize": True}:
            self.take("model_quantization_config"), self.take("model_quantization_config_kwargs")
            out["dequantize"] = True
            if model.get("quantization") != "none":
                self.refuse("model_quantization_config", "'Mxfp4Config' with dequantize: the base loads dequantized "
                                                         "to 16 bits; leave load_in_4bit / load_in_8bit out")
        if self.data.get("gptq") is True:
            self.take("gptq")
            self.note("gptq: the base is saved GPTQ-quantized and loads as saved (transformers needs optimum and "
                      "gptqmodel installed); PEFT trains LoRA on its GPTQ layers")
        if self.has("llama4_linearized_experts") and self.take("llama4_linearized_experts"):
            out["linearized_experts"] = True  # Axolotl's re-saved Llama 4, one linear layer per expert
        if self.data.get("tokenizer_legacy") is not None:
            out["tokenizer_legacy"] = bool(self.take("tokenizer_legacy"))
        if self.data.get("tokenizer_use_mistral_common") is True:
            self.take("tokenizer_use_mistral_common")
            out["tokenizer_backend"] = "mistral-common"
        return out

    def experts_stay_16_bit(self, model: dict) -> str | None:
        """Why quantize_moe_experts cannot be honoured with the rest of the config; None when it can."""
        if model.get("quantization") == "none":
            return "needs load_in_4bit or load_in_8bit (as in Axolotl)"
        if "zero3" in str(self.data.get("deepspeed") or ""):
            return ("with ZeRO-3: DeepSpeed partitions the base as it is built (deepspeed.zero.Init), before any "
                    "expert is quantized, and moves parameters only, not a quantized expert's constants; use fsdp "
                    "(FSDP2) or DDP, or leave quantize_moe_experts out")
        if self.data.get("fsdp") or self.data.get("fsdp_config"):
            self.note("quantize_moe_experts with fsdp: hubtune launches FSDP2 with every process loading the quantized "
                      "base whole, then sharding it (fsdp2-quantized-experts.yaml: fsdp_version 2, "
                      "cpu_ram_efficient_loading false), as Axolotl runs QLoRA on FSDP2")
        return None

    def precision(self) -> str:
        bf16, fp16 = self.take("bf16", "auto"), self.take("fp16")
        for key in ("bfloat16", "float16", "float32"):  # the non-mixed-precision spellings
            if self.data.get(key) is True:
                self.take(key)
                return key
        if bf16 == "full":
            self.note("bf16: full also evaluates in bf16 in Axolotl; hubtune computes in bfloat16")
            return "bfloat16"
        if bf16 is True:
            return "bfloat16"
        if fp16 is True:
            return "float16"
        return "auto" if bf16 == "auto" else "float32"

    def tokens(self) -> dict:
        """special_tokens (bos/eos/pad/unk, extra ones), tokens and eot_tokens: set on the tokenizer and,
        where new to the vocabulary, added with their embedding and output rows trained."""
        out: dict = {}
        special = self.take("special_tokens", {})
        if not isinstance(special, dict):
            self.refuse("special_tokens", f"{shown(special)}: a mapping such as {{pad_token: <|end_of_text|>}}")
            special = {}
        special = dict(special)
        added = [str(t) for t in special.pop("additional_special_tokens", None) or []]
        chosen = {k: str(special.pop(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                  if special.get(k) is not None}
        for key, value in special.items():
            if value is not None:
                self.refuse(f"special_tokens.{key}", f"{shown(value)}: hubtune sets bos, eos, pad and unk tokens "
                                                     f"and additional_special_tokens")
        if chosen:
            out["special_tokens"] = chosen
        for key in ("tokens", "eot_tokens"):
            value = self.take(key, [])
            if not isinstance(value, list):
                self.refuse(key, f"{shown(value)}: a list of tokens")
                continue
            added += [str(t) for t in value]
            if key == "eot_tokens" and value:
                self.note(f"eot_tokens {shown(value)}: added to the vocabulary where new; hubtune learns each "
                          f"assistant turn as the chat template ends it (checked to end with the EOS token)")
        if added:
            out["added_tokens"] = list(dict.fromkeys(t for t in added if t not in chosen.values()))
            if not out["added_tokens"]:
                del out["added_tokens"]
        return out

    def lora(self) -> dict:
        lora = {"dropout": float(self.take("lora_dropout", AXOLOTL_DEFAULTS["lora_dropout"]))}
        for key, name in (("lora_r", "r"), ("lora_alpha", "alpha")):
            if self.has(key):
                lora[name] = self.take(key)
            else:
                default = getattr(cfg.LoraSection(), name)
                self.note(f"{key} not set: hubtune's default {default}")
        modules = self.take("lora_target_modules")
        if self.take("lora_target_linear", False):
            lora["target_modules"] = "all-linear"  # Axolotl adds the named ones to all linear layers: the same set
        elif isinstance(modules, str):
            if re.fullmatch(r"\w+", modules):
                lora["target_modules"] = [modules]
            else:
                lora["target_regex"] = modules  # PEFT matches a string target_modules as a full regex, as Axolotl
        elif modules:
            lora["target_modules"] = [str(m) for m in modules]
        elif not self.has("lora_target_parameters"):
            self.note("neither lora_target_modules nor lora_target_linear set: hubtune targets all linear layers")
        parameters = self.take("lora_target_parameters")
        if parameters:
            lora["target_parameters"] = [parameters] if isinstance(parameters, str) else [str(p) for p in parameters]
            if not modules and "target_modules" not in lora:
                lora["target_modules"] = []  # the parameters only, as PEFT takes them
        if self.has("lora_modules_to_save"):
            lora["modules_to_save"] = [str(m) for m in self.take("lora_modules_to_save")]
        if self.data.get("nvfp4_merge_aware") is True:
            self.merge_aware(lora)
        if self.has("unfrozen_parameters"):
            self.unfrozen(lora)
        if self.data.get("peft_use_rslora") is True:
            lora["use_rslora"] = bool(self.take("peft_use_rslora"))
        peft = self.data.get("peft")
        if isinstance(peft, dict) and set(peft) == {"loftq_config"} and isinstance(peft["loftq_config"], dict) \
                and set(peft["loftq_config"]) <= {"loftq_bits"}:
            self.take("peft")
            lora.update(init_weights="loftq", loftq_bits=int(peft["loftq_config"].get("loftq_bits", 4)))
        return lora

    def unfrozen(self, lora: dict) -> None:
        """Axolotl matches unfrozen_parameters against the names of the model it trains, which under an
        adapter is PEFT's wrapper (base_model.model.<base name>, the adapter's lora_A / lora_B among them),
        and freezes every parameter no pattern matches, the adapter's included (utils/freeze.py, called on
        ModelLoader.load()'s PeftModel in train.py). Converted to what that trains."""
        raw = self.take("unfrozen_parameters")
        patterns = [raw] if isinstance(raw, str) else [str(p) for p in raw]
        try:
            kinds = {p: _peft_pattern_kind(p) for p in patterns}
        except ValueError as err:
            self.refuse("unfrozen_parameters", f"{shown(raw)}: {err}")
            return
        base = [p for p, kind in kinds.items() if kind == "base"]
        unclear = [p for p, kind in kinds.items() if kind == "unclear"]
        if unclear:
            self.refuse("unfrozen_parameters", f"{shown(raw)}: {', '.join(unclear)} does not start with "
                        f"base_model.model.<base name>, so which parameters of the PEFT-wrapped model it matches (the "
                        f"adapter's lora_A / lora_B, base weights) depends on names hubtune does not load to convert; write each pattern as ^base_model.model.<base name> and keep the adapter "
                        f"training with ^base_model.model.+lora_, or set lora.unfrozen_parameters (base names)")
            return
        if not _keeps_adapter(patterns):
            what = (f"{', '.join(base)} train{'s' if len(base) == 1 else ''} in full while the adapter stays frozen "
                    f"at its start (a no-op)" if base else
                    "none of them matches a parameter of the adapter-wrapped model, whose names start with "
                    "base_model.model., so Axolotl freezes every parameter, the adapter's included, and trains "
                    "nothing (it logs \"All parameters are frozen. Model will not be trained.\")")
            self.refuse("unfrozen_parameters", f"{shown(raw)}: Axolotl matches these against the names of the "
                        f"PEFT-wrapped model and freezes what they do not match: {what}. hubtune always trains "
                        f"the adapter; leave the key out to train it alone, or name base weights to train beside it "
                        f"as ^base_model.model.<base name> with ^base_model.model.+lora_ (or lora.unfrozen_parameters)")
            return
        for p in patterns:
            if kinds[p] == "none":
                self.note(f"unfrozen_parameters: {p} matches no parameter of the adapter-wrapped model (its names "
                          f"start with base_model.model.): Axolotl unfreezes nothing by it, nor does hubtune")
        if base:
            lora["unfrozen_parameters"] = [_base_relative(p) for p in base]
        else:
            self.note(f"unfrozen_parameters: {shown(raw)}: keeps the adapter training and no base weight, "
                      f"which is what hubtune trains anyway")

    def datasets(self) -> dict:
        data: dict = {
            "max_seq_len": self.take("sequence_len", AXOLOTL_DEFAULTS["sequence_len"]),
            "packing": bool(self.take("sample_packing", AXOLOTL_DEFAULTS["sample_packing"])),
            # Axolotl runs none of hubtune's extra data checks; exact duplicates only when asked.
            "dedup_exact": bool(self.take("dataset_exact_deduplication", False)),
            "near_dup_threshold": None,
            "min_response_tokens": 0,
        }
        if self.data.get("sample_packing_sequentially") is True:
            self.packed_in_order(data)
        if data["packing"] and (leak := recurrent.packing_problem_by_name(self.base_model)):
            # hubtune refuses it before training too (train.check_against_model), from the model's config.
            self.refuse("sample_packing", f"True: {leak}; set sample_packing: false")
        val = self.take("val_set_size", AXOLOTL_DEFAULTS["val_set_size"])
        if isinstance(val, (int, float)) and 0 <= val < 1:
            data["val_set_size"] = val
        else:
            self.refuse("val_set_size", f"{val!r}: give a share between 0 and 1")
        if self.data.get("excess_length_strategy") == "truncate":
            self.take("excess_length_strategy")
            data["truncate"] = True
        self.note("hubtune's near-duplicate and short-answer filters are off, as in Axolotl "
                  "(turn them on with data.near_dup_threshold=0.8 data.min_response_tokens=2)")
        template = self.take("chat_template")
        if template is not None:
            template = str(template)
            if template == "tokenizer_default":
                data["chat_template"] = "auto"
            elif template.startswith("tokenizer_default_fallback_"):
                data["chat_template"] = "auto"
                self.note(f"chat_template: {template}: a base without a template gets hubtune's default "
                          f"template, not {template.rsplit('_', 1)[-1]}")
            elif template in cfg.chat_template_names():
                data["chat_template"] = template
            else:
                self.refuse("chat_template", f"{template!r}: hubtune has no template by that name; it has "
                                             f"tokenizer_default and {', '.join(cfg.chat_template_names())}")
        entries = self.take("datasets") or []
        if not isinstance(entries, list) or not entries:
            why = "list at least one dataset: [{path, type}]"
            if self.has("pretraining_dataset"):
                why = f"none; pretraining_dataset ({shown(self.take('pretraining_dataset'))}) is not read by " \
                      f"hubtune: {WHY['pretraining_dataset']}"
            self.refuse("datasets", why)
            return data
        sources, formats, columns = [], [], []
        for i, entry in enumerate(entries):
            got = self.dataset(i, entry if isinstance(entry, dict) else {"path": entry})
            if got:
                sources.append(got[0])
                formats.append(got[1])
                columns.append(got[2])
        for name, values in self.reasoning.items():
            if len(values) > 1:
                self.refuse("datasets", f"the datasets name the reasoning key differently ({', '.join(sorted(values))}); "
                                        f"hubtune reads one key for every source")
            else:
                data[name] = next(iter(values))
        if len(self.type_templates) > 1:
            self.refuse("datasets", f"the dataset types render with different templates ({', '.join(sorted(self.type_templates))}); "
                                    f"hubtune renders every source with one")
        elif self.type_templates:
            (template,) = self.type_templates
            if data.get("chat_template", "auto") not in ("auto", template):
                self.note(f"the {template}.* dataset types render with {template} whatever chat_template says; "
                          f"hubtune renders with {template}")
            data["chat_template"] = template
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
            self.note(f"the datasets are of several types ({', '.join(sorted(set(formats)))}); hubtune "
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
        kind = kind if isinstance(kind, str) or kind is None else shown(kind)
        pairs = self.rl in ("dpo", "orpo", "kto")
        fmt = ("pairs" if kind else None) if pairs else DATASET_TYPES.get(kind) if kind and not self.preference else None
        if fmt is None:
            self.refuse(f"{where}.type", self.type_refusal(kind))
            return None
        source = {"path": str(path), "split": str(entry.pop("split", "train"))}
        try:
            cfg.DataSource(**source)
        except Exception:
            self.refuse(f"{where}.split", f"{source['split']!r}: give a split name (train) or a slice such as "
                                          f"train[:20%] or train[10:500]")
            return None
        for key in ("name", "revision"):
            if key in entry:
                source[key] = str(entry.pop(key))
        if "data_files" in entry:
            files = entry.pop("data_files")
            source["data_files"] = [str(f) for f in (files if isinstance(files, list) else [files])]
        if entry.pop("drop_system_message", False) is True:
            source["drop_system_message"] = True
        for key, name in (("field_thinking", "reasoning_field"), ("template_thinking_key", "template_reasoning_key")):
            if key in entry:
                self.reasoning.setdefault(name, set()).add(str(entry.pop(key)))
        entry.pop("ds_type", None)  # hubtune reads the file type from the extension
        entry.pop("trust_remote_code", None)  # datasets are read as data files, never as scripts
        template = entry.pop("chat_template", "tokenizer_default")
        if template != "tokenizer_default":
            self.refuse(f"{where}.chat_template", f"{shown(template)}: set chat_template once for all datasets "
                                                  f"(hubtune renders every source with one template)")
        columns: dict = {}
        if fmt == "pairs":
            found = self.preference_dataset(where, entry, kind)
            if found is None:
                return None
            fmt, columns = found
        elif fmt == "alpaca":
            self.note(f"{where} ({kind}): {ALPACA_NOTE}")
        elif fmt in ("chat", "sharegpt"):
            fmt, columns = self.chat_dataset(where, entry, kind)
        elif fmt == "text":
            column = entry.pop("field", None) or entry.pop("text_column", None) or "text"
            entry.pop("text_column", None)
            if column != "text":
                columns = {"text": str(column)}
            self.note(f"{where} (completion): texts longer than sequence_len are dropped, not split")
        for key, value in entry.items():
            self.refuse(f"{where}.{key}", f"{shown(value)}: {DATASET_KEYS.get(key, 'hubtune has no such dataset setting')}")
        return source, fmt, columns

    def preference_dataset(self, where: str, entry: dict, kind: str) -> tuple[str, dict] | None:
        """(format, columns) of a DPO / ORPO / KTO dataset type, or None (refused)."""
        kto = self.rl == "kto"
        prefix, _, suffix = kind.partition(".")
        table = KTO_TYPES if kto else PAIR_TYPES
        if prefix in TEMPLATED and suffix in table:
            self.type_templates.add(prefix)
            return ("kto" if kto else "preference"), dict(table[suffix])
        if not kto and kind in CHAT_PAIR_TYPES:
            named = {"prompt": entry.pop("field_messages", "messages" if kind == "chat_template.default" else "prompt"),
                     "chosen": entry.pop("field_chosen", "chosen"), "rejected": entry.pop("field_rejected", "rejected")}
            mappings = dict(entry.pop("message_property_mappings", None) or {})
            if {**MESSAGE_FIELDS, **mappings} != MESSAGE_FIELDS:
                self.refuse(f"{where}.message_property_mappings", f"{shown(mappings)}: hubtune reads preference "
                                                                  f"turns as {{role, content}}")
            roles = entry.pop("roles", None)
            if roles is not None and not _standard_roles(roles):
                self.refuse(f"{where}.roles", f"{shown(roles)}: hubtune maps roles itself (user, assistant, system)")
            if kind != "chat_template.default":
                self.note(f"{where} ({kind}): rows whose chosen and rejected hold whole conversations take the turns "
                          f"they share as the prompt")
            return "preference", {k: str(v) for k, v in named.items() if str(v) != k}
        types = [f"{p}.{s}" for p in TEMPLATED for s in table] + ([] if kto else list(CHAT_PAIR_TYPES))
        self.refuse(f"{where}.type", f"{kind!r}: hubtune reads the {self.rl.upper()} dataset types {', '.join(types)}"
                    + ("" if kind.split(".")[-1] not in ("default", "user_defined") and prefix != "user_defined" else
                       "; this type picks or formats its columns by rules of its own: give one that names them"))
        return None

    def type_refusal(self, kind: str | None) -> str:
        readable = ", ".join(sorted(DATASET_TYPES))
        if not kind:
            return f"missing: one of {readable}"
        if self.rl == "grpo" and "." in kind and not PREFERENCE_TYPES.fullmatch(kind):
            return (f"{kind!r}: a Python transform ({{file}}.{{function}}) that rewrites each row; hubtune reads the "
                    f"rows as they are (types {readable}): write the rows it returns to a JSONL file, e.g. prompt "
                    f"and answer, and train it with data.columns {{completion: answer}}")
        if self.preference:
            return f"{kind!r}: a {self.preference} dataset, {NOT_CONVERTED}"
        if PREFERENCE_TYPES.fullmatch(kind):
            return f"{kind!r}: a preference / reward dataset type, {NOT_CONVERTED}"
        return f"{kind!r}: hubtune reads the types {readable}"

    def chat_dataset(self, where: str, entry: dict, kind: str) -> tuple[str, dict]:
        mappings = dict(entry.pop("message_property_mappings", None) or {})
        for old, new in (("message_field_role", "role"), ("message_field_content", "content")):
            if old in entry:
                mappings[new] = entry.pop(old)
        sharegpt = kind == "sharegpt" or mappings == SHAREGPT_FIELDS
        expected = SHAREGPT_FIELDS if sharegpt else MESSAGE_FIELDS
        if {**expected, **mappings} != expected:
            self.refuse(f"{where}.message_property_mappings", f"{shown(mappings)}: hubtune reads turns as "
                        f"{{role, content}} or {{from, value}}")
        column = str(entry.pop("field_messages", "conversations" if sharegpt else "messages"))
        entry.pop("conversation", None)  # the legacy sharegpt template name: the chat template renders instead
        for key, allowed in (("roles_to_train", (["assistant"], ["gpt"])), ("train_on_eos", ("turn", "last"))):
            if key in entry and entry[key] not in allowed:
                self.refuse(f"{where}.{key}", f"{shown(entry.pop(key))}: hubtune learns the assistant's last turn")
            entry.pop(key, None)
        roles = entry.pop("roles", None)
        if roles is not None and not _standard_roles(roles):
            self.refuse(f"{where}.roles", f"{shown(roles)}: hubtune maps roles itself (human/user, gpt/assistant, "
                                          f"system)")
        self.note(f"{where} ({kind}): hubtune learns the last assistant turn of each conversation; "
                  f"earlier turns are context (Axolotl trains on every assistant turn)")
        fmt = "sharegpt" if sharegpt else "messages"
        home = "conversations" if sharegpt else "messages"
        return fmt, ({home: column} if column != home else {})

    def training(self) -> dict:
        epochs = self.take("num_epochs", AXOLOTL_DEFAULTS["num_epochs"])
        t: dict = {
            "epochs": epochs,
            "micro_batch_size": self.take("micro_batch_size", AXOLOTL_DEFAULTS["micro_batch_size"]),
            "weight_decay": self.take("weight_decay", AXOLOTL_DEFAULTS["weight_decay"]),
            "max_grad_norm": self.take("max_grad_norm", AXOLOTL_DEFAULTS["max_grad_norm"]),
            "seed": self.take("seed", AXOLOTL_DEFAULTS["seed"]),
            "save_total_limit": self.take("save_total_limit", AXOLOTL_DEFAULTS["save_total_limit"]),
            "tf32": self.take("tf32", AXOLOTL_DEFAULTS["tf32"]),
        }
        t["gradient_accumulation_steps"] = self.accumulation(t["micro_batch_size"])
        if self.has("learning_rate"):
            t["learning_rate"] = float(self.take("learning_rate"))
        else:
            self.note(f"learning_rate not set: hubtune's default {cfg.TrainingSection().learning_rate}")
        for key in ("max_steps", "logging_steps", "adam_beta1", "adam_beta2", "adam_epsilon"):
            if self.has(key):
                t[key] = self.take(key)
        if self.has("adam_eps") and "adam_epsilon" not in t:
            t["adam_epsilon"] = self.take("adam_eps")
        self.cadence(t)
        scheduler = self.take("lr_scheduler", AXOLOTL_DEFAULTS["lr_scheduler"])
        if self.data.get("lr_quadratic_warmup") is not None:
            if self.take("lr_quadratic_warmup") is True:
                if scheduler == "cosine":  # Axolotl squares the warm-up of its cosine schedule only
                    t["warmup_shape"] = "quadratic"
                else:
                    self.note(f"lr_quadratic_warmup: Axolotl applies it to the cosine schedule only; with "
                              f"{scheduler} it warms up linearly, and so does hubtune")
        if scheduler in SCHEDULERS:
            t["lr_scheduler"] = scheduler
        else:
            self.refuse("lr_scheduler", f"{scheduler!r}: hubtune schedules {', '.join(SCHEDULERS)}")
        optimizer = self.axolotl_optimizer = self.take("optimizer", AXOLOTL_DEFAULTS["optimizer"])
        if optimizer in OPTIMIZERS:
            t["optimizer"] = OPTIMIZERS[optimizer]
            if OPTIMIZERS[optimizer] != optimizer:
                self.note(f"optimizer {optimizer}: hubtune runs {OPTIMIZERS[optimizer]} (the same update)")
        else:
            self.refuse("optimizer", f"{optimizer!r}: hubtune runs {', '.join(sorted(set(OPTIMIZERS.values())))}")
        self.warmup(t)
        self.checkpointing(t)
        kernels = self.kernels()
        if kernels:
            t["kernels"] = kernels
        if self.hub_attention:
            t["attention_kernel"] = self.hub_attention
        self.stopping(t)
        distributed = self.distributed(t)
        if distributed:
            t["distributed"] = distributed
        t["report_to"] = self.trackers()
        if self.rl:
            t["method"] = self.rl
            self.rl_settings(t)
        self.relora(t)
        return t

    def merge_aware(self, lora: dict) -> None:
        """nvfp4_merge_aware as Axolotl validates it (integrations/kernels/args.py): LoRA (not QLoRA), its sonicmoe
        experts backend, none of its fused LoRA kernels; started at the first step."""
        self.take("nvfp4_merge_aware")
        lora["nvfp4_merge_aware"] = True
        start = self.take("nvfp4_merge_aware_start_step")
        if start not in (None, 0):
            self.refuse("nvfp4_merge_aware_start_step", f"{start!r}: hubtune quantizes the effective weight from the "
                                                        f"first step; leave it out (Axolotl's default, 0)")
        if self.given.get("adapter") != "lora":
            self.refuse("nvfp4_merge_aware", f"True with adapter {self.given.get('adapter')!r}: Axolotl requires "
                                             f"adapter: lora (the NVFP4 base is the quantized one)")
        if self.given.get("use_sonicmoe") is not True and self.given.get("experts_implementation") != "sonicmoe":
            self.refuse("nvfp4_merge_aware", "True without use_sonicmoe: Axolotl refuses it outside its sonicmoe "
                                             "experts backend")
        fused = [k for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel") if self.given.get(k) is True]
        if fused:
            self.refuse("nvfp4_merge_aware", f"True with {', '.join(fused)}: Axolotl refuses the two together (its "
                                             f"fused LoRA kernels bypass the merge-aware forward)")

    def fsdp_optimizer(self, tree: dict) -> None:
        """An optimizer whose states hubtune's FSDP launch cannot shard is refused here rather than converted into
        a run that stops at launch; hubtune launches FSDP2 for context parallelism and quantized experts."""
        from hubtune import distributed

        t = tree["training"]
        if t.get("distributed") != "fsdp" or "optimizer" not in t:
            return
        from types import SimpleNamespace

        m = tree["model"]
        model = SimpleNamespace(quantize_experts=bool(m.get("quantize_experts")),
                                quantization=m.get("quantization", cfg.ModelSection.model_fields["quantization"].default))
        fsdp2 = t.get("context_parallel_size", 1) > 1 or distributed.loads_whole_base(model, SimpleNamespace(**t),
                                                                                       nvfp4=self.nvfp4_base)
        if why := distributed.fsdp_optimizer_problem(t["optimizer"], fsdp2):
            named = "" if t["optimizer"] == self.axolotl_optimizer else f" (hubtune's {t['optimizer']})"
            self.refuse("optimizer", f"{self.axolotl_optimizer!r}{named} under fsdp: {why}; use adamw_torch (fused "
                                     f"or not), or leave fsdp out")

    def sharded_int8(self, tree: dict) -> None:
        """An 8-bit base under FSDP runs on hubtune's FSDP2 launch in which every process loads it whole
        (hubtune.sharded_int8), as Axolotl runs it with fsdp_version 2; under ZeRO-3, which hubtune refuses at
        launch (train.load_base), it is refused here rather than converted into a run that stops there."""
        mode = tree["training"].get("distributed")
        if tree["model"].get("quantization") != "int8" or mode not in ("fsdp", "deepspeed-zero3"):
            return
        if mode == "fsdp":
            self.note("load_in_8bit with fsdp: hubtune launches FSDP2 with every process loading the 8-bit base whole, "
                      "then sharding its int8 weights (fsdp2-quantized-experts.yaml: fsdp_version 2, "
                      "cpu_ram_efficient_loading false); each layer's row scales stay whole in every process")
            return
        self.refuse("load_in_8bit", "True under deepspeed-zero3: ZeRO-3 partitions the base's weights across "
                                    "processes, and bitsandbytes' 8-bit linear layers keep their row constants (CB, "
                                    "SCB) on the weight object itself; use load_in_4bit (QLoRA shards under ZeRO-3), "
                                    "fsdp or DDP")

    def sharded_nvfp4(self, tree: dict) -> None:
        """An NVFP4 base under FSDP runs on hubtune's FSDP2 launch in which every process loads it whole
        (distributed.loads_whole_base); under ZeRO-3, which hubtune refuses at load (train.load_base), it is
        refused here rather than converted into a run that stops there."""
        mode = tree["training"].get("distributed")
        if not self.nvfp4_base or mode not in ("fsdp", "deepspeed-zero3"):
            return
        if mode == "fsdp":
            self.note(f"dsv4_fp4_grouped_mode: nvfp4 with fsdp: {NVFP4_SHARDED}")
            return
        self.refuse("dsv4_fp4_grouped_mode", "'nvfp4' (an NVFP4 base) under deepspeed-zero3: ZeRO-3 partitions the "
                                             "weights as they are built, before hubtune's loader packs them and sets "
                                             "their scales; use fsdp (FSDP2, every process loading the base) or DDP")

    def relora(self, t: dict) -> None:
        """relora with its jagged_restart_* schedule (Axolotl's ReLoRACallback and JaggedLRRestartScheduler,
        with its defaults: warm-up `or 10`, anneal `or 1`). Without relora the jagged_restart_* keys restart the
        learning rate alone in Axolotl, which hubtune does not run (they are left to be refused)."""
        if self.data.get("relora") is not True:
            return
        if not self.has("jagged_restart_steps"):
            self.refuse("relora", "True without jagged_restart_steps, which Axolotl requires too: set how many steps "
                                  "each cycle runs")
            self.take("relora")
            return
        self.take("relora")
        r = {"restart_steps": int(self.take("jagged_restart_steps")),
             "warmup_steps": int(self.data.pop("jagged_restart_warmup_steps", None) or 10),
             "anneal_steps": int(self.data.pop("jagged_restart_anneal_steps", None) or 1)}
        if self.has("relora_prune_ratio"):
            r["prune_ratio"] = float(self.take("relora_prune_ratio"))
        if self.has("relora_prune_method"):
            r["prune_method"] = self.take("relora_prune_method")
        t["relora"] = r

    def rl_settings(self, t: dict) -> None:
        """beta (trl.beta, else rl_beta, else orpo_alpha: Axolotl's order), KTO's weights, GRPO's trl block."""
        trl = self.take("trl", {})
        trl = dict(trl) if isinstance(trl, dict) else {}
        betas = [trl.pop("beta", None), self.take("rl_beta"), self.take("orpo_alpha")]
        beta = next((b for b in betas if b is not None), None)
        if beta is not None:
            t["beta"] = float(beta)
        if self.rl == "kto":
            for key, name in (("kto_desirable_weight", "desirable_weight"),
                              ("kto_undesirable_weight", "undesirable_weight")):
                if self.has(key):
                    t[name] = float(self.take(key))
        if self.rl == "grpo":
            t["grpo"] = self.grpo(trl)
        for key in ("log_completions", "num_completions_to_print"):  # what is printed, not what is trained
            trl.pop(key, None)
        for key, value in trl.items():
            if value is not None and not (key == "use_vllm" and value is False):
                self.refuse(f"trl.{key}", f"{shown(value)}: hubtune runs {self.rl.upper()} with TRL's default for it")

    def grpo(self, trl: dict) -> dict:
        # Axolotl leaves what trl does not set to TRL's GRPOConfig: 8 generations, temperature 1.0.
        g: dict = {"num_generations": int(trl.pop("num_generations", None) or 8)}
        length = trl.pop("max_completion_length", None)
        if length is None:
            self.refuse("trl.max_completion_length", "missing: Axolotl then samples completions without a cap; "
                                                     "hubtune needs one (e.g. 256)")
        else:
            g["max_completion_length"] = int(length)
        if trl.get("temperature") is not None:
            g["temperature"] = float(trl.pop("temperature"))
        if trl.get("top_p") in (1, 1.0):
            trl.pop("top_p")
        funcs, weights = trl.pop("reward_funcs", None) or [], trl.pop("reward_weights", None)
        if not isinstance(funcs, list) or not funcs:
            self.refuse("trl.reward_funcs", f"{shown(funcs) if funcs else 'missing'}: GRPO needs a list of reward "
                                            f"functions, each {{file}}.{{function}}")
        elif weights is not None and (not isinstance(weights, list) or len(weights) != len(funcs)):
            self.refuse("trl.reward_weights", f"{shown(weights)}: one weight per reward function ({len(funcs)})")
        else:
            rewards = [self.reward(str(f), float(w)) for f, w in zip(funcs, weights or [1.0] * len(funcs))]
            if all(rewards):
                g["rewards"] = rewards
        loss = trl.pop("loss_type", None)
        if loss is not None:
            if loss in GRPO_LOSSES:
                g["loss_type"] = loss
            else:
                self.refuse("trl.loss_type", f"{loss!r}: hubtune runs GRPO's losses {', '.join(GRPO_LOSSES)}")
        scale = trl.pop("scale_rewards", None)
        if scale is not None:
            g["scale_rewards"] = {True: "group", False: "none"}.get(scale, scale)
        if trl.get("epsilon") is not None:
            g["epsilon"] = float(trl.pop("epsilon"))
        if trl.pop("use_vllm", False):
            self.note(f"trl.use_vllm: {NOTED['vllm']}")
        for key in [k for k in trl if k.startswith("vllm_")]:  # where a vLLM server runs: see use_vllm
            trl.pop(key)
        return g

    def reward(self, fqn: str, weight: float) -> dict | None:
        """An Axolotl reward function ({file}.{function}, TRL's calling convention) as hubtune's reward."""
        module, _, function = fqn.rpartition(".")
        if not module or not re.fullmatch(r"[\w.]+", module) or not function.isidentifier():
            self.refuse("trl.reward_funcs", f"{fqn!r}: a reward function is {{file}}.{{function}}, e.g. rewards.correct")
            return None
        if module == REWARDS_MODULE and function in BUILTIN_REWARDS:
            return {"name": BUILTIN_REWARDS[function], "weight": weight}
        return {"name": "callable", "callable": f"{module}:{function}", "signature": "trl", "weight": weight}

    def expert_parallel(self, tree: dict) -> None:
        """expert_parallel_size with Axolotl's ExpertParallelPlugin: each MoE layer's experts spread over that
        many GPUs, tokens exchanged all-to-all (DeepEP's kernels), the other weights sharded over the rest.
        hubtune loads the base with transformers' own expert parallelism (DistributedConfig(ep_size=...),
        all-to-all dispatch, FSDP2 on the dense weights): the same experts on the same GPUs, the same tokens."""
        ep = self.data.get("expert_parallel_size")
        ep = 1 if ep is None else ep
        plugin = getattr(self, "ep_plugin", False)
        if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
            return  # refused with the reason in WHY
        settings = ("expert_parallel_token_capacity", "expert_parallel_num_nvl_bytes", "expert_parallel_num_rdma_bytes",
                    "expert_parallel_backend", "expert_parallel_fallback_on_unsupported")
        if ep == 1:
            unread = [key for key in settings if self.take(key) is not None]
            if plugin or unread:
                self.note(f"{', '.join((['ExpertParallelPlugin'] if plugin else []) + unread)} with "
                          f"expert_parallel_size 1: Axolotl runs no expert parallelism, nor does hubtune")
            return
        self.take("expert_parallel_size")
        t, m = tree["training"], tree["model"]
        micro, length = t.get("micro_batch_size", 1), tree["data"].get("max_seq_len", 2048)
        capacity = self.take("expert_parallel_token_capacity")
        buffers = [key for key in settings[1:] if self.take(key) is not None]
        why = None
        if not plugin:
            why = ("without axolotl.integrations.expert_parallel.ExpertParallelPlugin in plugins: Axolotl sets the "
                   "ranks aside but dispatches no tokens to experts on other GPUs; add the plugin, or set it to 1")
        elif m.get("quantization", "none") != "none":
            why = "with a 4- or 8-bit base: the experts are spread over GPUs as 16-bit tensors (load_in_4bit: false)"
        elif t.get("distributed") not in (None, "ddp", "fsdp"):
            why = f"with {t['distributed']}: transformers shards the model itself as it loads; leave deepspeed out"
        elif self.rl:
            why = f"with rl: {self.rl}: hubtune spreads experts for supervised fine-tuning only"
        elif t.get("context_parallel_size", 1) > 1:
            why = "with context_parallel_size: hubtune does not combine expert and context parallelism"
        elif capacity is not None and (not isinstance(capacity, int) or capacity < micro * length * ep):
            why = (f"with expert_parallel_token_capacity {capacity!r}: below micro_batch_size x sequence_len x "
                   f"expert_parallel_size ({micro * length * ep}) Axolotl drops the lowest-weight tokens of an "
                   f"overloaded expert, which transformers' dispatch never does; leave it out")
        if why:
            self.refuse("expert_parallel_size", f"{ep} {why}")
            return
        if t.get("distributed") == "fsdp":
            self.note("fsdp with expert_parallel_size: " + (
                "each GPU loads the NVFP4 base's other weights whole" if self.nvfp4_base else
                "transformers shards the non-expert weights with FSDP2 itself as the base loads")
                + "; hubtune launches the processes plain (training.distributed: ddp)")
        t.update(expert_parallel_size=ep, distributed="ddp")
        if capacity is not None:
            self.note(f"expert_parallel_token_capacity {capacity}: no expert can receive that many tokens in a step "
                      f"(at most micro_batch_size x sequence_len x expert_parallel_size = {micro * length * ep}), so "
                      f"Axolotl drops none, nor does transformers")
        if self.nvfp4_base:
            self.note(f"expert_parallel_size {ep} over an NVFP4 base: each of {ep} GPUs reads its share of every "
                      f"layer's packed experts (hubtune.nvfp4) and transformers' dispatch exchanges the tokens "
                      f"all-to-all (DeepEP's kernels in Axolotl); the other weights load whole on every GPU; launch "
                      f"exactly {ep} GPUs")
        if tree["lora"].get("target_parameters"):
            self.note(f"lora_target_parameters with expert_parallel_size {ep}: each GPU holds and trains the LoRA of "
                      f"its own experts (kept out of the average over GPUs, as Axolotl keeps it), checkpoints its "
                      f"optimizer state per GPU, and the adapter is gathered whole where it is saved; launch exactly "
                      f"{ep} GPUs (no copies of an expert)")
        if buffers:
            self.note(f"{', '.join(buffers)}: settings of DeepEP's kernels; transformers exchanges the tokens with "
                      f"torch's all-to-all (the same tokens to the same experts)")
        if not self.nvfp4_base:
            self.note(f"expert_parallel_size {ep}: transformers spreads each MoE layer's experts over {ep} GPUs as "
                      f"the base loads (tokens exchanged all-to-all, DeepEP's kernels in Axolotl) and shards the other "
                      f"weights with FSDP2; launch a multiple of {ep} GPUs")

    def context_parallel(self, tree: dict) -> None:
        """context_parallel_size: Axolotl splits each sequence over that many GPUs with ring-flash-attention
        (varlen: packed examples kept apart) and, for Mamba-2 layers, passes the SSM state between them.
        hubtune's context parallelism (hubtune.context_parallel) splits the same rows the same way: attention
        over the keys and values gathered from the group under the packed examples' mask, Mamba-2 state and
        conv context passed on; under DDP (each GPU the whole model, as Axolotl without fsdp) or FSDP2."""
        cp = self.data.get("context_parallel_size")
        if not isinstance(cp, int) or isinstance(cp, bool) or cp <= 1:
            return  # 1 matches hubtune; anything else is refused with the reason in WHY
        self.take("context_parallel_size")
        t, m, why = tree["training"], tree["model"], None
        mode = t.get("distributed") or "ddp"
        if mode not in ("ddp", "fsdp"):
            why = f"with {mode}: hubtune's context parallelism runs under DDP or FSDP2; leave deepspeed out"
        elif self.rl:
            why = f"with rl: {self.rl}: hubtune splits sequences for supervised fine-tuning only"
        elif t.get("attention_kernel"):
            why = (f"with the Hub attention kernel {t['attention_kernel']}: hubtune's context parallelism attends "
                   f"with SDPA")
        elif mode == "fsdp" and m.get("quantization", "none") != "none" and not self.loads_whole_base(tree):
            why = ("with fsdp and a 4- or 8-bit base: FSDP2 shards it only when every process loads it "
                   "(quantize_moe_experts, or a torchao low-bit optimizer); leave fsdp out (each GPU holds the "
                   "whole base) or load the base in 16 bits")
        if why:
            self.refuse("context_parallel_size", f"{cp} {why}")
            return
        t.update(context_parallel_size=cp, distributed=mode)
        kernels = t.get("kernels")
        if kernels and kernels[0] != "sdpa":
            t["kernels"] = ["sdpa", *kernels[1:]]
            self.note(f"context_parallel_size {cp}: attention {kernels[0]} runs as SDPA, over the keys and values "
                      f"gathered from the {cp} GPUs under the packed examples' mask (the same attention)")
        self.note(f"context_parallel_size {cp}: each row is split over {cp} GPUs by hubtune's context parallelism "
                  f"({'DDP' if mode == 'ddp' else 'FSDP2'}): each GPU attends from its chunk over the keys and "
                  f"values gathered from the others, packed examples kept apart (Axolotl: ring-flash-attention), "
                  f"and Mamba-2 layers start from the state of the chunks before; launch a multiple of {cp} GPUs")

    def loads_whole_base(self, tree: dict) -> bool:
        """distributed.loads_whole_base for the config being built (every process loads the base under FSDP2)."""
        from types import SimpleNamespace

        from hubtune import distributed

        m, t = tree["model"], tree["training"]
        model = SimpleNamespace(quantize_experts=bool(m.get("quantize_experts")),
                                quantization=m.get("quantization", cfg.ModelSection.model_fields["quantization"].default))
        training = SimpleNamespace(distributed="fsdp", optimizer=t.get("optimizer", ""))
        return distributed.loads_whole_base(model, training, nvfp4=self.nvfp4_base)

    def packed_in_order(self, data: dict) -> None:
        """sample_packing_sequentially: Axolotl's sampler fills each packed row with examples in the order it
        draws them. With curriculum_sampling that is the data's order, which data.packing_strategy: sequential
        packs once; with random sampling Axolotl packs a new shuffled order every epoch, which hubtune does not."""
        if not data["packing"]:
            self.take("sample_packing_sequentially")
            self.note("sample_packing_sequentially without sample_packing: Axolotl packs nothing, nor does hubtune")
        elif self.data.get("curriculum_sampling") is not True:
            self.refuse("sample_packing_sequentially", "True without curriculum_sampling: Axolotl packs a new random "
                        "order of the examples every epoch, hubtune packs once before training; set "
                        "curriculum_sampling: true to pack and train in the data's order")
            self.take("sample_packing_sequentially")
        else:
            self.take("sample_packing_sequentially")
            data["packing_strategy"] = "sequential"

    def stopping(self, t: dict) -> None:
        """early_stopping_patience (Axolotl then also keeps the best checkpoint), in-order sampling, and the
        held-out metrics Axolotl computes during training."""
        patience = self.take("early_stopping_patience")
        if patience:
            t["early_stopping_patience"] = int(patience)
        if self.data.get("curriculum_sampling") is True:
            self.take("curriculum_sampling")
            t["shuffle"] = False
        metrics = self.data.get("eval_causal_lm_metrics")
        if self.data.get("do_causal_lm_eval") is True and metrics is not None:
            metrics = metrics if isinstance(metrics, list) else [metrics]
            if all(m == "perplexity" for m in metrics):
                self.take("do_causal_lm_eval"), self.take("eval_causal_lm_metrics")
                self.note("eval_causal_lm_metrics [perplexity]: the held-out perplexity is exp(eval_loss), which "
                          "hubtune logs at every evaluation")

    def accumulation(self, micro: int) -> int:
        """gradient_accumulation_steps, or Axolotl's batch_size (micro_batch_size x accumulation)."""
        steps = self.take("gradient_accumulation_steps")
        batch = self.take("batch_size")
        if batch is not None and steps is None:
            if isinstance(batch, int) and batch % micro == 0:
                return batch // micro
            self.refuse("batch_size", f"{batch!r}: a multiple of micro_batch_size ({micro}), or give "
                                      f"gradient_accumulation_steps")
        elif batch is not None and batch != micro * steps:
            self.note(f"batch_size {batch}: gradient_accumulation_steps comes first, as in Axolotl (an effective "
                      f"batch of {micro * steps} per GPU)")
        return steps or AXOLOTL_DEFAULTS["gradient_accumulation_steps"]

    def cadence(self, t: dict) -> None:
        """Checkpoints and held-out loss: every N steps, N times per epoch, or once per epoch."""
        if self.has("save_steps"):
            t["save_steps"] = self.take("save_steps")
            if self.data.get("saves_per_epoch") is not None:
                self.refuse("saves_per_epoch", f"{self.take('saves_per_epoch')!r}: give save_steps or saves_per_epoch, "
                                               f"not both")
        elif self.has("saves_per_epoch"):
            t["saves_per_epoch"] = self.take("saves_per_epoch")
        elif self.data.get("save_strategy") in (None, "epoch"):
            self.take("save_strategy")
            t["saves_per_epoch"] = 1  # Axolotl's default: a checkpoint at the end of each epoch
        elif self.data.get("save_strategy") == "steps":
            t["save_steps"] = 500  # transformers' default save_steps, which Axolotl leaves in place
        strategy = self.data.get("save_strategy")
        if strategy == "no":
            self.refuse("save_strategy", "'no': hubtune always keeps checkpoints (save_total_limit of them)")
            self.take("save_strategy")
        eval_steps = self.data.get("eval_steps")
        if isinstance(eval_steps, int):
            t["eval_steps"] = self.take("eval_steps")
        elif isinstance(eval_steps, float) and 0 < eval_steps < 1:
            self.refuse("eval_steps", f"{eval_steps!r}: a share of all steps; give evals_per_epoch or whole steps")
            self.take("eval_steps")
        if self.has("evals_per_epoch"):
            value = self.take("evals_per_epoch")
            if "eval_steps" not in t:
                t["evals_per_epoch"] = value
        elif "epoch" in (self.data.get("eval_strategy"), self.data.get("evaluation_strategy")):
            self.take("eval_strategy"), self.take("evaluation_strategy")
            t["evals_per_epoch"] = 1
        elif "eval_steps" not in t:
            t["evals_per_epoch"] = 0  # Axolotl evaluates during training only when asked
        if self.data.get("eval_strategy") == "no":
            self.take("eval_strategy")
            t.pop("eval_steps", None)
            t["evals_per_epoch"] = 0

    def warmup(self, t: dict) -> None:
        steps, ratio = self.take("warmup_steps"), self.take("warmup_ratio")
        if steps is not None:
            if isinstance(steps, float) and 0 < steps < 1:
                t["warmup_ratio"] = steps  # transformers reads warmup_steps below 1 as a share of all steps
            else:
                t["warmup_steps"] = int(steps)
            if ratio is not None:
                self.note(f"warmup_ratio {ratio} ignored: warmup_steps comes first, as in Axolotl")
        elif ratio is not None:
            t["warmup_ratio"] = ratio
        else:
            t["warmup_ratio"] = AXOLOTL_DEFAULTS["warmup_ratio"]
            self.note("warm-up not set: 3% of the steps, as Axolotl (which also caps it at 100 steps)")

    def checkpointing(self, t: dict) -> None:
        value = self.take("gradient_checkpointing", AXOLOTL_DEFAULTS["gradient_checkpointing"])
        if value in ("offload", "offload_disk"):
            t["gradient_checkpointing"] = True
            self.note(f"gradient_checkpointing: {value}: hubtune checkpoints and keeps the activations on the GPU "
                      f"(the same training, more GPU memory)")
        elif isinstance(value, bool):
            t["gradient_checkpointing"] = value
        else:
            self.refuse("gradient_checkpointing", f"{value!r}: true, false or offload")

    def kernels(self) -> list[str] | None:
        """Attention and Liger from attn_implementation, the *_attention flags and the plugins."""
        attention = None
        self.hub_attention = None
        if self.has("attn_implementation"):
            value = str(self.data["attn_implementation"])
            if value in ATTENTION:
                attention = ATTENTION[value]
                self.take("attn_implementation")
                if value == "xformers":
                    self.note(XFORMERS_NOTE)
            elif re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?(:[\w.-]+)?", value):
                self.hub_attention = str(self.take("attn_implementation"))  # a kernel repo on the Hub
            else:
                self.refuse("attn_implementation", f"{self.take('attn_implementation')!r}: transformers' attention "
                                                   f"hubtune loads: {', '.join(ATTENTION)}")
        hybrid = self.data.get("gemma4_hybrid_attn_impl") is True
        if hybrid:
            self.take("gemma4_hybrid_attn_impl")
            attention = "sdpa"  # before the flags below: their flash_attention gives way to it
            self.note("gemma4_hybrid_attn_impl: hubtune runs SDPA in every layer (FlashAttention 2 cannot serve "
                      "Gemma 4's 512-wide global heads); the same exact attention")
        for key, name in (("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"),
                          ("flex_attention", "flex_attention"), ("eager_attention", "eager"),
                          ("xformers_attention", "sdpa")):
            if self.data.get(key) is True:
                self.take(key)
                if key == "xformers_attention":
                    self.note(XFORMERS_NOTE)
                if attention not in (None, name) and not (hybrid and name == "flash_attention_2"):
                    self.refuse(key, f"True: contradicts attention {attention}")
                attention = attention or name
        liger = False
        plugins = self.take("plugins", [])
        for plugin in plugins if isinstance(plugins, list) else [plugins]:
            kernel, why = PLUGINS.get(str(plugin), (None, "an Axolotl plugin hubtune has no counterpart for"))
            if kernel == "liger":
                liger = True
            elif kernel == "expert_parallel":
                self.ep_plugin = True  # read with expert_parallel_size (expert_parallel())
            elif kernel == "same":
                self.note(why)
            else:
                self.refuse("plugins", f"{plugin}: {why}")
        if self.data.get("cut_cross_entropy") is True:
            self.take("cut_cross_entropy")
            self.note(PLUGINS["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin"][1])
        flags = {key: self.take(key) for key in LIGER_FLAGS if self.has(key)}
        if any(flags.values()):
            if not liger:
                for key, value in flags.items():
                    self.refuse(key, f"{value!r}: Liger's kernels run with the LigerPlugin in plugins")
            elif not all(flags.values()) or len(flags) < 4:
                self.note(f"Liger kernels {shown(sorted(k for k, v in flags.items() if v))}: hubtune applies every "
                          f"Liger kernel the model has (each computes the same as the layer it replaces)")
        if attention is None and not liger:
            return None
        return [attention or "sdpa", *(["liger"] if liger else [])]

    def distributed(self, t: dict) -> str | None:
        mode = None
        fsdp, fsdp_config = self.take("fsdp"), self.take("fsdp_config")
        version = self.take("fsdp_version")
        if fsdp or fsdp_config:
            mode = "fsdp"
            config = dict(fsdp_config or {}) if isinstance(fsdp_config, dict) else {}
            version = config.pop("fsdp_version", config.pop("version", version))
            for key in list(config):
                if key in FSDP_OFFLOAD and config[key] or "offload" in str(fsdp):
                    self.note(f"fsdp_config.{key}: {config.get(key)}: hubtune's FSDP keeps the parameters on the GPUs "
                              f"(the same training, more GPU memory)")
                elif key in ("activation_checkpointing", "fsdp_activation_checkpointing"):
                    if config.pop(key):
                        t["gradient_checkpointing"] = True
            self.note("fsdp: hubtune's FSDP preset (full sharding, transformer-layer wrapping, sharded checkpoints)"
                      + (f"; version {version} settings map to it" if version else ""))
        deepspeed = self.take("deepspeed")
        if deepspeed:
            name = str(deepspeed)
            stage = re.search(r"zero[_-]?(\d)", name)
            if mode:
                self.refuse("deepspeed", f"{name!r}: give fsdp or deepspeed, not both")
            elif stage and stage[1] in ("2", "3") and "offload" not in name:
                mode = f"deepspeed-zero{stage[1]}"
                self.note(f"deepspeed {name}: hubtune's ZeRO stage {stage[1]} preset (no CPU offload)")
            elif stage and stage[1] == "1":
                mode = "ddp"
                self.note(f"deepspeed {name}: ZeRO stage 1 shards optimizer states only; hubtune runs DDP (the same "
                          f"updates, more memory per GPU)")
            else:
                self.refuse("deepspeed", f"{name!r}: hubtune's DeepSpeed presets are ZeRO 2 and 3 without offload "
                                         f"(deepspeed_configs/zero2.json, zero3.json)")
        if self.data.get("use_ray") is True:
            self.take("use_ray")
            workers = self.take("ray_num_workers", 1)
            mode = mode or "ddp"
            self.note(f"use_ray: hubtune launches the same {mode} processes with accelerate instead of Ray: "
                      f"`hubtune train CONFIG --num-processes {workers}`")
        if self.data.get("ddp") is True and mode is None:
            self.take("ddp")
            mode = "ddp"
        if mode:
            self.note(f"training.distributed: {mode}; start it with `hubtune train CONFIG --num-processes N`")
        return mode

    def trackers(self) -> list[str]:
        found = []
        if self.data.get("use_tensorboard") is True:
            self.take("use_tensorboard")
            found.append("tensorboard")
        if self.data.get("use_swanlab") is True:
            self.take("use_swanlab")
            found.append("swanlab")
            for key, env in (("swanlab_project", "SWANLAB_PROJECT"), ("swanlab_mode", "SWANLAB_MODE"),
                             ("swanlab_api_host", "SWANLAB_API_HOST"), ("swanlab_web_host", "SWANLAB_WEB_HOST")):
                if self.has(key):
                    self.note(f"{key}: {self.data[key]}: transformers' SwanLab integration reads it from the "
                              f"environment; export {env}={self.take(key)} before training")
            if self.has("swanlab_api_key"):
                self.take("swanlab_api_key")  # a secret: never repeated in a note or a converted config
                self.note("swanlab_api_key: export SWANLAB_API_KEY before training; hubtune does not write keys "
                          "into run configs")
        for key, tracker, env in (("wandb_project", "wandb", "WANDB_PROJECT"), ("wandb_entity", "wandb", "WANDB_ENTITY"),
                                  ("mlflow_tracking_uri", "mlflow", "MLFLOW_TRACKING_URI"),
                                  ("mlflow_experiment_name", "mlflow", "MLFLOW_EXPERIMENT_NAME")):
            if self.has(key):
                value = self.take(key)
                if tracker not in found:
                    found.append(tracker)
                self.note(f"{key}: {value}: transformers reads it from the environment; "
                          f"export {env}={value} before training")
        return found

    def leftovers(self) -> None:
        for key, value in self.data.items():
            if value is None or key in NO_EFFECT or value in MATCHING.get(key, ()):
                continue
            if key in NOTED:
                self.note(f"{key}: {shown(value)}: {NOTED[key]}")
            elif key.startswith("swanlab_"):
                continue  # SwanLab's own settings (run names, notifications): use_swanlab says whether it runs
            elif key == "remove_unused_columns" and value is False and self.rl:
                continue  # Axolotl's default for rl: the rows hubtune prepares hold only what the trainer reads
            elif key not in AXOLOTL_KEYS and key not in WHY:
                close = difflib.get_close_matches(key, AXOLOTL_KEYS, n=1)
                self.note(f"{key}: {shown(value)}: not an Axolotl setting, which Axolotl ignores; so does hubtune"
                          + (f" (did you mean {close[0]}?)" if close else ""))
            else:
                self.refuse(key, f"{shown(value)}: {WHY.get(key, 'hubtune has no such setting')}")


PEFT_PREFIX = "base_model.model."  # what PEFT's wrapper puts before a base parameter's name
ADAPTER_PATTERN = "^base_model.model.+lora_"  # in Axolotl's syntax: every LoRA weight of the wrapped model
# Names of a LoRA-wrapped model, to tell the adapter's weights from base weights by what a pattern matches.
LORA_NAMES = tuple(f"{PEFT_PREFIX}model.layers.{i}.{m}.lora_{ab}.default.weight" for i in (0, 7)
                   for m in ("self_attn.q_proj", "mlp.down_proj") for ab in "AB")
BASE_NAMES = (f"{PEFT_PREFIX}model.embed_tokens.weight", f"{PEFT_PREFIX}model.norm.weight",
              f"{PEFT_PREFIX}lm_head.weight", f"{PEFT_PREFIX}model.layers.0.self_attn.q_proj.base_layer.weight",
              f"{PEFT_PREFIX}model.layers.0.input_layernorm.weight")


def _literal_start(pattern: str) -> str:
    """The text every name a pattern matches starts with, read as Axolotl reads patterns (dots literal
    unless followed by +): up to the first character that is special or quantified."""
    text, i = pattern.removeprefix("^"), 0
    out = []
    while i < len(text):
        c, nxt = text[i], text[i + 1:i + 2]
        if c in "\\[](){}|^$+*?" or nxt in ("*", "?", "{") or (c == "." and nxt == "+"):
            break
        out.append(c)
        i += 1
    return "".join(out)


def _peft_pattern_kind(pattern: str) -> str:
    """adapter: it matches LoRA weights and no base weight; base: it names base weights by their wrapped name;
    none: it cannot match any name of a PEFT-wrapped model; unclear: anything else."""
    from hubtune.unfreeze import parse

    parsed = parse(pattern)
    if any(parsed.match(n) for n in LORA_NAMES) and not any(parsed.match(n) for n in BASE_NAMES):
        return "adapter"
    start = _literal_start(pattern)
    if start.startswith(PEFT_PREFIX):
        return "base"
    return "unclear" if PEFT_PREFIX.startswith(start) else "none"


def _keeps_adapter(patterns: list[str]) -> bool:
    from hubtune.unfreeze import parse

    parsed = [parse(p) for p in patterns]
    return all(any(p.match(name) for p in parsed) for name in LORA_NAMES)


def _base_relative(pattern: str) -> str:
    return pattern.removeprefix("^").removeprefix(PEFT_PREFIX)


DATASET_KEYS = {  # why a dataset entry's key is not honoured
    "shards": "hubtune reads the whole split (slice it with split: train[:10%])",
    "preprocess_shards": "hubtune reads the whole split (slice it with split: train[:10%])",
}


def _standard_roles(roles: Any) -> bool:
    """A roles mapping that says what hubtune assumes anyway (user, assistant, system as themselves)."""
    if not isinstance(roles, dict):
        return False
    standard = {"user": {"user", "human"}, "assistant": {"assistant", "gpt", "model"}, "system": {"system"}}
    return all(k in standard and all(str(v) in standard[k] for v in (vs if isinstance(vs, list) else [vs]))
               for k, vs in roles.items())


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
    quantized = m.quantization in ("nf4", "fp4")
    out.update(adapter="qlora" if quantized else "lora", load_in_4bit=quantized, load_in_8bit=m.quantization == "int8")
    if quantized:
        out["bnb_config_kwargs"] = {"bnb_4bit_quant_type": m.quantization, "bnb_4bit_use_double_quant": m.double_quant}
    out.update(DTYPE_TO_AXOLOTL[m.compute_dtype])
    if m.router_aux_loss:
        out["model_config"] = {"output_router_logits": True}
    if m.special_tokens:
        out["special_tokens"] = dict(m.special_tokens)
    if m.added_tokens:
        out["tokens"] = list(m.added_tokens)
    if m.use_kernels:
        out["use_kernels"] = True
    if m.linearized_experts:
        out["llama4_linearized_experts"] = True
    if m.experts_implementation:
        out["experts_implementation"] = m.experts_implementation
    if m.quantize_experts:
        out["quantize_moe_experts"] = True
    if m.dequantize:  # the quantized format Axolotl's examples dequantize on load
        out.update(model_quantization_config="Mxfp4Config", model_quantization_config_kwargs={"dequantize": True})
    if m.tokenizer_legacy is not None:
        out["tokenizer_legacy"] = m.tokenizer_legacy
    if m.tokenizer_backend == "mistral-common":
        out["tokenizer_use_mistral_common"] = True
    out.update(lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout)
    if lo.target_regex is None and lo.target_modules == "all-linear":
        out["lora_target_linear"] = True
    else:
        out["lora_target_modules"] = lo.peft_target_modules()
    if lo.target_parameters:
        out["lora_target_parameters"] = list(lo.target_parameters)
    if lo.modules_to_save:
        out["lora_modules_to_save"] = list(lo.modules_to_save)
    if lo.nvfp4_merge_aware:
        out["nvfp4_merge_aware"] = True  # Axolotl runs it on its sonicmoe experts backend (use_sonicmoe: true)
    if lo.unfrozen_parameters:  # matched, as Axolotl matches them, against the PEFT-wrapped model's names
        out["unfrozen_parameters"] = [ADAPTER_PATTERN, *(f"^{PEFT_PREFIX}{p}" for p in lo.unfrozen_parameters)]
    if lo.use_rslora:
        out["peft_use_rslora"] = True
    if lo.init_weights == "loftq":
        out["peft"] = {"loftq_config": {"loftq_bits": lo.loftq_bits}}

    found = formats or [None] * len(d.sources)
    out["datasets"] = []
    for i, source in enumerate(d.sources):
        fmt = d.format if d.format != "auto" else (found[i] if i < len(found) and found[i] else _detect(source, d))
        entry = _axolotl_dataset(source, fmt, d.columns, f"data.sources[{i}]", problems, config)
        if entry:
            if source.data_files:
                entry["data_files"] = list(source.data_files)
            if source.drop_system_message:
                entry["drop_system_message"] = True
            if d.reasoning_field != "reasoning_content":
                entry["field_thinking"] = d.reasoning_field
            if d.template_reasoning_key != "reasoning_content":
                entry["template_thinking_key"] = d.template_reasoning_key
            out["datasets"].append(entry)
    if d.val_set_size >= 1:
        problems.append(("data.val_set_size", f"{d.val_set_size:g} rows: Axolotl takes a share (0-1) of the data"))
    if d.chat_template == "default":
        problems.append(("data.chat_template", "hubtune's default template has no Axolotl name; use auto"))
    out.update(val_set_size=d.val_set_size if d.val_set_size < 1 else 0.0, sequence_len=d.max_seq_len,
               sample_packing=d.packing, chat_template="tokenizer_default" if d.chat_template == "auto" else d.chat_template,
               excess_length_strategy="truncate" if d.truncate else "drop")
    if d.dedup_exact:
        out["dataset_exact_deduplication"] = True

    out.update(num_epochs=t.epochs, micro_batch_size=t.micro_batch_size,
               gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
               lr_scheduler=t.lr_scheduler,
               optimizer="paged_adamw_8bit" if t.optimizer == "auto" else t.optimizer,
               weight_decay=t.weight_decay, adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2,
               adam_epsilon=t.adam_epsilon, max_grad_norm=t.max_grad_norm,
               gradient_checkpointing=t.gradient_checkpointing is not False, logging_steps=t.logging_steps,
               save_total_limit=t.save_total_limit, seed=t.seed, tf32=t.tf32, train_on_inputs=False)
    out.update({"warmup_ratio": t.warmup_ratio} if t.warmup_ratio is not None else {"warmup_steps": t.warmup_steps})
    out.update({"saves_per_epoch": t.saves_per_epoch} if t.saves_per_epoch else {"save_steps": t.save_steps})
    if t.max_steps:
        out["max_steps"] = t.max_steps
    if t.eval_steps and t.evals_per_epoch is None:
        out["eval_steps"] = t.eval_steps
    else:
        out["evals_per_epoch"] = 1 if t.evals_per_epoch is None else t.evals_per_epoch
    out.update(_axolotl_kernels(t))
    if t.attention_kernel:
        out["attn_implementation"] = t.attention_kernel
    if t.early_stopping_patience:
        out["early_stopping_patience"] = t.early_stopping_patience
    if t.warmup_shape == "quadratic":
        if t.lr_scheduler != "cosine":
            problems.append(("training.warmup_shape", f"quadratic with {t.lr_scheduler}: Axolotl squares the warm-up "
                                                      f"of the cosine schedule only"))
        out["lr_quadratic_warmup"] = True
    if t.relora is not None:
        r = t.relora
        out.update(relora=True, jagged_restart_steps=r.restart_steps, jagged_restart_warmup_steps=r.warmup_steps,
                   jagged_restart_anneal_steps=r.anneal_steps)
        if r.prune_ratio is not None:
            out["relora_prune_ratio"] = r.prune_ratio
        if r.prune_method != "magnitude":
            out["relora_prune_method"] = r.prune_method
    if not t.shuffle:
        out["curriculum_sampling"] = True
        if d.packing and d.packing_strategy == "sequential":
            out["sample_packing_sequentially"] = True  # with random draws Axolotl would repack every epoch
    if "swanlab" in t.report_to:
        out["use_swanlab"] = True
        out.setdefault("plugins", []).append("axolotl.integrations.swanlab.SwanLabPlugin")
    out.update(DISTRIBUTED_TO_AXOLOTL.get(t.distributed, {}))
    from hubtune.distributed import loads_whole_base

    if loads_whole_base(config.model, t):  # what hubtune launches: FSDP2, every GPU loads
        out["fsdp_config"] = {**out["fsdp_config"], "fsdp_version": 2, "fsdp_cpu_ram_efficient_loading": False}
    if t.context_parallel_size > 1:
        out["context_parallel_size"] = t.context_parallel_size
    if t.expert_parallel_size > 1:
        out["expert_parallel_size"] = t.expert_parallel_size
        out.setdefault("plugins", []).append("axolotl.integrations.expert_parallel.ExpertParallelPlugin")
    if "tensorboard" in t.report_to:
        out["use_tensorboard"] = True
    out.update(_axolotl_method(t, problems))
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


DISTRIBUTED_TO_AXOLOTL = {  # hubtune's presets as Axolotl writes them (ddp: Axolotl's default when launched on GPUs)
    "fsdp": {"fsdp": ["full_shard", "auto_wrap"],
             "fsdp_config": {"fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                             "fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": False}},
    "deepspeed-zero2": {"deepspeed": "deepspeed_configs/zero2.json"},
    "deepspeed-zero3": {"deepspeed": "deepspeed_configs/zero3.json"},
}


def _axolotl_kernels(t: cfg.TrainingSection) -> dict:
    """attn_implementation and the Liger plugin for training.kernels (auto: nothing; hubtune picks at run time)."""
    choice = t.kernel_choice()
    if choice is None:
        return {}
    attention, liger = choice
    out: dict[str, Any] = {"attn_implementation": attention}
    if liger:
        out["plugins"] = ["axolotl.integrations.liger.LigerPlugin"]
        out.update({key: True for key in ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm")})
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


def _axolotl_method(t: cfg.TrainingSection, problems: list[tuple[str, str]]) -> dict:
    """rl, its beta, KTO's weights and GRPO's trl block (sft: nothing)."""
    if t.method == "sft":
        return {}
    out: dict[str, Any] = {"rl": t.method}
    if t.beta is not None and t.method != "grpo":
        out["rl_beta"] = t.beta
    if t.method == "kto":
        out.update(kto_desirable_weight=t.desirable_weight, kto_undesirable_weight=t.undesirable_weight)
    if t.method == "grpo":
        g = t.grpo
        trl: dict[str, Any] = {"num_generations": g.num_generations, "max_completion_length": g.max_completion_length,
                               "temperature": g.temperature, "loss_type": g.loss_type, "epsilon": g.epsilon,
                               "scale_rewards": {"group": True, "none": False}.get(g.scale_rewards, g.scale_rewards)}
        if t.beta is not None:
            trl["beta"] = t.beta
        funcs = []
        for i, r in enumerate(g.rewards):
            builtin = {v: k for k, v in BUILTIN_REWARDS.items()}.get(r.name)
            if builtin:
                funcs.append(f"{REWARDS_MODULE}.{builtin}")
            elif r.name == "callable" and r.signature == "trl":
                funcs.append(r.callable.replace(":", "."))
            else:
                problems.append((f"training.grpo.rewards[{i}]", f"{r.label}: Axolotl calls reward functions as TRL "
                                 f"does (a callable with signature: trl, or exact_match, f1, json from {REWARDS_MODULE})"))
        trl.update(reward_funcs=funcs, reward_weights=[r.weight for r in g.rewards])
        out["trl"] = trl
    return out


def _axolotl_dataset(source: cfg.DataSource, fmt: str, columns: dict, where: str,
                     problems: list[tuple[str, str]], config: cfg.RunConfig | None = None) -> dict | None:
    if fmt in ("preference", "kto") and config is not None:
        return _axolotl_preference(source, fmt, columns, where, problems, config)
    kind = FORMAT_TO_TYPE.get(fmt)
    if kind is None:
        problems.append((where, f"format {fmt} has no Axolotl dataset type; convert the rows to messages"))
        return None
    entry = _source_entry(source, kind)
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


def _source_entry(source: cfg.DataSource, kind: str) -> dict:
    entry: dict[str, Any] = {"path": _axolotl_path(source.path), "type": kind}
    path = Path(entry["path"])
    if path.suffix in (".json", ".jsonl", ".csv", ".parquet"):
        entry["ds_type"] = "json" if path.suffix == ".jsonl" else path.suffix[1:]
    if source.split != "train":
        entry["split"] = source.split
    for key in ("name", "revision"):
        if getattr(source, key):
            entry[key] = getattr(source, key)
    return entry


def _axolotl_preference(source: cfg.DataSource, fmt: str, columns: dict, where: str,
                        problems: list[tuple[str, str]], config: cfg.RunConfig) -> dict | None:
    """The Axolotl type that reads these pairs or unpaired rows back as they are: a chatml / llama3 type
    naming the columns, else (pairs) chat_template.default with its field_* keys."""
    method, template = config.training.method, config.data.chat_template
    if fmt == "kto" and method != "kto" or fmt == "preference" and method == "kto":
        problems.append((where, f"format {fmt}: Axolotl's {method.upper()} reads "
                                + ("unpaired rows (prompt, completion, label)" if method == "kto" else "pairs")))
        return None
    table = KTO_TYPES if method == "kto" else PAIR_TYPES
    if template in TEMPLATED:
        suffix = next((name for name, named in table.items() if named == columns), None)
        if suffix:
            return _source_entry(source, f"{template}.{suffix}")
    if method == "kto":
        problems.append((where, f"Axolotl's KTO types render with chatml or llama3 and read the columns prompt, "
                                f"question or instruction; set data.chat_template to chatml or llama3 (columns: "
                                f"{columns or 'as named'})"))
        return None
    entry = _source_entry(source, "chat_template.default")
    entry.update(field_messages=columns.get("prompt", "prompt"), field_chosen=columns.get("chosen", "chosen"),
                 field_rejected=columns.get("rejected", "rejected"))
    unused = {k: v for k, v in columns.items() if k not in ("prompt", "chosen", "rejected")}
    if unused:
        problems.append(("data.columns", f"{unused}: Axolotl's preference types cannot rename these columns"))
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
    """The Axolotl config of a run folder (its config; row formats from its data report) or of a run config
    YAML file."""
    from hubtune.runs import RunFolder

    path = Path(run_or_config)
    if path.is_dir():
        run = RunFolder.open(path)
        formats = [s.get("format") for s in run.data_report.get("sources", [])] or None
        return to_axolotl(run.config, formats)  # a run's record: its data may have moved
    if not path.is_file():
        raise HubtuneError(f"{path} is neither a run folder nor a run config file")
    return to_axolotl(cfg.load(path), None)
