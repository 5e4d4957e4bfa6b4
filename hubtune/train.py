"""The training recipe, top to bottom: check the licence, load the base in 4 bits
(or 16), attach LoRA, turn the data into chat messages, train with TRL's SFTTrainer
on completions only, save the adapter and a summary into the run folder.

    run = hubtune.train(hubtune.config.load("run.yaml"))
    run = hubtune.resume("runs/20260101-120000")   # after Ctrl-C or a crash
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubtune import config as cfg
from hubtune.errors import ConfigError, HubtuneError, TrainingInterrupted

# torch, transformers, peft and trl load inside the functions that use them, so that
# `import hubtune` (which re-exports train) and the CLI stay fast.
if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig

    from hubtune.hardware import Hardware


@dataclass
class Run:
    """A finished run: its folder and what `summary.json` holds."""

    path: Path
    summary: dict

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @classmethod
    def open(cls, path: str | Path) -> Run:
        path = Path(path)
        summary_file = path / "summary.json"
        if not summary_file.is_file():
            raise HubtuneError(f"{path} is not a finished run folder (no summary.json); "
                               f"finish it with `hubtune train --resume {path}`")
        return cls(path, json.loads(summary_file.read_text()))


def train(config: cfg.RunConfig, *, run_dir: str | Path | None = None,
          callbacks: list[TrainerCallback] | None = None) -> Run:
    """Fine-tune the configured base on the configured data; returns the finished Run.

    `callbacks` are transformers TrainerCallbacks (a live loss plot, a progress feed).
    """
    path = Path(run_dir) if run_dir else config.output.run_dir()
    if (path / "checkpoints").exists() or (path / "summary.json").exists():
        raise HubtuneError(f"{path} already holds a run; continue it with `hubtune train --resume {path}` "
                           f"or choose another output.dir")
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(config.to_yaml())
    return _run(config, path, resume=False, callbacks=callbacks)


def resume(run_dir: str | Path, callbacks: list[TrainerCallback] | None = None) -> Run:
    """Continue an interrupted run from its last checkpoint, with the config it started with."""
    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise HubtuneError(f"{path} is not a run folder (no config.yaml)")
    if (path / "summary.json").is_file():
        return Run.open(path)
    return _run(cfg.load(path / "config.yaml"), path, resume=True, callbacks=callbacks)


def _run(config: cfg.RunConfig, path: Path, resume: bool, callbacks: list[TrainerCallback] | None) -> Run:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoTokenizer
    from trl import SFTTrainer

    from hubtune import data, hardware, hub, licence, memory
    from hubtune.callbacks import MetricsFile, StopOnSignal

    started = time.time()
    hw = hardware.detect(config.model, config.training)
    torch.manual_seed(config.training.seed)

    # 1. Licence gate and revision pin, before a single weight is downloaded.
    verdict = licence.gate_for_training(config)
    base = hub.resolve_model(config.model)
    memory.warn_if_too_large(config, base.path)  # from config.json, before any weight is loaded

    # 2. Tokenizer and data: fail on bad data before paying for the model.
    tokenizer = AutoTokenizer.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_against_model(config, AutoConfig.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code))
    prepared = data.prepare(config.data, tokenizer, seed=config.training.seed)
    (path / "data_report.json").write_text(json.dumps(prepared.report, indent=2, default=str))

    # 3. The base (4-bit NF4/FP4 or 16-bit) with LoRA adapters on top.
    levers = recipe_levers(config, hw, base.path)
    model = load_base(base.path, config.model, hw, gradient_checkpointing=levers.gradient_checkpointing,
                      attention=levers.attention)
    model = get_peft_model(model, lora_config(config.lora))

    # 4. SFT on completions only, with held-out loss and checkpoints.
    stop = StopOnSignal()
    trainer = SFTTrainer(
        model=model,
        args=sft_args(config, hw, path, has_eval=prepared.eval is not None, levers=levers),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[MetricsFile(path / "metrics.jsonl", resume), stop, *(callbacks or [])],
    )
    if model.is_loaded_in_4bit and hw.compute_dtype == torch.float32:
        # TRL casts the adapters of a quantized model to bf16; on a CPU without bf16 units
        # that is ~3x slower than the float32 compute dtype chosen, so cast them back.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    last = _last_checkpoint(path) if resume else None
    if prepared.eval is not None and not last:
        # Held-out loss before any update: the baseline the final eval loss is compared with.
        (path / "initial_eval.json").write_text(json.dumps(trainer.evaluate()))
    with stop.installed():
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    if stop.received:
        raise TrainingInterrupted(f"training stopped at step {trainer.state.global_step} by {stop.received}; "
                                  f"a checkpoint is in {path / 'checkpoints'}. Continue with "
                                  f"`hubtune train --resume {path}`")

    # 5. Save the adapter with its tokenizer, and what the run was.
    trainer.save_model(str(path / "adapter"))
    tokenizer.save_pretrained(str(path / "adapter"))
    summary = _summary(config, base, hw, trainer, verdict, prepared, time.time() - started)
    initial = path / "initial_eval.json"
    summary["initial_eval_loss"] = json.loads(initial.read_text())["eval_loss"] if initial.exists() else None
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return Run(path, summary)


def check_against_model(config: cfg.RunConfig, model_config) -> None:
    """Settings that can only be judged against the base's architecture."""
    problems = []
    hidden = getattr(model_config, "hidden_size", None)
    if hidden and config.lora.r > hidden:
        problems.append(("lora.r", f"{config.lora.r} is larger than the model's hidden size {hidden}; use r <= {hidden} "
                                   f"(8-64 is typical)"))
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit and config.data.max_seq_len > limit:
        problems.append(("data.max_seq_len", f"{config.data.max_seq_len} exceeds the model's context of {limit} tokens"))
    if problems:
        raise ConfigError(problems, config.model.id)


def load_base(path: str, model: cfg.ModelSection, hw: Hardware, gradient_checkpointing: bool = False,
              for_training: bool = True, attention: str | None = None):
    """The frozen base: quantized to 4 bits through bitsandbytes unless quantization is none."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": hw.compute_dtype, "trust_remote_code": model.trust_remote_code}
    if attention:
        kwargs["attn_implementation"] = attention
    if model.quantization != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model.quantization,
            bnb_4bit_use_double_quant=model.double_quant,
            bnb_4bit_compute_dtype=hw.compute_dtype,
        )
    if hw.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.quantization == "none" or not for_training:
        return base
    if hw.device == "cpu":
        # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights for a bf16 kernel at the first
        # no-grad forward (the held-out eval), rounding the quantization constants: the frozen base
        # would drift. Training keeps the base exactly as quantized.
        for module in base.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if hw.compute_dtype == torch.bfloat16:
        return _freeze_in_bfloat16(base, gradient_checkpointing)
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)


def _freeze_in_bfloat16(base, gradient_checkpointing: bool):
    """PEFT's prepare_model_for_kbit_training without its float32 upcast. The upcast of every 16-bit
    parameter (embeddings, head, norms) guards float16 against overflow; in bfloat16 it only costs
    memory: 4 GB more on an 8B model with a 128k vocabulary, and a float32 residual stream that doubles
    the activations checkpointing keeps (see hubtune/memory.py). The base stays frozen either way."""
    for p in base.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return base


def lora_config(lora: cfg.LoraSection) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.peft_target_modules(), bias="none", task_type="CAUSAL_LM")


@dataclass(frozen=True)
class Levers:
    """How a run uses the machine: the config's auto settings resolved for this device and base."""

    attention: str  # sdpa | flash_attention_2 | eager
    liger: bool  # Liger's fused kernels (RMSNorm, RoPE, SwiGLU) through TRL
    padding_free: bool  # each batch one row with position ids
    gradient_checkpointing: bool


def recipe_levers(config: cfg.RunConfig, hw: Hardware, model_path: str) -> Levers:
    """FlashAttention and Liger on CUDA when installed; padding-free batches where attention has a
    variable-length kernel (FlashAttention: with SDPA a flat row would attend over the whole batch);
    checkpointing only when the memory estimate needs it (hubtune.memory)."""
    from importlib.util import find_spec

    from hubtune import memory

    t, d = config.training, config.data
    cuda = hw.device == "cuda"
    if t.kernels == "auto":
        attention = "flash_attention_2" if cuda and find_spec("flash_attn") else "sdpa"
        liger = cuda and find_spec("liger_kernel") is not None
    else:
        attention, liger = ("sdpa", True) if t.kernels == "liger" else (t.kernels, False)
    if d.padding_free == "auto":
        padding_free = attention == "flash_attention_2" and not d.truncate
    elif d.padding_free and d.truncate and not d.packing:
        raise ConfigError([("data.padding_free", "padding-free rows are not cut to data.max_seq_len; set data.truncate: "
                                                 "false (over-long examples are dropped) or data.padding_free: auto")])
    else:
        padding_free = d.padding_free
    checkpointing = t.gradient_checkpointing
    if checkpointing == "auto":
        checkpointing = memory.checkpointing_needed(config, model_path, hw.device)
    return Levers(attention, liger, padding_free, checkpointing)


def sft_args(config: cfg.RunConfig, hw: Hardware, path: Path, has_eval: bool, levers: Levers | None = None) -> SFTConfig:
    from trl import SFTConfig

    t = config.training
    levers = levers or Levers("sdpa", False, False, t.gradient_checkpointing is True)
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
    checkpointing = levers.gradient_checkpointing
    # Padding-free rows are not truncated by TRL; the data pipeline already dropped over-long examples.
    max_length = None if levers.padding_free and not config.data.packing else config.data.max_seq_len
    return SFTConfig(
        output_dir=str(path / "checkpoints"),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size * 2,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        optim=hw.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        seed=t.seed,
        data_seed=t.seed,
        bf16=hw.bf16,
        fp16=hw.fp16,
        use_cpu=hw.device == "cpu",
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        max_length=max_length,
        packing=config.data.packing,
        packing_strategy=config.data.packing_strategy,
        padding_free=levers.padding_free,
        # Sort each optimizer step's examples by length into its micro-batches: the same examples and the
        # same token-averaged loss per step as random batches, with little padding (LengthGroupedSampler
        # would instead make whole steps of short or long examples, which reweights them).
        train_sampling_strategy=("batch_rebalance" if t.group_by_length and t.gradient_accumulation_steps > 1
                                 and not config.data.packing else "random"),
        use_liger_kernel=levers.liger,
        completion_only_loss=True,  # the prompt is context, not something to learn
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_pin_memory=hw.device == "cuda",
    )


def _last_checkpoint(path: Path) -> Path | None:
    found = sorted((path / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return found[-1] if found else None


def _summary(config, base, hw, trainer, verdict, prepared, seconds: float) -> dict:
    from hubtune.runinfo import library_versions, peak_memory_mb

    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if getattr(p, "quant_type", None) else 1) for p in model.parameters())
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h["step"] > 0]
    return {
        "base_model": base.repo_id or config.model.id,
        "base_revision": base.revision_sha,
        "datasets": [{"path": s.path, "revision": s.revision, "split": s.split} for s in config.data.sources],
        "method": "lora" if config.model.quantization == "none" else "qlora",
        "trainable_parameters": trainable,
        "total_parameters": total,
        "global_steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 4),
        "train_examples": len(prepared.train),
        "eval_examples": len(prepared.eval) if prepared.eval is not None else 0,
        "final_eval_loss": evals[-1] if evals else None,
        "duration_seconds": round(seconds, 1),
        "peak_memory_mb": peak_memory_mb(hw.device),
        "hardware": hw.describe(),
        "licence": verdict.to_dict() if hasattr(verdict, "to_dict") else None,
        "hyperparameters": config.model_dump(mode="json"),
        "versions": library_versions(),
    }
