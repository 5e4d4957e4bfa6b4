"""A training process that dies by SIGKILL at a chosen moment, for the resume tests.

    python tests/killed_training.py RUN.yaml MOMENT
    start(RUN.yaml, MOMENT)   # the same in a process forked from the test's (no second import of torch)

MOMENT is one of KILL_AT's keys; `slow` does not kill itself but sleeps at each step, so a test can
kill it from outside (or let it mirror checkpoints to a Hub) while it trains. No process gets a chance
to clean up: the run folder is left exactly as a crash leaves it.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
import traceback

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import TrainerState

import hubtune
from hubtune import config as cfg


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(TrainerCallback):
    def __init__(self, moment: str):
        self.moment = moment

    def on_log(self, args, state, control, logs=None, **kwargs):
        # After the metrics line of step 1 is written (MetricsFile runs first), before checkpoint-1.
        if self.moment == "after-the-first-log" and state.global_step == 1 and "loss" in (logs or {}):
            die()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.moment == "between-steps" and state.global_step == 3:  # checkpoint-3 is complete
            die()
        if self.moment == "slow":
            time.sleep(1.0)


def kill_while_writing_optimizer(step: int) -> None:
    """checkpoint-N's adapter is written, its optimizer.pt half-way, no trainer_state.json yet."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, str) and f.endswith(os.path.join(f"checkpoint-{step}", "optimizer.pt")):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            die()
        return real(obj, f, *args, **kwargs)

    torch.save = save


def kill_while_writing_trainer_state(step: int) -> None:
    """checkpoint-N holds everything but a trainer_state.json cut off in the middle."""
    real = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if os.path.join(f"checkpoint-{step}", "trainer_state.json") in json_path:
            real(self, json_path)
            with open(json_path, "r+") as f:
                text = f.read()
                f.seek(0)
                f.truncate()
                f.write(text[: len(text) // 2])
            die()
        return real(self, json_path)

    TrainerState.save_to_json = save_to_json


KILL_AT = {
    "after-the-first-log": lambda: None,
    "writing-optimizer": lambda: kill_while_writing_optimizer(3),
    "writing-trainer-state": lambda: kill_while_writing_trainer_state(4),
    "between-steps": lambda: None,
    "slow": lambda: None,
}

def run(config_path: str, moment: str) -> None:
    torch.set_num_threads(1)
    KILL_AT[moment]()
    hubtune.train(cfg.load(config_path), callbacks=[KillAt(moment)])


def start(config_path, moment: str, fork: bool = True):
    """A process training `config_path` until MOMENT; returns the multiprocessing.Process. Forked (no second
    import of torch) only while this process has not run torch's thread pool: a fork after training in-process
    can hang in the child's first parallel op (OpenMP's pool is not fork-safe), so later starts take a fresh
    interpreter (fork=False), which inherits the environment (the Hub endpoint and token)."""
    import multiprocessing

    context = multiprocessing.get_context("fork" if fork else "spawn")
    process = context.Process(target=_forked, args=(str(config_path), moment))
    process.start()
    return process


def _forked(config_path: str, moment: str) -> None:
    code = 1
    try:
        run(config_path, moment)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)  # never run the test process's exit handlers in the fork


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
