"""Never losing a run: SIGKILL at several moments, a full disk, and checkpoints mirrored on the Hub then
resumed on another machine. Every killed run is resumed to the same final step, with metrics.jsonl
free of gaps and repeats, and the same losses as a run that was never stopped."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback
from data_rows import invoice_file, invoice_lines, tiny_tree

import hubtune
from hubtune import config as cfg
from hubtune.cli import main
from hubtune.errors import DiskFullError, PushError, TrainingInterrupted
from hubtune.runs import RunFolder, Status, checkpoint_problem

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6


def resume_config(tmp: Path, run: str, data: str | None = None, **training) -> cfg.RunConfig:
    """The tiny base, unquantized (what is tested here does not depend on 4 bits), 40 invoices, a
    checkpoint and a metrics line at every step, held-out loss every 3 steps."""
    settings = {"learning_rate": 3e-3, "max_steps": STEPS, "micro_batch_size": 4, "save_steps": 1,
                "save_total_limit": 2, "eval_steps": 3, **training}
    return cfg.build(tiny_tree(data or invoice_file(tmp / "rows.jsonl", 40), tmp / run, model={"quantization": "none"},
                               data={"val_set_size": 8, "max_seq_len": 256}, training=settings))


def metrics(run: Path) -> tuple[list[int], list[int], dict[int, float]]:
    rows = RunFolder(run).metrics()
    train = [r["step"] for r in rows if "loss" in r]
    evals = [r["step"] for r in rows if "eval_loss" in r]
    return train, evals, {r["step"]: r["loss"] for r in rows if "loss" in r}


def child(config_path: Path, moment: str, fork: bool = True):
    """A process (forked from this one: torch is already imported) that trains and dies at `moment`."""
    import killed_training

    return killed_training.start(config_path, moment, fork)


# moment -> the checkpoint the resume must start from, and the incomplete one it must move aside
MOMENTS = {
    "after-the-first-log": (None, None),  # a metrics line, no checkpoint yet: start over
    "writing-optimizer": ("checkpoint-2", "incomplete-3"),
    "writing-trainer-state": ("checkpoint-3", "incomplete-4"),
    "between-steps": ("checkpoint-3", None),
    "from-outside": (None, None),  # SIGKILL from another process, whenever it lands
}


@pytest.fixture(scope="module")
def killed(tmp_path_factory, one_torch_thread):
    """Each moment's run, killed there (all at once, to share the machine's time), and a run that was
    never stopped, for its losses."""
    tmp = tmp_path_factory.mktemp("killed")
    procs = {}
    rows = str(invoice_file(tmp / "rows.jsonl", 40))  # written once: the children read it while others start
    for moment in MOMENTS:
        config = resume_config(tmp, moment, data=rows)
        (tmp / f"{moment}.yaml").write_text(config.to_yaml())
        procs[moment] = child(tmp / f"{moment}.yaml", "slow" if moment == "from-outside" else moment)
    outside = tmp / "from-outside" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and procs["from-outside"].is_alive():
        if outside.exists() and sum('"loss"' in x for x in outside.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(procs["from-outside"].pid, signal.SIGKILL)
    for p in procs.values():
        p.join(timeout=300)
    reference = hubtune.train(resume_config(tmp, "reference", data=rows))
    return tmp, {m: p.exitcode for m, p in procs.items()}, metrics(reference.path)[2]


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_killed_run_resumes_to_the_same_final_step(killed, moment, capsys):
    tmp, codes, reference = killed
    run = RunFolder(tmp / moment)
    assert codes[moment] == -signal.SIGKILL, f"{moment}: exit code {codes[moment]} (it was not killed)"
    assert run.summary is None and run.status == Status.INTERRUPTED  # the dead process's lock is no owner
    start, aside = MOMENTS[moment]
    if aside:
        assert checkpoint_problem(run.checkpoints / aside.replace("incomplete", "checkpoint")) is not None

    assert main(["train", "--resume", str(run.path)]) == 0
    shown = capsys.readouterr()
    err = shown.err
    if start:
        assert f"resuming from {start}" in shown.out
    if aside:
        number = aside.split("-")[1]
        assert f"warning: checkpoint-{number} is incomplete (" in err and str(run.checkpoints / aside) in err
        assert (run.checkpoints / aside).is_dir()
    assert "Traceback" not in err
    assert all(checkpoint_problem(c) is None for c in run.checkpoints.glob("checkpoint-*"))

    assert run.summary.global_steps == STEPS and run.status == Status.FINISHED
    train_steps, eval_steps, losses = metrics(run.path)
    assert train_steps == list(range(1, STEPS + 1))  # no gap, no repeat
    assert eval_steps == [0, 3, 6]
    # The resumed run is the same run: same data order, same random state, same losses.
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-4), (step, loss, reference[step])


# ---- a full disk ------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs: a real disk that fills up (mounting needs root, as in CI's container)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class FillDiskAfter(TrainerCallback):
    """Once checkpoint-N is saved, fill the disk to all but a little: the next checkpoint will not fit."""

    def __init__(self, step: int, ballast: Path, leave: int = 200_000):
        self.step, self.ballast, self.leave = step, ballast, leave

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            free = shutil.disk_usage(self.ballast.parent).free - self.leave
            with self.ballast.open("wb") as f:
                for _ in range(free // 2**20):
                    f.write(b"\0" * 2**20)
                f.write(b"\0" * (free % 2**20))


def test_a_full_disk_is_a_typed_error_and_the_run_resumes_once_space_is_freed(small_disk, one_torch_thread,
                                                                               capsys):
    config = resume_config(small_disk, "run", save_steps=2)
    ballast = small_disk / "ballast"
    with pytest.raises(DiskFullError) as info:
        hubtune.train(config, callbacks=[FillDiskAfter(2, ballast)])
    err = info.value
    run = RunFolder(small_disk / "run")
    assert err.folder == str(run.path) and str(run.path) in str(err)
    checkpoint = run.checkpoints / "checkpoint-2"
    assert err.needed_bytes == pytest.approx(sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file()))
    assert "a checkpoint needs about" in str(err) and "MB" in str(err) and "continues from checkpoint-2" in str(err)
    assert f"hubtune train --resume {run.path}" in str(err)
    assert sorted(p.name for p in run.checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]  # the cut one is gone
    assert run.status == Status.INTERRUPTED and run.summary is None

    ballast.unlink()
    assert main(["train", "--resume", str(run.path)]) == 0
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    assert run.summary.global_steps == STEPS
    train_steps, eval_steps, _ = metrics(run.path)
    assert train_steps == list(range(1, STEPS + 1)) and eval_steps == [0, 3, 6]


# ---- checkpoints on the Hub ---------------------------------------------------------------------------------
def test_a_token_that_cannot_write_the_mirror_stops_the_run_before_training(hub, hub_token, tmp_path):
    config = resume_config(tmp_path, "run", push_checkpoints="bob/not-alices")
    with pytest.raises(PushError, match="403"):
        hubtune.train(config)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoints_mirrored_on_the_hub_resume_on_another_machine(hub, hub_token, tmp_path, capsys, monkeypatch,
                                                                   one_torch_thread):
    from hub_server import readme

    repo = "alice/mirrored-run"
    seen = len(hub.uploaded_bodies)  # the session's Hub also received other tests' requests (a job's secrets)
    # The data is on the Hub too: the second machine has nothing of the first.
    hub.seed("alice/mirrored-rows", {"train.jsonl": "\n".join(invoice_lines(40)) + "\n", "README.md": readme(license="mit")},
             repo_type="dataset")
    config = resume_config(tmp_path / "first-machine", "run", data="alice/mirrored-rows", push_checkpoints=repo,
                           save_steps=2)
    (tmp_path / "run.yaml").write_text(config.to_yaml())
    # A fresh interpreter: the tests before this one trained in this process (see killed_training.start). It
    # finds the loopback Hub and the token in the environment, as a second process on a user's machine would.
    first = child(tmp_path / "run.yaml", "slow", fork=False)
    deadline = time.time() + 300
    mirrored = []
    while time.time() < deadline and first.is_alive() and not mirrored:
        with hub.lock:
            if ("model", repo) in hub.repos:
                mirrored = [p for p in hub.files(repo) if p.endswith("/trainer_state.json")]
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)  # the machine is gone, and its disk with it
    first.join(timeout=60)
    assert mirrored
    assert hub.repos[("model", repo)].private
    with hub.lock:
        (step,) = {int(p.split("/")[1].split("-")[1]) for p in hub.files(repo) if p.startswith("checkpoints/")}
    assert step < STEPS
    assert {"config.yaml", "metrics.jsonl", f"checkpoints/checkpoint-{step}/adapter_model.safetensors",
            f"checkpoints/checkpoint-{step}/optimizer.pt"} <= set(hub.files(repo))
    shutil.rmtree(tmp_path / "first-machine")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "second-machine" / "hf-cache"))

    elsewhere = tmp_path / "second-machine" / "run"
    assert main(["train", "--resume", repo, "--out", str(elsewhere)]) == 0
    assert f"resuming from checkpoint-{step}" in capsys.readouterr().out
    run = RunFolder(elsewhere)
    assert run.summary.global_steps == STEPS
    train_steps, eval_steps, _ = metrics(run.path)
    assert train_steps == list(range(1, STEPS + 1)) and eval_steps == [0, 3, 6]

    files = hub.files(repo)
    assert {"summary.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
            "data/train.jsonl"} <= set(files)
    assert {p.split("/")[1] for p in files if p.startswith("checkpoints/")} == {f"checkpoint-{STEPS}"}
    assert json.loads(files["summary.json"])["global_steps"] == STEPS
    assert not any(hub_token.encode() in content for content in files.values())
    assert not any(hub_token.encode() in body for body in hub.uploaded_bodies[seen:])


# ---- torchao's low-bit AdamW ------------------------------------------------------------------------------
class CtrlCBefore(TrainerCallback):
    """Ctrl-C as the given step begins: hubtune finishes that step, saves a checkpoint and stops."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("optimizer,state", [("adamw_torch_8bit", "OptimState8bit"),
                                             ("adamw_torch_4bit", "OptimState4bit")])
def test_torchaos_low_bit_adamw_checkpoints_and_resumes_as_a_run_never_stopped(tmp_path, one_torch_thread, capsys,
                                                                               optimizer, state):
    """The Trainer's adamw_torch_8bit / adamw_torch_4bit: its checkpoint keeps the states quantized (torchao's
    tensors, which torch.load reads with weights_only, as the Trainer loads them), and a run stopped after
    step 2 resumes from it to the losses of a run that was never stopped."""
    pytest.importorskip("torchao")
    from transformers.trainer import OPTIMIZER_NAME

    rows = invoice_file(tmp_path / "rows.jsonl", 24)
    # r 32: q_proj's A and B hold 4096 values each, the least torchao quantizes (v_proj's B stays float32).
    build = lambda run: cfg.build(tiny_tree(rows, tmp_path / run, model={"quantization": "none"},  # noqa: E731
                                            lora={"r": 32, "dropout": 0.0},
                                            training={"max_steps": 4, "save_steps": 1, "micro_batch_size": 4,
                                                      "learning_rate": 3e-3, "optimizer": optimizer}))
    reference = metrics(hubtune.train(build("reference")).path)[2]
    with pytest.raises(TrainingInterrupted, match="stopped at step 2"):
        hubtune.train(build("run"), callbacks=[CtrlCBefore(2)])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "checkpoint-2" / OPTIMIZER_NAME, weights_only=True)
    kinds = {type(value).__name__ for moments in saved["state"].values() for value in moments.values()}
    assert state in kinds and "Tensor" in kinds, kinds  # quantized where a tensor holds 4096 values or more
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "resuming from checkpoint-2" in capsys.readouterr().out
    steps, _, losses = metrics(tmp_path / "run")
    assert steps == [1, 2, 3, 4]
    assert losses == pytest.approx(reference, rel=1e-5)
    assert losses[4] < losses[1]
