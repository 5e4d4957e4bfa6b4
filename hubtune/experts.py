"""A mixture-of-experts base's stacked expert weights quantized as they load (model.quantize_experts).

transformers 5 stores a MoE layer's experts as 3D parameters (`mlp.experts.gate_up_proj`, experts x out x in),
not as Linear layers, so bitsandbytes' BitsAndBytesConfig leaves them in 16 bits: on a 30B-A3B base the
experts are most of the weights. Here each one is quantized at the base's own setting (NF4 / FP4 with
double quantization through bitsandbytes' public parametrization, or LLM.int8()'s row-wise int8) and
dequantized to the compute dtype whenever the layer reads it: the same weights Axolotl's
`quantize_moe_experts` trains on.

    with quantizing_on_load("nf4", True, torch.bfloat16) as done:
        base = AutoModelForCausalLM.from_pretrained(path, quantization_config=...)
    quantize_experts(base, "nf4", True, torch.bfloat16)   # whatever the loader did not reach
    peft_model = under_lora(base, lambda: get_peft_model(base, lora_config))
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.utils.parametrize as P


class Int8Rows(torch.nn.Module):
    """LLM.int8()'s weight format for a stacked parameter: int8 rows (the last dimension) with one absmax
    per row, dequantized to `dtype` when read (bitsandbytes has a 4-bit parametrization, none for int8)."""

    def __init__(self, row_stats: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("row_stats", row_stats)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        from bitsandbytes.functional import int8_vectorwise_dequant

        rows = int8_vectorwise_dequant(quantized.reshape(-1, quantized.shape[-1]), self.row_stats)
        return rows.reshape(quantized.shape).to(self.dtype)


def _cache_per_forward(module: torch.nn.Module) -> None:
    """Dequantize once per forward of the layer, not at each read (an eager experts loop reads the whole stack
    once per expert), as bitsandbytes' 4-bit parametrization does; always_call keeps the count balanced when
    non-reentrant checkpointing stops a recomputation early."""
    if getattr(module, "_hubtune_dequantize_cache", False):
        return

    def enter(mod, args):
        P._cache_enabled += 1

    def leave(mod, args, output):
        P._cache_enabled = max(0, P._cache_enabled - 1)
        if not P._cache_enabled:
            P._cache = {}

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)
    module._hubtune_dequantize_cache = True


def is_expert(name: str, param) -> bool:
    """A stacked expert weight: 3D or more, floating point, under a module named for experts (Mamba's 3D
    conv1d weights and a router are not)."""
    return (param is not None and param.ndim >= 3 and param.is_floating_point()
            and any("expert" in part for part in name.lower().split(".")[:-1]))


def quantize_parameter(module: torch.nn.Module, name: str, quantization: str, double_quant: bool,
                       compute_dtype: torch.dtype) -> None:
    """Replace module.<name> by its quantized form, registered as a parametrization that dequantizes it."""
    import bitsandbytes as bnb

    if P.is_parametrized(module, name):
        return
    if not hasattr(module, "_hubtune_parameter_order"):  # the order PEFT wraps them in on a 16-bit base
        module._hubtune_parameter_order = list(module._parameters)
    if quantization == "int8":
        weight = getattr(module, name).data
        int8, row_stats, _ = bnb.functional.int8_vectorwise_quant(
            weight.reshape(-1, weight.shape[-1]).to(torch.float16))
        setattr(module, name, torch.nn.Parameter(int8.reshape(weight.shape), requires_grad=False))
        del weight
        P.register_parametrization(module, name, Int8Rows(row_stats, compute_dtype), unsafe=True)
        _cache_per_forward(module)
    else:
        from bitsandbytes.nn.parametrize import replace_parameter_4bit

        getattr(module, name).data = getattr(module, name).data.to(compute_dtype)  # dequantizes to this dtype
        replace_parameter_4bit(module, name, compress_statistics=double_quant, quant_type=quantization)
    getattr(module.parametrizations, name).original._is_hf_initialized = True  # transformers: not to re-init


def quantize_experts(model, quantization: str, double_quant: bool, compute_dtype: torch.dtype) -> int:
    """Quantize every stacked expert weight of `model` not yet quantized; returns how many."""
    done = 0
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if is_expert(f"{module_name}.{name}", param):
                quantize_parameter(module, name, quantization, double_quant, compute_dtype)
                done += 1
    return done


def quantized_experts(model) -> list[str]:
    """The names of the expert weights stored quantized (parametrized), as state_dict names them."""
    return [f"{name}.{param}" for name, module in model.named_modules() if P.is_parametrized(module)
            for param in module.parametrizations if is_expert(f"{name}.{param}", getattr(module, param))]


@contextmanager
def quantizing_on_load(quantization: str, double_quant: bool, compute_dtype: torch.dtype):
    """Quantize each expert weight as transformers' loader sets it, so a GPU never holds the 16-bit experts
    (35B to 122B MoE bases would not fit). transformers has no public hook for this, so its loader's
    `set_param_for_module` (transformers 5's core_model_loading, where every loaded tensor is set) is
    wrapped for the duration of the load only and restored after; the caching allocator warm-up, which
    reserves the 16-bit size of every weight up front, is skipped meanwhile. Where a transformers version
    lacks that function the load runs as is and `quantize_experts` afterwards does the work (with the
    16-bit peak). Yields the list of names quantized on load."""
    import transformers.core_model_loading as loading
    import transformers.modeling_utils as modeling

    done: list[str] = []
    original = getattr(loading, "set_param_for_module", None)
    warmup = getattr(modeling, "caching_allocator_warmup", None)
    if original is None:
        yield done
        return

    def set_and_quantize(model, target_name, param_value, *args, **kwargs):
        original(model, target_name, param_value, *args, **kwargs)
        module_path, _, name = target_name.rpartition(".")
        module = model.get_submodule(module_path) if module_path else model
        if is_expert(target_name, module._parameters.get(name)):
            quantize_parameter(module, name, quantization, double_quant, compute_dtype)
            done.append(target_name)
            param_value.data = torch.empty(0, device=param_value.device)  # the loader's copy too
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the 16-bit tensor's memory goes back before the next one loads

    loading.set_param_for_module = set_and_quantize
    if warmup is not None:
        modeling.caching_allocator_warmup = lambda *args, **kwargs: None
    try:
        yield done
    finally:
        loading.set_param_for_module = original
        if warmup is not None:
            modeling.caching_allocator_warmup = warmup


def keep_state_dict_keys(model) -> int:
    """For torch's distributed state dict, which accelerate saves FSDP2 checkpoints and the adapter through:
    bitsandbytes' 4-bit parametrization renames `parametrizations.<name>.original` to `<name>` in state_dict
    and adds its constants as `<name>.absmax` and so on, and torch.distributed.checkpoint resolves each key
    by attribute, which dequantizes the weight (on a shard under FSDP2) and then fails ('Tensor' object has
    no attribute 'absmax'). Its state-dict hook is removed so the keys are the modules' own: every process
    quantizes the experts as it loads, so a checkpoint needs their quantized storage only. bitsandbytes keeps
    no handle to the hook, hence the lookup in the module's hook table. Returns how many were removed."""
    from bitsandbytes.nn.parametrize import _parametrized_state_dict_post_hook

    removed = 0
    for module in model.modules():
        for key, hook in list(module._state_dict_hooks.items()):
            if getattr(hook, "func", None) is _parametrized_state_dict_post_hook:
                del module._state_dict_hooks[key]
                removed += 1
    return removed


def _dequantized_like(parametrization, original: torch.Tensor) -> tuple[torch.Size, torch.dtype] | None:
    """The shape and dtype a quantized expert weight reads as, without dequantizing it; None when the
    parametrization is not one of this module's quantizations."""
    from bitsandbytes.nn.parametrize import Bnb4bitParametrization

    from hubtune.fp8 import Fp8Blocks
    from hubtune.nvfp4 import Nvfp4Blocks

    if isinstance(parametrization, Nvfp4Blocks):  # a ModelOpt NVFP4 base: its Linear weights and experts
        return parametrization.shape_of(original), parametrization.dtype
    if isinstance(parametrization, Fp8Blocks):  # the block-wise FP8 weights beside them (DeepSeek V4)
        return original.shape, parametrization.dtype
    if isinstance(parametrization, Bnb4bitParametrization):
        return parametrization.quant_state.shape, parametrization.quant_state.dtype
    if isinstance(parametrization, Int8Rows):
        return original.shape, parametrization.dtype
    return None


@contextmanager
def shaped_as_sixteen_bit(model):
    """Within: each quantized expert weight is a plain parameter of its 16-bit shape and dtype again (a zero
    broadcast to that shape: no memory), so PEFT matches and wraps the experts exactly as on a 16-bit base
    (the same names, the same nesting of wrappers, the same saved adapter, which then loads onto either
    base). PEFT cannot match a parametrized weight by suffix, and nests wrappers over one in another order.
    After: the quantized weights and their parametrizations are back under PEFT's wrappers."""
    held = []
    for module in list(model.modules()):
        if not P.is_parametrized(module):
            continue
        for name in list(module.parametrizations):
            chain = module.parametrizations[name]
            original = chain.original
            like = _dequantized_like(chain[0], original) if len(chain) == 1 else None
            if like is None:
                continue
            parametrization = chain[0]
            P.remove_parametrizations(module, name, leave_parametrized=False)
            shape, dtype = like
            if (share := getattr(module, "_hubtune_expert_share", None)) is not None:
                # this process's share of the experts (hubtune.nvfp4 under expert parallelism): PEFT builds the
                # adapter over all of them, as one process does, and hubtune.expert_lora keeps the share's
                shape = torch.Size((share[2], *shape[1:]))
            placeholder = torch.zeros((), dtype=dtype, device=original.device).expand(shape)
            setattr(module, name, torch.nn.Parameter(placeholder, requires_grad=False))
            held.append((module, name, original, parametrization))
    for module in {id(m): m for m, *_ in held}.values():
        order = getattr(module, "_hubtune_parameter_order", [])
        for name in sorted(module._parameters, key=lambda n: order.index(n) if n in order else len(order)):
            module._parameters[name] = module._parameters.pop(name)  # the definition order again
    try:
        yield len(held)
    finally:
        for module, name, original, parametrization in held:
            del module._parameters[name]
            setattr(module, name, original)
            P.register_parametrization(module, name, parametrization, unsafe=True)


def under_lora(model, attach):
    """attach(): PEFT's adapter put on `model` (get_peft_model, PeftModel.from_pretrained) as on a 16-bit base,
    its wrappers over quantized experts then corrected for what PEFT gets wrong over parametrized weights
    (hubtune.compat)."""
    from hubtune import compat

    with shaped_as_sixteen_bit(model):
        peft_model = attach()
    compat.lora_on_parametrized_experts(peft_model)
    return peft_model
