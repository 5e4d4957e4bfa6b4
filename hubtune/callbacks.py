"""Trainer callbacks of the recipe: the metrics file, a clean stop on Ctrl-C / SIGTERM, and the run
mirrored to a Hub repo as it trains (with `download_run`, its way back)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from hubtune.distributed import adapter_from_fsdp_checkpoint, is_main_process, under_fsdp
from hubtune.errors import HubtuneError
from hubtune.runs import RunFolder, step_of

log = logging.getLogger("hubtune")


class MetricsFile(TrainerCallback):
    """One JSON line per logging step: step, total_steps, epoch, loss, eval_loss, learning_rate, tokens/s,
    elapsed seconds, and the rewards the method logs. `on_row` (the console display) sees every row as written.

    `resume_step` is the step of the checkpoint training continues from: lines up to it are kept, later
    ones (logged before a crash but not covered by a checkpoint) are dropped, so the file never holds a
    step twice. 0 starts the file afresh."""

    def __init__(self, file: Path, resume_step: int = 0, on_row: Callable[[list[dict]], None] | None = None):
        self.file = file
        self.on_row = on_row
        self.rows: list[dict] = []
        self.last: tuple[float, int] | None = None
        self.started = time.time()
        if not is_main_process():
            return
        self.rows = [row for row in _rows(file) if row["step"] <= resume_step] if resume_step > 0 else []
        file.write_text("".join(json.dumps(row) + "\n" for row in self.rows))

    def on_train_begin(self, args, state, control, **kwargs):
        # Elapsed time carries over a resume, so the time left stays honest.
        self.started = time.time() - next((r["elapsed_seconds"] for r in reversed(self.rows)
                                           if r.get("elapsed_seconds") is not None), 0.0)
        self.last = (time.time(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not state.is_world_process_zero or not any(k in logs for k in ("loss", "eval_loss")):
            return
        row = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate", "relora_restarts"):
            if key in logs:
                row[key] = logs[key]
        # Preference methods log rewards/{chosen,rejected,accuracies,margins}; GRPO rewards/<name>/mean
        # for each reward function and their weighted sum as `reward`.
        for key, value in logs.items():
            if key == "reward" or (key.startswith("rewards/") and not key.endswith("/std")):
                row[key] = value
        if "loss" in logs and self.last:
            now, seen = time.time(), state.num_input_tokens_seen
            row["tokens_per_second"] = round((seen - self.last[1]) / max(now - self.last[0], 1e-9), 1)
            self.last = (now, seen)
        row["elapsed_seconds"] = round(time.time() - self.started, 1)
        with self.file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.rows.append(row)
        if self.on_row:
            self.on_row(self.rows)


def _rows(file: Path) -> list[dict]:
    """The parseable lines of a metrics file; a line cut short by a crash is dropped."""
    rows = []
    for line in file.read_text().splitlines() if file.exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class CheckpointSelection(TrainerCallback):
    """`training.select: eval_loss | task`: each saved checkpoint is scored (its held-out loss; with task also
    exact match on a held-out slice and the regression verdict, through hubtune.evaluation.checkpoints), the
    scores go to RUN/checkpoint_scores.json as they come, and the adapter of the best checkpoint so far is
    kept in RUN/selected-adapter, so the Trainer may rotate checkpoints away meanwhile. `chosen` is the
    checkpoint the run keeps (the training recipe copies its adapter over the last one)."""

    FILE = RunFolder.CHECKPOINT_SCORES
    BEST = RunFolder.SELECTED_ADAPTER

    def __init__(self, run_path: Path, select: str, rows: list[dict], ev, tokenizer, resume_step: int = 0):
        self.run_path = Path(run_path)
        self.select = select
        self.rows = rows
        self.ev = ev
        self.tokenizer = tokenizer
        saved = json.loads((self.run_path / self.FILE).read_text()) if (self.run_path / self.FILE).is_file() else {}
        self.history: list[dict] = [h for h in saved.get("checkpoints", []) if h["step"] <= resume_step]
        self.base_regression = saved.get("base_regression") if resume_step else None

    def on_save(self, args, state, control, model=None, **kwargs):
        from hubtune.evaluation.checkpoints import choose, score_checkpoint

        if not state.is_world_process_zero or model is None:
            return
        losses = [h["eval_loss"] for h in state.log_history if "eval_loss" in h and h.get("step") == state.global_step]
        entry = {"step": state.global_step, "eval_loss": losses[-1] if losses else None}
        if self.select == "task":
            entry.update(score_checkpoint(model, self.tokenizer, self.rows, self.ev, self.base_regression))
            if entry["regression"] and self.base_regression is None:
                self.base_regression = {"accuracy": entry["regression"]["base"]}
        self.history = [h for h in self.history if h["step"] != entry["step"]] + [entry]
        if choose(self.history, self.select) is entry:
            if under_fsdp(model):  # its save_pretrained would gather the shards: a collective, on one process
                adapter_from_fsdp_checkpoint(Path(args.output_dir) / f"{RunFolder.CHECKPOINT_PREFIX}{state.global_step}",
                                             self.run_path / self.BEST, getattr(model, "module", model))
            else:
                model.save_pretrained(str(self.run_path / self.BEST))
        (self.run_path / self.FILE).write_text(json.dumps(self.summary(), indent=2))

    @property
    def chosen(self) -> dict | None:
        from hubtune.evaluation.checkpoints import choose

        return choose(self.history, self.select)

    def summary(self) -> dict:
        chosen = self.chosen
        verdicts = [h["regression"]["passed"] for h in self.history if h.get("regression")]
        return {"select": self.select, "chosen_step": chosen["step"] if chosen else None,
                "held_out_examples": len(self.rows) if self.select == "task" else 0,
                # False: no checkpoint passed the regression set, so the best task score was kept regardless
                "regression_passed": any(verdicts) if verdicts else None,
                "base_regression": self.base_regression, "checkpoints": self.history}


class QuadraticWarmup(TrainerCallback):
    """training.warmup_shape: quadratic. transformers' schedules rise linearly over the warm-up (factor
    step / warmup); this squares that rise, (step / warmup) ** 2, and leaves the rest of the schedule as it is.
    The scheduler exists by on_train_begin (restored from a checkpoint when resuming)."""

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        warmup = args.get_warmup_steps(state.max_steps)
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if not warmup:
            return
        if not hasattr(scheduler, "lr_lambdas"):
            raise HubtuneError(f"training.warmup_shape: quadratic reshapes a LambdaLR schedule, and this run's is "
                               f"{type(scheduler).__name__}; use warmup_shape: linear")

        def squared(factor):
            return lambda step: factor(step) * step / warmup if step < warmup else factor(step)
        scheduler.lr_lambdas = [squared(f) for f in scheduler.lr_lambdas]


class StopOnSignal(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop. Under several processes they
    agree on it at each step end, so all of them stop at the same step."""

    def __init__(self):
        self.received: str | None = None

    @contextmanager
    def installed(self):
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.received:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if _any_process(self.received is not None, args):
            self.received = self.received or "another process"
            control.should_save = True
            control.should_training_stop = True


def _any_process(flag: bool, args) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    value = torch.tensor([int(flag)], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# ---- the run on the Hub -----------------------------------------------------------------------------------
# What a mirror holds, under the same names as in the run folder (RunFolder.RESUME_FILES, FINAL_FILES).
STAGING = RunFolder.MIRROR_STAGING


class HubCheckpoints(TrainerCallback):
    """`training.push_checkpoints: OWNER/REPO`: after each checkpoint, its folder and the run's config and
    metrics go to a private Hub repo in one commit that also deletes the older checkpoints there. Uploads
    run in a background thread from hard-linked copies, so training does not wait and the Trainer may rotate
    checkpoints meanwhile; when uploads fall behind, only the newest checkpoint is sent. A failed upload is
    retried with the next checkpoint; `finish` waits for the last one and uploads the finished run, and
    raises if that fails.

    Not the Trainer's own push (push_to_hub with hub_strategy="checkpoint"), which cannot keep these
    promises: it uploads the checkpoint and the output folder in separate commits without the run files
    a resume needs (config.yaml, metrics.jsonl, data_report.json), so a repo can hold a checkpoint whose
    config is not there; it waits on its upload futures without reading their results (transformers'
    PushInProgress.wait_until_done), so a refused or failed upload passes silently; it skips a save
    while an upload is under way rather than sending the newest one later; and a token other than the
    ambient login goes in as TrainingArguments.hub_token, which training_args.bin (the pickled arguments
    the Trainer saves in every checkpoint, and uploads with it) then carries to disk and the repo."""

    def __init__(self, run_path: Path, repo_id: str, token: str | None = None):
        self.run_path = Path(run_path)
        self.repo_id = repo_id
        self.token = token
        self.uploaded: list[str] = []  # checkpoint names, in order, once on the Hub
        self.errors: list[str] = []
        self._pending: Path | None = None
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stop = False

    def create_repo(self) -> str:
        """The private repo, created if needed: run before training, so a missing write permission stops
        the run before any weight is loaded."""
        from huggingface_hub import HfApi

        from hubtune.publish import push_errors

        with push_errors(self.repo_id):
            return str(HfApi(token=self.token).create_repo(self.repo_id, private=True, exist_ok=True))

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = RunFolder(self.run_path).checkpoint(state.global_step)
        staged = self._stage(checkpoint)
        with self._cv:
            if self._pending is not None:
                shutil.rmtree(self._pending, ignore_errors=True)  # superseded before it was sent
            self._pending = staged
            self._cv.notify()
        if self._worker is None:
            self._worker = threading.Thread(target=self._upload_loop, name="hubtune-hub-mirror", daemon=True)
            self._worker.start()

    def _stage(self, checkpoint: Path) -> Path:
        staged = self.run_path / STAGING / checkpoint.name
        shutil.rmtree(staged, ignore_errors=True)
        (staged / RunFolder.CHECKPOINTS).mkdir(parents=True)
        shutil.copytree(checkpoint, staged / RunFolder.CHECKPOINTS / checkpoint.name, copy_function=_link_or_copy,
                        ignore=shutil.ignore_patterns("README.md"))
        for name in RunFolder.RESUME_FILES:
            if (self.run_path / name).is_file():
                shutil.copy2(self.run_path / name, staged / name)
        return staged

    def _upload_loop(self):
        while True:
            with self._cv:
                while self._pending is None and not self._stop:
                    self._cv.wait()
                if self._pending is None:
                    return
                staged, self._pending = self._pending, None
            name = next((staged / RunFolder.CHECKPOINTS).iterdir()).name
            try:
                self._upload(staged, f"hubtune: {name}", delete=[f"{RunFolder.CHECKPOINTS}/**"])
                self.uploaded.append(name)
            except Exception as err:  # the next checkpoint tries again; finish() reports it
                self.errors.append(f"{name}: {err}")
                log.warning("could not mirror %s to %s (%s); the next checkpoint will try again", name,
                            self.repo_id, err)
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _upload(self, folder: Path, message: str, delete: list[str] | None = None):
        from huggingface_hub import HfApi

        HfApi(token=self.token).upload_folder(repo_id=self.repo_id, folder_path=folder, commit_message=message,
                                              delete_patterns=delete)

    def wait(self) -> None:
        """Until the newest checkpoint is on the Hub (or its upload failed)."""
        if self._worker is None:
            return
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._worker.join()
        self._worker, self._stop = None, False
        shutil.rmtree(self.run_path / STAGING, ignore_errors=True)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.wait()

    def finish(self) -> None:
        """Upload the finished run (adapter, summary, metrics, prepared rows) next to its last checkpoint."""
        from hubtune.errors import PushError
        from hubtune.publish import push_errors

        self.wait()
        staged = self.run_path / STAGING / "final"
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
        for pattern in (*RunFolder.RESUME_FILES, *RunFolder.FINAL_FILES):
            for f in self.run_path.glob(pattern):
                if f.is_file() and f.name != RunFolder.CARD:
                    (staged / f.relative_to(self.run_path)).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(f, staged / f.relative_to(self.run_path))
        try:
            with push_errors(self.repo_id):
                self._upload(staged, "hubtune: finished run")
        except PushError as err:
            raise PushError(f"the run finished in {self.run_path} but could not be mirrored to {self.repo_id}: "
                            f"{err}. Push it with `hubtune push {self.run_path} --repo ...`, or rerun "
                            f"`hubtune train --resume {self.run_path}` once the Hub is reachable") from None
        finally:
            shutil.rmtree(self.run_path / STAGING, ignore_errors=True)


def _link_or_copy(src, dst):
    """A hard link costs no space and survives the Trainer deleting the original; copy across disks."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def download_run(repo_id: str, dest: Path, token: str | None = None) -> Path:
    """Fetch a run mirrored by HubCheckpoints into `dest` (its config, metrics and latest checkpoint, or the
    finished run), to resume it on this machine. Returns `dest`."""
    from huggingface_hub import HfApi, snapshot_download

    from hubtune.errors import HubtuneError
    from hubtune.hub import hub_errors

    with hub_errors(repo_id, "model"):
        files = HfApi(token=token).list_repo_files(repo_id)
        if RunFolder.CONFIG not in files:
            raise HubtuneError(f"{repo_id} holds no hubtune run (no {RunFolder.CONFIG}): give the repo named in "
                               f"training.push_checkpoints of the run to resume")
        steps = {step_of(p.split("/")[1]) for p in files if p.startswith(f"{RunFolder.CHECKPOINTS}/")}
        allow = [*RunFolder.RESUME_FILES, *RunFolder.FINAL_FILES]
        if max(steps, default=-1) >= 0:
            allow.append(f"{RunFolder.CHECKPOINTS}/{RunFolder.CHECKPOINT_PREFIX}{max(steps)}/*")
        snapshot_download(repo_id, local_dir=dest, allow_patterns=allow, token=token)
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # the download's own bookkeeping, not part of the run
    return dest
