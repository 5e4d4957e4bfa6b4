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
from hubtune.errors import ConfigError, TrainingInterrupted
from hubtune.runs import DatasetRecord, RunFolder, RunSummary, Status

# torch, transformers, peft and trl load inside the functions that use them, so that
# `import hubtune` (which re-exports train) and the CLI stay fast.
if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig

    from hubtune.hardware import Hardware
    from hubtune.progress import Display


def train(config: cfg.RunConfig, *, run_dir: str | Path | None = None, callbacks: list[TrainerCallback] | None = None,
          owner: str | None = None, display: Display | None = None) -> RunFolder:
    """Fine-tune the configured base on the configured data; returns the finished run folder.

    `callbacks` are transformers TrainerCallbacks (a live loss plot, a progress feed); `display`
    is the console (phases, advice, the live training line).
    """
    run = RunFolder.create(Path(run_dir) if run_dir else config.output.run_dir(), config, owner=owner)
    return _run(run, config, False, callbacks, display)


def resume(run_dir: str | Path, callbacks: list[TrainerCallback] | None = None,
           display: Display | None = None) -> RunFolder:
    """Continue an interrupted run from its last checkpoint, with the config it started with."""
    run = RunFolder.open(run_dir)
    if run.summary is not None:
        return run
    return _run(run, run.config, True, callbacks, display)


def _run(run: RunFolder, config: cfg.RunConfig, resume: bool, callbacks, display: Display | None) -> RunFolder:
    from hubtune.progress import Display, quiet_libraries, verbose

    display = display or Display()
    with run.lock("train"), quiet_libraries(show=verbose()):
        run.mark(Status.RUNNING)
        try:
            _train(run, config, resume, callbacks or [], display)
        except TrainingInterrupted:
            run.mark(Status.INTERRUPTED)
            raise
        except BaseException as err:
            run.mark(Status.FAILED, error=str(err) or type(err).__name__)
            raise
        finally:
            display.close()
        run.mark(Status.FINISHED)
    return run


def _train(run: RunFolder, config: cfg.RunConfig, resume: bool, callbacks: list, display: Display) -> None:
    import torch

    from hubtune import hardware
    from hubtune.interop import backends

    started = time.time()
    path = run.path
    hw = hardware.detect(config.model, config.training)
    backend = backends.select(config.training.backend, hw, config.model)
    if backend.name == "unsloth":
        backends.import_unsloth()  # before transformers, PEFT and TRL, which it patches
    trackers = tracker_callbacks(config, path)

    from transformers import AutoConfig, AutoTokenizer
    from trl import SFTTrainer

    from hubtune import advice, compat, data, hub, licence
    from hubtune.callbacks import MetricsFile, StopOnSignal

    torch.manual_seed(config.training.seed)

    # 1. Licence gate and revision pin, before a single weight is downloaded.
    display.phase("licence", f"checking {config.model.id} and {len(config.data.sources)} dataset(s) "
                             f"for {config.licence.use} use")
    verdict = licence.gate_for_training(config)
    display.licence(verdict)
    base = hub.resolve_model(config.model)

    # 2. Tokenizer and data: fail on bad data before paying for the model.
    tokenizer = AutoTokenizer.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model_config = AutoConfig.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code)
    check_against_model(config, model_config)
    if line := advice.advice_line(config, advice.parameter_count(model_config)):
        display.note(line)
    prepared = data.prepare(config.data, tokenizer, seed=config.training.seed)
    display.data_report(prepared.report)
    run.write_json(RunFolder.DATA_REPORT, prepared.report)
    run.write_rows("train", prepared.train)
    run.write_rows("validation", prepared.eval)

    # 3. The base (4-bit NF4/FP4 or 16-bit) with LoRA adapters on top.
    display.phase("backend", f"{backend.name} ({backend.why})")
    display.phase("loading", f"{config.model.id} ({config.model.quantization}) on {hw.device}, "
                             f"{str(hw.compute_dtype).removeprefix('torch.')} compute")
    model = load_base(base.path, config.model, hw, gradient_checkpointing=config.training.gradient_checkpointing,
                      backend=backend.name, max_seq_len=config.data.max_seq_len)
    model = attach_lora(model, config, backend.name)

    # 4. SFT on completions only, with held-out loss and checkpoints.
    stop = StopOnSignal()
    trainer = SFTTrainer(
        model=model,
        args=sft_args(config, hw, path, has_eval=prepared.eval is not None, backend=backend.name),
        train_dataset=prepared.train,
        eval_dataset=prepared.eval,
        processing_class=tokenizer,
        callbacks=[MetricsFile(path / RunFolder.METRICS, resume, on_row=display.row), stop, *trackers, *callbacks],
    )
    _quiet_trainer(trainer)
    if _quantized(model):
        compat.restore_adapter_dtype(trainer.model, hw.compute_dtype)

    last = run.last_checkpoint() if resume else None
    display.phase("training", f"resuming from {last.name}" if last else
                  f"{len(prepared.train)} examples, effective batch "
                  f"{config.training.micro_batch_size * config.training.gradient_accumulation_steps}")
    if prepared.eval is not None and not last:
        # Held-out loss before any update: the baseline the final eval loss is compared with.
        run.write_json(RunFolder.INITIAL_EVAL, trainer.evaluate())
    with stop.installed():
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    display.close()
    if stop.received:
        raise TrainingInterrupted(f"training stopped at step {trainer.state.global_step} by {stop.received}; "
                                  f"a checkpoint is in {run.checkpoints}. Continue with "
                                  f"`hubtune train --resume {path}`")

    # 5. Save the adapter with its tokenizer, and what the run was.
    display.phase("saving", f"adapter to {run.adapter}")
    trainer.save_model(str(run.adapter))
    tokenizer.save_pretrained(str(run.adapter))
    initial = run.read_json(RunFolder.INITIAL_EVAL)
    summary = _summary(config, base, hw, trainer, verdict, prepared, time.time() - started,
                       initial["eval_loss"] if initial else None, backend.to_dict())
    run.write_summary(summary)
    if summary.initial_eval_loss is not None and summary.final_eval_loss is not None:
        display.phase("done", f"held-out loss {summary.initial_eval_loss:.4f} -> {summary.final_eval_loss:.4f} "
                              f"in {summary.global_steps} steps, {summary.duration_seconds:.0f} s")


def _quiet_trainer(trainer) -> None:
    """The display shows progress; the Trainer's own bar and printed log dicts would repeat it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


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
              for_training: bool = True, backend: str = "hf", max_seq_len: int = 2048):
    """The frozen base: quantized to 4 bits through bitsandbytes unless quantization is none. A base
    saved already quantized (its config.json holds a quantization_config) loads as saved."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hubtune import compat
    from hubtune.interop import backends, prequantized

    saved_quantized = prequantized.quantization_config(path) is not None
    if backend == "unsloth":
        return backends.unsloth_base(path, model, hw, max_seq_len, saved_quantized)
    kwargs = {"dtype": hw.compute_dtype, "trust_remote_code": model.trust_remote_code}
    if model.quantization != "none" and not saved_quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model.quantization,
            bnb_4bit_use_double_quant=model.double_quant,
            bnb_4bit_compute_dtype=hw.compute_dtype,
        )
    if hw.device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if saved_quantized:
        # The compute dtype saved with the weights (often bfloat16) is the machine's choice, not the
        # repo's: compute as a base quantized here would (float32 on a CPU without bf16 units).
        from bitsandbytes.nn import Linear4bit

        for module in base.modules():
            if isinstance(module, Linear4bit):
                module.compute_dtype = hw.compute_dtype
    if not _quantized(base) or not for_training:
        return base
    if hw.device == "cpu":
        compat.keep_4bit_weights_exact(base)  # the frozen base stays exactly as quantized
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)


def _saved_quantization(path: str) -> str | None:
    """How a pre-quantized base was saved (`bitsandbytes nf4 (double quantization)`); None when hubtune quantized it."""
    from hubtune.interop import prequantized

    saved = prequantized.quantization_config(path)
    return prequantized.describe(saved) if saved else None


def _quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach_lora(model, config: cfg.RunConfig, backend: str = "hf"):
    """LoRA adapters on the frozen base, through PEFT or Unsloth's FastLanguageModel."""
    if backend == "unsloth":
        from hubtune.interop import backends

        return backends.unsloth_lora(model, config.lora, config.training.gradient_checkpointing, config.training.seed)
    from peft import get_peft_model

    return get_peft_model(model, lora_config(config.lora))


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def tracker_callbacks(config: cfg.RunConfig, path: Path) -> list[TrainerCallback]:
    """TensorBoard writes into RUN/tensorboard; the other trackers are named in report_to (sft_args).
    A tracker whose package is missing is a ConfigError before anything loads."""
    import importlib.util

    missing = [name for name in config.training.report_to if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None]
    if missing:
        raise ConfigError([("training.report_to", f"{name} is not installed: pip install {TRACKER_PACKAGES[name]}, "
                                                  f"or take it out of training.report_to") for name in missing])
    if "tensorboard" not in config.training.report_to:
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(path / "tensorboard")))]


def lora_config(lora: cfg.LoraSection) -> LoraConfig:
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.peft_target_modules(), bias="none", task_type="CAUSAL_LM")


def sft_args(config: cfg.RunConfig, hw: Hardware, path: Path, has_eval: bool, backend: str = "hf") -> SFTConfig:
    from trl import SFTConfig

    t = config.training
    # Unsloth checkpoints gradients itself (get_peft_model); the trainer must not wrap it again.
    checkpointing = t.gradient_checkpointing and backend != "unsloth"
    trackers = [r for r in t.report_to if r != "tensorboard"]  # TensorBoard: tracker_callbacks
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
        max_length=config.data.max_seq_len,
        packing=config.data.packing,
        completion_only_loss=True,  # the prompt is context, not something to learn
        include_num_input_tokens_seen="non_padding",
        report_to=trackers or "none",
        dataloader_pin_memory=hw.device == "cuda",
    )


def _summary(config, base, hw, trainer, verdict, prepared, seconds: float, initial_eval_loss,
             backend: dict | None = None) -> RunSummary:
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
        method="qlora" if _quantized(model) else "lora",
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
        backend=backend,
        base_quantization=_saved_quantization(base.path),
    )
