"""Several processes: the accelerate presets, the launcher, and real 2-process training on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hubtune import config as cfg
from hubtune import distributed
from hubtune.errors import ConfigError, HubtuneError
import readme_blocks

pytestmark = pytest.mark.slow  # trains or runs whole commands: make test-fast leaves it out

ROOT = Path(__file__).resolve().parent.parent
HUBTUNE = str(Path(sys.executable).parent / "hubtune")
ACCELERATE = str(Path(sys.executable).parent / "accelerate")


# ---- presets --------------------------------------------------------------------------------------------
def _launch_env(mode: str) -> tuple[object, dict]:
    """What `accelerate launch --config_file PRESET` makes of a preset: its own loader and argument
    validation, then the environment it gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(distributed.preset_path(mode)),
                                               "--num_processes", "2", "-m", "hubtune", "train", "run.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return defaults, prepare_deepspeed_cmd_env(args)[1]
    return defaults, prepare_multi_gpu_env(args)


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"])
def test_every_preset_loads_with_accelerates_own_config_loader(mode):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    loaded = load_config_from_file(str(distributed.preset_path(mode)))
    assert isinstance(loaded, ClusterConfig)
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED"}
    assert loaded.distributed_type.value == expected[mode]
    assert loaded.mixed_precision == "no" and loaded.use_cpu is False  # precision comes from the hardware
    _, env = _launch_env(mode)
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"


def test_fsdp_preset_is_the_peft_qlora_recipe():
    _, env = _launch_env("fsdp")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"


def test_deepspeed_presets_shard_as_named():
    _, zero2 = _launch_env("deepspeed-zero2")
    _, zero3 = _launch_env("deepspeed-zero3")
    assert zero2["ACCELERATE_USE_DEEPSPEED"] == "true" and zero2["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3" and zero3["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_sharded_qlora_base_stores_4bit_weights_in_the_compute_dtype():
    import torch

    from hubtune.hardware import detect
    from hubtune.refs import resolve_builtin
    from hubtune.train import load_base

    model = cfg.ModelSection(id="hubtune:tiny-llama")
    hw = detect(model)
    plain = load_base(resolve_builtin(model.id), model, hw)
    sharded = load_base(resolve_builtin(model.id), model, hw, sharded=True)
    assert plain.config.quantization_config.bnb_4bit_quant_storage == torch.uint8
    assert sharded.config.quantization_config.bnb_4bit_quant_storage == hw.compute_dtype
    quantized = [p for n, p in sharded.named_parameters() if "q_proj" in n]
    assert quantized and all(p.dtype == hw.compute_dtype for p in quantized)
    # FSDP flattens one dtype per group: nothing was upcast by prepare_model_for_kbit_training.
    assert {p.dtype for p in sharded.parameters()} == {hw.compute_dtype}
    assert sharded.is_loaded_in_4bit and torch.uint8 in {p.dtype for p in plain.parameters()}


# ---- config and launch plan -----------------------------------------------------------------------------
def test_distributed_and_push_checkpoints_are_typed_settings():
    config = cfg.build({"training": {"distributed": "fsdp", "push_checkpoints": "alice/run-1"}})
    assert config.training.distributed == "fsdp" and config.training.push_checkpoints == "alice/run-1"
    with pytest.raises(ConfigError) as info:
        cfg.build({"training": {"distributed": "zero3", "push_checkpoints": "not a repo"}})
    assert set(info.value.paths) == {"training.distributed", "training.push_checkpoints"}
    assert "deepspeed-zero3" in str(info.value) and "OWNER/REPO" in str(info.value)


def test_launch_plan_and_command():
    assert distributed.plan_launch("none", None) is None  # one process, in this one
    assert distributed.plan_launch("none", 1) is None
    plan = distributed.plan_launch("none", 4)
    assert plan.mode == "ddp" and plan.num_processes == 4  # several processes without a strategy: DDP
    cmd = distributed.launch_command(plan, ["train", "run.yaml", "output.dir=runs/x"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1] == str(distributed.preset_path("ddp"))
    assert cmd[cmd.index("--num_processes") + 1] == "4" and cmd[cmd.index("--main_process_port") + 1] == "0"
    assert cmd[-5:] == ["-m", "hubtune", "train", "run.yaml", "output.dir=runs/x"]
    nodes = distributed.plan_launch("fsdp", 16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1")
    cmd = distributed.launch_command(nodes, ["train", "run.yaml"])
    assert cmd[cmd.index("--machine_rank") + 1] == "1" and cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"
    assert cmd[cmd.index("--main_process_port") + 1] == "29500"
    with pytest.raises(HubtuneError, match="--main-process-ip"):
        distributed.plan_launch("ddp", 16, num_machines=2)
    with pytest.raises(HubtuneError, match="multiple of --num-machines"):
        distributed.plan_launch("ddp", 3, num_machines=2, main_process_ip="10.0.0.1")


def test_a_worker_refuses_a_launch_that_does_not_match_the_config(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="needs CUDA"):
        distributed.check_launch("fsdp", "cpu")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="launched with fsdp"):
        distributed.check_launch("ddp", "cuda")
    distributed.check_launch("fsdp", "cuda")
    # bitsandbytes' optimizers: FSDP1 trains and resumes them, each process checkpointing its own states
    # (test_bitsandbytes_optimizer_under_fsdp_...).
    assert distributed.optimizer_for("fsdp", "paged_adamw_8bit", "auto") == "paged_adamw_8bit"
    assert distributed.optimizer_for("fsdp", "paged_adamw_32bit", "paged_adamw_32bit") == "paged_adamw_32bit"
    assert distributed.optimizer_for("ddp", "paged_adamw_8bit", "auto") == "paged_adamw_8bit"
    # torchao's 8- and 4-bit AdamW shard with FSDP2's parameters (tests/test_experts.py runs both), not on FSDP1.
    for torchao in ("adamw_torch_8bit", "adamw_torch_4bit"):
        with pytest.raises(ConfigError, match=f"torchao's {torchao[-4]}-bit states .* this launch is FSDP1"):
            distributed.optimizer_for("fsdp", torchao, torchao)
    monkeypatch.setenv("FSDP_VERSION", "2")
    for torchao in ("adamw_torch_8bit", "adamw_torch_4bit"):
        assert distributed.optimizer_for("fsdp", torchao, torchao) == torchao
    # bitsandbytes' optimizers step FSDP2's local shards (test_bitsandbytes_optimizer_under_fsdp_...).
    assert distributed.optimizer_for("fsdp", "adamw_8bit", "adamw_8bit") == "adamw_8bit"
    assert distributed.optimizer_for("fsdp", "paged_adamw_8bit", "auto") == "paged_adamw_8bit"


def test_effective_batch_sets_the_step_count():
    plan = distributed.BatchPlan(micro_batch_size=4, gradient_accumulation_steps=2, processes=2, rows=50,
                                 epochs=2, max_steps=None)
    assert plan.effective_batch_size == 16
    assert plan.steps_per_epoch == 4 and plan.total_steps == 8  # 13 micro-batches -> 7 per process -> 4 steps
    assert "effective batch 16 (4 per device x 2 accumulation x 2 processes)" in plan.describe()


# ---- the README's commands, run here with 2 CPU processes ---------------------------------------------------
def _commands() -> list[str]:
    blocks = [body for lang, body in readme_blocks.section_blocks("Several GPUs and machines") if lang == "bash"]
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _on_this_machine(line: str, port: int) -> list[str]:
    """A README command for a GPU box, as this 2-core CPU machine runs it: 2 processes in all, machine 0
    on 127.0.0.1, a free port, a few small steps."""
    args = shlex.split(line.replace("$(python -m hubtune.distributed", f"$({sys.executable} -m hubtune.distributed"))
    args = [subprocess.run(a[2:-1], shell=True, capture_output=True, text=True).stdout.strip()
            if a.startswith("$(") else a for a in args]
    swaps = {"8": "2", "16": "2", "10.0.0.1": "127.0.0.1", "29500": str(port)}
    args = [swaps.get(a, a) for a in args]
    args[0] = {"hubtune": HUBTUNE, "accelerate": ACCELERATE}[args[0]]
    return [*args, "training.max_steps=3", "training.logging_steps=1", "training.save_steps=3", "training.warmup_steps=0",
            "data.max_seq_len=256", "training.micro_batch_size=4", "data.val_set_size=8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("multi")
    shutil.copytree(ROOT / "examples", work / "examples")
    return work


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def ddp_run(workdir):
    line = next(c for c in _commands() if c.startswith("hubtune train") and "--num-processes 8" in c)
    proc = subprocess.run(_on_this_machine(line, _free_port()), cwd=workdir, env=_env(), capture_output=True,
                          text=True, timeout=900)
    return proc, workdir / "runs" / "ddp"


def test_two_processes_train_one_run(ddp_run):
    proc, run_dir = ddp_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    # The data was sharded: 2 processes x 4 per device = effective batch 8, and the summary says so.
    assert summary["processes"] == 2 and summary["effective_batch_size"] == 8
    assert "effective batch 8 (4 per device x 1 accumulation x 2 processes)" in out
    assert summary["global_steps"] == 3
    # Each process trained: the checkpoint holds both random states; only the main process wrote the rest.
    assert {p.name for p in (run_dir / "checkpoints" / "checkpoint-3").glob("rng_state_*.pth")} == {
        "rng_state_0.pth", "rng_state_1.pth"}
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [1, 2, 3]  # one line per step: written once, not once per process
    assert rows[0]["step"] == 0 and "eval_loss" in rows[0]
    assert out.count(f"run: {Path('runs') / 'ddp'}") == 1
    # The console is the main process's alone: each progress line once, not once per process.
    lines = out.splitlines()
    for shown in ("licence   allow: ", "advice: ", "data      kept ", "loading   ", "training  1189 training rows",
                  "training  held-out loss before training", "training  step 1/3 ", "saving    adapter", "done      "):
        assert sum(line.startswith(shown) for line in lines) == 1, (shown, out[-3000:])
    assert "error" not in proc.stderr
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    assert not (run_dir / ".lock").exists()


def test_the_loss_falls_and_the_adapter_loads(ddp_run):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hubtune.refs import resolve_builtin

    proc, run_dir = ddp_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final_eval_loss"] < summary["initial_eval_loss"]
    losses = [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < losses[0]
    base = AutoModelForCausalLM.from_pretrained(resolve_builtin("hubtune:tiny-llama"), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    ids = tok("INVOICE #7\nBolt x2 @ $1.00", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
        after = PeftModel.from_pretrained(base, str(run_dir / "adapter"))(ids).logits
    assert (after - before).abs().max() > 1e-4


def test_accelerate_launch_runs_hubtune_directly(workdir):
    line = next(c for c in _commands() if c.startswith("accelerate launch"))
    proc = subprocess.run(_on_this_machine(line, _free_port()), cwd=workdir, env=_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((workdir / "runs" / "accelerate" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_steps"] == 3
    lines = (proc.stdout + proc.stderr).splitlines()
    assert sum(line.startswith("training  step 3/3 ") for line in lines) == 2  # the step's line, then its evaluation
    assert sum(line.startswith("training  held-out loss before training") for line in lines) == 1


def test_two_machines_train_one_run(workdir):
    lines = [c for c in _commands() if "--num-machines 2" in c]
    assert [("--machine-rank 0" in c, "--machine-rank 1" in c) for c in lines] == [(True, False), (False, True)]
    port = _free_port()
    procs = [subprocess.Popen(_on_this_machine(line, port), cwd=workdir, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for line in lines]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    summary = json.loads((workdir / "runs" / "nodes" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["global_steps"] == 3
    # Progress shows once, on machine 0; machine 1's console says where.
    assert sum(line.startswith("training  step 1/3 ") for line in outs[0].splitlines()) == 1
    assert "training  " not in outs[1] and "run: " not in outs[1]
    assert "machine 1: rank 1 of 2 train here; the run's progress shows on machine 0" in outs[1]


def test_a_process_killed_in_training_is_reported_with_its_rank(workdir):
    """Rank 1 killed mid-run (as the out-of-memory killer does): the command says which process stopped and
    how, once, as its last words, and the page's runner reads the same from the job's log. The run is an
    Axolotl config with a key left out by --ignore-unsupported: the processes train the translation the
    command showed (once), not the Axolotl file again."""
    import signal

    from hubtune.ui.jobs import failure

    axolotl = workdir / "axolotl-invoices.yaml"
    axolotl.write_text(yaml.safe_dump({
        "base_model": "hubtune:tiny-llama", "adapter": "lora", "sequence_len": 256, "micro_batch_size": 4,
        "datasets": [{"path": "hubtune:data/invoices/train.jsonl", "type": "alpaca", "ds_type": "json"}],
        "val_set_size": 8,  # a count: Axolotl takes a share here, so hubtune cannot honour it
        "max_steps": 200, "logging_steps": 1, "warmup_steps": 0, "learning_rate": 0.002}))
    mark = f"{os.getpid()}-{_free_port()}"  # finds this run's rank 1 among the machine's processes
    env = {**_env(), "PYTHONUNBUFFERED": "1", "HUBTUNE_TEST_RUN": mark}
    proc = subprocess.Popen([HUBTUNE, "train", axolotl.name, "--ignore-unsupported", "--num-processes", "2",
                             "--main-process-port", str(_free_port()), "output.dir=runs/killed"], cwd=workdir,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen, killed = [], None
    for text in proc.stdout:
        seen.append(text)
        if killed is None and text.startswith("training  step 1/"):
            killed = _process_with({"RANK": "1", "HUBTUNE_TEST_RUN": mark})
            os.kill(killed, signal.SIGKILL)
    assert proc.wait(timeout=300) == 1 and killed, "".join(seen)[-3000:]
    out = "".join(seen)
    assert out.count("error: ") == 1, out[-3000:]
    report = out[out.index("error: "):].splitlines()
    assert report[0] == "error: the 2-process run stopped:"
    assert report[1].startswith("  rank 1 of 2: stopped without an error of its own, killed by a signal")
    # What the other one met, with its rank: its connection to rank 1 closed.
    assert report[2].startswith("  rank 0 of 2: another process of this run stopped first, so this one could not "
                                "go on (gloo: Connection"), out[-3000:]
    assert sum(t.startswith("training  step 1/") for t in seen) == 1
    assert sum(t.startswith(f"Axolotl config {axolotl.name}, translated") for t in seen) == 1
    assert sum(t.startswith("ignored (--ignore-unsupported): val_set_size: 8") for t in seen) == 1
    (documented,) = [body.splitlines() for lang, body in readme_blocks.section_blocks("Several GPUs and machines")
                     if lang == "text" and body.startswith("error:")]
    assert documented[:2] == report[:2] and documented[2].split(" (gloo")[0] == report[2].split(" (gloo")[0]
    log = workdir / "killed.log"
    log.write_text(f"$ hubtune train --resume runs/killed\n{out}")
    assert failure(log).startswith("the 2-process run stopped:\n  rank 1 of 2: stopped without an error")


def _process_with(variables: dict) -> int:
    for entry in Path("/proc").iterdir():
        try:
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError):
            continue
        if all(env.get(k) == v for k, v in variables.items()):
            return int(entry.name)
    raise AssertionError(f"no process with {variables}")


def test_fsdp_on_a_machine_without_gpus_is_a_clear_error(workdir, capsys, monkeypatch):
    from hubtune.cli import main

    monkeypatch.chdir(workdir)
    line = next(c for c in _commands() if "training.distributed=fsdp" in c and "--num-machines" not in c)
    code = main(shlex.split(line)[1:])
    err = capsys.readouterr().err
    assert code == 2 and "training.distributed: fsdp shards the model across GPUs and needs CUDA" in err
    assert "Traceback" not in err


def test_the_readme_shows_the_step_count_of_its_first_command_on_8_gpus():
    from hubtune.config import load

    (shown,) = [body.strip() for lang, body in readme_blocks.section_blocks("Several GPUs and machines")
                if lang == "text" and body.startswith("training")]
    config = load(ROOT / "examples" / "invoices.yaml")
    rows = int(shown.split()[1])  # as the data steps keep them (the console README shows the same count)
    plan = distributed.BatchPlan(config.training.micro_batch_size, config.training.gradient_accumulation_steps, 8,
                                 rows, config.training.epochs, config.training.max_steps)
    assert shown == f"training  {plan.describe()}"


def test_every_preset_is_documented():
    section = "".join(body for _, body in readme_blocks.section_blocks("Several GPUs and machines"))
    text = readme_blocks.section("Several GPUs and machines").text
    for mode in distributed.MODES[1:]:
        assert mode in text
    assert "--main-process-ip" in section and "--machine-rank 1" in section
    for preset in distributed.PRESETS.glob("*.yaml"):
        assert yaml.safe_load(preset.read_text())["mixed_precision"] == "no"


@pytest.mark.parametrize("fsdp2", [False, True], ids=["fsdp1", "fsdp2"])
def test_bitsandbytes_optimizer_under_fsdp_resumes_per_process(tmp_path, fsdp2, hub, hub_token):
    """bitsandbytes' optimizers under FSDP, measured on a 2-process CPU mesh (tests/fsdp_bnb_optimizer.py).
    FSDP1 (hubtune's fsdp.yaml) steps as one process does; accelerate's save_fsdp_optimizer /
    load_fsdp_optimizer (the Trainer's FSDP path) cannot load its checkpoint back, so hubtune keeps each
    process's state in a file of its own (hubtune.optimizer_shards). A checkpoint written and read by the
    Trainer's own methods (the adapter through accelerate's save_fsdp_model / load_fsdp_model, with
    compat.peft_keys_under_nested_fsdp) resumes to the same steps and adapter as the uninterrupted run. FSDP2's
    DTensor parameters go to bitsandbytes as each process's local shards (optimizer_shards.on_local_shards),
    after the gradient is clipped by its whole norm; the same per-process checkpoint resumes them."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    import torch
    from fsdp_bnb_optimizer import CLIP, SAVED, STEPS, UNFROZEN, batches, optimizer, prepared, schedule

    from hubtune import optimizer_shards
    from hubtune.runs import RunFolder, checkpoint_problem
    from hubtune.train import check_resumable

    plan = distributed.plan_launch("fsdp", 2, whole_base=fsdp2)  # the FSDP2 preset that loads everywhere
    cmd = distributed.launch_command(plan, ["train", "run.yaml"])
    env = prepare_multi_gpu_env(_validate_launch_command(launch_command_parser().parse_args(
        cmd[cmd.index("--config_file"):]))[0])
    # Every process loads the same base here: rank-0 loading with a broadcast needs a GPU in accelerate.
    env.update(FSDP_SYNC_MODULE_STATES="false", FSDP_CPU_RAM_EFFICIENT_LOADING="false")
    out = tmp_path / "result.json"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                    "127.0.0.1", "--master_port", str(port), str(Path(__file__).parent / "fsdp_bnb_optimizer.py"),
                    "adamw_8bit", str(out)], check=True, timeout=300, env={**os.environ, **env})
    result = json.loads(out.read_text())
    assert result["fsdp_version"] == (2 if fsdp2 else 1)
    assert "step_error" not in result and distributed.fsdp_optimizer_problem("adamw_8bit", fsdp2) is None
    assert "state1:torch.uint8" in result["states"]
    # The steps match one process over both half-batches, on the same schedule (FSDP2: the same clip).
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    model = prepared()
    adam = optimizer(model, "adamw_8bit")
    sched = schedule(adam)
    halves = [batches()[rank::2] for rank in range(2)]
    losses, norms, at_checkpoint = [], [], None
    for _ in range(STEPS):
        if len(losses) == SAVED:
            at_checkpoint = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        total = 0.0
        for h in halves:
            loss = model(input_ids=h, labels=h).loss / 2
            loss.backward()
            total += loss.item()
        losses.append(total)
        if fsdp2:
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        adam.step()
        sched.step()
        adam.zero_grad()
    if fsdp2:
        # Each process's optimizer holds its local shards (half of each LoRA factor's rows, of the projection's),
        # updated in place in the model's DTensor parameters; 8-bit states are quantized in 256-value blocks of
        # the local shard, where one process's blocks run over the whole parameter.
        assert result["local_shards"] is True
        assert result["shard_shapes"][0][:2] == [[8, 192], [96, 16]] and [96, 512] in result["shard_shapes"][0]
        # The clip saw the whole gradient's norm (the one process's), and acted (above CLIP).
        assert result["norms"][:STEPS] == pytest.approx(norms, rel=1e-4) and min(norms) > CLIP
        assert result["losses"] == pytest.approx(losses, abs=1e-5)  # measured: 2.4e-6 apart
        # Resumed from the per-process checkpoint: the same steps, the same adapter, as the run that went on.
        assert result["resumed_losses"] == pytest.approx(result["losses"][SAVED:], abs=1e-6)
        assert result["norms"][STEPS:] == pytest.approx(result["norms"][SAVED:STEPS], abs=1e-6)
        assert result["adapter_gap"] <= 1e-6 and result["rng_restored"]
        assert result["resumed_lr"] == [pytest.approx(1e-2 * 0.75)]
        checkpoint = Path(f"{out}.checkpoints") / f"checkpoint-{SAVED}"
        assert sorted(p.name for p in checkpoint.glob("optimizer-*")) == ["optimizer-rank0-of-2.pt",
                                                                         "optimizer-rank1-of-2.pt"]
        saved = torch.load(checkpoint / "optimizer-rank0-of-2.pt", weights_only=True)["layout"]
        assert saved["fsdp_version"] == 2 and saved["shard_shapes"] == result["shard_shapes"]
        # Another count of processes is refused, naming the checkpoint and its count.
        assert "was saved by 2 processes" in optimizer_shards.problem(checkpoint, 1)
        return
    assert result["use_orig_params"] is False
    assert result["losses"] == pytest.approx(losses, abs=1e-5)
    # accelerate's FSDP checkpoint of the optimizer saves, and cannot be loaded back.
    assert "save_error" not in result and result["load_error"] == "TypeError: unhashable type: 'dict'"
    # Resumed from hubtune's checkpoint (another adapter initialisation, a fresh optimizer): the same steps,
    # the same adapter, as the run that went on.
    assert result["resumed_losses"] == pytest.approx(result["losses"][SAVED:], abs=1e-6)
    assert result["adapter_gap"] <= 1e-6 and result["rng_restored"]
    assert result["resumed_lr"] == [pytest.approx(1e-2 * 0.75)]  # cosine after 1 warm-up step: 1 of 3 steps in
    # The adapter written at the end (gathered whole, as the Trainer's save_model does under FSDP) is the one one
    # process trains.
    saved = load_file(Path(f"{out}.adapter") / "adapter_model.safetensors")
    expected = get_peft_model_state_dict(model)
    # 54 LoRA factors and the projection trained in full (PEFT's modules_to_save, lora.unfrozen_parameters), an
    # FSDP1 unit within a unit (compat.peft_keys_under_nested_fsdp).
    assert set(saved) == set(expected) and len(saved) == 55
    assert {k for k in saved if "lora_" not in k} == {f"base_model.model.{n}" for n in UNFROZEN}
    assert max((saved[k] - expected[k].detach()).abs().max().item() for k in saved) <= 1e-5
    # The checkpoint chosen by training.select, read from the checkpoint by the main process alone into PEFT's
    # format (RUN/selected-adapter), is one process's adapter at that step; load_best_model_at_end
    # (early_stopping_patience) puts the checkpoint's weights back in the model.
    selected = load_file(Path(f"{out}.run") / RunFolder.SELECTED_ADAPTER / "adapter_model.safetensors")
    assert set(selected) == set(at_checkpoint)
    assert max((selected[k] - at_checkpoint[k]).abs().max().item() for k in selected) <= 1e-5
    assert max((selected[k] - expected[k].detach()).abs().max().item() for k in selected) > 1e-3  # not the last
    assert json.loads((Path(f"{out}.run") / RunFolder.SELECTED_ADAPTER / "adapter_config.json").read_text())[
        "modules_to_save"]
    assert result["best_gap"] == 0.0
    checkpoint = Path(f"{out}.checkpoints") / f"checkpoint-{SAVED}"
    assert sorted(p.name for p in checkpoint.glob("optimizer-*")) == ["optimizer-rank0-of-2.pt",
                                                                     "optimizer-rank1-of-2.pt"]
    # Each process's shards are FSDP1's flattened parameters (use_orig_params false, the preset's value). PEFT's
    # wrap policy gives every LoRA weight a unit of its own, so with the original parameters each process holds
    # shards of the same sizes; the checkpoint still records the layout it was saved under and refuses another.
    assert len(result["shard_sizes"][0]) == 55 and result["shard_sizes"] == result["other_layout_shard_sizes"]
    assert "use_orig_params False then, True now" in result["other_layout_error"]
    assert str(checkpoint / "optimizer-rank0-of-2.pt") in result["other_layout_error"]
    # Another count of processes is refused before any weight loads, naming the checkpoint and its count.
    run = RunFolder.create(tmp_path / "run", cfg.build({}))
    shutil.copytree(checkpoint, run.checkpoint(SAVED))
    (run.checkpoint(SAVED) / "trainer_state.json").write_text(json.dumps({"global_step": SAVED}))
    assert checkpoint_problem(run.checkpoint(SAVED)) is None
    # A checkpoint missing one process's file is incomplete (a process killed while saving): set aside.
    shutil.copytree(run.checkpoint(SAVED), run.checkpoint(SAVED + 1))
    (run.checkpoint(SAVED + 1) / "trainer_state.json").write_text(json.dumps({"global_step": SAVED + 1}))
    (run.checkpoint(SAVED + 1) / "optimizer-rank1-of-2.pt").unlink()
    assert checkpoint_problem(run.checkpoint(SAVED + 1)) == "it holds the optimizer states of 1 of its 2 processes"
    unindexed = tmp_path / "unindexed" / run.checkpoint(SAVED).name
    shutil.copytree(run.checkpoint(SAVED), unindexed)
    (unindexed / "pytorch_model_fsdp_0" / ".metadata").unlink()
    assert "pytorch_model_fsdp_0 has no .metadata" in checkpoint_problem(unindexed)
    # The Hub mirror (training.push_checkpoints) carries the FSDP checkpoint whole, and a resume on another
    # machine gets it back complete.
    from hubtune.callbacks import HubCheckpoints, download_run

    mirror = HubCheckpoints(run.path, "alice/fsdp-run", hub_token)
    mirror.create_repo()
    mirror.on_save(None, SimpleNamespace(is_world_process_zero=True, global_step=SAVED), None)
    mirror.wait()
    assert mirror.errors == [] and mirror.uploaded == [f"checkpoint-{SAVED}"]
    fetched = RunFolder(download_run("alice/fsdp-run", tmp_path / "fetched", hub_token))
    assert sorted(p.relative_to(fetched.checkpoint(SAVED)) for p in fetched.checkpoint(SAVED).rglob("*")) == sorted(
        p.relative_to(run.checkpoint(SAVED)) for p in run.checkpoint(SAVED).rglob("*"))
    assert checkpoint_problem(fetched.checkpoint(SAVED)) is None
    with pytest.raises(ConfigError) as err:
        check_resumable(run, run.config)
    assert f"{run.checkpoint(SAVED)} was saved by 2 processes" in str(err.value)
    assert "this launch has 1" in str(err.value) and "--num-processes 2" in str(err.value)
    assert optimizer_shards.problem(run.checkpoint(SAVED), 2) is None
    # A Trainer that does not keep its optimizer per process (one process here) refuses that checkpoint too,
    # rather than go on with a fresh optimizer (the Trainer's own check finds no optimizer.pt and loads nothing).
    from transformers import Trainer, TrainingArguments

    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "trainer"), use_cpu=True,
                                                          optim="adamw_8bit", report_to=[]))
    trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    optimizer_shards.keep_per_process(trainer)
    with pytest.raises(ConfigError, match="keeps its optimizer state per process"):
        trainer._load_optimizer_and_scheduler(str(run.checkpoint(SAVED)))


def test_what_fsdp_cannot_train_or_select_is_refused_before_any_download():
    """Embedding rows trained as a delta (lora.unfrozen_parameters with a row range: PEFT's trainable_token_indices)
    cannot be wrapped by FSDP1 with use_orig_params false (measured on the 2-process mesh: `Must flatten tensors
    with uniform requires_grad`), and training.select: task generates on the main process alone, which FSDP's
    gathers cannot; both are refused by the config. The whole embedding, and select: eval_loss, train under FSDP1
    (test_bitsandbytes_optimizer_under_fsdp1_...)."""
    rows = {"lora": {"unfrozen_parameters": ["model.embed_tokens.weight[:8]"]}}
    with pytest.raises(ConfigError, match="trainable_token_indices.*uniform requires_grad"):
        cfg.build({**rows, "training": {"distributed": "fsdp"}})
    cfg.build({**rows, "training": {"distributed": "ddp"}})
    cfg.build({"lora": {"unfrozen_parameters": ["model.embed_tokens.weight"]}, "training": {"distributed": "fsdp"}})
    with pytest.raises(ConfigError, match="select: task.*main process"):
        cfg.build({"training": {"distributed": "fsdp", "select": "task"}})
    cfg.build({"training": {"distributed": "fsdp", "select": "eval_loss"}})


def test_bitsandbytes_steps_fsdp2_shards_as_the_trainer_creates_it(tmp_path, monkeypatch):
    """The Trainer's own create_optimizer (adamw_bnb_8bit: bitsandbytes' 8-bit AdamW, with embeddings kept in 32
    bits through bitsandbytes' GlobalOptimManager) over FSDP2's DTensor parameters, with hubtune's
    keep_per_process: the optimizer steps the local shards, keeps the embedding's override, and one step equals
    the same optimizer on the plain model (one process: each shard is the whole parameter)."""
    import copy

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers import Trainer, TrainingArguments

    from hubtune import optimizer_shards

    from bitsandbytes.optim import GlobalOptimManager

    GlobalOptimManager.get_instance().initialize()  # its settings by position outlive an optimizer: none yet
    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Embedding(128, 64), torch.nn.Linear(64, 64))  # 8-bit from 4096 values
    sharded = copy.deepcopy(plain)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        fully_shard(sharded)
        assert isinstance(sharded[1].weight, DTensor)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], optim="adamw_bnb_8bit",
                                 learning_rate=1e-2)
        trainers = {}
        for name, model in (("plain", plain), ("sharded", sharded)):
            trainer = Trainer(model=model, args=args)
            if name == "sharded":  # as accelerate tells the Trainer of an FSDP2 launch
                monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
                monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", SimpleNamespace(fsdp_version=2),
                                    raising=False)
            optimizer_shards.keep_per_process(trainer)
            trainers[name] = trainer.create_optimizer(model)
        adam = trainers["sharded"]
        assert all(not isinstance(p, DTensor) for g in adam.param_groups for p in g["params"])
        ids = torch.arange(16).reshape(2, 8)
        for model, optimizer in ((sharded, adam), (plain, trainers["plain"])):  # FSDP2's first
            for _ in range(2):
                model(ids).pow(2).mean().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # over DTensor gradients: the whole norm
                optimizer.step()
                optimizer.zero_grad()
        assert all(p.grad is None for p in sharded.parameters())  # zero_grad clears the model's gradients too
        states = {tuple(s): st["state1"].dtype for s, st in ((p.shape, adam.state[p]) for g in adam.param_groups
                                                              for p in g["params"])}
        assert states[(128, 64)] == torch.float32 and states[(64, 64)] == torch.uint8  # the embedding's override
        for a, b in zip(plain.parameters(), sharded.parameters(), strict=True):
            assert torch.equal(a.detach(), b.detach().full_tensor())
    finally:
        dist.destroy_process_group()
