"""Bases saved by NVIDIA ModelOpt in NVFP4 (`nvidia/*-NVFP4`), loaded without a 16-bit copy of their weights.

transformers 5.24 has no ModelOpt quantizer (its own `nvfp4` one refuses pre-quantized checkpoints) and PEFT 0.21
no NVFP4 layer, so hubtune reads these checkpoints itself: every quantized weight stays packed in memory and is
dequantized to the compute dtype when its layer reads it, through a torch parametrization (as hubtune.experts does
for int8 experts), so PEFT's LoRA (target_modules on Linear layers, target_parameters on stacked experts) wraps
them as it wraps a 16-bit base, and the adapter keeps the 16-bit base's names.

The format (ModelOpt's NVFP4QTensor, `modelopt/torch/quantization/qtensor/nvfp4_tensor.py`, Apache-2.0; the
same layout torchao's NVFP4Tensor and Axolotl's `cli/utils/lora_merge.py::_dequant_nvfp4` read), per quantized
weight `<prefix>` of out x in = N x K:
- `<prefix>.weight`: uint8 [N, K/2], two E2M1 codes a byte, the lower nibble the even column. A code is
  sign (bit 3), exponent (bits 2-1), mantissa (bit 0): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
- `<prefix>.weight_scale`: float8 E4M3 [N, K/16], one scale per 16 consecutive columns.
- `<prefix>.weight_scale_2`: float32 scalar, the tensor's global scale.
  weight[n, k] = e2m1(code[n, k]) * float(weight_scale[n, k // 16]) * weight_scale_2
- `<prefix>.input_scale` (and `k_scale`, `v_scale` with an FP8 KV cache): activation scales for 4-bit inference
  kernels. LoRA training computes with 16-bit activations (as Axolotl's W4A16 path does), so they are not read.
Mixture-of-experts layers are saved one Linear per expert (`mlp.experts.<e>.gate_proj.weight`, ...), each with its
own global scale; they are stacked into transformers' `experts.gate_up_proj` (gate rows, then up rows) and
`experts.down_proj` as its loader does for 16-bit checkpoints, the global scale kept per expert and row, so
the stack dequantizes to exactly what each expert's tensors hold (Axolotl instead folds the ratio to the larger
of gate's and up's scales into the E4M3 block scales, exact up to that rounding).

DeepSeek V4's NVFP4 release (`nvidia/DeepSeek-V4-Flash-NVFP4`) is another layout: its config.json declares
transformers' `quant_method: fp8` (`quant_algo: MIXED_PRECISION`, `moe_quant_algo: NVFP4`), its dense and attention
weights are block-wise FP8 (hubtune.fp8: E4M3 codes, 128 x 128 blocks, UE8M0 scales) and its routed experts NVFP4 in
the layout above, all under DeepSeek's own tensor names (`layers.<i>.ffn.experts.<e>.w1.weight`, `embed.weight`,
`layers.<i>.attn.wq_a.scale`, ...). transformers' fp8 quantizer would drop the experts' scales (Axolotl installs a
quantizer of its own for them: integrations/kernels/libs/scattermoe_lora/nvfp4_fp8_quantizer.py). hubtune reads it
here: the names through transformers' own deepseek_v4 renaming (conversion_mapping.py), w1, w3 and w2 stacked into
gate_up_proj (gate rows, then up rows) and down_proj as transformers' converter stacks them, the FP8 weights kept
in FP8 under an `Fp8Blocks` parametrization, the experts packed under `Nvfp4Blocks`.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.utils.parametrize as P

from hubtune import fp8
from hubtune.errors import ConfigError
from hubtune.fp8 import Fp8Blocks

BLOCK = 16
# E2M1 values by 4-bit code (bit 3 is the sign).
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Per-tensor constants the format carries for inference kernels only (activation and KV-cache scales).
INFERENCE_ONLY = ("input_scale", "k_scale", "v_scale", "output_scale")
# The model types whose fp8-declared checkpoints with NVFP4 experts hubtune reads (their names mapped by transformers).
MIXED_MODEL_TYPES = ("deepseek_v4",)
# DeepSeek's routed experts (`experts.<e>.w1`, `w3`, `w2`: gate, up, down), as transformers' converter reads them.
_DEEPSEEK_EXPERT = re.compile(r"\.experts\.(\d+)\.w([123])\.")
_DEEPSEEK_PROJ = {"1": "gate_proj", "3": "up_proj", "2": "down_proj"}
_EXPERT = re.compile(r"^(?P<experts>.+\.experts)\.(?P<index>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.(?P<leaf>\w+)$")


def dequantize(packed: torch.Tensor, block_scale: torch.Tensor, global_scale: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weight [..., K] that packed [..., K/2] (uint8), block_scale [..., K/16] (E4M3) and global_scale
    (float32, broadcastable to [..., 1]) hold, in `dtype` (computed in float32: block scale times global scale,
    then times the E2M1 value, as torchao's NVFP4Tensor.dequantize). A stack of experts is dequantized one
    expert at a time into the result, so the float32 transient is one expert's."""
    if packed.ndim <= 2:
        return _dequantize_matrix(packed, block_scale, global_scale, dtype)
    out = torch.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=dtype, device=packed.device)
    per_row = global_scale.ndim == packed.ndim
    for e in range(packed.shape[0]):
        out[e] = dequantize(packed[e], block_scale[e], global_scale[e] if per_row else global_scale, dtype)
    return out


_PAIRS: dict[torch.device, torch.Tensor] = {}  # by device: a byte's two values, the low nibble first


def _dequantize_matrix(packed, block_scale, global_scale, dtype):
    pairs = _PAIRS.get(packed.device)
    if pairs is None:
        pairs = _PAIRS[packed.device] = torch.tensor([(E2M1[b & 0x0F], E2M1[b >> 4]) for b in range(256)],
                                                     dtype=torch.float32, device=packed.device)
    values = torch.nn.functional.embedding(packed.int(), pairs).view(*packed.shape[:-1], -1, BLOCK)
    scale = block_scale.to(torch.float32) * global_scale.to(torch.float32)
    return values.mul_(scale.unsqueeze(-1)).flatten(-2).to(dtype)


# While a mixture-of-experts block computes, each of its NVFP4 stacks is dequantized once, however often it is read
# (PEFT's ParamWrapper reads the weight to check its dtype, then again with its LoRA added; the experts loop reads it
# per expert); the copies go when the block's forward ends.
_MEMO: dict = {"depth": 0, "values": {}}


def _memoize_within(module: torch.nn.Module) -> None:
    if getattr(module, "_hubtune_nvfp4_memo", False):
        return

    def enter(mod, args):
        _MEMO["depth"] += 1

    def leave(mod, args, output):
        _MEMO["depth"] = max(0, _MEMO["depth"] - 1)
        if not _MEMO["depth"]:
            _MEMO["values"].clear()

    module.register_forward_pre_hook(enter)
    module.register_forward_hook(leave, always_call=True)
    module._hubtune_nvfp4_memo = True


class Nvfp4Blocks(torch.nn.Module):
    """The parametrization of a weight stored as NVFP4: the packed codes are the parameter, the block scales and
    global scale(s) buffers; reading the weight dequantizes it to `dtype`."""

    def __init__(self, block_scale: torch.Tensor, global_scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.register_buffer("block_scale", block_scale)
        self.register_buffer("global_scale", global_scale)
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        if not _MEMO["depth"]:
            return dequantize(packed, self.block_scale, self.global_scale, self.dtype)
        if id(self) not in _MEMO["values"]:
            _MEMO["values"][id(self)] = dequantize(packed, self.block_scale, self.global_scale, self.dtype)
        return _MEMO["values"][id(self)]

    def shape_of(self, packed: torch.Tensor) -> torch.Size:
        return torch.Size((*packed.shape[:-1], packed.shape[-1] * 2))


def saved_format(folder: str | Path) -> dict | None:
    """ModelOpt's quantization settings of a local model folder (config.json's quantization_config with
    quant_method modelopt, or the hf_quant_config.json ModelOpt writes beside it), or None when it has neither."""
    folder = Path(folder)
    found = None
    config = folder / "config.json"
    if config.is_file():
        try:
            found = json.loads(config.read_text()).get("quantization_config")
        except (json.JSONDecodeError, AttributeError):
            found = None
    if isinstance(found, dict) and (found.get("quant_method") == "modelopt" or is_mixed(found)):
        return found
    side = folder / "hf_quant_config.json"
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except json.JSONDecodeError:
            return None
        if isinstance(data, dict) and isinstance(data.get("quantization"), dict):
            return {"quant_method": "modelopt", **data["quantization"]}
    return None


def declared(model: str | None, revision: str | None = None, read_hub: bool = False) -> bool:
    """Whether a base (a local folder, or with read_hub a Hub repo id, whose config.json alone is downloaded) is
    saved in NVFP4 by ModelOpt. A Hub id without read_hub, or one whose config cannot be read, counts as not."""
    if not model:
        return False
    from hubtune.refs import RepoRef

    ref = RepoRef.parse(model)
    if ref.is_local:
        return ref.path.is_dir() and is_nvfp4(saved_format(ref.path))
    if not (read_hub and ref.is_hub):
        return False
    from hubtune.errors import HubtuneError
    from hubtune.memory import read_config

    try:
        config, _ = read_config(model, revision)
    except HubtuneError:
        return False  # the load itself says what is wrong with the repo
    return is_nvfp4(config.get("quantization_config"))


def is_nvfp4(quantization: dict | None) -> bool:
    """Whether these settings declare NVFP4 weights hubtune reads: ModelOpt's NVFP4, or DeepSeek V4's fp8 with
    NVFP4 experts (`is_mixed`)."""
    return bool(quantization) and (quantization.get("quant_method") == "modelopt" and
                                   str(quantization.get("quant_algo", "")).upper() == "NVFP4" or is_mixed(quantization))


def saved_as(quantization: dict | None) -> str:
    """How such a base is saved, for messages: `saved in NVFP4 by NVIDIA ModelOpt` and the like."""
    if is_mixed(quantization):
        return "saved in block-wise FP8 with NVFP4 experts (DeepSeek V4's NVFP4 release)"
    return "saved in NVFP4 by NVIDIA ModelOpt"


def is_mixed(quantization: dict | None) -> bool:
    """Whether these settings declare block-wise FP8 weights with NVFP4 experts (DeepSeek V4's NVFP4 release)."""
    return bool(quantization) and quantization.get("quant_method") == "fp8" and \
        str(quantization.get("moe_quant_algo", "")).upper() == "NVFP4"


def unreadable(quantization: dict) -> str | None:
    """Why hubtune cannot load a ModelOpt checkpoint with these settings, or None when it can."""
    if is_mixed(quantization):
        block = quantization.get("weight_block_size") or list(fp8.BLOCK)
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            return f"declared fp8 with weight_block_size {block!r}; it must be two positive integers (128, 128)"
        if quantization.get("scale_fmt", "float") not in ("float", "ue8m0"):
            return (f"declared fp8 with scale_fmt {quantization.get('scale_fmt')!r}; the block scales are read as "
                    f"float or ue8m0")
        group = quantization.get("group_size", BLOCK)
        if group != BLOCK:
            return f"declared with NVFP4 experts of group_size {group}; the format's block is {BLOCK} weights"
        return None
    algo = str(quantization.get("quant_algo", ""))
    if algo.upper() != "NVFP4":
        return (f"saved by NVIDIA ModelOpt as {algo or 'an unnamed algorithm'} (quant_method modelopt): hubtune reads "
                f"ModelOpt's NVFP4 checkpoints only, and transformers has no ModelOpt quantizer; use the 16-bit "
                f"model it was made from (its card's base_model), with model.quantization nf4 for 4-bit memory")
    group = quantization.get("group_size", BLOCK)
    if group != BLOCK:
        return f"saved in NVFP4 with group_size {group}; the format's block is {BLOCK} weights"
    return None


def inside_other_format(folder: str | Path, quantization: dict) -> str | None:
    """Why a checkpoint whose quantization_config names another method (DeepSeek V4's NVFP4 releases declare
    transformers' fp8) but which holds NVFP4 weights (`weight_scale_2` beside them) cannot load: transformers'
    quantizer for that method would drop their scales and leave those weights random. None when it holds none."""
    folder = Path(folder)
    if quantization.get("quant_method") == "modelopt" or is_mixed(quantization) or not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = json.loads(index.read_text()).get("weight_map", {})
    else:
        from safetensors import safe_open

        names = []
        for file in folder.glob("*.safetensors"):
            with safe_open(file, framework="pt") as f:
                names += list(f.keys())
    found = next((name for name in names if name.endswith(".weight_scale_2")), None)
    if found is None:
        return None
    return (f"declared {quantization.get('quant_method')!r} but holding NVFP4 weights ({found} and others): "
            f"transformers' {quantization.get('quant_method')} quantizer drops their scales, which would leave them "
            f"random, and hubtune reads NVFP4 from checkpoints ModelOpt declares NVFP4 (quant_method modelopt, "
            f"quant_algo NVFP4) and from DeepSeek V4's fp8 ones that declare it (moe_quant_algo NVFP4); use the "
            f"16-bit model it was made from")


def _tensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted({folder / name for name in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError([("model.id", f"{folder} holds no .safetensors weights (ModelOpt saves its checkpoints "
                                        f"in safetensors)")])
    return files


def _set_parameter(module: torch.nn.Module, name: str, value: torch.Tensor, frozen: bool = False) -> None:
    module._parameters[name] = torch.nn.Parameter(value, requires_grad=not frozen and value.is_floating_point())


def _quantized_parameter(module: torch.nn.Module, name: str, packed, block_scale, global_scale, dtype, where: str):
    expected = getattr(module, name).shape
    shape = torch.Size((*packed.shape[:-1], packed.shape[-1] * 2))
    if shape != expected or block_scale.shape != torch.Size((*shape[:-1], shape[-1] // BLOCK)):
        raise ConfigError([("model.id", f"{where}: the NVFP4 weight is {tuple(packed.shape)} bytes with block scales "
                                        f"{tuple(block_scale.shape)}, which do not hold the model's "
                                        f"{tuple(expected)} weight (packed {expected[-1] // 2} bytes and "
                                        f"{expected[-1] // BLOCK} scales a row)")])
    _set_parameter(module, name, packed, frozen=True)
    P.register_parametrization(module, name, Nvfp4Blocks(block_scale, global_scale, dtype), unsafe=True)


def load(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
         trust_remote_code: bool = False, revision: str | None = None, expert_parallel: int = 1, **config_kwargs):
    """The causal LM in a ModelOpt NVFP4 folder (or Hub repo, downloaded at `revision`): built without weights,
    its quantized weights then set packed (dequantized when read), the others in `dtype`. config_kwargs go to
    the model's construction (attn_implementation, experts_implementation, output_router_logits).

    expert_parallel N > 1 (in a launch of N processes): each process reads and keeps only its share of every
    stacked experts module (experts [rank·E/N, (rank+1)·E/N)), and transformers' expert-parallel dispatch
    (EpDispatchExpertsParallel with its all-to-all implementation, as from_pretrained(distributed_config=...)
    installs it) sends each routed token to the process holding its expert and back (spread_experts). The
    other weights load whole in every process."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from hubtune import experts

    folder = Path(path)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        from hubtune import hub

        folder = Path(snapshot_download(str(path), revision=revision, token=hub.token()))
    quantization = saved_format(folder)
    if quantization is None or (why := unreadable(quantization)):
        raise ConfigError([("model.id", f"{folder} is " + (why if quantization else "not a ModelOpt checkpoint"))])
    mixed = is_mixed(quantization)
    model_type = json.loads((folder / "config.json").read_text()).get("model_type") if mixed else None
    if mixed and model_type not in MIXED_MODEL_TYPES:
        raise ConfigError([("model.id", f"{folder} declares fp8 with NVFP4 experts (moe_quant_algo NVFP4) for "
                                        f"model_type {model_type!r}; hubtune reads that layout under "
                                        f"DeepSeek V4's names only (model_type "
                                        f"{' or '.join(repr(t) for t in MIXED_MODEL_TYPES)}); use the 16-bit model "
                                        f"it was made from")])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # built as a 16-bit model; the weights below say what is quantized
    attention = config_kwargs.pop("attn_implementation", None)
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    with init_empty_weights(include_buffers=False):  # parameters on meta, rotary tables and the like computed
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 **({"attn_implementation": attention} if attention else {}))

    # Tensors the model's class leaves out as transformers' loader does (Qwen3-Next's multi-token prediction
    # layers, Gemma 4's key/value projections of the layers that share another's cache).
    ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
    rename = _deepseek_names(model, config.model_type) if mixed else (lambda key: key)
    tensors: dict[str, tuple[Path, str]] = {}
    for file in _tensor_files(folder):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if not any(p.search(key) for p in ignored):
                    tensors[rename(key)] = (file, key)
    strict = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    loose = (getattr(model, "_keep_in_fp32_modules", None) or ()) if dtype == torch.float16 else ()
    fp32 = re.compile("|".join(rf"((^|\.){re.escape(m)}($|\.))" for m in (*strict, *loose))) if (*strict, *loose) else None

    handles: dict[Path, object] = {}  # one open handle per file: a shard's header is parsed once

    def read(key: str) -> torch.Tensor:
        file, name = tensors[key]
        if file not in handles:
            handles[file] = safe_open(file, framework="pt", device=str(device))
        return handles[file].get_tensor(name)

    quantized = {key[: -len(".weight_scale")] for key in tensors if key.endswith(".weight_scale")}
    blockwise = {key[: -len(".weight_scale_inv")] for key in tensors if key.endswith(".weight_scale_inv")}
    used: set[str] = set()
    stacks: dict[str, dict[int, dict[str, str]]] = defaultdict(lambda: defaultdict(dict))
    for key in tensors:
        if key.rsplit(".", 1)[-1] in INFERENCE_ONLY:
            used.add(key)
        elif (m := _EXPERT.match(key)) and m["leaf"] == "weight" and _stacked(model, m["experts"]):
            stacks[m["experts"]][int(m["index"])][m["proj"]] = key[: -len(".weight")]
    for prefix in sorted(quantized):
        if _EXPERT.match(prefix + ".weight") and _stacked(model, _EXPERT.match(prefix + ".weight")["experts"]):
            continue
        module_name, _, leaf = (prefix + ".weight").rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            raise ConfigError([("model.id", f"{folder}: {prefix} is quantized but {type(model).__name__} has no such "
                                            f"layer (its config.json model_type is {config.model_type!r})")]) from None
        _quantized_parameter(module, leaf, read(prefix + ".weight"), read(prefix + ".weight_scale"),
                             read(prefix + ".weight_scale_2").to(torch.float32).reshape(()), dtype, prefix)
        used.update(prefix + suffix for suffix in (".weight", ".weight_scale", ".weight_scale_2"))
    block = tuple(quantization.get("weight_block_size") or fp8.BLOCK) if mixed else fp8.BLOCK
    for prefix in sorted(blockwise):
        if (m := _EXPERT.match(prefix + ".weight")) and _stacked(model, m["experts"]):
            raise ConfigError([("model.id", f"{folder}: the routed expert {prefix} is block-wise FP8; hubtune reads "
                                            f"this layout with NVFP4 routed experts (weight_scale, weight_scale_2) "
                                            f"only, as its config.json's moe_quant_algo NVFP4 says")])
        try:
            module = model.get_submodule(prefix)
        except AttributeError:
            raise ConfigError([("model.id", f"{folder}: {prefix} is quantized but {type(model).__name__} has no such "
                                            f"layer (its config.json model_type is {config.model_type!r})")]) from None
        _fp8_parameter(module, "weight", read(prefix + ".weight"), read(prefix + ".weight_scale_inv"), block,
                       dtype, f"{folder}: {prefix}")
        used.update((prefix + ".weight", prefix + ".weight_scale_inv"))
    shares = _expert_shares(model, stacks, expert_parallel, folder)
    for experts_name, by_index in stacks.items():
        used.update(_stack_experts(model, experts_name, by_index, quantized, read, dtype, folder,
                                   shares.get(experts_name)))
    for key in tensors:
        if key in used:
            continue
        module_name, _, leaf = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if module is None or (leaf not in module._parameters and leaf not in module._buffers):
            raise ConfigError([("model.id", f"{folder}: the checkpoint's {key} is no parameter of "
                                            f"{type(model).__name__}; hubtune reads ModelOpt checkpoints saved with "
                                            f"transformers' names")])
        value = read(key)
        if value.is_floating_point():
            value = value.to(torch.float32 if fp32 is not None and fp32.search(key) else dtype)
        expected = (module._parameters.get(leaf) if leaf in module._parameters else module._buffers[leaf])
        if expected is not None and expected.shape != value.shape:
            raise ConfigError([("model.id", f"{folder}: the checkpoint's {key} is {tuple(value.shape)}, the "
                                            f"model's (from config.json) {tuple(expected.shape)}")])
        if leaf in module._parameters:
            _set_parameter(module, leaf, value)
        else:
            module._buffers[leaf] = value
    handles.clear()
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ConfigError([("model.id", f"{folder}: the checkpoint has no {', '.join(missing[:5])}"
                                        f"{' and more' if len(missing) > 5 else ''}")])
    for name, buffer in model.named_buffers():
        if buffer.device != torch.device(device) and not buffer.is_meta:
            module_name, _, leaf = name.rpartition(".")
            model.get_submodule(module_name)._buffers[leaf] = buffer.to(device)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.hubtune_nvfp4 = True
    model.eval()
    for name, module in list(model.named_modules()):  # an experts loop reads its stack once per expert
        if P.is_parametrized(module) and any(chain.original.ndim >= 3 for chain in module.parametrizations.values()):
            experts._cache_per_forward(module)
            _memoize_within(model.get_submodule(name.rpartition(".")[0]) if "." in name else module)
    if shares:
        spread_experts(model, [model.get_submodule(name) for name in shares], expert_parallel, device)
    return model


SHARE = "_hubtune_expert_share"  # on an experts module loaded in part: (first expert, experts held, experts in all)


def _expert_shares(model, stacks, expert_parallel: int, folder) -> dict[str, range]:
    """Each stacked experts module's experts this process keeps: all of them without expert parallelism (no
    entry); with it, rank·E/N to (rank+1)·E/N, the module rebuilt (on meta) at that many experts."""
    if expert_parallel == 1:
        return {}
    import torch.distributed as dist

    where = "training.expert_parallel_size"
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world != expert_parallel:
        raise ConfigError([(where, f"{expert_parallel} over an NVFP4 base splits the experts over every process, "
                                   f"each holding its own, and this launch has {world} process(es); launch "
                                   f"{expert_parallel} (--num-processes {expert_parallel})")])
    if not stacks:
        raise ConfigError([(where, f"{folder}: {type(model).__name__} has no stacked experts (gate_up_proj and "
                                   f"down_proj under an experts module) to spread over processes")])
    rank, shares = dist.get_rank(), {}
    for name in stacks:
        module = model.get_submodule(name)
        total = module.gate_up_proj.shape[0]
        others = [p for p, v in module._parameters.items() if p not in ("gate_up_proj", "down_proj") and v is not None]
        if total % expert_parallel or others:
            raise ConfigError([(where, f"{expert_parallel}: {name} holds {total} experts"
                                       + (f" and {', '.join(others)}" if others else "") + ", which do not split "
                                       f"evenly over {expert_parallel} processes")])
        local = total // expert_parallel
        for param in ("gate_up_proj", "down_proj"):
            meta = module._parameters[param]
            module._parameters[param] = torch.nn.Parameter(torch.empty((local, *meta.shape[1:]), device="meta"),
                                                           requires_grad=False)
        module.num_experts = local
        module._is_expert_parallel = True  # the experts forward skips the ids the dispatch marks as elsewhere
        setattr(module, SHARE, (rank * local, local, total))
        shares[name] = range(rank * local, (rank + 1) * local)
    return shares


def spread_experts(model, modules, expert_parallel: int, device) -> None:
    """transformers' expert-parallel dispatch on each experts module holding this process's share: routed tokens
    go to the process holding their expert and back, all-to-all (distributed/expert_parallel.py)."""
    from torch.distributed.device_mesh import init_device_mesh
    from transformers.distributed.expert_parallel import EpDispatchExpertsParallel

    mesh = init_device_mesh(torch.device(device).type, (expert_parallel, 1), mesh_dim_names=("ep", "tp"))
    for module in modules:
        EpDispatchExpertsParallel().install_forward(module, ep_mesh=mesh["ep"], tp_mesh=mesh["tp"],
                                                    ep_implementation="all_to_all")
    # Placed and reduced by hubtune itself: the Trainer must neither wrap it in DDP, which would copy rank 0's
    # experts over the others', nor average the factors of LoRA on them (hubtune.expert_lora keeps those); its
    # replicated adapter it keeps identical as for a model transformers sharded as it loaded.
    model._is_distributed_loading_by_transformers = True


def _deepseek_names(model, model_type: str):
    """A checkpoint name (DeepSeek's) to the model's: transformers' renaming for this model type, the FP8 block
    scales DeepSeek saves as `<prefix>.scale` named `<prefix>.weight_scale_inv` (as transformers' fp8 quantizer
    renames them), the routed experts' w1, w3, w2 named gate_proj, up_proj, down_proj (stacked later), and the
    base model's prefix added where the model holds the name under it."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, apply_renamings

    renamings = [t for t in get_checkpoint_conversion_mapping(model_type) or () if isinstance(t, WeightRenaming)]
    prefix = getattr(model, "base_model_prefix", "")
    children = {child for child, _ in model.named_children()}

    def name(key: str) -> str:
        if key.endswith(".scale"):
            key = key[: -len(".scale")] + ".weight_scale_inv"
        key = apply_renamings(key, renamings)
        key = _DEEPSEEK_EXPERT.sub(lambda m: f".experts.{m[1]}.{_DEEPSEEK_PROJ[m[2]]}.", key)
        if prefix and key.split(".", 1)[0] not in children and prefix in children:
            key = f"{prefix}.{key}"
        return key

    return name


def _fp8_parameter(module: torch.nn.Module, name: str, codes, stored_scale, block, dtype, where: str):
    expected = getattr(module, name).shape
    if codes.dtype not in (torch.float8_e4m3fn, torch.uint8) or codes.shape != expected \
            or stored_scale.shape != fp8.grid(expected, block):
        raise ConfigError([("model.id", f"{where}: the FP8 weight is {tuple(codes.shape)} {codes.dtype} with block "
                                        f"scales {tuple(stored_scale.shape)}, which do not hold the model's "
                                        f"{tuple(expected)} weight in float8_e4m3fn with {tuple(block)} blocks "
                                        f"({tuple(fp8.grid(expected, block))} scales)")])
    _set_parameter(module, name, codes.view(torch.uint8), frozen=True)
    P.register_parametrization(module, name, Fp8Blocks(fp8.scales(stored_scale), block, dtype), unsafe=True)


def _stacked(model, experts_name: str) -> bool:
    try:
        module = model.get_submodule(experts_name)
    except AttributeError:
        return False
    return "gate_up_proj" in module._parameters and "down_proj" in module._parameters


def _stack_experts(model, experts_name, by_index, quantized, read, dtype, folder, keep: range | None = None) -> set[str]:
    """Per-expert gate/up/down Linear weights into the experts module's stacked gate_up_proj and down_proj (of
    the experts in `keep` only, when given: this process's share; the others are left unread)."""
    module = model.get_submodule(experts_name)
    count = getattr(module, SHARE, (0, 0, module.gate_up_proj.shape[0]))[2]
    if sorted(by_index) != list(range(count)) or any(set(p) != {"gate_proj", "up_proj", "down_proj"}
                                                      for p in by_index.values()):
        raise ConfigError([("model.id", f"{folder}: {experts_name} holds {count} experts in {type(model).__name__}, "
                                        f"and the checkpoint does not have gate_proj, up_proj and down_proj for each "
                                        f"of experts 0 to {count - 1}")])
    used = {by_index[e][proj] + leaf for e in set(range(count)) - set(keep or range(count))
            for proj in ("gate_proj", "up_proj", "down_proj") for leaf in (".weight", ".weight_scale", ".weight_scale_2")}
    for name, projs in (("gate_up_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",))):
        prefixes = [[by_index[e][proj] for proj in projs] for e in (keep or range(count))]
        kinds = {prefix in quantized for row in prefixes for prefix in row}
        if len(kinds) > 1:
            raise ConfigError([("model.id", f"{folder}: {experts_name}.{name} mixes NVFP4 and 16-bit experts")])
        if kinds == {True}:
            packed, scales, globals_ = [], [], []
            for row in prefixes:
                packed.append(torch.cat([read(p + ".weight") for p in row]))
                scales.append(torch.cat([read(p + ".weight_scale") for p in row]))
                globals_.append(torch.cat([read(p + ".weight_scale_2").to(torch.float32).reshape(1).expand(
                    read(p + ".weight").shape[0]) for p in row]))
                used.update(p + s for p in row for s in (".weight", ".weight_scale", ".weight_scale_2"))
            _quantized_parameter(module, name, torch.stack(packed), torch.stack(scales),
                                 torch.stack(globals_).unsqueeze(-1), dtype, f"{experts_name}.{name}")
        else:
            value = torch.stack([torch.cat([read(p + ".weight") for p in row]) for row in prefixes]).to(dtype)
            if value.shape != module._parameters[name].shape:
                raise ConfigError([("model.id", f"{folder}: {experts_name}.{name} stacks to {tuple(value.shape)}, "
                                                f"the model's is {tuple(module._parameters[name].shape)}")])
            _set_parameter(module, name, value)
            used.update(p + ".weight" for row in prefixes for p in row)
    return used


def nvfp4_weights(model) -> list[str]:
    """The names of the weights stored NVFP4 (parametrized), as the 16-bit base names them."""
    return [f"{name}.{param}" if name else param for name, module in model.named_modules()
            if P.is_parametrized(module) for param in module.parametrizations
            if isinstance(module.parametrizations[param][0], Nvfp4Blocks)]


def fp8_weights(model) -> list[str]:
    """The names of the weights stored in block-wise FP8 (parametrized), as the 16-bit base names them."""
    return [f"{name}.{param}" if name else param for name, module in model.named_modules()
            if P.is_parametrized(module) for param in module.parametrizations
            if isinstance(module.parametrizations[param][0], Fp8Blocks)]


def dequantized(model):
    """`model` with every NVFP4 weight replaced by its dequantized value, a plain parameter (for merging an adapter
    into it, and saving it as a 16-bit model)."""
    for module in list(model.modules()):
        if P.is_parametrized(module):
            for name in [n for n in module.parametrizations
                         if isinstance(module.parametrizations[n][0], (Nvfp4Blocks, Fp8Blocks))]:
                value = getattr(module, name).detach()
                P.remove_parametrizations(module, name, leave_parametrized=False)  # the packed bytes back
                module._parameters[name] = torch.nn.Parameter(value)  # a float tensor cannot be set into them
    model.hubtune_nvfp4 = False
    return model


# ---- merge-aware LoRA (Axolotl's nvfp4_merge_aware) -------------------------------------------------------------
# The forward computes with Q(W + s·B·A): the effective weight quantized to NVFP4 again (fresh E4M3 block scales
# over the base's global scale) and dequantized, the gradient passing straight through Q to the adapter, so that
# an NVFP4-preserving merge writes what was trained. Q is torchao's, called as Axolotl's merge-identity quantizer
# calls it (src/axolotl/integrations/kernels/libs/sonicmoe/nvfp4_quant.py, fake_quant_nvfp4, Apache-2.0).


def fake_quantize(x: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    """x [N, K] or [E, N, K] rounded onto the NVFP4 grid with fresh block scales over `global_scale` (a scalar,
    or one per expert), returned dequantized in x's dtype: torchao's nvfp4_quantize, then NVFP4Tensor.dequantize
    with a bfloat16 original dtype, as Axolotl does."""
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, nvfp4_quantize
    except ImportError:
        raise ConfigError([("lora.nvfp4_merge_aware", "needs torchao's NVFP4 quantizer, the one Axolotl's merge-aware "
                                                      "training uses: pip install torchao")]) from None
    xc = x.contiguous() if x.dtype in (torch.bfloat16, torch.float32) else x.float().contiguous()
    pts = global_scale.to(device=x.device, dtype=torch.float32)
    pts = pts.reshape(()) if pts.numel() == 1 else pts.reshape(-1, 1)
    scale, packed = nvfp4_quantize(xc, BLOCK, pts)
    scale = scale.view(*x.shape[:-1], x.shape[-1] // BLOCK)
    # torchao 0.18 takes a scalar or one scale per expert as (E, 1, 1); the product with the block scales is
    # float32 either way (Axolotl passes a (1, 1) scalar, which newer torchao accepts, for that promotion)
    pts = pts.reshape(-1, 1, 1) if pts.dim() else pts
    return NVFP4Tensor(packed, scale, BLOCK, torch.bfloat16, per_tensor_scale=pts).dequantize(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Q in the forward, the identity in the backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight, global_scale):
        return fake_quantize(weight.detach(), global_scale)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def snap(weight: torch.Tensor, global_scale: torch.Tensor) -> torch.Tensor:
    return _StraightThrough.apply(weight, global_scale)


class Nvfp4Snap(torch.nn.Module):
    """The parametrization put after PEFT's LoRA on a stacked NVFP4 weight: W + delta read as Q(W + delta)."""

    def __init__(self, global_scale: torch.Tensor):
        super().__init__()
        self.global_scale = global_scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return snap(weight, self.global_scale)


def merge_scale(blocks: Nvfp4Blocks, stacked: bool) -> torch.Tensor:
    """The global scale Q quantizes over: the tensor's own, or per expert the larger of its gate and up scales (the
    one scale per expert Axolotl's loader keeps for the stacked gate_up_proj)."""
    scale = blocks.global_scale
    return scale.flatten(1).amax(1) if stacked and scale.ndim >= 2 else scale.reshape(())


def _lora_linear_forward(self, x, *args, **kwargs):
    """PEFT's lora.Linear forward with out = x @ Q(W + s·B·A)^T + bias (Axolotl's merge_aware_linear.py)."""
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if self.disable_adapters or self.merged or len(adapters) != 1:
        return self._hubtune_forward(x, *args, **kwargs)
    adapter = adapters[0]
    base = self.get_base_layer()
    weight = base.weight
    delta = (self.lora_B[adapter].weight @ self.lora_A[adapter].weight).to(weight.dtype) * self.scaling[adapter]
    snapped = snap(weight + delta, self._hubtune_global_scale)
    bias = None if base.bias is None else base.bias.to(x.dtype)
    result = torch.nn.functional.linear(x, snapped.to(x.dtype), bias)
    dropout = self.lora_dropout[adapter]
    if self.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        # Only the low-rank branch sees dropout: its zero-mean residual vanishes at evaluation.
        residual = (dropout(x) - x).to(self.lora_A[adapter].weight.dtype)
        result = result + self.scaling[adapter] * self.lora_B[adapter](self.lora_A[adapter](residual)).to(result.dtype)
    return result


def _snapping_activation(wrapper, activate):
    """A ParamWrapper's _activate_lora followed by Q on its parameter, removed again with PEFT's LoRA."""
    import contextlib

    base = wrapper.get_base_layer()
    name = wrapper.parameter_name

    @contextlib.contextmanager
    def activated(active_adapters):
        with activate(active_adapters):
            chain = base.parametrizations[name]
            if not any(type(p).__name__ in ("_LoraFactorsProxy", "_LoraParameterProxy") for p in chain):
                yield
                return
            P.register_parametrization(base, name, Nvfp4Snap(wrapper._hubtune_global_scale), unsafe=True)
            P._cache.pop((id(base), name), None)
            try:
                yield
            finally:
                chain = base.parametrizations[name]
                for i in reversed(range(len(chain))):
                    if isinstance(chain[i], Nvfp4Snap):
                        del chain[i]
                        break
                P._cache.pop((id(base), name), None)

    return activated


def merge_aware(peft_model) -> int:
    """Axolotl's merge-aware forward on every LoRA layer of `peft_model` over an NVFP4 weight (lora.Linear and
    PEFT's ParamWrapper on stacked experts); returns how many. A ConfigError when there is none."""
    import types

    from peft.tuners.lora.layer import Linear as LoraLinear

    count = 0
    for module in peft_model.modules():
        wrapper = type(module).__name__ == "ParamWrapper"
        if not (wrapper or isinstance(module, LoraLinear)) or hasattr(module, "_hubtune_global_scale"):
            continue
        base = module.get_base_layer()
        name = module.parameter_name if wrapper else "weight"
        if not P.is_parametrized(base, name) or not isinstance(base.parametrizations[name][0], Nvfp4Blocks):
            continue
        module._hubtune_global_scale = merge_scale(base.parametrizations[name][0], stacked=wrapper)
        if wrapper:
            module._activate_lora = _snapping_activation(module, module._activate_lora)
        else:
            module._hubtune_forward = module.forward
            module.forward = types.MethodType(_lora_linear_forward, module)
        count += 1
    if not count:
        raise ConfigError([("lora.nvfp4_merge_aware", "no LoRA layer of this run lies on an NVFP4 weight: merge-aware "
                                                      "training needs an NVFP4 base (saved by NVIDIA ModelOpt) and "
                                                      "LoRA on its quantized layers")])
    return count


@torch.no_grad()
def merge_aware_weights(peft_model) -> dict[str, torch.Tensor]:
    """What each merge-aware LoRA layer computes with, Q(W + delta), by the base model's parameter name."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    out = {}
    root = peft_model.base_model.model
    names = {id(m): n for n, m in root.named_modules()}
    for module in root.modules():
        if not hasattr(module, "_hubtune_global_scale"):
            continue
        base = module.get_base_layer()
        where = names[id(base)].replace(".base_layer", "")  # the name the base model gives it
        if isinstance(module, LoraLinear):
            adapter = module.active_adapters[0]
            weight = base.weight
            delta = (module.lora_B[adapter].weight @ module.lora_A[adapter].weight).to(weight.dtype)
            out[f"{where}.weight"] = fake_quantize(weight + delta * module.scaling[adapter],
                                                   module._hubtune_global_scale)
        else:
            with module._activate_lora(module.active_adapters):
                out[f"{where}.{module.parameter_name}"] = getattr(base, module.parameter_name).detach().clone()
    return out
