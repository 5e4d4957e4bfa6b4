"""ReLoRA (training.relora): restarts of the adapter, as Axolotl runs them (src/axolotl/monkeypatch/relora.py,
utils/schedulers.py JaggedLRRestartScheduler).

Every restart_steps steps the adapter's update is merged into the base, the adapter starts afresh (PEFT's
reset_lora_parameters: A random, B zero), the optimizer's state of the adapter is pruned, and the learning
rate rises again over warmup_steps (and falls over anneal_steps before each restart). The merged weight is
the base's own weight, read again from its files, plus the updates so far, computed in float32 and quantized
anew on a 4-bit base (as Axolotl does there; it never dequantizes the 4-bit weight).

What Axolotl saves is the whole merged model. The sum of the cycles' updates, sum_i s B_i A_i, is exactly
the update of one LoRA of rank r x cycles whose B is [s B_1 ... s B_k] and A is [A_1; ...; A_k]: that is the
run's adapter, an adapter of the pinned base like any other (merged onto the 16-bit base it gives Axolotl's
model). At the end the base goes back to its own weights and that adapter replaces the last cycle's."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback

from hubtune import config as cfg
from hubtune.errors import ConfigError, HubtuneError

FACTORS = "relora.safetensors"  # in each checkpoint: the merged cycles' factors, to resume from
FULL_RESET = 0.999  # Axolotl's ratio for prune_method: reset (true zeroing upsets ZeRO's state consolidation)
MIN_LR_SCALE = 0.001  # Axolotl's floor of the restart warm-up / anneal (cosine_min_lr_ratio, which hubtune has not)


def jagged_scale(step: int, restart: int, warmup: int, anneal: int, floor: float = MIN_LR_SCALE) -> float:
    """The factor Axolotl's JaggedLRRestartScheduler puts on the schedule's learning rate at `step`."""
    if step < restart - anneal:
        return 1.0
    progress = step % restart
    if progress < warmup:
        t = min(1.0, progress / warmup)
    elif progress > restart - anneal:
        t = min(1.0, (restart - progress) / anneal)
    else:
        t = 1.0
    return t * (1 - floor) + floor


def check(config: cfg.RunConfig, optimizer: str | None = None, backend: str | None = None,
          new_tokens: list[str] | None = None) -> None:
    """What hubtune's ReLoRA does not run with, before the base loads (Axolotl too refuses FSDP and DeepSpeed,
    and stops at the first restart on an optimizer other than Adam); `optimizer` and `backend` as the run
    resolved them, `new_tokens` those new to the vocabulary."""
    r, t, lo = config.training.relora, config.training, config.lora
    if r is None:
        return
    problems = []
    if t.method != "sft":
        problems.append(("training.relora", f"ReLoRA restarts supervised training (method: sft), not {t.method}"))
    if t.distributed in ("fsdp", "deepspeed-zero2", "deepspeed-zero3"):
        problems.append(("training.relora", f"ReLoRA merges into the whole base on every process; it cannot run "
                                            f"sharded ({t.distributed}); use ddp or one GPU"))
    optimizer = optimizer or t.optimizer
    if optimizer in ("adafactor", "sgd", "adamw_torch_8bit", "adamw_torch_4bit"):
        problems.append(("training.relora", f"ReLoRA prunes Adam's moments at each restart (exp_avg, exp_avg_sq; "
                                            f"bitsandbytes' state1, state2), which {optimizer} does not keep "
                                            f"as such; use adamw_torch, adamw_8bit or paged_adamw_8bit"))
    if t.select != "last":
        problems.append(("training.relora", "a checkpoint's adapter holds only its cycle (the rest is merged into "
                                            "the base in memory), so checkpoints cannot be chosen among: select: last"))
    if (backend or t.backend) == "unsloth":
        problems.append(("training.relora", "the Unsloth backend's LoRA layers are not PEFT's; set backend: hf"))
    if config.model.quantization == "int8":
        problems.append(("training.relora", "an 8-bit base: ReLoRA merges into 16-bit or 4-bit (nf4, fp4) bases"))
    if lo.init_weights == "loftq" or lo.init_from:
        problems.append(("training.relora", "ReLoRA starts each cycle from PEFT's default initialisation; leave "
                                            "lora.init_weights: default and lora.init_from unset"))
    extra = [name for name, v in (("modules_to_save", lo.modules_to_save), ("unfrozen_parameters",
             lo.unfrozen_parameters), ("target_parameters", lo.target_parameters)) if v]
    if new_tokens:
        extra.append(f"tokens new to the vocabulary ({', '.join(new_tokens)}), whose rows train in full,")
    if extra:
        problems.append(("training.relora", f"ReLoRA merges and restarts LoRA layers only; {', '.join(extra)} "
                                            f"would train outside them: leave them out"))
    if problems:
        raise ConfigError(problems)


class BaseWeights:
    """The base's own weights of the adapted modules, read from its files (safetensors, one file or an index)."""

    def __init__(self, path: str):
        folder = Path(path)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            self.where = {k: folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        elif (folder / "model.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(folder / "model.safetensors"), "pt") as f:
                self.where = {k: folder / "model.safetensors" for k in f.keys()}
        else:
            raise ConfigError([("training.relora", f"ReLoRA reads the base's own weights again at each restart, and "
                                                   f"{path} holds no safetensors weights")])

    def get(self, module: str) -> torch.Tensor:
        from safetensors import safe_open

        key = f"{module}.weight"
        if key not in self.where:
            raise HubtuneError(f"ReLoRA: {key} is not in the base's weight files, so its 16-bit weight cannot be "
                               f"read again to merge into")
        with safe_open(str(self.where[key]), "pt") as f:
            weight = f.get_tensor(key)
        if not weight.is_floating_point():
            raise HubtuneError(f"ReLoRA: {key} is saved quantized ({weight.dtype}); ReLoRA merges into the base's "
                               f"16-bit weights, so train from the 16-bit repo")
        return weight


class ReLoRA(TrainerCallback):
    """training.relora: merges, restarts and prunes at every restart_steps (on_step_begin, as Axolotl), and at
    the end leaves the model as the base plus one adapter holding every cycle."""

    def __init__(self, settings: cfg.ReLoRASection, base_path: str, optimizer_name: str,
                 resume_from: Path | None = None):
        self.s = settings
        self.base_path = base_path
        self.keys = ["exp_avg", "exp_avg_sq"] + (["state1", "state2"] if "8bit" in optimizer_name else [])
        self.resume_from = resume_from
        self.factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # module -> [(s B_i, A_i)]
        self.restarts = 0
        self._files: BaseWeights | None = None

    # ---- the hooks --------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate may wrap it
        if not hasattr(scheduler, "lr_lambdas"):
            raise HubtuneError(f"training.relora restarts a LambdaLR schedule, and this run's is "
                               f"{type(scheduler).__name__}")
        s = self.s

        def jagged(factor):
            return lambda step: factor(step) * jagged_scale(step, s.restart_steps, s.warmup_steps, s.anneal_steps)
        scheduler.lr_lambdas = [jagged(f) for f in scheduler.lr_lambdas]
        self.layers = lora_layers(model)
        BaseWeights(self.base_path)  # the base's files must hold its 16-bit weights: fail now, not at a restart
        if self.resume_from is not None and (self.resume_from / FACTORS).is_file():
            self._load(self.resume_from / FACTORS)
            with torch.no_grad():
                for name, layer in self.layers.items():
                    self._set_base(name, layer)

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step == 0 or state.global_step % self.s.restart_steps:
            return
        adapted = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
        with torch.no_grad():
            for name, layer in self.layers.items():
                self.factors.setdefault(name, []).append(cycle_factors(layer))
                self._set_base(name, layer)
                for adapter in layer.lora_A:
                    layer.reset_lora_parameters(adapter, True)
                    _same_on_every_process(layer.lora_A[adapter].weight)
            prune(optimizer, adapted, self.keys, self.s.prune_method, self.prune_ratio())
        self.restarts += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["relora_restarts"] = self.restarts

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save or not self.factors:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tensors = {f"{name}.{i}.{part}": t.contiguous() for name, cycles in self.factors.items()
                   for i, pair in enumerate(cycles) for part, t in zip("BA", pair)}
        save_file(tensors, str(folder / FACTORS), metadata={"restarts": str(self.restarts)})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        """The base back to its own weights, and one adapter of rank r x cycles holding every cycle's update."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                cycles = [*self.factors.get(name, []), cycle_factors(layer)]
                self.factors[name] = []
                self._set_base(name, layer)
                for adapter in list(layer.lora_A):
                    concatenated(layer, adapter, cycles, model.peft_config[adapter])
        for peft_config in model.peft_config.values():  # what adapter_config.json says: rank r x cycles, scale 1
            peft_config.r = peft_config.lora_alpha = peft_config.r * (self.restarts + 1)
            peft_config.use_rslora = False
            peft_config.rank_pattern, peft_config.alpha_pattern = {}, {}

    # ---- helpers ----------------------------------------------------------------------------------
    def prune_ratio(self) -> float:
        if self.s.prune_ratio is not None:
            return self.s.prune_ratio
        return FULL_RESET if self.s.prune_method == "reset" else 0.9

    def _set_base(self, name: str, layer) -> None:
        """The base weight of `name` made its own weight, read again from the base's files, plus every merged
        cycle's update, in float32 (quantized anew on a 4-bit base, as Axolotl does)."""
        base = layer.get_base_layer()
        weight = base.weight
        self._files = self._files or BaseWeights(self.base_path)
        own = self._files.get(name).to(weight.device, torch.float32)
        for b, a in self.factors.get(name, []):
            own += _fan(b.to(own.device) @ a.to(own.device), layer)
        if type(weight).__name__ == "Params4bit":
            import bitsandbytes as bnb

            # as PEFT's Linear4bit.merge requantizes: the same settings, quantized on moving to the device
            kwargs = {k: v for k, v in weight.__dict__.items() if not k.startswith("_") and k != "data"}
            kwargs.update(requires_grad=False, bnb_quantized=False)
            base.weight = bnb.nn.Params4bit(own.to("cpu"), **kwargs).to(weight.device)
        else:
            weight.data.copy_(own.to(weight.dtype))

    def _load(self, path: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            self.restarts = int((f.metadata() or {}).get("restarts", 0))
            found: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
            for key in f.keys():
                name, i, part = key.rsplit(".", 2)
                found.setdefault(name, {}).setdefault(int(i), {})[part] = f.get_tensor(key)
        self.factors = {name: [(c[i]["B"], c[i]["A"]) for i in sorted(c)] for name, c in found.items()}


def _same_on_every_process(weight: torch.Tensor) -> None:
    """Under DDP each process draws its own fresh A; the first one's is everyone's (DDP syncs gradients, not
    weights)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(weight.data, src=0)


def lora_layers(model) -> dict[str, object]:
    """The LoRA layers of a PeftModel by the base's module name (model.layers.0.self_attn.q_proj)."""
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix("base_model.model."): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def cycle_factors(layer) -> tuple[torch.Tensor, torch.Tensor]:
    """This cycle's update as (s B, A), kept in float32 on the CPU (r x (in + out) numbers a layer and cycle,
    off the GPU): s B A is what PEFT's get_delta_weight computes."""
    (adapter,) = layer.active_adapters
    b = layer.lora_B[adapter].weight.detach().float() * layer.scaling[adapter]
    return b.to("cpu", copy=True), layer.lora_A[adapter].weight.detach().to("cpu", torch.float32, copy=True)


def _fan(update: torch.Tensor, layer) -> torch.Tensor:
    return update.T if getattr(layer, "fan_in_fan_out", False) else update


def concatenated(layer, adapter: str, cycles: list[tuple[torch.Tensor, torch.Tensor]], peft_config) -> None:
    """The layer's adapter made one LoRA of rank r x cycles holding every cycle (scaling 1: s is in B)."""
    dtype = layer.lora_A[adapter].weight.dtype
    rank = sum(a.shape[0] for _, a in cycles)
    layer.update_layer(adapter, rank, rank, peft_config)
    layer.scaling[adapter] = 1.0
    layer.use_rslora[adapter] = False
    layer.lora_B[adapter].weight.copy_(torch.cat([b for b, _ in cycles], dim=1))
    layer.lora_A[adapter].weight.copy_(torch.cat([a for _, a in cycles], dim=0))
    layer.lora_A[adapter].to(dtype)
    layer.lora_B[adapter].to(dtype)


@torch.no_grad()
def prune(optimizer, params, keys: list[str], method: str, ratio: float) -> None:
    """Zero a share of the optimizer's state of `params`, as Axolotl's reset_optimizer: the smallest by
    magnitude (magnitude) or at random (random, reset)."""
    state = getattr(optimizer, "optimizer", optimizer).state  # accelerate wraps the optimizer
    for p in params:
        for key in keys:
            value = state.get(p, {}).get(key)
            if value is None or not torch.is_tensor(value):
                continue
            if method == "magnitude":
                magnitude = value.abs()
                sample = magnitude.flatten().float()
                if sample.numel() > 2 ** 24:  # torch.quantile's limit; Axolotl skips such tensors
                    continue
                threshold = torch.quantile(sample, ratio).to(value.dtype)
                value.mul_((magnitude > threshold).to(value.dtype))
            else:
                value.mul_((torch.rand(value.shape, device=value.device) > ratio).to(value.dtype))

