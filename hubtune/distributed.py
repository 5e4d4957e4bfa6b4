"""Several processes, one run: accelerate's presets, the launcher behind `hubtune train --num-processes N`,
and what each process may do once launched.

hubtune does not bring a distributed runtime: `hubtune train CONFIG --num-processes N` runs
`accelerate launch --config_file <preset> -m hubtune train CONFIG`, and `accelerate launch -m hubtune
train CONFIG` with any accelerate config works the same. Every process trains on its shard of the
data; only the main process (global rank 0) writes the run folder, the metrics, the adapter and the
checkpoints' trainer state, and only it shows the run's progress (`console`). An error in any process
reaches the user with its rank: `hubtune train --num-processes N` gathers how each of its processes
ended and prints one report (`launch`); under a launcher of the user's own, each process prints its own.

    preset_path("fsdp")               -> .../assets/accelerate/fsdp.yaml
    launch_command(plan, ["train", "run.yaml"])  -> [python, -m, accelerate.commands.launch, ...]
    share(lambda: create_folder())    -> the main process's result, in every process
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hubtune.errors import ConfigError, HubtuneError, LaunchError
from hubtune.refs import ASSETS

PRESETS = ASSETS / "accelerate"
MODES = ("none", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
# Under these the base is sharded across processes: a 4-bit base must store its weights in the compute
# dtype (bnb_4bit_quant_storage) so FSDP / ZeRO-3 can flatten them with the rest, and no device_map is set.
SHARDED = ("fsdp", "deepspeed-zero3")

T = TypeVar("T")


# ---- where this process stands ------------------------------------------------------------------------
def rank() -> int:
    """Global rank under torchrun / accelerate / deepspeed; 0 in a plain process."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """The training processes on this machine (accelerate launch and torchrun set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def machine_rank() -> int:
    """This machine among the launch's (torchrun's GROUP_RANK, which accelerate launch sets too)."""
    return int(os.environ.get("GROUP_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def who() -> str:
    """This process as messages name it: "rank 1 of 2", with its machine when the launch spans several."""
    machine = f" on machine {machine_rank()}" if world_size() > local_world_size() else ""
    return f"rank {rank()} of {world_size()}{machine}"


def under_launcher() -> bool:
    """Started by accelerate launch / torchrun (which set LOCAL_RANK), rather than by a user."""
    return "LOCAL_RANK" in os.environ


def loads_whole_base(model, training, nvfp4: bool | None = None, read_hub: bool = False) -> bool:
    """Whether FSDP launches FSDP2 with every process loading the whole quantized base (the
    fsdp2-quantized-experts.yaml preset): quantized experts, and a 4-bit base stepped by torchao's 8- or 4-bit
    AdamW, whose states shard with FSDP2's parameters only (a 4-bit base's quantization constants are not
    parameters or buffers, so rank-0 loading with a broadcast would not carry them); and an int8 (LLM.int8())
    base, which FSDP1 cannot flatten and FSDP2 shards as hubtune.sharded_int8 keeps it; and an NVFP4 base
    (hubtune.nvfp4), whose packed weights FSDP1 cannot flatten with the 16-bit ones and which hubtune's loader
    packs, with their scales, in each process itself (no rank-0 load). nvfp4: whether the
    base is saved in NVFP4, where the caller knows; else a local folder's config is read (a Hub id's only with
    read_hub, which downloads its config.json)."""
    if training.distributed != "fsdp":
        return False
    if model.quantize_experts or model.quantization == "int8" or (
            training.optimizer in TORCHAO_OPTIMIZERS and model.quantization in ("nf4", "fp4")):
        return True
    if nvfp4 is None:
        from hubtune import nvfp4 as formats

        nvfp4 = formats.declared(getattr(model, "id", None), getattr(model, "revision", None), read_hub)
    return nvfp4


def every_process_loads_the_base() -> bool:
    """In a launched process: this launch is FSDP2 without rank-0 loading (loads_whole_base's preset)."""
    return (world_size() > 1 and os.environ.get("FSDP_VERSION", "1") == "2"
            and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() not in ("true", "1"))


def preset_path(mode: str, context_parallel_size: int = 1, whole_base: bool = False) -> Path:
    """The accelerate config a mode launches with; context parallelism runs on FSDP2 (fsdp2.yaml), and so does
    a base every process loads whole (loads_whole_base: fsdp2-quantized-experts.yaml)."""
    if mode == "fsdp" and context_parallel_size > 1 and not whole_base:
        return PRESETS / "fsdp2.yaml"
    if mode == "fsdp" and whole_base:
        return PRESETS / "fsdp2-quantized-experts.yaml"
    if mode not in MODES or mode == "none":
        raise ConfigError([("training.distributed", f"no accelerate preset for {mode!r}; use one of "
                                                    f"{', '.join(MODES[1:])}")])
    return PRESETS / f"{mode}.yaml"


# ---- the effective batch --------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    micro_batch_size: int
    gradient_accumulation_steps: int
    processes: int
    rows: int  # training rows, before sharding
    epochs: float
    max_steps: int | None
    context_parallel: int = 1  # GPUs that share each sequence: they read the same batches

    @property
    def data_parallel(self) -> int:
        """The processes that read different batches."""
        return max(self.processes // self.context_parallel, 1)

    @property
    def effective_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.data_parallel

    @property
    def steps_per_epoch(self) -> int:
        # As the Trainer counts them: each data-parallel process gets ceil(batches / processes) micro-batches.
        batches = math.ceil(math.ceil(self.rows / self.micro_batch_size) / self.data_parallel)
        return max(math.ceil(batches / self.gradient_accumulation_steps), 1)

    @property
    def total_steps(self) -> int:
        return self.max_steps or math.ceil(self.steps_per_epoch * self.epochs)

    def describe(self) -> str:
        per = "process" if self.processes == 1 else "processes"
        shared = (f" / {self.context_parallel} per sequence (context parallelism)" if self.context_parallel > 1
                  else "")
        return (f"{self.rows} training rows, effective batch {self.effective_batch_size} ({self.micro_batch_size} "
                f"per device x {self.gradient_accumulation_steps} accumulation x {self.processes} {per}{shared}): "
                f"{self.steps_per_epoch} steps per epoch, {self.total_steps} steps")


def batch_plan(training, rows: int) -> BatchPlan:
    return BatchPlan(training.micro_batch_size, training.gradient_accumulation_steps, world_size(), rows,
                     training.epochs, training.max_steps, training.context_parallel_size)


# ---- inside a launched process ------------------------------------------------------------------------
def check_hardware(mode: str, device: str) -> None:
    """FSDP and DeepSpeed shard over GPUs; DDP (gloo) also runs on CPUs."""
    if mode in ("fsdp", "deepspeed-zero2", "deepspeed-zero3") and device != "cuda":
        raise ConfigError([("training.distributed", f"{mode} shards the model across GPUs and needs CUDA; on "
                                                    f"this {device} machine use ddp (or none)")])


def check_launch(mode: str, device: str) -> None:
    """The process was launched the way training.distributed asks, on hardware that can run it."""
    if world_size() == 1:
        return  # one process: nothing is sharded, whatever the config says
    check_hardware(mode, device)
    launched = ("deepspeed" if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" else
                "fsdp" if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" else "ddp")
    wanted = "deepspeed" if mode.startswith("deepspeed") else ("ddp" if mode == "none" else mode)
    if launched != wanted:
        raise ConfigError([("training.distributed", f"the run config asks for {mode} but this process was "
                                                    f"launched with {launched}; start it with `hubtune train "
                                                    f"CONFIG --num-processes N`, or pass `--config_file "
                                                    f"{preset_path(mode if mode != 'none' else 'ddp')}` to accelerate launch")])
    if wanted == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError([("training.distributed", f"{mode} needs DeepSpeed: `pip install deepspeed`")]) from None


def check_context_parallel(training, device: str) -> None:
    """In a launched process: the processes of the launch split into groups of context_parallel_size that
    share each sequence (GPUs over NCCL, or CPU processes over gloo); under fsdp, an FSDP2 launch (FSDP1's
    flattened parameters are not sharded the way hubtune's presets for it load)."""
    cp = training.context_parallel_size
    if cp == 1:
        return
    size = world_size()
    where = "training.context_parallel_size"
    if size < cp or size % cp:
        raise ConfigError([(where, f"{cp} does not divide the {size} process(es) of this launch; launch a multiple "
                                   f"of {cp} GPUs (hubtune train CONFIG --num-processes {max(cp, size - size % cp) or cp})")])
    if training.distributed == "fsdp" and os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError([(where, f"{cp} with fsdp runs on FSDP2, but this process was launched with FSDP "
                                   f"{os.environ.get('FSDP_VERSION', '1')}; start it with `hubtune train CONFIG "
                                   f"--num-processes N`, or pass `--config_file {preset_path('fsdp', cp)}` to "
                                   f"accelerate launch")])


def check_quantized_experts(config) -> None:
    """In a launched process: quantized experts under FSDP need every process to load the quantized base
    (no rank-0-only loading, whose broadcast carries parameters and buffers but not the experts' quantization
    constants) and FSDP2, which shards their quantized storage as it is (FSDP1 would flatten it with the
    compute-dtype weights); so do a 4-bit base with torchao's low-bit AdamW, an int8 base and an NVFP4 base
    (loads_whole_base)."""
    if not loads_whole_base(config.model, config.training) or world_size() == 1:
        return
    version = os.environ.get("FSDP_VERSION", "1")
    ram_efficient = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() in ("true", "1")
    field = ("model.quantize_experts" if config.model.quantize_experts else
             "model.quantization" if config.model.quantization == "int8" else
             "training.optimizer" if config.training.optimizer in TORCHAO_OPTIMIZERS else "model.id")
    if version != "2" or ram_efficient:
        raise ConfigError([(field, f"under fsdp needs FSDP2 with every process loading the base, "
                                                      f"but this launch has FSDP {version}"
                                                      f"{' with cpu_ram_efficient_loading' if ram_efficient else ''}; "
                                                      f"start it with `hubtune train CONFIG --num-processes N`, or "
                                                      f"pass `--config_file {preset_path('fsdp', 1, True)}` to "
                                                      f"accelerate launch")])


def check_expert_parallel(training, device: str, lora_on_experts: bool = False) -> None:
    """In a launched process: expert_parallel_size divides the processes of the launch (GPUs; on CPUs,
    processes over gloo, which transformers' expert parallelism runs too), and equals them with LoRA on the
    experts (hubtune.expert_lora holds each expert's factors on one process only)."""
    ep = training.expert_parallel_size
    if ep == 1:
        return
    size = world_size()
    where = "training.expert_parallel_size"
    if size < ep or size % ep:
        raise ConfigError([(where, f"{ep} does not divide the {size} process(es) of this launch; launch a multiple "
                                   f"of {ep} GPUs (hubtune train CONFIG --num-processes {ep})")])
    if lora_on_experts and size != ep:
        raise ConfigError([(where, f"{ep} with lora.target_parameters needs every process to hold experts of its "
                                   f"own, and this launch has {size} processes (copies of each expert on "
                                   f"{size // ep}); set it to {size}, or launch {ep} (--num-processes {ep})")])


def expert_parallel_config(training):
    """transformers' DistributedConfig for from_pretrained: the experts of each layer split over
    expert_parallel_size GPUs with tokens exchanged all-to-all, every other weight sharded by FSDP2 over all
    the GPUs, each of which reads its own batches; None without expert parallelism."""
    ep = training.expert_parallel_size
    if ep == 1:
        return None
    from transformers.distributed import DistributedConfig

    return DistributedConfig(ep_size=ep, fsdp_size=world_size(), ep_implementation="all_to_all")


def experts_held(model, ep: int) -> str:
    """What this process holds of each MoE layer's experts, read off the loaded model's sharded weights."""
    for name, param in model.named_parameters():
        if ".experts." in name and hasattr(param, "to_local"):
            return (f"{param.to_local().shape[0]} of {param.shape[0]} per layer in each process (expert parallelism "
                    f"over {ep}, tokens exchanged all-to-all)")
    for module in model.modules():  # an NVFP4 base, read in part by hubtune.nvfp4
        if (share := getattr(module, "_hubtune_expert_share", None)) is not None:
            return (f"{share[1]} of {share[2]} per layer in each process (expert parallelism over {ep}, tokens "
                    f"exchanged all-to-all; the NVFP4 experts read in part)")
    raise HubtuneError(f"training.expert_parallel_size {ep}: the base loaded with no sharded expert weights; "
                       f"transformers' expert-parallel plan did not apply to it")


def start(cpu: bool) -> None:
    """Join the process group (gloo on CPU, nccl on GPUs) and take this process's GPU, before any model loads."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState(cpu=cpu)


def fsdp_optimizer_problem(optimizer: str, fsdp2: bool) -> str | None:
    """Why FSDP cannot shard this optimizer's states; None when it can. torchao's 8- and 4-bit AdamW quantize
    each process's shard of an FSDP2 (DTensor) parameter and save through torch's distributed checkpoint
    (their compiled update needs separate_optimizer_compiles); bitsandbytes' optimizers keep their states for
    each process's shard of FSDP1's flattened parameters, or of FSDP2's parameters, which they step as local
    tensors (optimizer_shards.on_local_shards), and their checkpoints keep each process's state in a file of its
    own (optimizer_shards)."""
    if optimizer in TORCHAO_OPTIMIZERS and not fsdp2:
        return f"torchao's {optimizer[-4]}-bit states shard with FSDP2's parameters only, and this launch is FSDP1"
    return None


TORCHAO_OPTIMIZERS = ("adamw_torch_8bit", "adamw_torch_4bit")


def separate_optimizer_compiles(mode: str, optimizer: str) -> bool:
    """Turn torch's AOTAutograd cache off in this process when torchao's low-bit AdamW steps FSDP2's parameters;
    True when it did.

    torchao compiles its update once per parameter shape, and under FSDP2 the parameter, its gradient and both
    quantized states are DTensors. torch 2.13 keys a DTensor in that cache by its spec alone (mesh, placements,
    global shape: DTensor._stable_hash_for_caching), never by the tensor it holds, so an update compiled for
    8-bit states (one code per value, in the shard's shape) and one for 4-bit states (two codes per byte, flat)
    or for another block size share a key. A process then loads another's compiled update from the on-disk
    cache and fails on its inputs ('wrong number of dimensions1 for op: input'); on GPUs the ranks' keys are
    equal too, though each compiles for its own device. Each process traces its own update instead (seconds per
    shape); inductor's cache, keyed on the tensors inside, still serves the compiled code."""
    if mode != "fsdp" or optimizer not in TORCHAO_OPTIMIZERS or world_size() == 1:
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        return False
    import torch._functorch.config

    torch._functorch.config.enable_autograd_cache = False
    return True


def optimizer_for(mode: str, resolved: str, configured: str) -> str:
    """FSDP shards optimizer states with the parameters; an optimizer whose states it cannot shard
    (fsdp_optimizer_problem: torchao's on FSDP1) is a ConfigError, and `auto` trains
    with AdamW."""
    if mode != "fsdp" or world_size() == 1:
        return resolved
    why = fsdp_optimizer_problem(resolved, os.environ.get("FSDP_VERSION", "1") == "2")
    if why is None:
        return resolved
    if configured == "auto":
        return "adamw_torch"
    raise ConfigError([("training.optimizer", f"{configured} cannot be sharded by FSDP ({why}); use adamw_torch "
                                              f"or auto")])


def adapter_saved_whole(trainer) -> None:
    """Under FSDP with SHARDED_STATE_DICT (hubtune's presets: checkpoints written by each process) the Trainer's
    save_model writes no weights at all; for the adapter at the end of training it gathers the model whole onto
    the main process instead (accelerate's get_state_dict), which writes the adapter, as PEFT's FSDP QLoRA guide
    saves it."""
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")


# accelerate's save_fsdp_model names: the folder each process writes its shard to (SHARDED_STATE_DICT, hubtune's
# presets), and the file the main process writes a gathered state dict to (FULL_STATE_DICT).
FSDP_SHARDED_WEIGHTS = "pytorch_model_fsdp_0"
FSDP_FULL_WEIGHTS = "pytorch_model_fsdp.bin"


def under_fsdp(model) -> bool:
    """The model holds FSDP (1 or 2) units: a Trainer's callbacks get the PeftModel, whose layers FSDP wrapped in
    place, and its state_dict() or forward pass are collectives."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules())


def adapter_from_fsdp_checkpoint(checkpoint: Path, target: Path, peft_model) -> None:
    """The adapter of an FSDP checkpoint written as PEFT writes one (adapter_model.safetensors and
    adapter_config.json in `target`), on one process, without a process group. Under FSDP the Trainer's checkpoints
    hold accelerate's save_fsdp_model output instead: with adapter_only (as the Trainer saves), PEFT's adapter state
    dict (get_peft_model_state_dict: the same keys and tensors save_pretrained writes), sharded over the processes
    by torch.distributed.checkpoint, or gathered into one file; the main process alone cannot gather it from the
    model (a collective)."""
    import copy
    import tempfile

    import torch
    from safetensors.torch import save_file

    sharded, full = Path(checkpoint) / FSDP_SHARDED_WEIGHTS, Path(checkpoint) / FSDP_FULL_WEIGHTS
    if (sharded / ".metadata").is_file():
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            dcp_to_torch_save(sharded, Path(tmp) / "adapter.pt")
            state = torch.load(Path(tmp) / "adapter.pt", weights_only=True)["model"]  # as save_fsdp_model keys it
    elif full.is_file():
        state = torch.load(full, weights_only=True)
    else:
        raise HubtuneError(f"{checkpoint} holds no FSDP weights that hubtune can read ({FSDP_SHARDED_WEIGHTS}/ with "
                           f"its .metadata, or {FSDP_FULL_WEIGHTS}): a checkpoint written with LOCAL_STATE_DICT keeps "
                           f"each process's flat shard; use hubtune's fsdp preset (SHARDED_STATE_DICT)")
    target.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    adapter = peft_model.active_adapter
    config = copy.deepcopy(peft_model.peft_config[adapter])
    config.inference_mode = True  # as PeftModel.save_pretrained writes it
    config.save_pretrained(str(target))


def share(compute: Callable[[], T], cpu: bool = True) -> T:
    """Run `compute` on the main process only and hand its result to every process (the run folder it
    created, the checkpoint it chose). An error on the main process stops the others too."""
    if world_size() == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    start(cpu)
    box: list = [None]
    if is_main_process():
        try:
            box[0] = ("ok", compute())
        except BaseException as err:
            box[0] = ("error", f"{type(err).__name__}: {err}")
            broadcast_object_list(box)
            raise
    broadcast_object_list(box)
    kind, value = box[0]
    if kind == "error":
        raise HubtuneError(f"the main process stopped: {value}")
    return value


def main_process_first(cpu: bool = True):
    """Downloads and data preparation on the main process first, so the others find them cached."""
    from contextlib import nullcontext

    if world_size() == 1:
        return nullcontext()
    from accelerate import PartialState

    return PartialState(cpu=cpu).main_process_first()


# ---- what each process shows ----------------------------------------------------------------------------
def console_role() -> str:
    """What this process shows on its console. "all": the main process (global rank 0, as accelerate's
    `PartialState().is_main_process` decides; or a process of its own): the run's progress, once for the
    whole launch, as the Trainer's progress bar and accelerate's main-process logging show it. "warnings":
    the first process of each other machine (`is_local_main_process`): that machine's warnings (on
    stderr), so a problem of machine 1 shows on machine 1's console, as the Trainer logs on each node.
    "errors": every other process: its errors alone."""
    if is_main_process():
        return "all"
    return "warnings" if local_rank() == 0 else "errors"


@contextlib.contextmanager
def console() -> Iterator[None]:
    """This process's console for the duration of a command. Progress (phases, the live training line,
    advice, notes, the run's folder) goes to stdout, which only the main process keeps; hubtune's
    warnings go to stderr from the first process of each machine; errors are the caller's to report
    (`ended`), from every process."""
    role = console_role()
    if role == "all":
        yield
        return
    logger = logging.getLogger("hubtune")
    level, show = logger.level, warnings.showwarning
    logger.setLevel(logging.WARNING if role == "warnings" else logging.ERROR)
    if role == "errors":
        warnings.showwarning = lambda *args, **kwargs: None
    else:
        first, last = machine_rank() * local_world_size(), (machine_rank() + 1) * local_world_size() - 1
        ranks = f"ranks {first}-{last}" if last > first else f"rank {first}"
        print(f"machine {machine_rank()}: {ranks} of {world_size()} train here; the run's progress shows on "
              f"machine 0", file=sys.stderr)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            yield
    finally:
        logger.setLevel(level)
        warnings.showwarning = show


# Set by `launch` for the processes it starts: a folder where each records how it ended, so the launching
# command reports every failure once, with its rank, after the launcher returns.
ENDINGS = "HUBTUNE_LAUNCH_ENDINGS"


def started() -> None:
    """Record that this launched process started (one that never records its end was killed)."""
    _record({"status": "started"})


def ended(message: str | None, code: int = 0) -> bool:
    """Record how this launched process ended (`message`: its error, None when it finished). True when the
    launching `hubtune train` reports it; False when the caller must print it (no such command, or a
    single process)."""
    return _record({"status": "error" if message else "finished", "error": message, "code": code})


def _record(entry: dict) -> bool:
    folder = os.environ.get(ENDINGS)
    if not folder or not under_launcher() or world_size() == 1:
        return False
    entry = {**entry, "rank": rank(), "world_size": world_size(), "who": who(), "time": time.time()}
    path = Path(folder) / f"rank-{rank()}.json"
    try:
        path.write_text(json.dumps(entry))
    except OSError:
        return False  # the folder is gone (the launching command was stopped): say it here instead
    return True


def launch_report(folder: Path, returncode: int) -> LaunchError | None:
    """The processes of a failed launch on this machine, each with its rank and how it ended: those killed
    without a word first (a signal: the cause, most often), then the errors in the order they came."""
    entries = []
    for path in folder.glob("rank-*.json"):
        try:
            entries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if returncode == 0 or not entries:
        return None  # it worked, or the launcher failed before any process started (it said why)
    size = entries[0]["world_size"]
    killed = sorted(e["rank"] for e in entries if e["status"] == "started")
    lines = []
    if killed:
        ranks = ", ".join(map(str, killed))
        lines.append(f"rank{'s' if len(killed) > 1 else ''} {ranks} of {size}: stopped without an error of its own, "
                     f"killed by a signal (the out-of-memory killer, most often; the launcher's report above names "
                     f"the signal and the first process to fail)")
    failed = sorted((e for e in entries if e["status"] == "error"), key=lambda e: e["time"])
    groups: dict[str, list[dict]] = {}
    for entry in failed:  # the same error in several processes is said once, with all their ranks
        groups.setdefault(entry["error"], []).append(entry)
    for message, same in groups.items():
        ranks = ", ".join(str(e["rank"]) for e in same)
        lines.append(f"rank{'s' if len(same) > 1 else ''} {ranks} of {size}: {message}")
    if not lines:
        return None  # each process finished: the launcher itself failed, and said why
    code = next((e["code"] for e in failed), 0) if not killed else 1
    indented = ("  " + line.replace("\n", "\n    ") for line in lines)  # a message of several lines stays together
    return LaunchError(f"the {size}-process run stopped:\n" + "\n".join(indented),
                        code or returncode)


# ---- the launcher ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchPlan:
    mode: str  # ddp | fsdp | deepspeed-zero2 | deepspeed-zero3
    num_processes: int  # in total, over all machines
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None  # None: a free port on one machine, 29500 over several
    context_parallel_size: int = 1
    whole_base: bool = False  # loads_whole_base

    @property
    def preset(self) -> Path:
        return preset_path(self.mode, self.context_parallel_size, self.whole_base)


def plan_launch(config_mode: str, num_processes: int | None, num_machines: int = 1, machine_rank: int = 0,
                main_process_ip: str | None = None, main_process_port: int | None = None,
                context_parallel_size: int = 1, expert_parallel_size: int = 1,
                whole_base: bool = False) -> LaunchPlan | None:
    """How to launch, or None to train in this process. A config asking for ddp/fsdp/deepspeed launches on
    every GPU of this machine unless --num-processes says otherwise; --num-processes > 1 with
    training.distributed: none uses DDP."""
    if under_launcher():
        return None
    if num_processes is None:
        if config_mode == "none":
            return None
        num_processes = _gpu_count() * num_machines or 1
    if num_processes < 1:
        raise HubtuneError(f"--num-processes must be at least 1, got {num_processes}")
    if num_processes == 1 and num_machines == 1 and config_mode in ("none", "ddp"):
        return None
    if num_machines > 1 and not main_process_ip:
        raise HubtuneError("training on several machines needs --main-process-ip (the address of machine rank 0, "
                           "reachable from the others)")
    if num_processes % num_machines:
        raise HubtuneError(f"--num-processes {num_processes} is the total over all machines; it must be a multiple "
                           f"of --num-machines {num_machines}")
    for name, size, what in (("context_parallel_size", context_parallel_size, "splits each sequence"),
                             ("expert_parallel_size", expert_parallel_size, "spreads the experts")):
        if size > 1 and (num_processes < size or num_processes % size):
            raise HubtuneError(f"training.{name} {size} {what} over that many GPUs: --num-processes must be a "
                               f"multiple of it, got {num_processes}")
    mode = "ddp" if config_mode == "none" else config_mode
    return LaunchPlan(mode, num_processes, num_machines, machine_rank, main_process_ip, main_process_port,
                      context_parallel_size, whole_base)


def launch_command(plan: LaunchPlan, hubtune_args: list[str]) -> list[str]:
    """`accelerate launch --config_file PRESET ... -m hubtune ARGS`, with this interpreter."""
    port = plan.main_process_port if plan.main_process_port is not None else (0 if plan.num_machines == 1 else 29500)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(plan.preset),
           "--num_processes", str(plan.num_processes), "--num_machines", str(plan.num_machines),
           "--machine_rank", str(plan.machine_rank), "--main_process_port", str(port)]
    if plan.main_process_ip:
        cmd += ["--main_process_ip", plan.main_process_ip]
    return [*cmd, "-m", "hubtune", *hubtune_args]


def launch(plan: LaunchPlan, hubtune_args: list[str]) -> int:
    """Run the launcher and wait; Ctrl-C / SIGTERM go to it (and on to every process, which finish their
    step and save). Returns its exit code, or raises LaunchError naming each failed process by rank."""
    with tempfile.TemporaryDirectory(prefix="hubtune-launch-") as folder:
        proc = subprocess.Popen(launch_command(plan, hubtune_args), env={**os.environ, ENDINGS: folder})

        def forward(signum, frame):
            proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            returncode = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
        failure = launch_report(Path(folder), returncode)
    if failure is not None:
        raise failure
    return returncode


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


if __name__ == "__main__":  # `python -m hubtune.distributed fsdp`: the preset's path, for accelerate launch
    print(preset_path(sys.argv[1] if len(sys.argv) > 1 else "ddp"))
