"""LoRA on routed experts (lora.target_parameters) under transformers' expert parallelism: each process holds,
trains and checkpoints the adapter of its own experts only, and the adapter is gathered whole (PEFT's layout,
the names and shapes a one-process run writes) wherever it is saved.

transformers (from_pretrained(distributed_config=...)) splits each MoE layer's stacked expert weights on the
expert dimension (DTensors on its (efsdp, ep) mesh) and runs each process's experts on their local tensors, the
tokens exchanged all-to-all. PEFT's ParamWrapper sizes its factors from the whole stack (lora_A [E·r, in], expert
by expert; lora_B [out, r·E], rank by rank) and adds them to the weight as a parametrization of the DTensor,
which the local computation never reads. Here (shard):

- each expert ParamWrapper keeps its experts' rows of lora_A and columns of lora_B (the values the whole adapter
  was initialised with, so a run starts where a one-process run starts);
- W + s·B·A is folded into the local weight the experts read inside transformers' local computation (an
  attribute hook on the experts module, active while the wrapper's forward runs), never into the DTensor;
- the gradient of those factors is complete on the process that holds them (the all-to-all brought back every
  process's tokens routed to its experts): it stays out of the Trainer's average over processes, which would
  mix other processes' experts into it, and is divided by the number of batches (dp_size), as transformers
  divides the gradients of the experts themselves (distributed/fsdp.py).

Then keep_per_process(trainer): the gradient norm for clipping covers every process's experts; each save
(checkpoint and final adapter) gathers the adapter whole; a checkpoint keeps the optimizer state per process
(hubtune.optimizer_shards, which also names a launch with another process count as a ConfigError) and resumes
by slicing each process's experts back out of the gathered adapter.

Only experts split over every process (expert_parallel_size = the processes) are handled: with copies of each
expert on several processes (efsdp > 1) the copies' gradients would also have to be summed among them.
"""

from __future__ import annotations

import contextlib
import types
from dataclasses import dataclass

from hubtune.errors import ConfigError

SHARE = "_hubtune_expert_share"  # hubtune.nvfp4.SHARE: on an NVFP4 experts module read in part
FOLD = "_hubtune_local_lora"  # on an experts module: parameter name -> [wrapper, adapters, folded weight or None]


@dataclass
class ExpertAdapter:
    """One ParamWrapper's adapter over one stacked expert weight, as this process holds it."""
    wrapper: object
    name: str          # the wrapped parameter (gate_up_proj, down_proj)
    start: int         # this process's first expert
    local: int         # experts held here
    total: int         # experts in the layer
    group: object      # the expert-parallel process group


def shard(model) -> list[ExpertAdapter]:
    """Cut every PEFT ParamWrapper over an expert-parallel (DTensor) stack down to this process's experts and make
    it add its LoRA to the local weights; the adapters it cut (none without expert LoRA)."""
    from peft.tuners.lora.layer import ParamWrapper
    from torch.distributed.tensor import DTensor

    found = []
    for wrapper in model.modules():
        if not isinstance(wrapper, ParamWrapper):
            continue
        experts = wrapper.get_base_layer()
        param = experts._parameters.get(wrapper.parameter_name)
        if (share := getattr(experts, SHARE, None)) is not None:
            # An NVFP4 stack read in part (hubtune.nvfp4): PEFT built the factors over all the experts
            # (experts.shaped_as_sixteen_bit) and adds this share's to the dequantized share itself (no DTensor).
            import torch.distributed as dist

            adapter = ExpertAdapter(wrapper, wrapper.parameter_name, *share, dist.group.WORLD)
            for name in list(wrapper.lora_A):
                _keep_experts(wrapper.lora_A[name], wrapper.lora_B[name], adapter)
            wrapper.num_experts = adapter.local
            found.append(adapter)
            continue
        if not isinstance(param, DTensor):
            continue
        mesh = param.device_mesh
        if "ep" not in (mesh.mesh_dim_names or ()) or mesh.size() != mesh["ep"].size():
            raise ConfigError([("training.expert_parallel_size",
                                f"LoRA on the experts ({wrapper.parameter_name}) needs the experts split over every "
                                f"process, each holding its own (expert_parallel_size = the processes of the launch), "
                                f"and this launch keeps copies of them (mesh "
                                f"{dict(zip(mesh.mesh_dim_names, mesh.shape))})")])
        local = param.to_local().shape[0]
        adapter = ExpertAdapter(wrapper, wrapper.parameter_name, mesh["ep"].get_local_rank() * local, local,
                                param.shape[0], mesh["ep"].get_group())
        for name in list(wrapper.lora_A):
            _keep_experts(wrapper.lora_A[name], wrapper.lora_B[name], adapter)
        wrapper.num_experts = local
        wrapper._activate_lora = types.MethodType(_fold_locally, wrapper)
        _read_folded(experts)
        found.append(adapter)
    return found


def _keep_experts(lora_a, lora_b, adapter: ExpertAdapter) -> None:
    """lora_A [E·r, in] keeps its experts' rows, lora_B [out, r·E] (rank-major) its experts' columns."""
    import torch

    with torch.no_grad():
        a = local_rows(lora_a.weight, adapter.total, adapter.start, adapter.local).clone()
        b = local_columns(lora_b.weight, adapter.total, adapter.start, adapter.local).clone()
    lora_a.weight = torch.nn.Parameter(a, requires_grad=lora_a.weight.requires_grad)
    lora_b.weight = torch.nn.Parameter(b, requires_grad=lora_b.weight.requires_grad)
    lora_a.out_features, lora_b.in_features = a.shape[0], b.shape[1]


def local_rows(a, total: int, start: int, local: int):
    """This process's experts of a whole lora_A ([E·r, in], expert by expert)."""
    r = a.shape[0] // total
    return a[start * r:(start + local) * r]


def local_columns(b, total: int, start: int, local: int):
    """This process's experts of a whole lora_B ([out, r·E], rank by rank: column i·E + e)."""
    out, r = b.shape[0], b.shape[1] // total
    return b.reshape(out, r, total)[:, :, start:start + local].reshape(out, r * local)


def whole_columns(parts: list, total: int):
    """lora_B whole again from every process's columns (local_columns' inverse)."""
    import torch

    out, local = parts[0].shape[0], total // len(parts)
    r = parts[0].shape[1] // local
    return torch.cat([p.reshape(out, r, local) for p in parts], dim=2).reshape(out, r * total)


@contextlib.contextmanager
def _fold_locally(self, active_adapters):
    """In place of ParamWrapper._activate_lora: the experts module adds this wrapper's LoRA to the weight it reads
    on local tensors, for this forward only."""
    experts = self.get_base_layer()
    adapters = [a for a in active_adapters if a in self.lora_A]
    folds = experts.__dict__.setdefault(FOLD, {})
    if adapters:
        folds[self.parameter_name] = [self, adapters, None]
    try:
        yield
    finally:
        folds.pop(self.parameter_name, None)


def _read_folded(experts) -> None:
    """The experts module's class, once, given an attribute read that returns the local weight with the active
    LoRA folded in (computed once per forward), while a wrapper's forward runs and the weight is local (inside
    transformers' local computation); the DTensor as it is otherwise."""
    if getattr(type(experts), "_hubtune_reads_folded", False):
        return
    base = type(experts)

    def __getattr__(self, name):
        value = base.__getattr__(self, name)
        fold = self.__dict__.get(FOLD)
        if not fold or name not in fold or type(value).__name__ == "DTensor":
            return value
        entry = fold[name]
        if entry[2] is None:
            entry[2] = _folded(value, entry[0], entry[1])
        return entry[2]

    experts.__class__ = type(base.__name__, (base,), {"__getattr__": __getattr__, "_hubtune_reads_folded": True})


def _folded(weight, wrapper, adapters):
    """W + s·B·A over this process's experts, as PEFT's _LoraFactorsProxy computes it (one baddbmm per adapter,
    in the weight's dtype)."""
    import torch

    with torch.autocast(device_type=weight.device.type, enabled=False):
        for name in adapters:
            a = wrapper.lora_A[name].weight
            b = wrapper.lora_B[name].weight
            a = a.reshape(wrapper.num_experts, -1, a.shape[-1])  # (experts, rank, in)
            b = b.reshape(b.shape[0], -1, wrapper.num_experts).permute(2, 0, 1)  # (experts, out, rank)
            lhs, rhs = (b, a) if wrapper._did_swap_in_out_features else (a.transpose(-2, -1), b.transpose(-2, -1))
            weight = torch.baddbmm(weight, lhs.to(weight.dtype), rhs.to(weight.dtype),
                                   alpha=wrapper.scaling[name])
    return weight


def expert_parameters(adapters: list[ExpertAdapter]) -> dict[int, tuple]:
    """id(parameter) -> (adapter, 'A' or 'B') for every factor held per process."""
    out = {}
    for adapter in adapters:
        for name in adapter.wrapper.lora_A:
            out[id(adapter.wrapper.lora_A[name].weight)] = (adapter, "A")
            out[id(adapter.wrapper.lora_B[name].weight)] = (adapter, "B")
    return out


def gathered_state(model, adapters: list[ExpertAdapter]) -> dict:
    """The adapter's trainable tensors under the model's own names, each expert factor gathered whole from every
    process (a collective: every process calls it)."""
    import torch
    import torch.distributed as dist

    held = expert_parameters(adapters)
    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        value = param.detach()
        if id(param) in held:
            adapter, kind = held[id(param)]
            parts = [torch.empty_like(value) for _ in range(dist.get_world_size(adapter.group))]
            dist.all_gather(parts, value.contiguous(), group=adapter.group)
            value = torch.cat(parts, dim=0) if kind == "A" else whole_columns(parts, adapter.total)
        out[name] = value.cpu()
    return out


def load_sliced(model, adapters: list[ExpertAdapter], checkpoint: str) -> None:
    """A checkpoint's gathered adapter back onto the model: this process's experts of each expert factor, the
    rest as saved; a ConfigError when the checkpoint's adapter does not fit the model."""
    import torch
    from peft.utils.save_and_load import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(f"{checkpoint}/adapter_model.safetensors")
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    # The file's key of each of the model's names, as PEFT writes them (one distinct marker value per name).
    keys = get_peft_model_state_dict(model, state_dict={n: torch.tensor(float(i)) for i, n in enumerate(names)})
    key_of = {names[int(v.item())]: k for k, v in keys.items()}
    held = expert_parameters(adapters)
    params = dict(model.named_parameters())
    missing = [n for n in names if key_of.get(n) not in saved]
    if missing:
        raise ConfigError([("training.expert_parallel_size", f"{checkpoint}/adapter_model.safetensors has no "
                                                             f"{missing[0]}: it was saved from another adapter; "
                                                             f"start a new run")])
    with torch.no_grad():
        for name in names:
            value = saved[key_of[name]]
            param = params[name]
            if id(param) in held:
                adapter, kind = held[id(param)]
                value = (local_rows if kind == "A" else local_columns)(value, adapter.total, adapter.start,
                                                                       adapter.local)
            if value.shape != param.shape:
                raise ConfigError([("training.expert_parallel_size", f"{checkpoint}: {key_of[name]} is "
                                                                     f"{tuple(value.shape)} there and "
                                                                     f"{tuple(param.shape)} here; start a new run")])
            param.copy_(value)


def divide_gradients(adapters: list[ExpertAdapter], batches: int) -> None:
    """Each expert factor's gradient divided by the number of batches the processes read: it sums every batch's
    tokens routed to its experts, where one process's mean over the global batch takes 1/batches of each."""
    for adapter in adapters:
        for name in adapter.wrapper.lora_A:
            for param in (adapter.wrapper.lora_A[name].weight, adapter.wrapper.lora_B[name].weight):
                param.register_hook(lambda grad: grad / batches)


def global_grad_norm(model, adapters: list[ExpertAdapter], max_norm: float):
    """The gradient norm over the whole adapter (every process's experts, the replicated rest once), and every
    gradient clipped by it alike, as one process clips the whole adapter."""
    import torch
    import torch.distributed as dist
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    held = expert_parameters(adapters)
    experts = [p for p in model.parameters() if p.grad is not None and id(p) in held]
    others = [p for p in model.parameters() if p.grad is not None and id(p) not in held]
    squared = get_total_norm([p.grad for p in experts]).float() ** 2 if experts else torch.zeros(())
    dist.all_reduce(squared, group=adapters[0].group)
    if others:
        squared = squared + get_total_norm([p.grad for p in others]).float() ** 2
    total = squared.sqrt()
    if max_norm != float("inf"):
        clip_grads_with_norm_(experts + others, max_norm, total)
    return total


def keep_per_process(trainer, adapters: list[ExpertAdapter]) -> None:
    """The Trainer trains, clips, saves and resumes the per-process expert adapter (see the module's text)."""
    import os

    import torch
    import torch.distributed as dist

    from hubtune import optimizer_shards

    if adapters:
        _expert_gradients_and_saves(trainer, adapters)

    def save_optimizer_and_scheduler(output_dir: str) -> None:
        from transformers.trainer import SCHEDULER_NAME

        optimizer_shards.save(trainer.optimizer, None, output_dir)
        if trainer.args.should_save:
            torch.save(trainer.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        dist.barrier()

    def load_optimizer_and_scheduler(checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        from transformers.trainer import SCHEDULER_NAME

        optimizer_shards.load(trainer.optimizer, None, checkpoint)
        trainer.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))

    trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    trainer._load_optimizer_and_scheduler = load_optimizer_and_scheduler
    # transformers refuses at construction to checkpoint the optimizer of a model it sharded as it loaded; this
    # one's optimizer holds plain tensors only (the adapter), saved per process above.
    trainer.args.save_only_model = False


def _expert_gradients_and_saves(trainer, adapters: list[ExpertAdapter]) -> None:
    """The Trainer's gradient sync, clipping, saving and loading, for factors held per process."""
    import torch.distributed as dist

    held = expert_parameters(adapters)
    # transformers' data-parallel degree; an NVFP4 base spread by hubtune.nvfp4: every process reads its batches
    divide_gradients(adapters, getattr(getattr(trainer.model.config, "distributed_config", None), "dp_size", None)
                     or dist.get_world_size())

    sync_as_trainer = trainer._sync_replicated_trainable_parameters

    def sync_replicated(model):
        # Broadcasting rank 0's expert factors and averaging their gradients is for copies; these are not copies.
        own = [p for p in model.parameters() if id(p) in held and p.requires_grad]
        for p in own:
            p.requires_grad_(False)
        try:
            sync_as_trainer(model)
        finally:
            for p in own:
                p.requires_grad_(True)

    def clip(model):
        return global_grad_norm(model, adapters, trainer.args.max_grad_norm)

    get_norm_as_trainer = trainer._get_grad_norm

    def get_norm(model, grad_norm=None):
        if grad_norm is None:
            grad_norm = global_grad_norm(model, adapters, float("inf"))
        return get_norm_as_trainer(model, grad_norm=grad_norm)

    save_as_trainer = trainer._save

    def save(output_dir=None, state_dict=None):
        return save_as_trainer(output_dir, state_dict=gathered_state(trainer.model, adapters))

    def load_from_checkpoint(checkpoint: str, model=None) -> None:
        load_sliced(trainer.model, adapters, checkpoint)

    trainer._sync_replicated_trainable_parameters = sync_replicated
    trainer._clip_grad_norm = clip
    trainer._get_grad_norm = get_norm
    trainer._save = save
    trainer._load_from_checkpoint = load_from_checkpoint
