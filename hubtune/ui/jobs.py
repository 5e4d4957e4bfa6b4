"""The UI's job runner: `hubtune train`, `eval`, `merge` and `export` as subprocesses, first come first
served, one job per device at a time (on a CPU-only machine an evaluation may run beside a training).

A job's state lives in its run folder (status, lock, metrics, log), not in this process: a reloaded tab,
a second browser or a restarted app reads the same folder and reattaches. Each subprocess runs in its
own session, so a closed tab never stalls or kills it. Stop is SIGTERM: the recipe finishes the step,
saves a checkpoint and exits; resume is `hubtune train --resume RUN`.

A new run is created here as a queued run folder (owner recorded) and started, when its turn comes, with
`hubtune train --resume RUN`: with no checkpoint yet, that trains it from the start.

The user's Hub token reaches the subprocess through its environment only: never its command line, a
file or a log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hubtune.errors import BudgetError, HubtuneError
from hubtune.runs import RunFolder, Status, list_runs, local_holder_pid, step_of

LOG = RunFolder.JOB_LOG
RECORD = RunFolder.JOB_RECORD
WAITING_FOR_OWNER = ("waiting for its owner to sign in: the Space restarted while it was queued, and its owner's "
                     "token lives only in their session")
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# On a shared Space a job gets an explicit environment: the few variables a Python process, the Hub client,
# torch and hubtune read, and its own user's token. Nothing else of the app's (OAuth client secret, the
# owner's secrets, other settings) reaches it.
JOB_VARIABLES = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
                 "LD_LIBRARY_PATH", "SPACE_ID", "SYSTEM", "XDG_CACHE_HOME")
JOB_PREFIXES = ("HF_", "HUBTUNE_", "CUDA_", "NVIDIA_", "NCCL_", "PYTORCH_", "TORCH_", "OMP_", "MKL_",
                "TRANSFORMERS_", "ACCELERATE_", "BNB_", "TOKENIZERS_")
SECRET_WORDS = ("TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENTIAL")


def job_environment(token: str | None, slot: str | None, shared: bool, base: dict | None = None) -> dict[str, str]:
    """The environment of one job: on a shared Space the allowed variables only, never one that names a
    secret, and the job's own user's token; elsewhere this process's, with the user's token in place of it."""
    base = dict(os.environ if base is None else base)
    if shared:
        env = {k: v for k, v in base.items()
               if (k in JOB_VARIABLES or k.startswith(JOB_PREFIXES)) and not any(w in k.upper() for w in SECRET_WORDS)}
        env["HF_TOKEN_PATH"] = os.devnull  # no stored login of the machine's either
        env["HF_STORED_TOKENS_PATH"] = os.devnull
    else:
        env = base
        if token:
            for name in TOKEN_VARIABLES:
                env.pop(name, None)
    if token:
        env["HF_TOKEN"] = token
    env["PYTHONUNBUFFERED"] = "1"  # the log tail is live
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot
    return env


@dataclass
class Job:
    run: Path
    kind: Literal["train", "eval", "merge", "export"]
    owner: str | None = None
    token: str | None = field(default=None, repr=False)
    options: list[str] = field(default_factory=list)  # extra CLI arguments (eval: --limit N; merge: --out DIR)
    queued_at: float = field(default_factory=time.time)
    held: bool = False  # waits for its owner to sign in and give it their token (see JobRunner.release)

    def command(self) -> list[str]:
        cli = [sys.executable, "-m", "hubtune.cli"]
        if self.kind == "train":
            return [*cli, "train", "--resume", str(self.run), *self.options]
        return [*cli, self.kind, str(self.run), *self.options]


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    slot: str | None  # CUDA device index, or None on CPU
    started: float = field(default_factory=time.time)
    status_at_launch: Status | None = None  # the run's status before its process took it over


def device_slots() -> list[str | None]:
    """One slot per CUDA device (its index for CUDA_VISIBLE_DEVICES), or one CPU slot."""
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # no torch build with CUDA: the CPU slot
        count = 0
    return [str(i) for i in range(count)] or [None]


class JobRunner:
    """A FIFO queue of jobs over the device slots, polled by a daemon thread every `poll` seconds."""

    def __init__(self, root: str | Path, slots: list[str | None] | None = None, poll: float = 1.0,
                 shared: bool = False, max_queued_per_user: int | None = None):
        self.root = Path(root)
        self.slots = slots if slots is not None else device_slots()
        self.poll = poll
        self.shared = shared  # a shared Space: the app's own HF_TOKEN never reaches a user's job
        # On a shared Space one user may not fill the queue: at most this many waiting jobs each.
        self.max_queued_per_user = (max_queued_per_user if max_queued_per_user is not None
                                    else int(os.environ.get("HUBTUNE_MAX_QUEUED_PER_USER") or 3))
        self.queue: deque[Job] = deque()
        self.running: dict[Path, Running] = {}
        self.stopping: set[Path] = set()  # runs whose process was sent SIGTERM by stop()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._requeue_waiting()

    # ---- the loop ---------------------------------------------------------------------------------
    def start(self) -> JobRunner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="hubtune-jobs", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.tick()
            except Exception as err:  # the loop must outlive any one bad run folder
                print(f"hubtune ui: job runner: {err}", file=sys.stderr)

    def tick(self) -> None:
        """Reap finished subprocesses, then start queued jobs on free slots."""
        with self._lock:
            for path, r in list(self.running.items()):
                if r.process.poll() is not None:
                    del self.running[path]
                    self._after_exit(r)
            while (job := self._next()) and (slot := self._free_slot()) is not False:
                self.queue.remove(job)
                self._launch(job, slot)
            if job := self._evaluation_beside():
                self.queue.remove(job)
                self._launch(job, None)

    def _evaluation_beside(self) -> Job | None:
        """On the CPU, a queued evaluation does not wait for a training to end: it shares the cores beside it
        (as `hubtune eval` in a terminal beside `hubtune train` does), one evaluation at a time. A GPU's
        memory is not shared so lightly: there, jobs take their turn."""
        if self.slots != [None] or any(r.job.kind == "eval" for r in self.running.values()) or any(
                run.status == Status.EVALUATING for run in list_runs(self.root) if run.path not in self.running):
            return None
        return next((j for j in self.queue if j.kind == "eval" and j.run not in self.running and not j.held), None)

    def _next(self) -> Job | None:
        """The first queued job, not held for its owner, whose run has no process of ours still exiting."""
        return next((j for j in self.queue if j.run not in self.running and not j.held), None)

    def _requeue_waiting(self) -> None:
        """Queued run folders left by an earlier app process go back in line, oldest first. On a shared
        Space their owners' tokens went with the old process: they wait until their owner signs in."""
        waiting = [r for r in list_runs(self.root) if r.status == Status.QUEUED]
        for run in sorted(waiting, key=lambda r: r.state().get("created", "")):
            held = self.shared and run.owner is not None
            self.queue.append(Job(run.path, "train", owner=run.owner, held=held))
            if held:
                run.mark(Status.QUEUED, error=WAITING_FOR_OWNER)

    def release(self, user: str | None, token: str | None) -> int:
        """Give a signed-in owner's token to their held jobs, which then take their turn; how many."""
        released = 0
        with self._lock:
            for job in self.queue:
                if job.held and user and job.owner == user and token:
                    job.token, job.held = token, False
                    RunFolder(job.run).mark(Status.QUEUED, error=None)
                    released += 1
        return released

    def job(self, run: str | Path) -> Job | None:
        """The run's job waiting in line or running now (ours), if any."""
        run = Path(run)
        with self._lock:
            r = self.running.get(run)
            if r is not None and r.process.poll() is None:
                return r.job
            return next((j for j in self.queue if j.run == run), None)

    def held(self, run: str | Path) -> bool:
        with self._lock:
            return any(j.held and j.run == Path(run) for j in self.queue)

    # ---- slots ------------------------------------------------------------------------------------
    def _free_slot(self) -> str | None | bool:
        """A free device slot, or False when every one is busy (with our jobs or live ones we did not start)."""
        ours = {r.slot for r in self.running.values()}
        foreign = sum(1 for run in list_runs(self.root)
                      if run.path not in self.running and run.status in (Status.RUNNING, Status.EVALUATING))
        free = [s for s in self.slots if s not in ours]
        return free[0] if len(free) > foreign else False

    # ---- submitting and stopping ------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue a job; returns its place in line (1: next to start)."""
        job.run = Path(job.run)
        with self._lock:
            if self.is_active(job.run):
                raise HubtuneError(f"{job.run.name} is already queued or running; stop it first")
            self.check_room(job.owner)
            self.queue.append(job)
            place = len(self.queue)
        self.tick()
        return place

    def check_room(self, owner: str | None) -> None:
        """On a shared Space, refuse a job to a user who already has the most waiting jobs one user may have."""
        with self._lock:
            waiting = sum(1 for j in self.queue if j.owner == owner)
        if self.shared and waiting >= self.max_queued_per_user:
            raise BudgetError(f"{owner or 'this user'} already has {waiting} jobs waiting in the queue, the most one "
                              f"user may queue on this Space; wait for one to start, or stop one")

    def place(self, run: str | Path) -> int | None:
        """1-based place of a run's job in the queue, or None when it is not waiting."""
        with self._lock:
            for i, job in enumerate(self.queue, 1):
                if job.run == Path(run):
                    return i
        return None

    def is_active(self, run: str | Path) -> bool:
        """Queued, or a live process works on it. A process that has released the run (stopped, finished)
        but not yet exited does not count: the next job on that run waits in line for it."""
        run = Path(run)
        if self.place(run) is not None:
            return True
        status = RunFolder(run).status
        if status in (Status.RUNNING, Status.EVALUATING) or (status == Status.QUEUED and run in self.running):
            return True
        # Launched but not yet marked running (a resumed run still reads "interrupted"): a second job now
        # would duplicate it. A process told to stop, or one whose run has moved on, is only exiting.
        r = self.running.get(run)
        return (r is not None and run not in self.stopping and r.process.poll() is None
                and status == r.status_at_launch)

    def stop(self, run: str | Path) -> str:
        """SIGTERM to the run's process (ours, or the live holder of its lock on this machine and boot, the
        very process that took it: never another process that reuses its pid); a queued job leaves the
        queue. Returns what was done, in words."""
        run = Path(run)
        with self._lock:
            for job in list(self.queue):
                if job.run == run:
                    self.queue.remove(job)
                    folder = RunFolder(run)
                    if folder.status == Status.QUEUED:
                        folder.mark(Status.INTERRUPTED, error=None)
                    return f"{run.name} left the queue before it started"
            ours = run in self.running and self.running[run].process.poll() is None
            pid = self.running[run].process.pid if ours else None
        holder = RunFolder(run).lock_holder() or {}
        pid = pid or local_holder_pid(holder)
        if not pid and holder.get("host") not in (None, socket.gethostname()) and RunFolder(run).status in (
                Status.RUNNING, Status.EVALUATING):
            return f"{run.name} is worked on by a process on {holder['host']} (pid {holder.get('pid')}); stop it there"
        # Our own live process is stopped whatever the run reads (a resumed one reads "interrupted" until
        # it starts); another's only while the run says it works on it.
        if not pid or (not ours and RunFolder(run).status not in (Status.RUNNING, Status.EVALUATING, Status.QUEUED)):
            return f"{run.name} is not running ({RunFolder(run).status.value})"
        RunFolder(run).request_stop()  # the process that stops says it was the Stop button
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return f"{run.name}: its process {pid} has already ended"
        self.stopping.add(run)
        return f"stopping {run.name}: the current step finishes, a checkpoint is saved, then it exits"

    def pid(self, run: str | Path) -> int | None:
        """The process working on a run: ours, or the live holder of its lock."""
        run = Path(run)
        with self._lock:
            if run in self.running:
                return self.running[run].process.pid
        holder = RunFolder(run).lock_holder()
        folder = RunFolder(run)
        return local_holder_pid(holder) if holder and folder.status in (Status.RUNNING, Status.EVALUATING) else None

    # ---- one subprocess ---------------------------------------------------------------------------
    def _launch(self, job: Job, slot: str | None) -> None:
        env = job_environment(job.token, slot, self.shared)
        log = open(job.run / LOG, "ab")
        log.write(f"\n{header(job)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        finally:
            log.close()
        RunFolder(job.run).write_json(RECORD, {"kind": job.kind, "command": f"hubtune {' '.join(job.command()[3:])}",
                                               "started": _now(), "ended": None, "exit_code": None, "error": None})
        self.running[job.run] = Running(job, process, slot, status_at_launch=RunFolder(job.run).status)

    def _after_exit(self, r: Running) -> None:
        """A process that died before its run could record why (an import error, a kill) leaves the
        reason in the run's state, so the history never shows a run waiting forever."""
        run = RunFolder(r.job.run)
        code = r.process.returncode
        stopped = r.job.run in self.stopping
        self.stopping.discard(r.job.run)
        record = run.read_json(RECORD) or {}
        run.write_json(RECORD, {**record, "ended": _now(), "exit_code": code,
                                "error": None if code == 0 else failure(run.path / LOG)})
        if stopped and run.status == Status.QUEUED:  # stopped before it could take the run: not a failure
            run.mark(Status.INTERRUPTED)
        elif code != 0 and r.job.kind == "train" and run.status == Status.QUEUED:
            last = last_line(run.path / LOG)
            run.mark(Status.FAILED, error=f"`hubtune train` exited with code {code} before training started: {last}",
                     on_page=f"Training ended before it started (exit code {code}): {last.removeprefix('error: ')}")


# The line the runner writes into a run's log before each job: the command it runs (a shell could run it
# as it stands), and after `#` what that job is, which the page shows in words (hubtune.ui.views.page_log).
STARTS, CONTINUES = "starts the run", "continues from"


def header(job: Job) -> str:
    command = f"$ hubtune {' '.join(job.command()[3:])}"
    if job.kind != "train":
        return command
    steps = [n for c in RunFolder(job.run).checkpoint_folders() if (n := step_of(c)) >= 0]
    return f"{command}  # {f'{CONTINUES} step {max(steps)}' if steps else STARTS}"


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def failure(path: Path) -> str:
    """Why a job failed, from its log: its `error: ...` message (all its lines), else its last line."""
    lines = tail(path, 30)
    heads = [i for i, line in enumerate(lines) if line.startswith("$ hubtune ")]  # where this job's output began
    lines = lines[heads[-1] + 1:] if heads else lines
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    return "\n".join(lines[starts[-1]:]).removeprefix("error: ") if starts else (lines[-1] if lines else "(no output)")


def last_line(path: Path) -> str:
    lines = tail(path, 1)
    return lines[-1] if lines else "(no output)"


def tail(path: Path, n: int = 20) -> list[str]:
    """The last n lines of a log, progress bars (carriage returns) reduced to their latest state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    lines = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return [line for line in lines if line.strip()][-n:]
