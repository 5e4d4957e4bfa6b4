"""Workarounds for the libraries hubtune runs on, in one place. Each one checks for the behaviour
it corrects (so it does nothing once upstream changes), names the versions it was measured on, and
has a test in tests/test_compat.py that fails when the upstream behaviour changes, so the next
engineer knows to remove it.
"""

from __future__ import annotations

# The versions each workaround was measured against.
MEASURED = {
    "trl_adapter_cast": {"trl": "1.16.0", "peft": "0.21.2"},
    "bnb_cpu_bf16_repack": {"bitsandbytes": "0.50.2"},
    "peft_param_wrapper_over_parametrization": {"peft": "0.21.2", "torch": "2.13.0"},
    "llama4_backbone": {"transformers": "5.24.0", "trl": "1.16.0"},
    "peft_keys_under_nested_fsdp": {"peft": "0.21.2", "torch": "2.13.0"},
}


def restore_adapter_dtype(model, compute_dtype) -> int:
    """TRL's SFTTrainer casts the LoRA weights of a quantized model to bfloat16 whatever the compute
    dtype. On a CPU without bf16 units the float32 compute dtype hubtune picks is ~3x faster, so cast
    trainable bfloat16 weights back to it. Returns how many tensors were cast (0 once TRL stops)."""
    import torch

    if compute_dtype != torch.float32:
        return 0
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype == torch.bfloat16:
            p.data = p.data.float()
            cast += 1
    return cast


def keep_4bit_weights_exact(model) -> int:
    """bitsandbytes, on CPUs with AVX512-BF16, repacks 4-bit weights for a bf16 kernel at the first
    no-grad forward (the held-out evaluation), rounding the quantization constants: the frozen base
    would drift during training. Turn the repack off on every 4-bit layer; returns how many."""
    turned_off = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            turned_off += 1
    return turned_off


def reachable_backbone(model) -> bool:
    """transformers 5.24's Llama4ForCausalLM names its backbone `model` but sets base_model_prefix to
    "language_model", so `model.base_model` is the whole causal LM; TRL's fused LM head (SFTTrainer) runs
    `base_model` as the backbone and fails ('MoeCausalLMOutputWithPast' has no last_hidden_state). Point this
    instance's prefix at its backbone; returns whether it did (False once transformers names it right)."""
    from transformers import PreTrainedModel

    body = getattr(model, "model", None)
    if model.base_model is model and isinstance(body, PreTrainedModel):
        model.base_model_prefix = "model"
        return True
    return False


def _param_wrapper_faults() -> set[str]:
    """What PEFT's ParamWrapper (LoRA on a parameter) gets wrong over a parameter that is itself parametrized,
    as quantized experts are (hubtune.experts): one forward and backward of two nested wrappers on a tiny
    stacked-experts layer whose weights carry an identity parametrization.
    proxy_left: the LoRA proxy stays on the parameter after the forward (PEFT looks for _LoraParameterProxy
    only, a single adapter on stacked experts registers _LoraFactorsProxy); stale_inner: the inner wrapper's
    LoRA is not applied (it reads the weight inside the outer wrapper's parametrization cache before adding
    its proxy, and the layer then reads that cached weight)."""
    import warnings

    import torch
    import torch.nn.utils.parametrize as P
    from peft import LoraConfig, get_peft_model

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    class Experts(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.up = torch.nn.Parameter(torch.ones(2, 4, 3), requires_grad=False)
            self.down = torch.nn.Parameter(torch.ones(2, 3, 4), requires_grad=False)

        def forward(self, x):
            return torch.einsum("beo,eoi->bei", torch.einsum("bi,eio->beo", x, self.up), self.down)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = Experts()

        def forward(self, x):
            return self.experts(x)

    model = Model()
    experts = model.experts
    peft_model = get_peft_model(model, LoraConfig(r=1, target_modules=[], target_parameters=["experts.up",
                                                                                             "experts.down"]))
    for name in ("up", "down"):
        P.register_parametrization(experts, name, Identity(), unsafe=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's own "could not find any LoRA parametrization", detected here
        peft_model.base_model.model(torch.ones(1, 4)).sum().backward()
    inner = peft_model.base_model.model.experts.base_layer
    faults = set()
    if any(len(experts.parametrizations[name]) > 1 for name in ("up", "down")):
        faults.add("proxy_left")
    if inner.lora_B["default"].weight.grad is None:
        faults.add("stale_inner")
    return faults


def _remove_lora_proxy(wrapper) -> None:
    """ParamWrapper._remove_parametrizations taking either of PEFT's LoRA proxies: the last one registered on
    the parameter goes, the quantization's parametrization stays."""
    from peft.tuners.lora.layer import _LoraFactorsProxy, _LoraParameterProxy

    chain = wrapper.get_base_layer().parametrizations[wrapper.parameter_name]
    for i in reversed(range(len(chain))):
        if isinstance(chain[i], (_LoraParameterProxy, _LoraFactorsProxy)):
            del chain[i]
            return


def _activate_lora_fresh(wrapper, active_adapters):
    """ParamWrapper._activate_lora, then the weight it read before adding its proxy dropped from the
    parametrization cache, so the layer reads it with the LoRA."""
    import contextlib

    import torch.nn.utils.parametrize as P

    @contextlib.contextmanager
    def activated():
        with type(wrapper)._activate_lora(wrapper, active_adapters):
            P._cache.pop((id(wrapper.get_base_layer()), wrapper.parameter_name), None)
            yield

    return activated()


def lora_on_parametrized_experts(model) -> list[str]:
    """LoRA on quantized experts (lora.target_parameters, or names PEFT moves onto the experts, with
    model.quantize_experts): PEFT's ParamWrapper adds its LoRA to the weight as a torch parametrization at each
    forward and removes it after, and over a weight that is itself parametrized (the quantized experts) PEFT
    0.21 leaves the proxy behind (the chain grows every step, then fails on the integer storage) and nested
    wrappers read a stale cached weight (`_param_wrapper_faults`). Each wrapper of `model` over a parametrized
    weight gets, on the instance (PEFT's classes stay as they are), what corrects the faults PEFT still has;
    returns the faults corrected (none once PEFT is fixed)."""
    import types

    wrappers = [m for m in model.modules() if type(m).__name__ == "ParamWrapper"
                and hasattr(m.get_base_layer(), "parametrizations")]
    faults = _param_wrapper_faults() if wrappers else set()
    for wrapper in wrappers:
        if "proxy_left" in faults:
            wrapper._remove_parametrizations = types.MethodType(_remove_lora_proxy, wrapper)
        if "stale_inner" in faults:
            wrapper._activate_lora = types.MethodType(_activate_lora_fresh, wrapper)
    return sorted(faults)


FSDP_PREFIX = "_fsdp_wrapped_module."


class _AsFSDP1:
    """A module wrapped the way FSDP1 names it (`_fsdp_wrapped_module`), whose state dict keys drop that name and
    take it back on loading, as FSDP1's state dict hooks do, and which hands on what it lacks to the module."""

    @staticmethod
    def wrap(module):
        import torch

        class Wrapper(torch.nn.Module):
            def __getattr__(self, name):
                try:
                    return super().__getattr__(name)
                except AttributeError:
                    inner = self._modules.get(FSDP_PREFIX[:-1])
                    if inner is None:
                        raise
                    return getattr(inner, name)

        outer = Wrapper()
        outer.add_module(FSDP_PREFIX[:-1], module)

        def strip(mod, state_dict, prefix, local_metadata):
            for key in [k for k in state_dict if FSDP_PREFIX in k]:
                state_dict[key.replace(FSDP_PREFIX, "")] = state_dict.pop(key)

        def restore(state_dict, prefix, *args):
            for key in [k for k in state_dict if not k.startswith(prefix + FSDP_PREFIX)]:
                state_dict[prefix + FSDP_PREFIX + key.removeprefix(prefix)] = state_dict.pop(key)

        outer._register_state_dict_hook(strip)
        outer._register_load_state_dict_pre_hook(restore)
        return outer


def _peft_under_fsdp1_faults() -> set[str]:
    """What PEFT gets wrong about a LoRA model under FSDP1, on a tiny one wrapped as FSDP1 names and keys it
    (_AsFSDP1). inner_names: the prefixes PEFT selects the adapter's keys by keep FSDP1's module names past the
    first, which the state dict's keys do not have (so no key is the adapter's); prefix_dropped:
    set_peft_model_state_dict, reading the model's parameter names (FSDP1's, which do not start with the
    PeftModel's "base_model.model."), drops that prefix from keys that need it (so nothing loads);
    trained_in_full_inner_names: a module trained in full (modules_to_save, trainable_token_indices) inside a
    unit is looked up by its name with FSDP1's inner module names, which the state dict's keys do not have
    (saving fails with a KeyError, or loading does)."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.tuners import tuners_utils

    model = get_peft_model(torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))),
                           LoraConfig(r=1, target_modules=["0.0"], modules_to_save=["0.1"], init_lora_weights=False))
    saved = {k: torch.zeros_like(v) for k, v in get_peft_model_state_dict(model).items()}  # before FSDP1's names
    model.base_model.model[0] = _AsFSDP1.wrap(model.base_model.model[0])
    wrapped = _AsFSDP1.wrap(model)
    upstream = tuners_utils._get_tuner_state_dict_key_prefixes
    upstream = getattr(upstream, "upstream", upstream)
    faults = set()
    if any(FSDP_PREFIX in p for p in upstream(wrapped)):
        faults.add("inner_names")
    getter = getattr(get_peft_model_state_dict, "upstream", get_peft_model_state_dict)
    try:
        in_full = [k for k in getter(wrapped) if "0.1." in k]
    except KeyError:
        in_full = []
    if not in_full:
        faults.add("trained_in_full_inner_names")
    setter = getattr(set_peft_model_state_dict, "upstream", set_peft_model_state_dict)
    try:
        setter(model, saved)  # the PeftModel, as peft_keys_under_nested_fsdp hands it on
    except KeyError:
        faults.add("trained_in_full_inner_names")
    if any(p.abs().sum() > 0 for n, p in model.named_parameters() if "modules_to_save" in n):
        faults.add("trained_in_full_inner_names")
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)
    try:
        setter(wrapped, saved)
    except KeyError:
        pass  # trained_in_full_inner_names, found above
    if any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_" in n):
        faults.add("prefix_dropped")
    return faults


def _keys_without_gathering(model) -> None:
    """PEFT's ModulesToSaveWrapper names the keys it saves by its trained copy's own state_dict(); under FSDP1 that
    copy is a unit of its own (PEFT's wrap policy), and its state_dict() gathers it: a collective, which only the
    main process calls when it writes the adapter at the end (Trainer._save), so the save hangs. Such a wrapper
    reads the key names from the state dict it is given instead (the model's, which has every one)."""
    import types

    from peft.utils.other import ModulesToSaveWrapper
    from torch.distributed.fsdp import FullyShardedDataParallel

    def adapter_state_dict(self, adapter_name, state_dict):
        if adapter_name not in self._adapters:
            return {}
        prefix = f"modules_to_save.{adapter_name}."
        return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}

    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and any(
                isinstance(m, FullyShardedDataParallel) for m in module.modules_to_save.modules()):
            module.adapter_state_dict = types.MethodType(adapter_state_dict, module)


class _FlatNames:
    """A model whose named_modules gives the names without FSDP1's inner module names, as the state dict's keys
    have them; everything else is the model's."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def named_modules(self, *args, **kwargs):
        for name, module in self._model.named_modules(*args, **kwargs):
            yield name.replace(FSDP_PREFIX, ""), module


def peft_keys_under_nested_fsdp() -> list[str]:
    """PEFT 0.21 under FSDP1 (_peft_under_fsdp1_faults), where accelerate's save_fsdp_model / load_fsdp_model
    checkpoint the adapter through get_peft_model_state_dict / set_peft_model_state_dict (adapter_only, as the
    Trainer asks): with PEFT's wrap policy (each decoder layer and each LoRA weight a unit of its own) the
    checkpoint holds no weights, a resume loads none (silently: the adapter starts over), and the adapter saved at
    the end is empty. PEFT's prefixes are given without FSDP1's inner module names too, and
    set_peft_model_state_dict on an FSDP1 model is given the PeftModel it wraps (whose parameter names start as
    PEFT expects; FSDP1's state dict hooks on the units inside still apply). Returns the faults corrected (none
    once PEFT handles FSDP1)."""
    import peft
    from peft.tuners import tuners_utils

    if hasattr(peft.set_peft_model_state_dict, "upstream"):
        return peft.set_peft_model_state_dict.faults  # corrected already in this process
    faults = _peft_under_fsdp1_faults()
    if "inner_names" in faults:
        upstream_prefixes = tuners_utils._get_tuner_state_dict_key_prefixes

        def prefixes(model, adapter_name=None):
            found = upstream_prefixes(model, adapter_name)
            return found | {p.replace(FSDP_PREFIX, "") for p in found}

        prefixes.upstream = upstream_prefixes
        tuners_utils._get_tuner_state_dict_key_prefixes = prefixes
    upstream_set, upstream_get = peft.set_peft_model_state_dict, peft.get_peft_model_state_dict

    def under_fsdp(model) -> bool:
        return any(FSDP_PREFIX in name for name, _ in model.named_modules())

    def set_state(model, *args, **kwargs):
        from torch.distributed.fsdp import FullyShardedDataParallel

        if "prefix_dropped" in faults and isinstance(model, FullyShardedDataParallel):
            model = model.module
        if "trained_in_full_inner_names" in faults and under_fsdp(model):
            model = _FlatNames(model)
        return upstream_set(model, *args, **kwargs)

    def get_state(model, *args, **kwargs):
        if under_fsdp(model):
            _keys_without_gathering(model)
            if "trained_in_full_inner_names" in faults:
                model = _FlatNames(model)
        return upstream_get(model, *args, **kwargs)

    set_state.upstream, set_state.faults = upstream_set, sorted(faults)
    get_state.upstream = upstream_get
    # accelerate imports them from peft when it saves or loads; PeftModel.save_pretrained (the adapter at the end)
    # calls the one bound in peft.peft_model.
    import peft.peft_model

    peft.set_peft_model_state_dict = set_state
    peft.get_peft_model_state_dict = peft.peft_model.get_peft_model_state_dict = get_state
    return sorted(faults)
