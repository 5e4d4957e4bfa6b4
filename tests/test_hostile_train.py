"""Hostile runs through the real CLI (`hubtune train`): a second run into a live run's folder, LoRA target
names the model does not have, config values that used to pass validation and crash later, broken model
folders, and running out of accelerator memory. Each is refused before the work it would spoil, with a
typed error that names the setting, file or fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from data_rows import invoice_file, tiny_run_config
from hub_server import readme
from transformers import TrainerCallback

import hubtune
from hubtune.cli import main
from hubtune.config import resolve_builtin
from hubtune.errors import OutOfMemoryError
from hubtune.runs import RunFolder, Status

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

HUBTUNE = str(Path(sys.executable).parent / "hubtune")
TINY = Path(resolve_builtin("hubtune:tiny-llama"))


@pytest.fixture
def config(tmp_path) -> Path:
    """A one-step run on 24 invoices; overrides on the command line change it per test."""
    return tiny_run_config(tmp_path / "run.yaml", invoice_file(tmp_path / "inv.jsonl", 24), output=tmp_path / "run")


def train(capsys, config: Path, *overrides: str) -> tuple[int, str]:
    code = main(["train", str(config), *overrides])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err[err.index("error: "):] if "error: " in err else err


# ---- two writers, one run folder ------------------------------------------------------------------
def test_a_second_train_into_a_live_run_folder_is_refused(config, tmp_path, capsys):
    folder = tmp_path / "shared"
    first = subprocess.Popen([HUBTUNE, "train", str(config), f"output.dir={folder}", "training.max_steps=100000"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not (folder / ".lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (folder / ".lock").exists(), "the first run never took its folder"
        config_before = (folder / "config.yaml").read_text()

        code, err = train(capsys, config, f"output.dir={folder}", "training.learning_rate=0.5")
        assert code == 4
        assert f"{folder} is in use by `hubtune train` (pid {first.pid}" in err and "wait for it to finish" in err
        # Refused before writing anything: the live run keeps its own config and state.
        assert (folder / "config.yaml").read_text() == config_before
        assert RunFolder(folder).status == Status.RUNNING
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(120)
        except subprocess.TimeoutExpired:
            first.kill()
    assert first.returncode in (130, -signal.SIGTERM), first.stderr.read()[-2000:]


# ---- LoRA target names ------------------------------------------------------------------------------
@pytest.mark.parametrize("targets, says", [
    ("[q_proj,nonexist_proj]", "nonexist_proj matches no module of this model"),
    ("[nonexist_proj,qproj]", "nonexist_proj, qproj match no module of this model"),
    ("[layers]", "layers (ModuleList) is not a layer LoRA can adapt"),
])
def test_lora_target_names_are_checked_against_the_model(config, tmp_path, capsys, targets, says):
    code, err = train(capsys, config, f"lora.target_modules={targets}")
    assert code == 2 and f"lora.target_modules: {says}" in err
    assert "adaptable layers are named: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, " \
           "up_proj, v_proj" in err
    assert not (tmp_path / "run" / "adapter").exists()


# ---- values that passed validation and crashed later ------------------------------------------------
@pytest.mark.parametrize("override, says", [
    ("training.seed=-1", "training.seed: a seed is a whole number from 0 to 4,294,967,295 (numpy's seed range)"),
    ("training.seed=4294967296", "training.seed: a seed is a whole number from 0 to 4,294,967,295"),
    ("training.seed=1.0e+23", "training.seed: "),
    ("training.learning_rate=[1", "training.learning_rate: the value '[1' is not valid YAML"),
    ("training.max_steps=100000000000000000000", "training.max_steps: at most 10,000,000: ten million steps"),
    ("training.micro_batch_size=100000", "training.micro_batch_size: at most 4,096"),
    ("model.revision=", "model.revision: is empty: leave it out (null) for the default branch"),
])
def test_config_values_are_refused_with_their_path(config, capsys, override, says):
    code, err = train(capsys, config, override)
    assert code == 2 and says in err and err.startswith("error: invalid run config")


# ---- broken model folders ------------------------------------------------------------------------------
def model_copy(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for f in TINY.iterdir():
        if f.is_file() and f.name not in drop:
            (out / f.name).write_bytes(f.read_bytes())
    return out


def needs_remote_code(folder: Path) -> None:
    c = json.loads((folder / "config.json").read_text())
    c.update(model_type="acme_mystery", auto_map={"AutoConfig": "modeling_acme.AcmeConfig",
                                                    "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})
    (folder / "config.json").write_text(json.dumps(c))
    (folder / "modeling_acme.py").write_text("raise SystemExit('this code must not run')\n")


@pytest.mark.parametrize("problem, says", [
    ("no-config", "no config.json in {model}"),
    ("corrupt-weights", "{model}/model.safetensors is damaged"),
    ("no-tokenizer", "no tokenizer in {model} (none of tokenizer.json"),
    ("remote-code", "needs modelling code of its own (modeling_acme.py, named by auto_map in config.json), "
                    "and model.trust_remote_code is off"),
])
def test_broken_model_folders_are_named(config, tmp_path, capsys, problem, says):
    drop = {"no-config": ("config.json",), "no-tokenizer": ("tokenizer.json", "tokenizer_config.json")}.get(problem, ())
    model = model_copy(tmp_path, drop)
    if problem == "corrupt-weights":
        weights = model / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut short
    if problem == "remote-code":
        needs_remote_code(model)
    code, err = train(capsys, config, f"model.id={model}")
    assert code == 2 and says.format(model=model) in err, err
    if problem == "remote-code":
        assert "runs that Python code on this machine" in err and "model.trust_remote_code: true" in err


def test_a_hub_model_that_needs_remote_code(config, hub, tmp_path, capsys):
    """Its *.py files are not even downloaded while model.trust_remote_code is off."""
    folder = model_copy(tmp_path)
    needs_remote_code(folder)
    hub.seed("acme/mystery-base", {**{p.name: p.read_bytes() for p in folder.iterdir() if p.name != "README.md"},
                                   "README.md": readme(license="apache-2.0")})
    code, err = train(capsys, config, "model.id=acme/mystery-base")
    assert code == 2 and "acme/mystery-base needs modelling code of its own (modeling_acme.py" in err


# ---- out of memory -----------------------------------------------------------------------------------
class OutOfMemoryAtFirstStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 23.6 GiB total)")


def test_out_of_memory_in_training_names_the_settings_to_change(tmp_path, config):
    """A 16-bit LoRA run (quantization none) that runs out of memory at its first step."""
    from hubtune import config as cfg

    run_config = cfg.load(config, ["model.quantization=none", "data.max_seq_len=512"])
    with pytest.raises(OutOfMemoryError) as err:
        hubtune.train(run_config, callbacks=[OutOfMemoryAtFirstStep()])
    message = str(err.value)
    assert message.startswith("out of accelerator memory (CUDA out of memory. Tried to allocate 20.00 GiB")
    for fix in ("lower training.micro_batch_size (now 2)", "keep the effective batch of 2",
                "lower data.max_seq_len (now 512)", "turn on training.gradient_checkpointing (now off",
                "model.quantization: nf4 (now none)"):
        assert fix in message
    run = RunFolder(tmp_path / "run")
    assert run.status == Status.FAILED and run.error == message
