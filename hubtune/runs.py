"""The run folder: one type that owns its layout, so training, evaluation, the card, push, export, the
Hub mirror, the CLI and the UI all read a run the same way. No other module spells these names.

    runs/20260101-120000/
      config.yaml          the resolved run config (typed: RunFolder.config)
      state.json           status, owner, last error, pushes
      .lock                pid, host and boot id of the process writing the run (train, eval), while it does
      .lock.flock          the file lock that process holds; the OS frees it when the process ends
      data_report.json     what each data step removed
      data/train.jsonl     the prepared training rows, and data/validation.jsonl the held-out ones
      initial_eval.json    held-out loss before any update
      metrics.jsonl        one line per logging step (what the console and the UI show)
      checkpoints/         checkpoint-N folders, for resume
      checkpoint_scores.json, selected-adapter/   training.select: each checkpoint's scores, the best adapter
      .hub-mirror/         training.push_checkpoints: what the next upload sends, staged
      adapter/             the trained adapter and tokenizer
      summary.json         what the finished run was (typed: RunSummary)
      eval.json            `hubtune eval` results (typed: EvalResult)
      eval_answers.jsonl   every test prompt's answers and their scores; eval_cache/ its generations
      human_eval.csv       blinded answer pairs for raters (+ human_eval_key.json)
      export.json          the last GGUF export (its files in export/ or where --out said)
      merge.json           the last merge into the base (the model where --out said)
      job.log, job.json    the page's jobs on this run: their output, the last one's command and exit
      README.md            the card a push would publish (+ loss_curve.png)
      tensorboard/         training.report_to: [tensorboard]
      uploads/             files uploaded on the page as the run's data
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, ValidationError

from hubtune import config as cfg
from hubtune import optimizer_shards
from hubtune.distributed import is_main_process
from hubtune.errors import HubtuneError, RunLockedError

log = logging.getLogger("hubtune")


class Status(str, Enum):
    QUEUED = "queued"  # created, waiting for a GPU (the UI's queue)
    RUNNING = "running"  # training now, in a live process
    EVALUATING = "evaluating"  # `hubtune eval` now, in a live process
    INTERRUPTED = "interrupted"  # stopped or killed before the end; resumable from its last checkpoint
    FAILED = "failed"  # stopped by an error (state.json holds it)
    FINISHED = "finished"  # adapter and summary written
    EVALUATED = "evaluated"  # eval.json written
    PUSHED = "pushed"  # published to the Hub at least once


class DatasetRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    split: str = "train"
    name: str | None = None
    revision: str | None = None  # as configured (a branch, tag, or None for main)
    revision_sha: str | None = None  # the commit the rows were read at; None for local data
    role: Literal["task", "mix"] = "task"  # the task data, or general data mixed in against forgetting
    train_rows: int | None = None  # rows it gave to training (after every data step)
    eval_rows: int | None = None  # rows it gave to the held-out split
    sha256: str | None = None  # a local file's content when it was read, to recognise it wherever it moves

    @property
    def label(self) -> str:
        """Its name as shown to people: a Hub id or built-in asset as written, a local file by its name."""
        from hubtune.refs import data_label

        return data_label(self.path)


class RunSummary(BaseModel):
    """What a finished run was: written once by training, read by the card, push, eval and the UI."""

    model_config = ConfigDict(extra="forbid")

    base_model: str
    base_revision: str | None  # the commit sha the base was loaded at; None for a local folder
    datasets: list[DatasetRecord]
    method: Literal["lora", "qlora"]
    trainable_parameters: int
    total_parameters: int
    global_steps: int
    epochs: float
    train_examples: int
    eval_examples: int
    initial_eval_loss: float | None
    final_eval_loss: float | None
    duration_seconds: float
    peak_memory_mb: dict[str, float]
    hardware: dict[str, Any]
    licence: dict | None
    versions: dict[str, str]
    backend: dict[str, str] | None = None  # {name: hf | unsloth, why}: the training backend that ran
    base_quantization: str | None = None  # how a pre-quantized base was saved; None when hubtune quantized it
    processes: int = 1  # training processes (GPUs) the data was sharded over
    effective_batch_size: int | None = None  # micro batch x gradient accumulation x processes
    training_method: str = "sft"  # sft | dpo | orpo | kto | grpo
    method_settings: dict | None = None  # beta, reference policy, rewards and weights (methods.settings_record)
    held_out: dict | None = None  # the method's own measure on held-out rows: {before: {...}, after: {...}}
    selection: dict | None = None  # training.select other than last: the chosen step and every checkpoint's scores


class MetricEntry(BaseModel):
    """One measure in eval.json's flat list: the tuned model's on Hub datasets become the card's model-index,
    the rest its table."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str
    value: float
    ci95: list[float] | None = None  # [lower, upper]
    dataset: dict | str | None = None  # {name, type (a Hub dataset's id), config, revision}, or a Hub id
    split: str | None = None
    model: Literal["tuned", "base", "base_few_shot"] = "tuned"


class EvalResult(BaseModel):
    """What `hubtune eval` found (eval.json): written by the evaluation, read by the card, push, the CLI and
    the UI. The sections hold what each step measured; a step that did not run leaves its section out."""

    model_config = ConfigDict(extra="forbid")

    run: str
    created: str
    settings: dict  # the eval section it ran with
    data: dict  # the rows it read: counts, test dataset and split, few-shot k
    loss: dict | None = None  # held-out loss and perplexity, base and tuned
    task: dict | None = None  # exact match and token F1: base, base few-shot, tuned; versus the best prompt
    harness: dict | None = None  # lm-evaluation-harness tasks, base and tuned (or why they were skipped)
    regression: dict | None = None  # the regression set: accuracies, drop, threshold, verdict
    judge: dict | None = None  # the LLM judge's rubric scores and pairwise wins
    human_export: dict | None = None  # the blinded CSV for raters and its key
    answers_file: str | None = None  # every test prompt's answers (RunFolder.ANSWERS)
    regressed: bool = False
    metrics: list[MetricEntry] = []

    def to_json(self) -> str:
        """eval.json's text: sections that were not measured stay out."""
        return self.model_dump_json(indent=2, exclude={name for name, value in self if value is None})


class RunFolder:
    CONFIG = "config.yaml"
    STATE = "state.json"
    LOCK = ".lock"  # who holds the run: pid, host, command, since
    OS_LOCK = ".lock.flock"  # what they hold: freed by the OS however the process ends, SIGKILL included
    SUMMARY = "summary.json"
    METRICS = "metrics.jsonl"
    EVAL = "eval.json"
    ANSWERS = "eval_answers.jsonl"
    ANSWER_SCORES = ("exact_match", "token_f1")  # what each answer in ANSWERS is scored by
    EVAL_CACHE = "eval_cache"  # kept so a rerun of `hubtune eval` resumes:
    GENERATIONS_CACHE = f"{EVAL_CACHE}/generations.jsonl"  # every greedy answer, by model and prompt
    JUDGE_CACHE = f"{EVAL_CACHE}/judge.jsonl"  # the judge's replies, by judge and prompt (eval, data pairs)
    HUMAN_EVAL = "human_eval.csv"
    HUMAN_EVAL_KEY = "human_eval_key.json"
    DATA_REPORT = "data_report.json"
    INITIAL_EVAL = "initial_eval.json"
    ADAPTER = "adapter"
    CHECKPOINTS = "checkpoints"
    CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's own naming (transformers' PREFIX_CHECKPOINT_DIR)
    CHECKPOINT_SCORES = "checkpoint_scores.json"
    SELECTED_ADAPTER = "selected-adapter"
    MIRROR_STAGING = ".hub-mirror"
    EXPORT = "export.json"
    EXPORT_DIR = "export"
    MERGE = "merge.json"  # the last `hubtune merge`: where it went and how far it moved the logits
    JOB_LOG = "job.log"  # the page's jobs: the subprocess's stdout and stderr, appended run after run
    JOB_RECORD = "job.json"  # the page's last job: its kind and command, when it started and ended, its exit
    CARD = "README.md"
    LOSS_CURVE = "loss_curve.png"
    TENSORBOARD = "tensorboard"
    UPLOADS = "uploads"
    # What a Hub mirror (training.push_checkpoints) holds, under the same names: enough to resume the run
    # anywhere (with its latest checkpoint), and once it has finished, the adapter and what the run was.
    RESUME_FILES = (CONFIG, METRICS, INITIAL_EVAL, DATA_REPORT)
    FINAL_FILES = (SUMMARY, f"{ADAPTER}/*", "data/*")
    STOP_REQUEST = "stop_requested"  # written by the page's Stop just before its signal

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Under accelerate every process opens the run, but only the main one writes it: the others'
        # writes (state, summary, rows, lock) are skipped.
        self.writer = is_main_process()

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---- creating and opening ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: cfg.RunConfig, owner: str | None = None) -> RunFolder:
        """A new run folder holding `config`; refuses a folder that already holds a run."""
        run = cls(path)
        holder = run.lock_holder()
        if holder is not None:  # before writing anything: the live run's config stays its own
            raise run._locked_by(holder)
        if (run.path / cls.CHECKPOINTS).exists() or (run.path / cls.SUMMARY).exists():
            raise HubtuneError(f"{run.path} already holds a run; continue it with `hubtune train --resume {run.path}` "
                               f"or choose another output.dir")
        run.path.mkdir(parents=True, exist_ok=True)
        (run.path / cls.CONFIG).write_text(config.to_yaml())
        run._write_state(status=Status.QUEUED.value, owner=owner, created=_now(), error=None, pushes=[])
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        run = cls(path)
        if not (run.path / cls.CONFIG).is_file():
            raise HubtuneError(f"{run.path} is not a run folder (no {cls.CONFIG}); give a folder written by "
                               f"`hubtune train`")
        return run

    def require_finished(self) -> RunFolder:
        """This run, or an error naming what is missing and how to produce it."""
        needed = {self.SUMMARY: "written when training finishes",
                  f"{self.ADAPTER}/adapter_config.json": "the saved adapter"}
        missing = [f"{name} ({why})" for name, why in needed.items() if not (self.path / name).is_file()]
        if missing:
            raise HubtuneError(f"{self.path} is not a finished run ({self.status.value}): missing {', '.join(missing)}. "
                               f"Finish it with `hubtune train --resume {self.path}`")
        self.check_adapter_weights()
        return self

    def check_adapter_weights(self) -> None:
        """The adapter's weights are one whole safetensors file. A pickled one (adapter_model.bin) is refused
        before anything loads it: unpickling is how such a file would run code."""
        from hubtune.errors import ModelFolderError

        weights = self.adapter / "adapter_model.safetensors"
        restore = (f"restore the adapter folder from where it was published, or train it again "
                   f"(`hubtune train --resume {self.path}` continues from its last checkpoint)")
        if not weights.is_file():
            pickled = sorted(p.name for p in self.adapter.glob("adapter_model*.bin")) if self.adapter.is_dir() else []
            if pickled:
                raise ModelFolderError(f"{self.adapter} holds pickled weights ({', '.join(pickled)}), not "
                                       f"adapter_model.safetensors; hubtune loads adapters only from safetensors, "
                                       f"which hold tensors and nothing that runs. Save the adapter as safetensors "
                                       f"(PEFT's save_pretrained does by default), or {restore}")
            raise ModelFolderError(f"{weights} is missing: the run's adapter has no weights; {restore}")
        try:
            from safetensors import safe_open

            with safe_open(str(weights), "pt") as f:
                f.keys()
        except Exception as err:  # safetensors' own error type: a cut-short or garbled file
            raise ModelFolderError(f"{weights} is damaged ({err}): it was cut short or is not safetensors; "
                                   f"{restore}") from None


    # ---- what it holds ------------------------------------------------------------------------------
    @cached_property
    def config(self) -> cfg.RunConfig:
        """The run's config as it was trained. Its data paths are a record, not a requirement: push, eval,
        merge and export read the prepared data inside the run folder, wherever the sources have gone."""
        return cfg.load(self.path / self.CONFIG, check_paths=False)

    @property
    def adapter(self) -> Path:
        return self.path / self.ADAPTER

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        """The folder the Trainer saves step `step` in."""
        return self.checkpoints / f"{self.CHECKPOINT_PREFIX}{step}"

    def checkpoint_folders(self) -> list[Path]:
        """The checkpoint-N folders, oldest step first (complete or not: see last_checkpoint)."""
        return sorted(self.checkpoints.glob(f"{self.CHECKPOINT_PREFIX}*"), key=step_of)

    @property
    def answers(self) -> Path:
        return self.path / self.ANSWERS

    @property
    def export_dir(self) -> Path:
        return self.path / self.EXPORT_DIR

    @property
    def card(self) -> Path:
        return self.path / self.CARD

    @property
    def summary(self) -> RunSummary | None:
        f = self.path / self.SUMMARY
        return RunSummary.model_validate_json(f.read_text()) if f.is_file() else None

    def write_summary(self, summary: RunSummary) -> None:
        if not self.writer:
            return
        _write_atomic(self.path / self.SUMMARY, summary.model_dump_json(indent=2))

    def metrics(self) -> list[dict]:
        """The metrics.jsonl rows; a line cut short by a crash is skipped."""
        f = self.path / self.METRICS
        rows = []
        for line in (f.read_text().splitlines() if f.is_file() else []):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    @property
    def eval(self) -> EvalResult | None:
        f = self.path / self.EVAL
        if not f.is_file():
            return None
        try:
            return EvalResult.model_validate_json(f.read_text())
        except ValidationError as err:
            raise HubtuneError(f"{f} is not what `hubtune eval` writes ({_first_problem(err)}); evaluate the run "
                               f"again with `hubtune eval {self.path}`") from None

    def write_eval(self, result: EvalResult) -> None:
        if not self.writer:
            return
        _write_atomic(self.path / self.EVAL, result.to_json())

    @property
    def export_record(self) -> dict | None:
        """The last `hubtune export` (export.json, with the folder its files are in)."""
        return self.read_json(self.EXPORT)

    @property
    def data_report(self) -> dict:
        """What each data step did (data_report.json); empty for a run that has not prepared its data."""
        return self.read_json(self.DATA_REPORT) or {}

    def read_json(self, name: str) -> dict | None:
        f = self.path / name
        return json.loads(f.read_text()) if f.is_file() else None

    def write_json(self, name: str, value) -> None:
        if not self.writer:
            return
        _write_atomic(self.path / name, json.dumps(value, indent=2, default=str))

    def write_rows(self, split: Literal["train", "validation"], rows) -> int:
        """The prepared rows training used, so evaluation reads them instead of re-running the data steps."""
        if not self.writer:
            return len(rows or [])
        f = self._rows_file(split)
        f.parent.mkdir(exist_ok=True)
        n = 0
        with f.open("w", encoding="utf-8") as out:
            for row in rows or []:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        return n

    def _rows_file(self, split: Literal["train", "validation"]) -> Path:
        return self.path / "data" / f"{split}.jsonl"

    def rows(self, split: Literal["train", "validation"]) -> list[dict]:
        f = self._rows_file(split)
        if not f.is_file():
            raise HubtuneError(f"{self.path} holds no prepared {split} rows ({f}); train it again with this "
                               f"version of hubtune")
        return [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, to resume from. One cut short (killed while it was written, a
        full disk) is moved out of the way to checkpoints/incomplete-N, with a warning naming it."""
        complete = None
        for checkpoint in reversed(self.checkpoint_folders()):
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                complete = complete or checkpoint
                continue
            if not self.writer:
                continue
            aside = _free_name(self.checkpoints / f"incomplete-{step_of(checkpoint)}")
            checkpoint.rename(aside)
            log.warning("%s is incomplete (%s): moved to %s", checkpoint.name, problem, aside)
        return complete

    # ---- status -------------------------------------------------------------------------------------
    def state(self) -> dict:
        f = self.path / self.STATE
        try:
            return json.loads(f.read_text()) if f.is_file() else {}
        except json.JSONDecodeError:
            return {}

    @property
    def owner(self) -> str | None:
        return self.state().get("owner")

    @property
    def error(self) -> str | None:
        """The error that stopped the run, when it failed, as the command line says it."""
        return self.state().get("error")

    @property
    def page_error(self) -> str | None:
        """The same error as the page says it (hubtune.errors.page_text), where it was recorded."""
        state = self.state()
        return state.get("error_on_page") or state.get("error")

    @property
    def status(self) -> Status:
        holder = self.lock_holder()
        if holder:
            return Status.EVALUATING if holder.get("command") == "eval" else Status.RUNNING
        state = self.state()
        if state.get("pushes"):
            return Status.PUSHED
        if (self.path / self.EVAL).is_file():
            return Status.EVALUATED
        if (self.path / self.SUMMARY).is_file():
            return Status.FINISHED
        recorded = state.get("status")
        if recorded == Status.FAILED.value:
            return Status.FAILED
        if recorded == Status.QUEUED.value and not self.checkpoints.exists():
            return Status.QUEUED
        return Status.INTERRUPTED  # started, not finished, and no live process: stopped or killed

    def mark(self, status: Status, error: str | None = None, on_page: str | None = None) -> None:
        """Record the status, and the error that ended the run in its two renderings (command line, page).
        Earlier errors keep their renderings (`page_renderings`): the log still holds their lines."""
        updates = dict(status=status.value, error=error, error_on_page=on_page, updated=_now())
        if error and on_page and on_page != error:
            updates["page_renderings"] = [*self.state().get("page_renderings", [])[-9:], [error, on_page]]
        self._write_state(**updates)

    @property
    def page_renderings(self) -> list[tuple[str, str]]:
        """(command line, page) renderings of the errors that ended this run's jobs, oldest first."""
        return [tuple(pair) for pair in self.state().get("page_renderings", [])]

    def request_stop(self) -> None:
        """Note that the page's Stop asked this run to stop (before the signal is sent): the process that stops
        then says so, not only which signal it received."""
        if self.writer:
            (self.path / self.STOP_REQUEST).write_text(_now())

    def stop_requested(self) -> bool:
        return (self.path / self.STOP_REQUEST).is_file()

    def clear_stop_request(self) -> None:
        (self.path / self.STOP_REQUEST).unlink(missing_ok=True)

    def record_push(self, repo_id: str, url: str, commit: str) -> None:
        pushes = [*self.state().get("pushes", []), {"repo": repo_id, "url": url, "commit": commit, "at": _now()}]
        self._write_state(pushes=pushes)

    def _write_state(self, **updates) -> None:
        if not self.writer:
            return
        _write_atomic(self.path / self.STATE, json.dumps({**self.state(), **updates}, indent=2))

    # ---- the lock -----------------------------------------------------------------------------------
    def _recorded_holder(self) -> dict | None:
        try:
            return json.loads((self.path / self.LOCK).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def lock_holder(self) -> dict | None:
        """Who writes the run now (pid, host, command, started), or None. A holder on this machine is live
        while its file lock is held; one on another machine sharing the folder is taken at its word."""
        holder = self._recorded_holder()
        if holder is not None and _foreign_and_stale(holder):
            return None
        if holder is None or holder.get("host") != socket.gethostname():
            return holder
        probe = FileLock(self.path / self.OS_LOCK, timeout=0)  # its own descriptor: even this process's hold counts
        try:
            probe.acquire()
        except Timeout:
            return holder
        except OSError:  # a folder this process may only read: judge by the recorded process instead
            return holder if _alive(holder) else None
        probe.release()
        return None  # left by a process that is gone

    @contextmanager
    def lock(self, command: str):
        """Hold the run for one writer: a second `hubtune train` or `eval` on the same folder is refused
        while the first one lives. A lock left by a process that is gone is taken over."""
        if not self.writer:
            yield self  # the main process holds the lock for all of a launch's processes
            return
        os_lock = FileLock(self.path / self.OS_LOCK, timeout=0)
        try:
            os_lock.acquire()
        except Timeout:
            raise self._locked_by(self._recorded_holder() or {}) from None
        try:
            recorded = self._recorded_holder()
            if recorded and recorded.get("host") != socket.gethostname() and not _foreign_and_stale(recorded):
                raise self._locked_by(recorded)
            # Ours now; details a process that is gone left behind are replaced.
            _write_atomic(self.path / self.LOCK, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(), "boot_id": boot_id(), "started": _now(),
                "command": command, "process_start": _process_start(os.getpid())}))
            try:
                yield self
            finally:
                (self.path / self.LOCK).unlink(missing_ok=True)
        finally:
            os_lock.release()

    def _locked_by(self, holder: dict) -> RunLockedError:
        if not holder:  # the holder has its file lock but has not written its details yet
            return RunLockedError(f"{self.path} is in use by another hubtune process that is just starting; wait "
                                  f"for it to finish or stop it", holder)
        return RunLockedError(
            f"{self.path} is in use by `hubtune {holder.get('command')}` (pid {holder.get('pid')} on "
            f"{holder.get('host')}, since {holder.get('started')}); wait for it to finish or stop it. If that "
            f"process is gone (another machine sharing this folder), delete {self.path / self.LOCK}", holder)


def list_runs(root: str | Path) -> list[RunFolder]:
    """The run folders directly under `root`, newest first."""
    root = Path(root)
    found = [RunFolder(p.parent) for p in root.glob(f"*/{RunFolder.CONFIG}")] if root.is_dir() else []
    return sorted(found, key=lambda r: (r.path / RunFolder.CONFIG).stat().st_mtime, reverse=True)


# What a checkpoint holds once the Trainer has finished writing it: the weights (adapter, or accelerate's FSDP
# files: the folder of each process's shard under SHARDED_STATE_DICT, the gathered file under FULL_STATE_DICT), the
# optimizer (a file, FSDP's folder, or DeepSpeed's global_step folder), and trainer_state.json, which the Trainer
# writes last.
CHECKPOINT_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model_fsdp_0",
                      "pytorch_model_fsdp.bin")
CHECKPOINT_OPTIMIZER = ("optimizer.pt", "optimizer.bin", "optimizer_0", "global_step*",
                        "optimizer-rank*-of-*.pt")  # one per process: bitsandbytes under FSDP (optimizer_shards)


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None when it is complete."""
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json: it was being written when training stopped"
    try:
        step = json.loads(state.read_text()).get("global_step")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is cut short"
    if step != step_of(checkpoint):
        return f"trainer_state.json is for step {step}"
    for kind, names in (("weights", CHECKPOINT_WEIGHTS), ("optimizer state", CHECKPOINT_OPTIMIZER)):
        if not any(any(checkpoint.glob(n)) for n in names):
            return f"no {kind} ({' or '.join(names)})"
    if why := optimizer_shards.incomplete(checkpoint):
        return why
    if (checkpoint / "pytorch_model_fsdp_0").is_dir() and not (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file():
        # torch.distributed.checkpoint writes the index of the shards once every process has written its own
        return "pytorch_model_fsdp_0 has no .metadata: the processes' weights were being written"
    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file() and not _safetensors_whole(adapter):
        return "adapter_model.safetensors is cut short"
    return None


def step_of(checkpoint: Path | str) -> int:
    """N of a checkpoint-N folder (a path or a name); -1 for any other name."""
    name = Path(checkpoint).name
    if not name.startswith(RunFolder.CHECKPOINT_PREFIX):
        return -1
    try:
        return int(name.removeprefix(RunFolder.CHECKPOINT_PREFIX))
    except ValueError:
        return -1


def _free_name(path: Path) -> Path:
    n = 2
    found = path
    while found.exists():
        found = path.with_name(f"{path.name}.{n}")
        n += 1
    return found


def _safetensors_whole(path: Path) -> bool:
    """The header parses and the data it describes fits in the file."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size >= 8 + size + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def remove_incomplete(checkpoints: Path) -> list[str]:
    """Delete the checkpoints a full disk cut short, to give their space back; returns their names."""
    removed = []
    for checkpoint in checkpoints.glob(f"{RunFolder.CHECKPOINT_PREFIX}*"):
        if checkpoint_problem(checkpoint) is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
            removed.append(checkpoint.name)
    return removed


def _first_problem(err: ValidationError) -> str:
    e = err.errors()[0]
    return f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _write_atomic(path: Path, text: str) -> None:
    """Readers (the UI polling a run) never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def boot_id() -> str | None:
    """This boot of this machine (Linux): a lock from an earlier boot is stale whatever its pid."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _foreign_and_stale(holder: dict) -> bool:
    """A lock recorded by another host, on a Space: a Space's disk is its own, so such a lock was left by the
    Space before a restart moved it to this host. Elsewhere another host sharing the folder may live."""
    return holder.get("host") != socket.gethostname() and bool(os.environ.get("SPACE_ID"))


def local_holder_pid(holder: dict) -> int | None:
    """The pid of the lock's holder when it is a live process of this machine's current boot and the very
    process that took the lock (its start time matches); None otherwise. The only pid that may be signalled."""
    if holder.get("host") != socket.gethostname():
        return None
    recorded_boot = holder.get("boot_id")
    if recorded_boot is not None and recorded_boot != boot_id():
        return None
    return holder["pid"] if _alive(holder) and holder.get("pid", 0) > 0 else None


def _alive(holder: dict) -> bool:
    """Whether the recorded process on this machine still runs (a reused pid is told by its start time)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("process_start")
    return started is None or started == _process_start(pid)
