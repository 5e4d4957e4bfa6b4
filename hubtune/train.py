"""The training recipe, top to bottom: check the licence, load the base in 4 bits
(or 16), attach LoRA, turn the data into chat messages, train with TRL's SFTTrainer
on completions only, save the adapter and a summary into the run folder.

    run = hubtune.train(hubtune.config.load("run.yaml"))   # a RunFolder
    run = hubtune.resume("runs/20260101-120000")          # after Ctrl-C or a crash
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from hubtune import config as cfg
from hubtune.errors import ConfigError, TrainingInterrupted, translate
from hubtune.runs import DatasetRecord, RunFolder, RunSummary, Status

# torch, transformers, peft and trl load inside the functions that use them, so that
# `import hubtune` (which re-exports train) and the CLI stay fast.
if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig

    from hubtune.hardware import Hardware


def train(config: cfg.RunConfig, *, run_dir: str | Path | None = None,
          callbacks: list[TrainerCallback] | None = None, owner: str | None = None) -> RunFolder:
    """Fine-tune the configured base on the configured data; returns the finished run folder.

    `callbacks` are transformers TrainerCallbacks (a live loss plot, a progress feed).
    """
    run = RunFolder.create(Path(run_dir) if run_dir else config.output.run_dir(), config, owner=owner)
    return _run(run, config, resume=False, callbacks=callbacks)


def resume(run_dir: str | Path, callbacks: list[TrainerCallback] | None = None) -> RunFolder:
    """Continue an interrupted run from its last checkpoint, with the config it started with."""
    run = RunFolder.open(run_dir)
    if run.summary is not None:
        return run
    return _run(run, run.config, resume=True, callbacks=callbacks)


def _run(run: RunFolder, config: cfg.RunConfig, resume: bool, callbacks: list[TrainerCallback] | None) -> RunFolder:
    with run.lock("train"):
        run.mark(Status.RUNNING)
        try:
            _train(run, config, resume, callbacks)
        except TrainingInterrupted:
            run.mark(Status.INTERRUPTED)
            raise
        except Exception as err:
            # A foreign error the table in hubtune.errors explains (out of memory, a Hub failure, damaged
            # weights) is recorded and raised with its fix, in this run's own settings.
            typed = translate(err, config=config)
            run.mark(Status.FAILED, error=str(typed or err) or type(err).__name__)
            if typed is None or typed is err:
                raise
            raise typed from err
        except BaseException as err:
            run.mark(Status.FAILED, error=str(err) or type(err).__name__)
            raise
        run.mark(Status.FINISHED)
    return run


def _train(run: RunFolder, config: cfg.RunConfig, resume: bool, callbacks: list[TrainerCallback] | None) -> None:
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoTokenizer
    from trl import SFTTrainer

    from hubtune import data, hardware, hub, licence
    from hubtune.callbacks import MetricsFile, StopOnSignal

    started = time.time()
    path = run.path
    hw = hardware.detect(config.model, config.training)
    torch.manual_seed(config.training.seed)

    # 1. Licence gate and revision pin, before a single weight is downloaded.
    verdict = licence.gate_for_training(config)
    base = hub.resolve_model(config.model)

    # 2. Tokenizer and data: fail on bad data before paying for the model.
    tokenizer = AutoTokenizer.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    check_against_model(config, AutoConfig.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code))
    prepared = data.prepare(config.data, tokenizer, seed=config.training.seed)
    run.write_json(RunFolder.DATA_REPORT, prepared.report)
    run.write_rows("train", prepared.train)
    run.write_rows("validation", prepared.eval)

    # 3. The base (4-bit NF4/FP4 or 16-bit) with LoRA adapters on top.
    model = load_base(base.path, config.model, hw, gradient_checkpointing=config.training.gradient_checkpointing)
    model = get_peft_model(model, lora_config(config.lora))

    # 4. SFT on completions only, with held-out loss and checkpoints.
    stop = StopOnSignal()
    trainer = SFTTrainer(
        model=model,
        args=sft_args(config, hw, path, has_eval=prepared.eval is not None),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[MetricsFile(path / RunFolder.METRICS, resume), stop, *(callbacks or [])],
    )
    if getattr(model, "is_loaded_in_4bit", False) and hw.compute_dtype == torch.float32:
        # TRL casts the adapters of a quantized model to bf16; on a CPU without bf16 units
        # that is ~3x slower than the float32 compute dtype chosen, so cast them back.
        for p in trainer.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()

    last = run.last_checkpoint() if resume else None
    if prepared.eval is not None and not last:
        # Held-out loss before any update: the baseline the final eval loss is compared with.
        run.write_json(RunFolder.INITIAL_EVAL, trainer.evaluate())
    with stop.installed():
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    if stop.received:
        raise TrainingInterrupted(f"training stopped at step {trainer.state.global_step} by {stop.received}; "
                                  f"a checkpoint is in {run.checkpoints}. Continue with "
                                  f"`hubtune train --resume {path}`")

    # 5. Save the adapter with its tokenizer, and what the run was.
    trainer.save_model(str(run.adapter))
    tokenizer.save_pretrained(str(run.adapter))
    initial = run.read_json(RunFolder.INITIAL_EVAL)
    run.write_summary(_summary(config, base, hw, trainer, verdict, prepared, time.time() - started,
                               initial["eval_loss"] if initial else None))


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
    if problem := target_modules_problem(config.lora, model_config, config.model.trust_remote_code):
        problems.append(("lora.target_modules", problem))
    if problems:
        raise ConfigError(problems, config.model.id)


def target_modules_problem(lora: cfg.LoraSection, model_config, trust_remote_code: bool = False) -> str | None:
    """Why the LoRA target names do not fit the model, or None. PEFT adapts the names it finds and keeps
    quiet about the others, so a typo would train less than asked. The model is built from its config on
    the meta device (no weights, no memory) and each name is matched as PEFT matches it."""
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForCausalLM, pytorch_utils

    targets = lora.peft_target_modules()
    if isinstance(targets, str):  # all-linear: whatever linear layers there are
        return None
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture that cannot be built empty: PEFT still checks when it attaches LoRA
        return None
    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                 pytorch_utils.Conv1D)
    modules = [(key, m) for key, m in skeleton.named_modules() if key]
    linear_names = sorted({key.rsplit(".", 1)[-1] for key, m in modules if isinstance(m, adaptable)})
    missing, unadaptable = [], []
    for name in targets:
        found = [m for key, m in modules if check_target_module_exists(LoraConfig(target_modules=[name]), key)]
        if not found:
            missing.append(name)
        elif not any(isinstance(m, adaptable) for m in found):
            unadaptable.append(f"{name} ({type(found[0]).__name__})")
    if not missing and not unadaptable:
        return None
    what = []
    if missing:
        what.append(f"{', '.join(missing)} {'matches' if len(missing) == 1 else 'match'} no module of this model")
    if unadaptable:
        what.append(f"{', '.join(unadaptable)} {'is' if len(unadaptable) == 1 else 'are'} not a layer LoRA can adapt")
    return (f"{'; '.join(what)}. Its adaptable layers are named: {', '.join(linear_names)}; or use a preset: "
            f"all-linear, attention, qv")


def load_base(path: str, model: cfg.ModelSection, hw: Hardware, gradient_checkpointing: bool = False,
              for_training: bool = True):
    """The frozen base: quantized to 4 bits through bitsandbytes unless quantization is none."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": hw.compute_dtype, "trust_remote_code": model.trust_remote_code}
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
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)


def lora_config(lora: cfg.LoraSection) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.peft_target_modules(), bias="none", task_type="CAUSAL_LM")


def sft_args(config: cfg.RunConfig, hw: Hardware, path: Path, has_eval: bool) -> SFTConfig:
    from trl import SFTConfig

    t = config.training
    eval_strategy = "no" if not has_eval else ("steps" if t.eval_steps else "epoch")
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
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
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
        max_length=config.data.max_seq_len,
        packing=config.data.packing,
        completion_only_loss=True,  # the prompt is context, not something to learn
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        dataloader_pin_memory=hw.device == "cuda",
    )


def _summary(config, base, hw, trainer, verdict, prepared, seconds: float, initial_eval_loss) -> RunSummary:
    from hubtune.runinfo import library_versions, peak_memory_mb

    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if getattr(p, "quant_type", None) else 1) for p in model.parameters())
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h["step"] > 0]
    read = {s["path"]: s for s in prepared.report["sources"]}
    return RunSummary(
        base_model=base.repo_id or config.model.id,
        base_revision=base.revision_sha,
        datasets=[DatasetRecord(path=s.path, split=s.split, name=s.name, revision=s.revision,
                                revision_sha=read.get(s.path, {}).get("revision_sha"))
                  for s in config.data.sources],
        method="lora" if config.model.quantization == "none" else "qlora",
        trainable_parameters=trainable,
        total_parameters=total,
        global_steps=trainer.state.global_step,
        epochs=round(trainer.state.epoch or 0.0, 4),
        train_examples=len(prepared.train),
        eval_examples=len(prepared.eval) if prepared.eval is not None else 0,
        initial_eval_loss=initial_eval_loss,
        final_eval_loss=evals[-1] if evals else None,
        duration_seconds=round(seconds, 1),
        peak_memory_mb=peak_memory_mb(hw.device),
        hardware=hw.describe(),
        licence=verdict.to_dict(),
        versions=library_versions(),
    )
