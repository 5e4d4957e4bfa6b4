"""Trainer callbacks of the recipe: the metrics file and a clean stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback


class MetricsFile(TrainerCallback):
    """One JSON line per logging step: step, total_steps, epoch, loss, eval_loss, learning_rate,
    tokens/s and elapsed seconds. `on_row` (the console display) sees every row as written."""

    def __init__(self, file: Path, resume: bool, on_row: Callable[[list[dict]], None] | None = None):
        self.file = file
        self.resume = resume
        self.on_row = on_row
        self.rows: list[dict] = []
        self.last: tuple[float, int] | None = None
        self.started = time.time()
        if not resume:
            file.write_text("")

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resume and self.file.exists():
            # Lines past the checkpoint would be logged again: drop them.
            kept = [ln for ln in self.file.read_text().splitlines() if json.loads(ln)["step"] <= state.global_step]
            self.file.write_text("".join(ln + "\n" for ln in kept))
            self.rows = [json.loads(ln) for ln in kept]
        # Elapsed time carries over a resume, so the time left stays honest.
        self.started = time.time() - next((r["elapsed_seconds"] for r in reversed(self.rows)
                                           if r.get("elapsed_seconds") is not None), 0.0)
        self.last = (time.time(), state.num_input_tokens_seen)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if not any(k in logs for k in ("loss", "eval_loss")):
            return
        row = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4)}
        for key in ("loss", "eval_loss", "learning_rate"):
            if key in logs:
                row[key] = logs[key]
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


class StopOnSignal(TrainerCallback):
    """Ctrl-C / SIGTERM: finish the current step, save a checkpoint, stop."""

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
        if self.received:
            control.should_save = True
            control.should_training_stop = True
