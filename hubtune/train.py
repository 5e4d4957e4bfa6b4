"""The training recipe, top to bottom: check the licence, load the base in 4 bits
(or 16), attach LoRA, turn the data into chat messages, train with TRL's SFTTrainer
on completions only, save the adapter and a summary into the run folder.

    run = hubtune.train(hubtune.config.load("run.yaml"))   # a RunFolder
    run = hubtune.resume("runs/20260101-120000")          # after Ctrl-C or a crash
    run = resume_from_hub("alice/my-run")                 # on another machine, from training.push_checkpoints

Under accelerate (`hubtune train CONFIG --num-processes N`) every process runs this recipe on its shard of
the data; the main process alone writes the run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib.util
import logging
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from hubtune import config as cfg
from hubtune import distributed, expert_lora, optimizer_shards, recurrent, unfreeze
from hubtune.errors import ConfigError, DiskFullError, HubtuneError, TrainingInterrupted, page_text, translate
from hubtune.levers import Levers, recipe_levers
from hubtune.runs import (DatasetRecord, RunFolder, RunSummary, Status, checkpoint_problem, folder_size,
                          remove_incomplete, step_of)

log = logging.getLogger("hubtune")

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
    from hubtune import hardware

    cpu = hardware.detect(config.model, config.training).device == "cpu"
    # One folder for all processes of a launch: the main one creates it and tells the others.
    path = distributed.share(lambda: RunFolder.create(Path(run_dir) if run_dir else config.output.run_dir(), config,
                                                      owner=owner).path, cpu=cpu)
    return _run(RunFolder(path), config, False, callbacks, display)


def resume(run_dir: str | Path, callbacks: list[TrainerCallback] | None = None,
           display: Display | None = None) -> RunFolder:
    """Continue an interrupted run from its last checkpoint, with the config it started with."""
    run = RunFolder.open(run_dir)
    if run.summary is not None:
        return run
    check_resumable(run, run.config)
    return _run(run, run.config, True, callbacks, display)


def check_resumable(run: RunFolder, config: cfg.RunConfig) -> None:
    """A checkpoint continues only with the adapter shape it was saved with: a lora.r or lora.alpha edited
    in config.yaml since is a ConfigError naming both values, before any weight is loaded; and one whose
    optimizer state is kept per process (optimizer_shards) only with as many processes."""
    import json

    last = next((c for c in reversed(run.checkpoint_folders()) if checkpoint_problem(c) is None), None)
    if last is not None and (why := optimizer_shards.problem(last, distributed.world_size())):
        raise ConfigError([("training.distributed", why)], str(run.path / RunFolder.CONFIG))
    saved = [c / "adapter_config.json" for c in run.checkpoint_folders() if (c / "adapter_config.json").is_file()]
    if not saved:
        return
    if config.training.expert_parallel_size > 1 and last is not None and not optimizer_shards.saved(last):
        raise ConfigError([("training.expert_parallel_size", f"{config.training.expert_parallel_size}: {last} holds "
                            f"the adapter only, no optimizer state per process, so the run cannot continue where it "
                            f"stopped; start a new run")], str(run.path / RunFolder.CONFIG))
    try:
        adapter = json.loads(saved[-1].read_text())
    except (OSError, json.JSONDecodeError):
        return  # a damaged checkpoint is set aside by last_checkpoint, with its own warning
    problems = [(f"lora.{name}", f"{now} here, but {saved[-1].parent.name} was saved with {was}; a run continues "
                                 f"with the adapter it was saved with: set it back to {was}, or start a new run")
                for name, now, was in (("r", config.lora.r, adapter.get("r")),
                                       ("alpha", config.lora.alpha, adapter.get("lora_alpha")))
                if was is not None and now != was]
    if problems:
        raise ConfigError(problems, str(run.path / RunFolder.CONFIG))


def resume_from_hub(repo_id: str, run_dir: str | Path | None = None,
                    callbacks: list[TrainerCallback] | None = None, display: Display | None = None) -> RunFolder:
    """Continue, on this machine, a run mirrored with training.push_checkpoints: its config, metrics and
    latest checkpoint are downloaded from `repo_id` into `run_dir` (default runs/<repo name>)."""
    path = distributed.share(lambda: fetch_from_hub(repo_id, run_dir))
    return resume(path, callbacks, display)


def fetch_from_hub(repo_id: str, run_dir: str | Path | None = None) -> Path:
    """Download the run mirrored in `repo_id` into a new local folder (default runs/<repo name>)."""
    from hubtune.callbacks import download_run

    dest = Path(run_dir) if run_dir else Path("runs") / repo_id.split("/")[-1]
    if (dest / RunFolder.CONFIG).is_file():
        raise HubtuneError(f"{dest} already holds a run: continue it with `hubtune train --resume {dest}`, or "
                           f"download {repo_id} into another folder with --out")
    return download_run(repo_id, dest)


def _run(run: RunFolder, config: cfg.RunConfig, resume: bool, callbacks, display: Display | None) -> RunFolder:
    from hubtune.progress import Display, quiet_libraries, verbose

    # Only the process that writes the run shows the console; the others of a launch stay quiet.
    display = display or Display(quiet=not distributed.is_main_process())
    with run.lock("train"), quiet_libraries(show=verbose()):
        run.clear_stop_request()  # a Stop pressed for an earlier job of this run is not one for this job
        run.mark(Status.RUNNING)
        try:
            _train(run, config, resume, callbacks or [], display)
        except TrainingInterrupted as err:
            run.mark(Status.INTERRUPTED, str(err), page_text(err))
            raise
        except BaseException as err:
            # A full disk first: safetensors and torch.save report it in words the table below would
            # read as damaged weights.
            full = disk_full(run, err)
            if full is not None:
                _mark(run, Status.INTERRUPTED, full)  # resumable once space is freed
                raise full from None
            # A foreign error the table in hubtune.errors explains (out of memory, a Hub failure, damaged
            # weights) is recorded and raised with its fix, in this run's own settings.
            typed = translate(err, config=config) if isinstance(err, Exception) else None
            _mark(run, Status.FAILED, typed or err)
            if typed is None or typed is err:
                raise
            raise typed from err
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
    method = config.training.method
    hw = hardware.detect(config.model, config.training)
    cpu = hw.device == "cpu"
    mode = config.training.distributed
    distributed.check_launch(mode, hw.device)
    distributed.check_context_parallel(config.training, hw.device)
    distributed.check_expert_parallel(config.training, hw.device, bool(config.lora.target_parameters))
    distributed.check_quantized_experts(config)
    hw = dataclasses.replace(hw, optimizer=distributed.optimizer_for(mode, hw.optimizer, config.training.optimizer))
    if hw.optimizer in TORCHAO_OPTIMIZERS and importlib.util.find_spec("torchao") is None:
        raise ConfigError([("training.optimizer", f"{hw.optimizer} keeps its states in torchao's low-bit tensors: "
                                                  f"pip install 'hubtune[lowbit]' (torchao), or use adamw_8bit "
                                                  f"(bitsandbytes)")])
    distributed.separate_optimizer_compiles(mode, hw.optimizer)
    hub_kernels_needed(config.model, config.training)
    loftq_device(config.lora, hw.device)
    # Unsloth loads the base its own way, without transformers' expert-parallel sharding.
    backend = backends.select("hf" if config.training.expert_parallel_size > 1 else config.training.backend, hw,
                              config.model)
    if backend.name == "unsloth":
        backends.import_unsloth()  # before transformers, PEFT and TRL, which it patches
    trackers = tracker_callbacks(config, path)

    from transformers import AutoConfig, AutoTokenizer

    from hubtune import advice, compat, data, families, fit, hub, licence, methods
    from hubtune.callbacks import HubCheckpoints, MetricsFile, QuadraticWarmup, StopOnSignal
    from hubtune.data.pipeline import require_held_out

    distributed.start(cpu)
    if cpu:
        torch.set_num_threads(hardware.cpu_threads(distributed.local_world_size()))
    torch.manual_seed(config.training.seed)

    # 1. Licence gate and revision pin, before a single weight is downloaded; the checkpoint mirror's
    #    repo too, so a token that cannot write there stops the run now rather than at the first save.
    datasets = config.data.trained_sources()
    mixed = " (general data mixed in included)" if len(datasets) > len(config.data.sources) else ""
    display.phase("licence", f"checking {config.model.id} and {len(datasets)} dataset(s){mixed} "
                             f"for {config.licence.use} use")
    verdict = licence.gate_for_training(config)
    display.licence(verdict)
    mirror = HubCheckpoints(path, config.training.push_checkpoints) if config.training.push_checkpoints else None
    if mirror and run.writer:
        mirror.create_repo()
    with distributed.main_process_first(cpu):
        base = hub.resolve_model(config.model)

        # 2. Tokenizer and data: fail on bad data before paying for the model.
        tokenizer = load_tokenizer(base.path, config.model)
        new_tokens = add_tokens(tokenizer, config.model)
        if config.training.relora is not None:
            from hubtune import relora

            relora.check(config, hw.optimizer, backend.name, new_tokens)
        if new_tokens:
            display.note(f"added to the vocabulary (the embedding and output head train with the adapter): "
                         f"{', '.join(new_tokens)}")
        model_config = AutoConfig.from_pretrained(base.path, trust_remote_code=config.model.trust_remote_code)
        set_pad_token(tokenizer, families.family_of(model_config, tokenizer.chat_template))
        check_against_model(config, model_config)
        if line := advice.advice_line(config, advice.parameter_count(model_config)):
            display.note(line)
        if warning := fit.device_warning(config, base.path):
            display.note(warning, style="bold red")
        prepared = data.prepare(config.data, tokenizer, seed=config.training.seed, model_config=model_config,
                                generation_config=generation_config(base.path))
        methods.check_data(method, prepared.report["kind"], prepared.report["format"])
    rewards = None
    if method == "grpo":  # built now: a missing judge or a reward that cannot import stops the run here
        from hubtune.evaluation.rewards import build_rewards

        rewards, _ = build_rewards(config.training.grpo.rewards, config.eval)
    display.data_report(prepared.report)
    require_held_out(prepared.report, config.data)
    run.write_json(RunFolder.DATA_REPORT, prepared.report)
    run.write_rows("train", prepared.train)
    run.write_rows("validation", prepared.eval)
    batches = distributed.batch_plan(config.training, len(prepared.train))

    # 3. The base (4-bit NF4/FP4 or 16-bit) with LoRA adapters on top.
    display.phase("backend", f"{backend.name} ({backend.why})")
    levers = recipe_levers(config, hw, base.path, families.family_of(model_config, tokenizer.chat_template))
    if levers.padding_free and config.data.padding_free == "auto" and recurrent.packing_problem(model_config):
        levers = dataclasses.replace(levers, padding_free=False)  # a flat row would mix the examples' states
    if recurrent.attention_free(model_config):  # transformers refuses to load them with an attention kernel named
        levers = dataclasses.replace(levers, attention=None)
    display.phase("loading", f"{config.model.id} ({config.model.quantization}) on {hw.device}, "
                             f"{str(hw.compute_dtype).removeprefix('torch.')} compute, {levers.describe()}")
    sharded = mode in distributed.SHARDED and distributed.world_size() > 1
    model = load_base(base.path, config.model, hw, gradient_checkpointing=levers.gradient_checkpointing,
                      backend=backend.name, max_seq_len=config.data.max_seq_len, sharded=sharded,
                      attention=levers.attention, distributed_config=distributed.expert_parallel_config(config.training))
    if config.training.expert_parallel_size > 1:
        display.phase("experts", distributed.experts_held(model, config.training.expert_parallel_size))
    if new_tokens:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # as Axolotl resizes by default
    model = attach_lora(model, config, backend.name, levers.gradient_checkpointing,
                        new_token_ids=tokenizer.convert_tokens_to_ids(new_tokens), model_config=model_config)
    if line := regex_layers_moved(model, config.lora):
        display.note(line)
    # LoRA on experts split over the processes: each keeps its own experts' factors (hubtune.expert_lora)
    expert_adapters = expert_lora.shard(model) if config.training.expert_parallel_size > 1 else []
    from hubtune import context_parallel

    if config.training.context_parallel_size > 1:
        context_parallel.prepare(model)  # attention over the gathered rows, Mamba-2 state passed between chunks
    else:
        context_parallel.keep_packed_examples_apart(model)  # recurrent state restarts at each packed example
    if sharded and mode == "fsdp":
        compat.peft_keys_under_nested_fsdp()  # else FSDP1's checkpoints and the adapter saved at the end are empty

    # 4. The method's trainer: SFT on completions only, DPO / ORPO / KTO on preference pairs, GRPO on
    #    answers it samples and scores (methods.py), with checkpoints. Resuming, the newest complete
    #    checkpoint is chosen (by the main process, which moves incomplete ones aside).
    last = distributed.share(run.last_checkpoint, cpu=cpu) if resume else None
    stop = StopOnSignal()
    selection = checkpoint_selection(run, config, prepared.eval, tokenizer, _step(last))
    args = methods.method_args(config, trainer_args(config, hw, path, prepared.eval is not None, backend.name, levers),
                               lambda: sft_args(config, hw, path, has_eval=prepared.eval is not None,
                                                backend=backend.name, levers=levers))
    # SFT trains on rows tokenized as the model family renders them; the other trainers read the rows and
    # apply the chat template themselves.
    rows = (lambda split: tokenized(split, prepared.chat)) if method == "sft" else (lambda split: split)
    trainer = methods.build_trainer(
        config, model, tokenizer, args, rows(prepared.train), rows(prepared.eval),
        # ReLoRA first: the metrics line carries its restart count
        callbacks=[*relora_callback(config, base.path, args, last),
                   MetricsFile(path / RunFolder.METRICS, _step(last), on_row=display.row), stop,
                   *([mirror] if mirror else []), *([selection] if selection else []), *trackers,
                   *early_stopping(config, prepared.eval is not None),
                   *([QuadraticWarmup()] if config.training.warmup_shape == "quadratic" else []), *callbacks],
        rewards=rewards,
    )
    _quiet_trainer(trainer)
    optimizer_shards.keep_per_process(trainer)  # bitsandbytes under FSDP: one file per process; FSDP2's local shards
    if config.training.expert_parallel_size > 1:
        expert_lora.keep_per_process(trainer, expert_adapters)  # its optimizer per process, its experts' LoRA
    if _quantized(model) and not sharded:
        compat.restore_adapter_dtype(trainer.model, hw.compute_dtype)

    display.phase("training", f"resuming from {last.name}" if last else batches.describe())
    if prepared.eval is not None and not last:
        # Held-out loss (SFT) or the method's own measure before any update: the baseline the end is compared with.
        run.write_json(RunFolder.INITIAL_EVAL, trainer.evaluate() if method == "sft" else
                       methods.held_out_measures(config, trainer.model, tokenizer, prepared.eval, rewards))
    with stop.installed():
        trainer.train(resume_from_checkpoint=str(last) if last else None)
    display.close()
    if stop.received:
        step = trainer.state.global_step
        why = "you pressed Stop" if run.stop_requested() else f"{stop.received} received"
        raise TrainingInterrupted(f"training stopped at step {step} by {stop.received}; a checkpoint is in "
                                  f"{run.checkpoints}. Continue with `hubtune train --resume {path}`").for_page(
            f"Stopped at step {step} ({why}). Resume continues from the last checkpoint.")

    # 5. Save the adapter with its tokenizer, and what the run was (save_model gathers the adapter
    #    from every process under FSDP / ZeRO-3, so all of them call it; it writes on the main one).
    display.phase("saving", f"adapter to {run.adapter}")
    distributed.adapter_saved_whole(trainer)
    trainer.save_model(str(run.adapter))
    if not run.writer:
        return
    if selection:
        keep_selected(run, selection, trainer.state.global_step, display)
    tokenizer.save_pretrained(str(run.adapter))
    initial = run.read_json(RunFolder.INITIAL_EVAL)
    after = methods.held_out_measures(config, trainer.model, tokenizer, prepared.eval, rewards)
    summary = _summary(config, base, hw, trainer, verdict, prepared, time.time() - started,
                       (initial or {}).get("eval_loss"), backend.to_dict(), batches)
    summary.training_method = method
    summary.method_settings = methods.settings_record(config)
    if config.training.relora is not None:
        r = config.training.relora
        cycles = max(trainer.state.global_step - 1, 0) // r.restart_steps + 1  # restarts begin steps R+1, 2R+1, ...
        summary.method_settings["relora"] = {**r.model_dump(), "cycles": cycles, "rank": config.lora.r * cycles}
    if after:
        summary.held_out = {"before": {k: v for k, v in (initial or {}).items() if k in after}, "after": after}
    if selection:
        summary.selection = {**selection.summary(), "last_step": trainer.state.global_step}
    run.write_summary(summary)
    if mirror:
        mirror.finish()
    if summary.held_out:
        display.phase("done", f"{methods.describe_measures(summary.held_out)} in {summary.global_steps} steps, "
                              f"{summary.duration_seconds:.0f} s")
    elif summary.initial_eval_loss is not None and summary.final_eval_loss is not None:
        display.phase("done", f"held-out loss {summary.initial_eval_loss:.4f} -> {summary.final_eval_loss:.4f} "
                              f"in {summary.global_steps} steps, {summary.duration_seconds:.0f} s")


def relora_callback(config: cfg.RunConfig, base_path: str, args, resume_from: Path | None) -> list[TrainerCallback]:
    """training.relora's restarts (hubtune.relora), resuming from a checkpoint's merged cycles."""
    if config.training.relora is None:
        return []
    from hubtune.relora import ReLoRA

    return [ReLoRA(config.training.relora, base_path, str(getattr(args.optim, "value", args.optim)), resume_from)]


def early_stopping(config: cfg.RunConfig, has_eval: bool) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback for training.early_stopping_patience (the held-out loss must improve
    within that many evaluations); a ConfigError when the run evaluates nothing during training."""
    t = config.training
    if not t.early_stopping_patience:
        return []
    if not has_eval or t.evals_per_epoch == 0:
        raise ConfigError([("training.early_stopping_patience", "stops on the held-out loss, and this run evaluates "
                                                                "none during training: set data.val_set_size above 0 "
                                                                "and eval_steps or evals_per_epoch")])
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience)]


def checkpoint_selection(run: RunFolder, config: cfg.RunConfig, held_out, tokenizer, resume_step: int):
    """The CheckpointSelection callback of training.select (None for `last`), scoring on the first
    training.select_examples held-out task examples."""
    from hubtune.callbacks import CheckpointSelection

    t = config.training
    if t.select == "last":
        return None
    if held_out is None or len(held_out) == 0:
        raise ConfigError([("training.select", f"{t.select} scores each checkpoint on the held-out split, and this "
                                               f"run has none: set data.val_set_size above 0, or select: last")])
    rows = [r for r in held_out if r.get("prompt") and r.get("completion")][:t.select_examples]
    if t.select == "task" and not rows:
        raise ConfigError([("training.select", "task scores answers against held-out completions, and this run's "
                                               "held-out rows have none (a preference method's): use eval_loss or last")])
    return CheckpointSelection(run.path, t.select, rows, config.eval, tokenizer, resume_step)


def keep_selected(run: RunFolder, selection, last_step: int, display: Display) -> None:
    """The chosen checkpoint's adapter replaces the last one in RUN/adapter when they differ."""
    import shutil

    chosen = selection.chosen
    best = run.path / RunFolder.SELECTED_ADAPTER
    if chosen is None or chosen["step"] == last_step or not best.is_dir():
        display.phase("select", f"kept the last checkpoint (step {last_step}) by {selection.select}")
        return
    for f in best.iterdir():
        if f.is_file():
            shutil.copy2(f, run.adapter / f.name)
    display.phase("select", f"kept step {chosen['step']} of {last_step} by {selection.select}")


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
    if config.model.linearized_experts:
        from hubtune import linearized

        linearized.check_model_type(model_config)
    if problem := target_modules_problem(config.lora, model_config, config.model.trust_remote_code,
                                         config.model.linearized_experts):
        problems.append(("lora.target_modules", problem))
    elif config.training.method != "full" and (
            dropout := expert_dropout_problem(config.lora, model_config, config.model.trust_remote_code,
                                              config.model.linearized_experts)):
        problems.append(("lora.dropout", dropout))
    if config.training.expert_parallel_size > 1 and (experts := expert_parallel_problem(
            config.training.expert_parallel_size, model_config)):
        problems.append(("training.expert_parallel_size", f"{config.training.expert_parallel_size}: {experts}"))
    if config.training.context_parallel_size > 1 and (layers := context_parallel_layers_problem(model_config)):
        problems.append(("training.context_parallel_size", f"{config.training.context_parallel_size}: {layers}"))
    if (config.data.packing or config.data.padding_free is True) and (
            leak := recurrent.packing_problem(model_config)):
        for field, value in (("packing", config.data.packing), ("padding_free", config.data.padding_free)):
            if value is True:
                problems.append((f"data.{field}", f"true packs several examples into each row, but {leak}; set "
                                                  f"data.{field}: false"))
    if problems:
        # The settings are the config's; the model they were judged against is named in each problem.
        raise ConfigError([(path, f"{message} (base: {config.model.id})") for path, message in problems])


EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def expert_parallel_problem(ep: int, model_config) -> str | None:
    """Why transformers cannot spread this model's experts over ep GPUs, or None: it needs the model's
    expert-parallel plan (base_model_ep_plan, with token dispatch) and a whole number of experts per GPU."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    plan = getattr(text, "base_model_ep_plan", None) or getattr(model_config, "base_model_ep_plan", None)
    if not plan or "ep_dispatch_experts" not in plan.values():
        return (f"transformers has no expert-parallel plan for {type(model_config).__name__} (base_model_ep_plan "
                f"with ep_dispatch_experts); set it to 1")
    experts = next((getattr(text, name) for name in EXPERT_COUNTS if getattr(text, name, None)), None)
    if experts and experts % ep:
        return f"the model's {experts} experts per layer do not split evenly over {ep} GPUs; use a divisor of {experts}"
    return None


def context_parallel_layers_problem(model_config) -> str | None:
    """Why hubtune's context parallelism cannot split this model's sequences, or None: it computes full causal
    attention under the packed examples' mask (not sliding-window or chunked attention) and Nemotron-H's
    Mamba-2 mixers (hubtune.context_parallel.MIXERS), not other state-space or linear-attention layers."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    layer_types = getattr(text, "layer_types", None)
    handled = {"full_attention"}
    if getattr(text, "model_type", None) == "nemotron_h":
        handled |= {"linear_attention", "moe", "mlp"}  # its Mamba-2 mixers, experts and MLPs
    if layer_types is not None:
        other = sorted({str(kind) for kind in layer_types if kind not in handled})
    else:
        other = ["sliding_attention"] if getattr(text, "sliding_window", None) else []
    if (any(key.startswith(("mamba", "ssm")) for key in text.to_dict()) and "linear_attention" not in handled
            and "mamba" not in other):
        other.append("mamba")  # state-space mixers (Jamba, Bamba, Zamba) whose configs list no layer types
    if not other:
        return None
    return (f"the model has {', '.join(other)} layers; hubtune's context parallelism splits sequences for full "
            f"causal attention and Nemotron-H's Mamba-2 layers only (each GPU holds a slice of the sequence); set "
            f"it to 1")


def target_modules_problem(lora: cfg.LoraSection, model_config, trust_remote_code: bool = False,
                           linearized_experts: bool = False) -> str | None:
    """Why the LoRA target names do not fit the model, or None. PEFT adapts the names it finds and keeps
    quiet about the others, so a typo would train less than asked. The model is built from its config on
    the meta device (no weights, no memory) and each name is matched as PEFT matches it."""
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists
    from transformers import AutoModelForCausalLM, pytorch_utils

    targets = lora.peft_target_modules(model_config)
    if isinstance(targets, str) and lora.target_regex is None:  # all-linear: whatever linear layers there are
        return None
    from hubtune.linearized import linearized_llama4

    try:
        with torch.device("meta"), linearized_llama4() if linearized_experts else contextlib.nullcontext():
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    except Exception:  # an architecture that cannot be built empty: PEFT still checks when it attaches LoRA
        return None
    adaptable = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
                 pytorch_utils.Conv1D)
    modules = [(key, m) for key, m in skeleton.named_modules() if key]
    linear_names = sorted({key.rsplit(".", 1)[-1] for key, m in modules if isinstance(m, adaptable)})
    if lora.target_regex is not None:
        if any(isinstance(m, adaptable) and re.fullmatch(lora.target_regex, key) for key, m in modules):
            return None
        example = next(key for key, m in modules if isinstance(m, adaptable))
        return (f"lora.target_regex {lora.target_regex!r} matches no adaptable layer of this model (it must match "
                f"the whole name, e.g. {example})")
    try:
        moved = moved_onto_experts(targets, skeleton)
    except ValueError as err:  # half of a pair transformers 5 fused into one stacked parameter
        return f"{err} Name both, or neither"
    missing, unadaptable = [], []
    for name in targets:
        found = [m for key, m in modules if check_target_module_exists(LoraConfig(target_modules=[name]), key)]
        if not found and name in moved:
            continue
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
    return (f"{'; '.join(what)}. Its adaptable layers are named: {', '.join(linear_names)}; or use a preset "
            f"(all-linear, attention, qv), which names this architecture's own modules")


def regex_layers_moved(peft_model, lora: cfg.LoraSection) -> str | None:
    """What PEFT adapted otherwise than lora.target_regex names, said; None when it adapted what it names. On a
    transformers 5 mixture-of-experts model PEFT 0.21 maps the names its experts were fused from (Qwen-MoE's
    gate_proj, up_proj, down_proj) onto their stacked parameters, also where the regex names a dense or shared
    MLP's own layers: those then get no LoRA, and the stacked gate_up_proj takes PEFT's rank for a fused pair."""
    if lora.target_regex is None:
        return None
    import torch
    from peft.tuners.lora.layer import LoraLayer

    base = peft_model.get_base_model()
    missed = [key for key, m in base.named_modules() if isinstance(m, torch.nn.Linear)
              and not isinstance(m, LoraLayer) and re.fullmatch(lora.target_regex, key)]
    if not missed:
        return None
    ranks = getattr(peft_model.peft_config.get("default"), "rank_pattern", None) or {}
    shown = ", ".join(missed[:4]) + (f" and {len(missed) - 4} more" if len(missed) > 4 else "")
    return (f"lora.target_regex matches {len(missed)} linear layer(s) PEFT leaves without LoRA ({shown}): on this "
            f"mixture-of-experts architecture PEFT maps those names onto the stacked experts (its transformers 4 to 5 "
            f"conversion)" + (f", with ranks {ranks}" if ranks else "") + "; the layers it adapts are the rest")


def moved_onto_experts(targets: list[str], model) -> set[str]:
    """The names PEFT adapts as the stacked parameters transformers 5 fused them into (a transformers 4
    mixture-of-experts model's Mixtral w1, w2, w3; Qwen-MoE's gate_proj, up_proj, down_proj): no module bears
    them any more. PEFT's ValueError where only part of a fused pair is named (w1 without w3)."""
    from peft import LoraConfig
    from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers

    probe = LoraConfig(target_modules=list(targets))
    convert_peft_config_for_transformers(probe, model=model, conversions=None)
    return set(targets) - set(probe.target_modules or ()) if probe.target_parameters else set()


def expert_dropout_problem(lora: cfg.LoraSection, model_config, trust_remote_code: bool = False,
                           linearized_experts: bool = False) -> str | None:
    """Why this dropout cannot run with these targets, or None. PEFT puts LoRA on a parameter (a
    mixture-of-experts layer's stacked experts) through its ParamWrapper, which refuses any dropout, and
    get_peft_model would only say so after the base has loaded. Besides lora.target_parameters, PEFT 0.21
    moves the names a transformers 5 MoE fused into stacked experts (Mixtral's w1/w2/w3, Qwen-MoE's
    gate_proj/up_proj/down_proj, also where all-linear finds them on dense layers or a linear router, as on
    DeepSeek-V2 and Trinity) onto those parameters. So the adapter is built on the base's skeleton on the
    meta device (no weights, no memory), dropout 0, and its wrappers read."""
    if lora.dropout == 0:
        return None
    fix = "set lora.dropout: 0 (no dropout on any adapter layer)"
    if lora.target_parameters:
        return (f"{lora.dropout:g} cannot apply to LoRA on parameters (lora.target_parameters: "
                f"{', '.join(lora.target_parameters)}): PEFT's ParamWrapper refuses any dropout; {fix}, or leave "
                f"target_parameters out")
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    if not any(getattr(text, name, None) for name in EXPERT_COUNTS):
        return None  # no experts to move names onto: PEFT adapts layers only
    import torch
    from peft import get_peft_model
    from peft.tuners.lora.layer import ParamWrapper
    from transformers import AutoModelForCausalLM

    from hubtune.linearized import linearized_llama4

    def wrapped(targets) -> tuple[list[str], list[str]]:
        """The parameters PEFT adapts through ParamWrapper, and the last names of the layers it adapts otherwise."""
        with torch.device("meta"), linearized_llama4() if linearized_experts else contextlib.nullcontext():
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
        probe = lora.model_copy(update={"dropout": 0.0, "target_modules": targets, "target_regex": None}
                                if targets is not None else {"dropout": 0.0})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adapted = get_peft_model(skeleton, lora_config(probe, model_config=model_config, model=skeleton),
                                     low_cpu_mem_usage=True)
        params, layers = set(), set()
        for key, module in adapted.named_modules():
            if isinstance(module, ParamWrapper):
                # the parameter's place in a layer: base_model.model.model.layers.0.mlp.experts -> mlp.experts
                parts = [p for p in key.removeprefix("base_model.model.").split(".") if p != "base_layer"]
                parts = parts[parts.index("layers") + 2:] if "layers" in parts[:-2] else parts
                params.add(".".join([*parts, module.parameter_name]))
            elif hasattr(module, "lora_A") and not isinstance(module.get_base_layer(), ParamWrapper):
                layers.add(key.rsplit(".", 1)[-1])
        return sorted(params), sorted(layers)

    try:
        params, layers = wrapped(None)
        if not params:
            return None
    except Exception:  # an architecture that cannot be built empty, or targets PEFT refuses: it says so when attaching
        return None
    # The other adapted layers alone, less any name PEFT would move onto the experts again (a dense layer's
    # gate_proj where the routed experts were fused from gate_proj).
    keep = [name for name in layers if not _wraps_alone(wrapped, name)]
    what = (f"lora.target_modules {lora.target_modules!r}" if lora.target_regex is None
            else f"lora.target_regex {lora.target_regex!r}")
    others = (f", or keep the experts out with lora.target_modules: [{', '.join(keep)}] (the other layers it "
              f"adapts, which take dropout)" if keep else "")
    return (f"{lora.dropout:g} cannot apply to this adapter: with {what}, PEFT puts LoRA on this mixture-of-experts "
            f"model's stacked parameters ({', '.join(params)}) through its ParamWrapper, which refuses any dropout, and "
            f"the run would fail once the base had loaded; {fix}{others}")


def _wraps_alone(wrapped, name: str) -> bool:
    """Whether PEFT moves this one name onto stacked parameters (or refuses it alone, as half of a fused pair)."""
    try:
        return bool(wrapped([name])[0])
    except Exception:
        return True


def load_tokenizer(path: str, model: cfg.ModelSection):
    """The base's tokenizer through AutoTokenizer; tokenizer_backend mistral-common: Mistral's own (tekken.json)
    through transformers' MistralCommonBackend, which needs the mistral-common package."""
    from transformers import AutoTokenizer

    if model.tokenizer_backend == "mistral-common":
        if importlib.util.find_spec("mistral_common") is None:
            raise ConfigError([("model.tokenizer_backend", "mistral-common is not installed: pip install mistral-common "
                                                           "(it needs numpy < 2.4 on Python 3.12 and older), or use auto")])
        try:
            return AutoTokenizer.from_pretrained(path, mistral_format=True)
        except OSError as err:
            raise ConfigError([("model.tokenizer_backend", f"mistral-common reads tekken.json, and {path} has none "
                                                           f"({err}); use auto")]) from None
    legacy = {} if model.tokenizer_legacy is None else {"legacy": model.tokenizer_legacy}
    return AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code, **legacy)


def hub_kernels_needed(model: cfg.ModelSection, training: cfg.TrainingSection) -> None:
    """use_kernels and a Hub attention kernel run code from the Hub through the `kernels` package: a
    ConfigError when it is missing."""
    wanted = [name for name, on in (("model.use_kernels", model.use_kernels),
                                    ("training.attention_kernel", training.attention_kernel)) if on]
    if wanted and importlib.util.find_spec("kernels") is None:
        raise ConfigError([(name, "fetches kernels from the Hub through the kernels package: pip install kernels")
                           for name in wanted])


def loftq_device(lora: cfg.LoraSection, device: str) -> None:
    """PEFT computes LoftQ's starting adapter on a CUDA (or XPU) device: a ConfigError elsewhere, before any
    download."""
    if lora.init_weights == "loftq" and device != "cuda":
        raise ConfigError([("lora.init_weights", f"loftq: PEFT computes LoftQ's starting adapter on a CUDA GPU, and "
                                                 f"this run is on {device}; use default here")])


def dequantized(path: str):
    """The saved quantization config of a base (MXFP4, FP8, ...) set to dequantize on load, as transformers
    takes it; a ConfigError when the base is not saved quantized or its format cannot be dequantized."""
    from transformers.quantizers.auto import AutoQuantizationConfig

    from hubtune.interop import prequantized

    saved = prequantized.quantization_config(path)
    if saved is None:
        raise ConfigError([("model.dequantize", f"{path} is not saved quantized (its config.json has no "
                                                f"quantization_config); leave dequantize out")])
    if why := prequantized.unreadable(saved):
        raise ConfigError([("model.dequantize", f"{path} is {why}")])
    from hubtune import nvfp4

    if saved.get("quant_method") == "modelopt" or nvfp4.is_mixed(saved):
        raise ConfigError([("model.dequantize", f"{path} is {nvfp4.saved_as(saved)}: hubtune keeps its weights "
                                                f"packed and dequantizes each as its layer reads it; leave dequantize "
                                                f"out")])
    config = AutoQuantizationConfig.from_dict(saved)
    if not hasattr(config, "dequantize"):
        raise ConfigError([("model.dequantize", f"{prequantized.describe(saved)} weights are not dequantized on load "
                                                f"by transformers; leave dequantize out (they load as saved)")])
    config.dequantize = True
    return config


def load_base(path: str, model: cfg.ModelSection, hw: Hardware, gradient_checkpointing: bool = False,
              for_training: bool = True, backend: str = "hf", max_seq_len: int = 2048, sharded: bool = False,
              attention: str | None = None, distributed_config=None):
    """The frozen base: quantized to 4 bits through bitsandbytes unless quantization is none. A base
    saved already quantized (its config.json holds a quantization_config) loads as saved.

    distributed_config (expert parallelism): transformers shards the model as it loads and places it on
    this process's GPU itself (no device_map).

    sharded (FSDP, DeepSpeed ZeRO-3): the 4-bit weights are stored in the compute dtype so they can be
    flattened and sharded with the rest, and placement is left to accelerate (no device_map)."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hubtune import compat, nvfp4
    from hubtune.interop import backends, prequantized

    saved = prequantized.quantization_config(path)
    if saved is not None and (why := prequantized.unreadable(saved) or nvfp4.inside_other_format(path, saved)):
        raise ConfigError([("model.id", f"{path} is {why}")])
    saved_quantized = saved is not None
    if backend == "unsloth" and nvfp4.is_nvfp4(saved):
        raise ConfigError([("training.backend", f"{path} is {nvfp4.saved_as(saved)}, which hubtune loads itself "
                                                f"(Unsloth does not read it); set training.backend: hf")])
    if backend == "unsloth":
        return backends.unsloth_base(path, model, hw, max_seq_len, saved_quantized)
    kwargs = {"dtype": hw.compute_dtype, "trust_remote_code": model.trust_remote_code}
    if model.router_aux_loss and for_training:
        # The model's forward then adds the load-balancing loss; generation must not ask for router logits
        # (gpt-oss's aux loss fails on a cached step's shapes), so evaluation loads without them.
        kwargs["output_router_logits"] = True
    if attention:
        kwargs["attn_implementation"] = attention
    if model.experts_implementation:
        kwargs["experts_implementation"] = model.experts_implementation
    if model.use_kernels:
        kwargs["use_kernels"] = True  # transformers swaps the layers it maps to Hub kernels (the kernels package)
    if model.dequantize:
        kwargs["quantization_config"] = dequantized(path)
        saved_quantized = False  # it loads as a 16-bit base
    if model.quantization == "int8" and sharded and distributed.world_size() > 1 \
            and not distributed.every_process_loads_the_base():
        # FSDP1 cannot flatten int8 weights with the rest, and ZeRO-3 partitions them as they are built.
        raise ConfigError([("model.quantization", f"an int8 base shards under FSDP2 only, every process loading it "
                                                  f"whole (training.distributed: fsdp launched by `hubtune train "
                                                  f"CONFIG --num-processes N`, or accelerate launch --config_file "
                                                  f"{distributed.preset_path('fsdp', 1, True)}); not under FSDP1 or "
                                                  f"ZeRO-3; use nf4 (4 bits) there, or training.distributed: ddp")])
    if model.quantization == "int8" and not saved_quantized and not model.dequantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    elif model.quantization != "none" and not saved_quantized and not model.dequantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=model.quantization,
            bnb_4bit_use_double_quant=model.double_quant,
            bnb_4bit_compute_dtype=hw.compute_dtype,
            bnb_4bit_quant_storage=hw.compute_dtype if sharded else torch.uint8,
        )
    if distributed_config is not None:
        kwargs["distributed_config"] = distributed_config
    elif hw.device == "cuda" and (not sharded or model.quantize_experts or distributed.every_process_loads_the_base()):
        # Quantized experts (or a 4-bit base for torchao's low-bit AdamW) under FSDP2: every process loads the
        # whole base onto its own GPU, quantizing as it loads, and fully_shard then shards it (the quantization
        # constants stay whole in every process).
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    modelopt = nvfp4.is_nvfp4(saved)
    if modelopt and model.quantize_experts:
        raise ConfigError([("model.quantize_experts", f"{path} is {nvfp4.saved_as(saved)}: its experts load as saved; leave "
                                                      f"quantize_experts out")])
    if modelopt and model.linearized_experts:
        raise ConfigError([("model.linearized_experts", f"{path} is {nvfp4.saved_as(saved)}, not in Axolotl's "
                                                        f"linearized Llama 4 layout; leave linearized_experts out")])
    if modelopt and sharded and distributed.world_size() > 1 and not distributed.every_process_loads_the_base():
        # FSDP1 cannot flatten the packed uint8 weights with the 16-bit ones, hubtune.nvfp4 packs the weights and
        # sets their scales in each process itself (no rank-0 load), and ZeRO-3 partitions weights as they are built.
        raise ConfigError([("training.distributed", f"{path} is {nvfp4.saved_as(saved)}, which shards under "
                                                    f"FSDP2 only, every process loading it whole (training.distributed: "
                                                    f"fsdp launched by `hubtune train CONFIG --num-processes N`, or "
                                                    f"accelerate launch --config_file "
                                                    f"{distributed.preset_path('fsdp', 1, True)}); not under FSDP1, "
                                                    f"rank-0 loading or ZeRO-3")])
    if modelopt:
        base = nvfp4.load(path, **_nvfp4_kwargs(kwargs))  # packed weights, dequantized when read
    elif model.linearized_experts:
        from hubtune import linearized

        base = linearized.load(path, **kwargs)  # the experts placed as one linear layer each, before weights load
    elif model.quantize_experts:
        base = _load_quantizing_experts(path, model, hw, kwargs, saved_quantized)
        if sharded:
            from hubtune import experts

            experts.keep_state_dict_keys(base)  # FSDP2 saves through torch's distributed state dict
    else:
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if sharded and model.quantization == "int8" and not model.dequantize:
        from hubtune import sharded_int8

        sharded_int8.make_shardable(base)  # FSDP2 keeps neither CB nor SCB on the weights it shards
    compat.reachable_backbone(base)
    if saved_quantized:
        # The compute dtype saved with the weights (often bfloat16) is the machine's choice, not the
        # repo's: compute as a base quantized here would (float32 on a CPU without bf16 units).
        from bitsandbytes.nn import Linear4bit

        for module in base.modules():
            if isinstance(module, Linear4bit):
                module.compute_dtype = hw.compute_dtype
    if modelopt and for_training:
        return _freeze_in_bfloat16(base, gradient_checkpointing)  # nothing to prepare: no bitsandbytes layer
    if not _quantized(base) or not for_training:
        return base
    if sharded:
        # prepare_model_for_kbit_training would upcast the non-quantized weights to float32, and FSDP needs
        # one dtype per flattened group; the Trainer turns on gradient checkpointing itself.
        return base
    if hw.device == "cpu":
        compat.keep_4bit_weights_exact(base)  # the frozen base stays exactly as quantized
    if hw.compute_dtype == torch.bfloat16:
        return _freeze_in_bfloat16(base, gradient_checkpointing)
    return prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)


def _nvfp4_kwargs(kwargs: dict) -> dict:
    """from_pretrained's arguments as hubtune.nvfp4.load takes them."""
    import torch

    if kwargs.get("use_kernels"):
        raise ConfigError([("model.use_kernels", "an NVFP4 base's layers read their weights through a "
                                                 "dequantizing parametrization, which Hub kernels do not; leave "
                                                 "use_kernels out")])
    out = {key: kwargs[key] for key in ("trust_remote_code", "attn_implementation", "experts_implementation",
                                        "output_router_logits") if key in kwargs}
    out["dtype"] = kwargs["dtype"]
    device = kwargs.get("device_map", {}).get("")
    out["device"] = torch.device("cuda", device) if isinstance(device, int) else (device or "cpu")
    if (ep := kwargs.get("distributed_config")) is not None:
        # Expert parallelism: hubtune.nvfp4 reads each process's share of the experts and installs transformers'
        # dispatch itself (transformers' sharding loader reads 16-bit checkpoints); onto this process's GPU.
        out["expert_parallel"] = ep.ep_size
        if torch.cuda.is_available():
            out["device"] = torch.device("cuda", torch.cuda.current_device())
    return out


def _load_quantizing_experts(path: str, model: cfg.ModelSection, hw: Hardware, kwargs: dict, saved_quantized: bool):
    """from_pretrained with the stacked expert weights quantized as they load (hubtune.experts)."""
    from transformers import AutoModelForCausalLM

    from hubtune import experts

    if saved_quantized:
        raise ConfigError([("model.quantize_experts", f"{path} is saved quantized: its experts load as they are; "
                                                      f"leave quantize_experts out")])
    settings = (model.quantization, model.double_quant, hw.compute_dtype)
    with experts.quantizing_on_load(*settings):
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    experts.quantize_experts(base, *settings)  # any the loader did not set through its hook
    if not experts.quantized_experts(base):
        raise ConfigError([("model.quantize_experts", f"{path} ({type(base).__name__}) has no stacked expert "
                                                      f"weights to quantize (3D parameters under an experts "
                                                      f"module); leave quantize_experts out")])
    return base


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


def _saved_quantization(path: str) -> str | None:
    """How a pre-quantized base was saved (`bitsandbytes nf4 (double quantization)`); None when hubtune quantized it."""
    from hubtune.interop import prequantized

    saved = prequantized.quantization_config(path)
    return prequantized.describe(saved) if saved else None


def _quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach_lora(model, config: cfg.RunConfig, backend: str, gradient_checkpointing: bool,
                new_token_ids: list[int] | None = None, model_config=None):
    """LoRA adapters on the frozen base, through PEFT or Unsloth's FastLanguageModel (which checkpoints
    gradients itself when asked: `gradient_checkpointing` as the run's levers resolved it). With tokens
    new to the vocabulary the embedding and output head are trained in full and saved with the adapter
    (modules_to_save, as Axolotl requires for new tokens): a new row has nothing to start from."""
    if backend == "unsloth":
        from hubtune.interop import backends

        if new_token_ids:
            raise ConfigError([("model.added_tokens", "the Unsloth backend does not train new token rows; "
                                                      "set training.backend: hf")])
        if config.lora.unfrozen_parameters:
            raise ConfigError([("lora.unfrozen_parameters", "the Unsloth backend trains the adapter only; "
                                                            "set training.backend: hf")])
        return backends.unsloth_lora(model, config.lora, gradient_checkpointing, config.training.seed)
    from peft import PeftModel, get_peft_model

    from hubtune import experts

    if config.lora.init_from:
        if config.lora.unfrozen_parameters:
            raise ConfigError([("lora.unfrozen_parameters", "a continued adapter (lora.init_from) trains what it "
                                                            "was saved with; leave unfrozen_parameters out, or "
                                                            "start a fresh adapter")])
        return _merge_aware(config, experts.under_lora(model, lambda: PeftModel.from_pretrained(
            model, str(adapter_folder(config.lora.init_from)), is_trainable=True)))
    unfrozen = unfreeze.resolve(model, config.lora.unfrozen_parameters)
    unfreeze.refuse_quantized_saves(model, config.lora.modules_to_save)
    peft_config = lora_config(config.lora, vocabulary_modules(model) if new_token_ids else None, model_config, unfrozen,
                              model)
    peft_model = _merge_aware(config, experts.under_lora(model, lambda: get_peft_model(model, peft_config)))
    unfreeze.freeze_unnamed(peft_model, unfrozen)
    return peft_model


def _merge_aware(config: cfg.RunConfig, peft_model):
    """lora.nvfp4_merge_aware: the adapter's layers over NVFP4 weights compute with Q(W + s·B·A) (hubtune.nvfp4)."""
    if config.lora.nvfp4_merge_aware:
        from hubtune import nvfp4

        nvfp4.merge_aware(peft_model)
    return peft_model


def adapter_folder(where: str) -> Path:
    """The adapter of a run folder (RUN/adapter) or an adapter folder itself; a ConfigError when neither."""
    path = Path(where)
    for candidate in (RunFolder(path).adapter, path):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ConfigError([("lora.init_from", f"{where} holds no adapter (no adapter_config.json there or in "
                                          f"{RunFolder(path).adapter}); give a finished run folder or an adapter folder")])


def add_tokens(tokenizer, model: cfg.ModelSection) -> list[str]:
    """Set the special tokens and add the extra ones the config names; the tokens that were new."""
    vocabulary = tokenizer.get_vocab()
    new = [t for t in model.new_token_texts() if t not in vocabulary]
    if model.special_tokens:
        tokenizer.add_special_tokens(dict(model.special_tokens))
    extra = [t for t in model.added_tokens if t not in tokenizer.get_vocab()]
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    return new


def vocabulary_modules(model) -> tuple[list[str], bool]:
    """The names of the input embedding and output head (for modules_to_save), and whether they are tied."""
    names = {id(m): name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    found = [names[id(embedding)]] + ([names[id(head)]] if head is not None else [])
    return found, head is not None and head.weight is embedding.weight


def fit_vocabulary(base, adapter: Path) -> None:
    """A base about to take an adapter trained with added tokens grows its embedding to the adapter's
    tokenizer first (the new rows come from the adapter)."""
    import json

    files = [adapter / "tokenizer.json", adapter / "tokenizer_config.json"]
    if not any(f.is_file() for f in files):
        return
    from transformers import AutoTokenizer

    size = len(AutoTokenizer.from_pretrained(str(adapter)))
    if size > base.get_input_embeddings().weight.shape[0]:
        saved = json.loads((adapter / "adapter_config.json").read_text())
        if saved.get("modules_to_save"):
            base.resize_token_embeddings(size, mean_resizing=False)  # the trained rows come from the adapter


TORCHAO_OPTIMIZERS = distributed.TORCHAO_OPTIMIZERS
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                    "swanlab": "swanlab"}


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

    return [TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(path / RunFolder.TENSORBOARD)))]


def lora_config(lora: cfg.LoraSection, vocabulary: tuple[list[str], bool] | None = None,
                model_config=None, unfrozen: unfreeze.Unfrozen | None = None, model=None) -> LoraConfig:
    """PEFT's LoraConfig for `model` (the base it goes on, whose linear layers all-linear names);
    `vocabulary` (embedding and head names, tied or not) adds them to modules_to_save; `model_config`
    resolves a preset to the architecture's own module names (hubtune.families); `unfrozen`
    (lora.unfrozen_parameters resolved on the base) adds whole modules and embedding rows."""
    from peft import LoraConfig

    from hubtune.families import linear_module_names

    targets = lora.peft_target_modules(model_config)
    if targets == "all-linear" and lora.target_regex is None:
        # Not PEFT's preset, which on a transformers 5 mixture-of-experts model also adapts the stacked experts
        # and the router: the base's linear layers by name, as Axolotl's lora_target_linear.
        if model is None:
            raise TypeError("lora_config needs the model to resolve all-linear on")
        targets = linear_module_names(model)

    names, tied = vocabulary or ([], False)
    unfrozen = unfrozen or unfreeze.Unfrozen()
    init: dict = {}
    tied = tied or unfrozen.tied
    save = list(dict.fromkeys([*lora.modules_to_save, *names, *unfrozen.modules]))
    if unfrozen.token_rows:
        init["trainable_token_indices"] = unfrozen.token_rows
    if lora.init_weights == "loftq":
        from peft import LoftQConfig

        init.update(init_lora_weights="loftq", loftq_config=LoftQConfig(loftq_bits=lora.loftq_bits))
    return LoraConfig(**init, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets, target_parameters=lora.target_parameters or None,
                      modules_to_save=save or None, ensure_weight_tying=tied, use_rslora=lora.use_rslora,
                      bias="none", task_type="CAUSAL_LM")


def set_pad_token(tokenizer, family) -> None:
    """A pad token where the tokenizer has none: the family's (Llama 3's <|finetune_right_pad_id|>), else its
    unknown token, else EOS. Padding is masked out of the loss by position, so EOS is safe, but a distinct
    token keeps padded batches readable."""
    if tokenizer.pad_token is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in (family.pad if family else None, tokenizer.unk_token, tokenizer.eos_token):
        if candidate and candidate in vocab:
            tokenizer.pad_token = candidate
            return


def generation_config(path: str):
    """The base's generation_config.json (what it stops on), or None when it ships none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:
        return None


def tokenized(rows, chat):
    """Chat rows as input_ids with the completion mask hubtune checked (hubtune.data.chat); plain text and
    an absent split pass through for TRL to tokenize."""
    if rows is None or chat is None or "prompt" not in rows.column_names:
        return rows
    return rows.map(lambda row: chat.tokenize(row["prompt"], row["completion"], row.get("tools")),
                    remove_columns=rows.column_names)


def trainer_args(config: cfg.RunConfig, hw: Hardware, path: Path, has_eval: bool, backend: str = "hf",
                 levers: Levers | None = None) -> dict:
    """The TrainingArguments every method shares: schedule, batch, precision, logging, checkpoints."""
    t = config.training
    levers = levers or Levers("sdpa", False, False, t.gradient_checkpointing is True)
    # Unsloth checkpoints gradients itself (get_peft_model); the trainer must not wrap it again.
    checkpointing = levers.gradient_checkpointing and backend != "unsloth"
    trackers = [r for r in t.report_to if r != "tensorboard"]  # TensorBoard: tracker_callbacks
    eval_strategy, eval_steps = ("no", None) if not has_eval else _cadence(t.evals_per_epoch, t.eval_steps, t.epochs)
    save_strategy, save_steps = _cadence(t.saves_per_epoch, t.save_steps, t.epochs)
    if has_eval and t.select != "last":
        eval_strategy, eval_steps = save_strategy, save_steps  # every checkpoint chosen among needs its held-out loss
    stopping = {}
    if t.early_stopping_patience and has_eval:
        # transformers' EarlyStoppingCallback watches the held-out loss; the best checkpoint is loaded at the end
        # where every evaluation has a checkpoint to go back to (save cadence a multiple of the eval cadence).
        aligned = _saves_at_evals(eval_strategy, eval_steps, save_strategy, save_steps)
        stopping = dict(metric_for_best_model="eval_loss", greater_is_better=False, load_best_model_at_end=aligned)
    return dict(**stopping,
        output_dir=str(path / RunFolder.CHECKPOINTS),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.micro_batch_size,
        per_device_eval_batch_size=t.micro_batch_size * 2,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio if t.warmup_ratio is not None else t.warmup_steps,  # < 1: a share of all steps
        optim=hw.optimizer,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_epsilon=t.adam_epsilon,
        max_grad_norm=t.max_grad_norm,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        seed=t.seed,
        data_seed=t.seed,
        bf16=hw.bf16,
        fp16=hw.fp16,
        tf32=True if t.tf32 is not False and _tf32_capable(hw) else None,
        use_cpu=hw.device == "cpu",
        logging_steps=t.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        use_liger_kernel=levers.liger,
        include_num_input_tokens_seen="non_padding",
        # transformers refuses at construction to checkpoint the optimizer of a model it sharded as it loaded
        # (expert parallelism); expert_lora.keep_per_process then saves it per process and turns this off.
        save_only_model=t.expert_parallel_size > 1,
        report_to=trackers or "none",
        dataloader_pin_memory=hw.device == "cuda",
        ddp_find_unused_parameters=False,  # every LoRA weight gets a gradient at every step
    )


def sft_args(config: cfg.RunConfig, hw: Hardware, path: Path, has_eval: bool, backend: str = "hf",
             levers: Levers | None = None) -> SFTConfig:
    from trl import SFTConfig

    t = config.training
    levers = levers or Levers("sdpa", False, False, t.gradient_checkpointing is True)
    # Padding-free rows are not truncated by TRL; the data pipeline already dropped over-long examples.
    max_length = None if levers.padding_free and not config.data.packing else config.data.max_seq_len
    return SFTConfig(
        **trainer_args(config, hw, path, has_eval, backend, levers),
        max_length=max_length,
        packing=config.data.packing,
        # sequential: TRL's bfd sets up the padding-free collator; hubtune's trainer packs the rows in order.
        packing_strategy="bfd" if config.data.packing_strategy == "sequential" else config.data.packing_strategy,
        padding_free=levers.padding_free,
        # Context parallelism cuts each row into context_parallel_size chunks: right padding (label -100,
        # after every real token) makes them whole.
        pad_to_multiple_of=t.context_parallel_size if t.context_parallel_size > 1 else "auto",
        # Sort each optimizer step's examples by length into its micro-batches: the same examples and the
        # same token-averaged loss per step as random batches, with little padding (LengthGroupedSampler
        # would instead make whole steps of short or long examples, which reweights them).
        train_sampling_strategy=("sequential" if not t.shuffle else
                                 "batch_rebalance" if t.group_by_length and t.gradient_accumulation_steps > 1
                                 and not config.data.packing else "random"),
        completion_only_loss=True,  # the prompt is context, not something to learn
        # TRL adds a mixture-of-experts router's load-balancing loss unless its coefficient is 0.0; it belongs
        # to the loss only when model.router_aux_loss asks (as in Axolotl, with output_router_logits).
        router_aux_loss_coef=None if config.model.router_aux_loss else 0.0,
    )


def _tf32_capable(hw: Hardware) -> bool:
    """TF32 units exist on Ampere (compute capability 8) and newer GPUs only."""
    import torch

    return hw.device == "cuda" and torch.cuda.get_device_capability()[0] >= 8


def _saves_at_evals(eval_strategy: str, eval_steps, save_strategy: str, save_steps) -> bool:
    """Whether every checkpoint falls on an evaluation (what load_best_model_at_end needs, checked as
    transformers checks it: whole steps or shares of all steps, not a mix)."""
    if eval_strategy != save_strategy or eval_strategy == "no":
        return False
    if eval_strategy == "epoch":
        return True
    if (eval_steps < 1) != (save_steps < 1):
        return False
    return round(save_steps * 1_000_000) % round(eval_steps * 1_000_000) == 0


def _cadence(per_epoch: int | None, steps: int | None, epochs: float) -> tuple[str, float | int | None]:
    """(strategy, steps) for checkpoints or evaluations: N per epoch is 1 / (N x epochs) of all steps, as
    a share the Trainer turns into steps (once per epoch when that share is 1 or more); else every
    `steps` steps. per_epoch 0: never during training."""
    if per_epoch is None:
        return ("steps", steps) if steps else ("epoch", None)
    if per_epoch == 0:
        return "no", None
    share = 1.0 / (per_epoch * epochs)
    return ("steps", share) if share < 1.0 else ("epoch", None)


def _summary(config, base, hw, trainer, verdict, prepared, seconds: float, initial_eval_loss,
             backend: dict | None, batches: distributed.BatchPlan) -> RunSummary:
    from hubtune.runinfo import library_versions, peak_memory_mb

    model = trainer.model
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if getattr(p, "quant_type", None) else 1) for p in model.parameters())
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h and h["step"] > 0]
    read = {s["path"]: s for s in prepared.report["sources"]}
    if prepared.report.get("mix_source"):
        read[config.data.mix.source.path] = prepared.report["mix_source"]
    return RunSummary(
        base_model=base.repo_id or config.model.id,
        base_revision=base.revision_sha,
        datasets=[DatasetRecord(path=s.path, split=s.split, name=s.name, revision=s.revision,
                                revision_sha=read.get(s.path, {}).get("revision_sha"), role=role,
                                train_rows=read.get(s.path, {}).get("train"), eval_rows=read.get(s.path, {}).get("eval"),
                                sha256=_file_sha256(s.path))
                  for s, role in config.data.trained_sources()],
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
        processes=batches.processes,
        effective_batch_size=batches.effective_batch_size,
    )


def _step(checkpoint: Path | None) -> int:
    return step_of(checkpoint) if checkpoint else 0


def _mark(run: RunFolder, status: Status, error: BaseException) -> None:
    """Record how the run ended, in the command line's words and the page's."""
    text = str(error) or type(error).__name__
    try:
        run.mark(status, error=text, on_page=page_text(error) if isinstance(error, HubtuneError) else None)
    except OSError:  # a full disk may refuse even state.json; the status reads as interrupted then
        pass


# What a full disk looks like from each writer: OSError from Python, a message from torch.save's zip
# writer and from safetensors' Rust side.
_DISK_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "file write failed")


def disk_full(run: RunFolder, err: BaseException) -> DiskFullError | None:
    """A DiskFullError for `err` when a full disk caused it, else None. The checkpoint it cut short is
    removed to give its space back; the run resumes from the one before."""
    import shutil

    causes, seen = [], err
    while seen is not None and len(causes) < 5:
        causes.append(seen)
        seen = seen.__cause__ or seen.__context__
    if not any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(m in str(e) for m in _DISK_FULL)
               for e in causes):
        return None
    removed = remove_incomplete(run.checkpoints) if run.writer else []
    complete = run.checkpoint_folders()
    needed = folder_size(complete[-1]) if complete else folder_size(run.adapter)
    free = shutil.disk_usage(run.path).free
    resume_from = f"it continues from {complete[-1].name}" if complete else "it starts over (no checkpoint was complete)"
    cut = f" The incomplete {', '.join(removed)} was removed to give its space back." if removed else ""
    need = f"a checkpoint needs about {_mb(needed)} and " if needed else ""
    return DiskFullError(
        f"the disk holding {run.path} is full ({need}{_mb(free)} are free).{cut} Free space there (or move the run "
        f"folder to a larger disk), then continue with `hubtune train --resume {run.path}`: {resume_from}.",
        str(run.path), needed or None, free)


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


def _file_sha256(path: str) -> str | None:
    """The content hash of a local data file (None for a Hub dataset, a built-in asset or a folder)."""
    from hubtune.refs import file_sha256
    from hubtune.refs import RepoRef

    ref = RepoRef.parse(path)
    return file_sha256(ref.path) if ref.kind == "local" and ref.path.is_file() else None
