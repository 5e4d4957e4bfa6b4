"""Will it fit? The peak GPU memory of a fine-tune, from the base model's config.json alone.

Nothing but `config.json` is read (from the Hub at a revision, a local folder, or a built-in asset; and
the tokenizer when a run config adds tokens): the parameters are counted from the architecture, and the
peak is the sum of what hubtune's recipe holds on the GPU at once:

- weights: linear layers in NF4/FP4 with their quantization constants (QLoRA), or 16-bit; the
  embeddings, output head and norms stay in bfloat16 (hubtune.train.load_base), or float32 when
  the GPU computes in float16;
- LoRA adapters, their gradients and the optimizer's states, and the same for base weights trained in
  full beside the adapter (modules_to_save, new tokens' embedding and head, lora.unfrozen_parameters:
  hubtune.trained), with PEFT's copy of each such module;
- activations saved for the backward pass, per layer and token, with or without gradient
  checkpointing (coefficients measured with autograd's saved-tensor hooks on this recipe by
  benchmarks/activation_memory.py, checked by tests/test_memory.py), and the logits, which TRL's
  fused LM head computes in tiles;
- framework overhead: the CUDA context and the caching allocator's slack.

    arch = memory.read_architecture("meta-llama/Llama-3.1-8B")
    settings = memory.Settings(method="qlora", seq_len=2048, micro_batch=2, lora_r=8)
    print(memory.estimate(arch, settings).total_gib)

What fits a GPU, and what to change when it does not, is the fit search over this estimate (hubtune.fit);
`training.gradient_checkpointing: auto` reads it through the recipe's levers (hubtune.levers).
"""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from hubtune import gpus
from hubtune.errors import HubtuneError

GIB = 2**30
GB = 10**9

# Memory each GPU reports (MiB) and whether it computes in bfloat16, from the one GPU table.
GPUS: dict[str, tuple[int, bool]] = {g.name: (g.memory_mib, g.bf16) for g in gpus.GPUS}

# Bytes saved for the backward pass per token and decoder layer, as a*hidden + b*intermediate +
# c*kv_dim, in bfloat16 autocast with SDPA attention and no LoRA dropout, plus, with dropout, its
# mask and dropped copy of every adapted layer's input (DROPOUT_BYTES per input element): measured
# with autograd's saved-tensor hooks (parameters excluded) on Llama layers of hidden 1024-4096 as
# hubtune.train.load_base prepares them, by benchmarks/activation_memory.py. With checkpointing a
# layer keeps only its bfloat16 input until it is recomputed.
# QLoRA in float16 (GPUs without bfloat16, like the T4) keeps PEFT's float32 embeddings, head and
# norms, so its residual stream and checkpoints are float32 too.
# An adapted layer also saves its LoRA branch's input and intermediate: adapters on q_proj and v_proj
# alone save less than on every linear layer, measured the same way (`--targets qv`). Other target sets
# take the all-linear figures, which err high.
ACTIVATION_COEFFICIENTS = {"qlora": (16.1, 8.0, 4.0), "qlora-fp16": (24.8, 14.4, 6.2),
                           "lora": (24.8, 8.4, 6.2), "full": (19.9, 8.0, 4.1)}
# Measured at hidden 1024-3072 with dropout 0.05, its share (DROPOUT_BYTES per q and v input) taken out:
# 20% below all-linear for QLoRA and 31% below for 16-bit LoRA at Llama-3.1-8B's shape.
QV_ACTIVATION_COEFFICIENTS = {"qlora": (14.5, 6.0, 3.0), "lora": (16.8, 6.0, 3.2)}
DROPOUT_BYTES = {"qlora": 3, "qlora-fp16": 2, "lora": 4}  # per adapted input element: its dropped copy, mask

# TRL's fused LM head (trl.trainer.utils.add_fused_lm_head) projects 4,096 tokens x 32,768 vocabulary
# entries at a time and never holds the whole (tokens x vocabulary) logits.
HEAD_TOKEN_TILE, HEAD_VOCAB_TILE = 4096, 32768

CUDA_CONTEXT_BYTES = 500 * 2**20  # the CUDA context and cuBLAS workspaces, outside PyTorch's own count
ALLOCATOR_SLACK = 0.05  # the caching allocator rounds and fragments: a few percent over the tensors

# NVFP4 (hubtune.nvfp4): half a byte a weight and one E4M3 byte per 16 weights.
NVFP4_BYTES = 0.5 + 1 / 16
# bitsandbytes 4-bit: one absmax per 64 weights, float32, or with double quantization an 8-bit
# absmax plus one float32 constant per 256 blocks (QLoRA paper, section 3).
NF4_BLOCK = 64
DQ_BLOCK = 256

Method = Literal["qlora", "lora", "full"]
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "adamw_torch_8bit", "adafactor",
              "sgd")


class UnknownArchitecture(HubtuneError):
    """A config.json whose architecture the estimator cannot count."""


@dataclass(frozen=True)
class Linear:
    name: str  # the module name PEFT targets (q_proj, gate_up_proj, ...)
    fan_in: int
    fan_out: int
    bias: bool = False
    # On a mixture-of-experts base: in which decoder layers it sits ("dense": the layers with a plain MLP,
    # "sparse": those with experts, e.g. a shared expert) and its module path in the layer (mlp.shared_expert).
    where: Literal["all", "dense", "sparse"] = "all"
    path: str = ""


@dataclass(frozen=True)
class Experts:
    """A mixture-of-experts layer as transformers 5 stores it: the routed experts stacked in two 3D parameters
    (mlp.experts.gate_up_proj, experts x 2*intermediate x hidden, and mlp.experts.down_proj, experts x hidden x
    intermediate), a router (mlp.gate.weight, experts x hidden: not an nn.Linear, so bitsandbytes leaves it in
    16 bits), and, in some families, shared experts that are plain Linear layers (in Architecture.linears)."""

    count: int  # routed experts per MoE layer
    active: int  # experts each token is routed to (top-k)
    intermediate: int  # per expert
    sparse_layers: tuple[int, ...]  # indices of the decoder layers with experts; the others have a plain MLP
    shared_intermediate: int = 0  # shared experts' intermediate (they run on every token)
    router_bias: bool = False  # a float32 score-correction buffer per expert (GLM-4.5)

    def stack_shapes(self, hidden: int) -> dict[str, tuple[int, int, int]]:
        return {"gate_up_proj": (self.count, 2 * self.intermediate, hidden),
                "down_proj": (self.count, hidden, self.intermediate)}

    def per_layer(self, hidden: int) -> int:
        """Stacked expert parameters of one MoE layer."""
        return self.count * 3 * self.intermediate * hidden


@dataclass(frozen=True)
class Architecture:
    """What the count needs from a decoder-only transformer's config.json."""

    name: str  # where it came from: repo id, folder or file
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    linears: tuple[Linear, ...]  # per decoder layer
    norm_params: int  # per decoder layer (RMSNorm weights, QK-norms)
    vision_params: int = 0  # a vision tower and its projector, counted whole
    max_positions: int | None = None
    moe: Experts | None = None
    config_json: str = ""  # the completed config of a MoE base, for PEFT's own count of its adapter
    saved_nvfp4: bool = False  # saved by NVIDIA ModelOpt in NVFP4 (hubtune.nvfp4 loads it packed)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def holding(self, m: Linear) -> int:
        """How many decoder layers hold this linear layer."""
        if m.where == "all" or self.moe is None:
            return self.layers
        sparse = len(self.moe.sparse_layers)
        return sparse if m.where == "sparse" else self.layers - sparse

    def layer_holds(self, m: Linear, i: int) -> bool:
        if m.where == "all" or self.moe is None:
            return True
        return (i in self.moe.sparse_layers) == (m.where == "sparse")

    def parameters(self) -> dict[str, int]:
        """Parameter counts by part; `total` is what the checkpoint holds (without a multi-token-prediction
        layer, which transformers does not build)."""
        linear = sum(self.holding(m) * (m.fan_in * m.fan_out + (m.fan_out if m.bias else 0)) for m in self.linears)
        sparse = len(self.moe.sparse_layers) if self.moe else 0
        parts = {
            "embeddings": self.vocab * self.hidden,
            "decoder_linear": linear,
            "experts": sparse * self.moe.per_layer(self.hidden) if self.moe else 0,
            "routers": sparse * self.moe.count * self.hidden if self.moe else 0,
            "norms": self.layers * self.norm_params + self.hidden,
            "lm_head": 0 if self.tied_embeddings else self.vocab * self.hidden,
            "vision": self.vision_params,
        }
        parts["total"] = sum(parts.values())
        return parts

    def lora_parameters(self, r: int, targets: str | list[str]) -> int:
        """Adapter parameters for rank r on the given modules (PEFT's all-linear: every decoder linear)."""
        chosen = self.target_linears(targets)
        return sum(self.holding(m) * r * (m.fan_in + m.fan_out) for m in chosen)

    def target_linears(self, targets: str | list[str]) -> list[Linear]:
        from hubtune.config import TARGET_PRESETS

        names = TARGET_PRESETS.get(targets, targets) if isinstance(targets, str) else targets
        if names == "all-linear":
            return list(self.linears)
        chosen = [m for m in self.linears if m.name in names]
        if not chosen and names:  # an empty list: adapters on target_parameters alone
            raise HubtuneError(f"none of the target modules {', '.join(names)} exists in {self.name}; "
                               f"its linear layers are {', '.join(m.name for m in self.linears)}")
        return chosen


# ---- reading config.json -------------------------------------------------------------------------
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3"}
MOE = {"qwen3_moe", "qwen2_moe", "mixtral", "glm4_moe"}
KNOWN = ("Llama, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2, Gemma 3 and Phi-3/Phi-4 models, and the mixture-of-experts "
         "Qwen3-MoE, Qwen2-MoE, Mixtral and GLM-4.5")
# Mixture-of-experts families the estimate does not count yet, and what it would need to.
MOE_NOT_COUNTED = {
    "qwen3_5_moe": "Qwen3.5-MoE mixes Gated DeltaNet (linear attention) layers with full attention, and ships a vision "
                   "tower: their parameters and activations are not modelled",
    "qwen3_next": "Qwen3-Next mixes Gated DeltaNet (linear attention) layers with full attention: their parameters and "
                  "activations are not modelled",
    "glm4_moe_lite": "GLM-4.7-Flash uses multi-head latent attention (compressed q/kv projections): not modelled",
    "deepseek_v3": "DeepSeek-V3 uses multi-head latent attention (compressed q/kv projections): not modelled",
    "nemotron_h": "Nemotron-H mixes Mamba-2 layers, attention and experts: the Mamba layers are not modelled",
    "gpt_oss": "gpt-oss stores its experts in MXFP4 with biases, and alternates sliding-window attention: not modelled",
    "llama4": "Llama 4 interleaves MoE and dense layers with a vision tower, and its linearized re-saves are Axolotl's "
              "own class: not modelled",
    "gemma4": "Gemma 4's MoE layers run a dense MLP beside the experts, with per-layer embeddings: not modelled",
}


def read_config(model: str, revision: str | None = None) -> tuple[dict, str]:
    """The config.json of a model: a Hub repo id (downloaded alone, at `revision`), a local folder,
    a config.json file or a hubtune: asset. Returns (config, where it came from)."""
    from hubtune.refs import RepoRef

    ref = RepoRef.parse(model)
    path = ref.path if ref.is_local else Path(model)
    if ref.is_local and path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise HubtuneError(f"{model} has no config.json; point at a model folder or a Hub repo id")
    elif ref.is_local and not path.is_file():
        raise HubtuneError(f"{model}: no such file or folder")
    elif ref.is_hub:
        path = Path(_download_config(model, revision))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HubtuneError(f"{path}, line {err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise HubtuneError(f"{path}: a config.json holds one JSON object")
    return _special_floats(config), model


def _special_floats(value):
    """transformers writes the floats JSON lacks (inf, nan; Nemotron-H's time_step_limit) as
    {"__float__": "Infinity"} and reads them back as floats when it loads a config: so does this."""
    if isinstance(value, dict):
        if set(value) == {"__float__"} and value["__float__"] in ("Infinity", "-Infinity", "NaN"):
            return float(value["__float__"].lower().replace("infinity", "inf"))
        return {k: _special_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_special_floats(v) for v in value]
    return value


def _download_config(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from hubtune.errors import HubUnreachableError
    from hubtune.hub import hub_errors

    from hubtune.hub import require_access, token

    with hub_errors(repo_id, "model", revision):
        require_access(repo_id, "model", revision)
        try:
            return hf_hub_download(repo_id, "config.json", revision=revision or "main", token=token())
        except LocalEntryNotFoundError:
            raise HubUnreachableError(f"cannot reach the Hub and {repo_id}@{revision or 'main'}'s config.json is not "
                                      f"in the local cache; check the network (and HF_ENDPOINT), or pass a local "
                                      f"model folder", repo_id, "model", revision) from None


def parameter_count(config: dict) -> int:
    """The parameters a checkpoint of this config.json holds: counted from the architecture where the
    estimate knows it, else from a build of the model on the meta device (shapes only, no memory)."""
    try:
        return architecture(config).parameters()["total"]
    except UnknownArchitecture:
        pass
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    except (ValueError, KeyError, TypeError) as err:
        raise UnknownArchitecture(f"cannot build the model of this config.json to count its parameters "
                                  f"({err})") from None
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def read_architecture(model: str, revision: str | None = None) -> Architecture:
    config, source = read_config(model, revision)
    return architecture(config, source)


def architecture(config: dict, name: str = "config.json") -> Architecture:
    """The architecture of a config.json, with transformers' defaults for the keys it leaves out."""
    from hubtune.hub import check_sizes

    check_sizes(config, name)
    full = _with_defaults(config)
    text = full.get("text_config") or full
    model_type = text.get("model_type") or full.get("model_type")
    refused = next((t for t in (full.get("model_type"), model_type) if t in MOE_NOT_COUNTED), None)
    if refused:
        raise UnknownArchitecture(
            f"{name}: the memory estimate does not count {refused} yet: {MOE_NOT_COUNTED[refused]}. It counts "
            f"{KNOWN}. Measure instead: train a few steps with a small micro-batch and read peak_memory_mb in the "
            f"run's summary.json")
    if model_type not in LLAMA_LIKE | MOE:
        arch = ", ".join(full.get("architectures") or []) or str(full.get("model_type"))
        raise UnknownArchitecture(
            f"{name}: the memory estimate does not know the architecture {arch} (model_type {model_type!r}); "
            f"it counts {KNOWN} models. Measure instead: train a few steps with a small micro-batch and read "
            f"peak_memory_mb in the run's summary.json")
    from hubtune import nvfp4

    nv = nvfp4.is_nvfp4(config.get("quantization_config"))
    try:
        if model_type in MOE:
            return replace(_mixture(text, model_type, name), saved_nvfp4=nv)
        return replace(_decoder(text, model_type, name, _vision_params(full)), saved_nvfp4=nv)
    except (KeyError, TypeError) as err:
        raise HubtuneError(f"{name}: config.json lacks {err} for a {model_type} model") from None


def _with_defaults(config: dict) -> dict:
    """config.json completed by transformers' config class for its model_type (the values a
    checkpoint leaves out are the class defaults, as when the model is loaded)."""
    try:
        from transformers import AutoConfig

        return AutoConfig.for_model(**config).to_dict()
    except (ValueError, KeyError, TypeError):  # a model_type transformers does not know: take it as written
        return config


def _decoder(c: dict, model_type: str, name: str, vision: int) -> Architecture:
    h, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or h // heads
    inter, vocab = c["intermediate_size"], c["vocab_size"]
    q, kvd = heads * head_dim, kv * head_dim
    attn_bias = bool(c.get("attention_bias", False))
    mlp_bias = bool(c.get("mlp_bias", False))
    if model_type == "phi3":  # fused projections
        linears = (Linear("qkv_proj", h, q + 2 * kvd, attn_bias), Linear("o_proj", q, h, attn_bias),
                   Linear("gate_up_proj", h, 2 * inter, mlp_bias), Linear("down_proj", inter, h, mlp_bias))
    else:
        qkv_bias = attn_bias or model_type == "qwen2"  # Qwen2 has q/k/v biases and none on o_proj
        linears = (Linear("q_proj", h, q, qkv_bias), Linear("k_proj", h, kvd, qkv_bias),
                   Linear("v_proj", h, kvd, qkv_bias), Linear("o_proj", q, h, attn_bias),
                   Linear("gate_proj", h, inter, mlp_bias), Linear("up_proj", h, inter, mlp_bias),
                   Linear("down_proj", inter, h, mlp_bias))
    norms = 4 * h if model_type in {"gemma2", "gemma3_text"} else 2 * h  # Gemma 2/3 norm around both blocks
    if model_type in {"qwen3", "gemma3_text"}:
        norms += 2 * head_dim  # RMSNorm on queries and keys
    tied = c.get("tie_word_embeddings", model_type.startswith("gemma"))
    return Architecture(name=name, model_type=model_type, hidden=h, layers=layers, heads=heads, kv_heads=kv,
                        head_dim=head_dim, intermediate=inter, vocab=vocab, tied_embeddings=bool(tied),
                        linears=linears, norm_params=norms, vision_params=vision,
                        max_positions=c.get("max_position_embeddings"))


def _mixture(c: dict, model_type: str, name: str) -> Architecture:
    """A mixture-of-experts decoder, its fields as transformers names them: the routed experts (num_experts,
    num_local_experts or n_routed_experts), top-k (num_experts_per_tok), each expert's intermediate
    (moe_intermediate_size; Mixtral's intermediate_size), shared experts (shared_expert_intermediate_size,
    n_shared_experts), and which layers keep a plain MLP (mlp_only_layers and decoder_sparse_step for Qwen,
    first_k_dense_replace for GLM)."""
    h, layers = c["hidden_size"], c["num_hidden_layers"]
    # transformers 5 writes Qwen3-MoE's num_experts as num_local_experts
    count = next((c[k] for k in ("num_experts", "num_local_experts", "n_routed_experts") if c.get(k) is not None), None)
    if count is None:
        raise KeyError("num_experts")
    if model_type == "mixtral":
        inter, dense_inter = c["intermediate_size"], 0
        sparse = tuple(range(layers))
    elif model_type == "glm4_moe":
        inter, dense_inter = c["moe_intermediate_size"], c["intermediate_size"]
        sparse = tuple(range(c.get("first_k_dense_replace") or 0, layers))
    else:  # Qwen2-MoE, Qwen3-MoE
        inter, dense_inter = c["moe_intermediate_size"], c["intermediate_size"]
        step, dense = c.get("decoder_sparse_step") or 1, set(c.get("mlp_only_layers") or [])
        sparse = tuple(i for i in range(layers) if i not in dense and count > 0 and (i + 1) % step == 0)
    shared = {"qwen2_moe": c.get("shared_expert_intermediate_size") or 0,
              "glm4_moe": (c.get("n_shared_experts") or 0) * inter}.get(model_type, 0)
    base = _decoder({**c, "intermediate_size": dense_inter or inter},
                    {"qwen2_moe": "qwen2", "qwen3_moe": "qwen3", "glm4_moe": "glm4_moe"}.get(model_type, model_type),
                    name, 0)
    attention = [m for m in base.linears if m.name in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if model_type == "glm4_moe":  # q/k/v biases with attention_bias, none on o_proj
        attention = [replace(m, bias=bool(c.get("attention_bias")) and m.name != "o_proj") for m in attention]
    mlp = [replace(m, where="dense") for m in base.linears if m.name not in ("q_proj", "k_proj", "v_proj", "o_proj")]
    linears = attention + (mlp if len(sparse) < layers else [])
    if shared:
        path = "mlp.shared_expert" if model_type == "qwen2_moe" else "mlp.shared_experts"
        linears += [Linear("gate_proj", h, shared, where="sparse", path=path),
                    Linear("up_proj", h, shared, where="sparse", path=path),
                    Linear("down_proj", shared, h, where="sparse", path=path)]
    if model_type == "qwen2_moe":  # the shared expert's gate is an nn.Linear to one output
        linears.append(Linear("shared_expert_gate", h, 1, where="sparse", path="mlp"))
    norms = 2 * h + (2 * base.head_dim if model_type == "qwen3_moe" or (model_type == "glm4_moe" and c.get("use_qk_norm"))
                     else 0)
    experts = Experts(count, c["num_experts_per_tok"], inter, sparse, shared, router_bias=model_type == "glm4_moe")
    return replace(base, model_type=model_type, intermediate=dense_inter or inter, linears=tuple(linears),
                   norm_params=norms, moe=experts, config_json=json.dumps(c, sort_keys=True, default=str))


def _vision_params(full: dict) -> int:
    """A SigLIP vision tower with Gemma 3's projector (the only multimodal family counted)."""
    v = full.get("vision_config")
    if not v:
        return 0
    if v.get("model_type") != "siglip_vision_model" or full.get("model_type") != "gemma3":
        raise UnknownArchitecture(f"the memory estimate does not know the vision tower {v.get('model_type')!r} of "
                                  f"{full.get('model_type')!r}; it counts {KNOWN} language models")
    h, i, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    patches = (v["image_size"] // v["patch_size"]) ** 2
    embed = v.get("num_channels", 3) * v["patch_size"] ** 2 * h + h + patches * h
    layer = 4 * (h * h + h) + 2 * h * i + i + h + 2 * 2 * h  # attention, MLP, two LayerNorms
    text_hidden = (full.get("text_config") or {})["hidden_size"]
    projector = h * text_hidden + h  # Gemma3MultiModalProjector: a matrix and an RMSNorm
    return embed + layers * layer + 2 * h + projector


# ---- the estimate -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the peak depends on besides the model; defaults are hubtune's QLoRA recipe on a GPU."""

    method: Method = "qlora"
    quantization: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    seq_len: int = 1024
    micro_batch: int = 2
    gradient_accumulation: int = 4
    lora_r: int = 16
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    gradient_checkpointing: bool = True
    optimizer: str = "paged_adamw_8bit"
    gpus: int = 1
    training_method: Literal["sft", "dpo", "orpo", "kto", "grpo"] = "sft"
    num_generations: int = 4  # grpo: completions per prompt
    max_completion_length: int = 128  # grpo: tokens sampled after the prompt (seq_len)
    # How the loss is computed: TRL's fused LM head, in tiles (hubtune's recipe), or the whole
    # (tokens x vocabulary) logits upcast to float32, as plain transformers does (most peers' baselines).
    loss: Literal["fused", "float32"] = "fused"
    # Base weights trained in full beside the adapter (hubtune.trained): PEFT's modules_to_save, the base
    # parameters of lora.unfrozen_parameters, and, with tokens new to the vocabulary, the embedding and
    # output head, resized to `vocab` rows (the tokenizer's length; None: the config's vocabulary + new_tokens).
    modules_to_save: tuple[str, ...] = ()
    unfrozen_parameters: tuple[str, ...] = ()
    new_tokens: int = 0
    vocab: int | None = None
    relora: bool = False  # training.relora: restarts that merge into the base between steps
    # Mixture-of-experts bases: the stacked experts stay 16-bit unless model.quantize_experts stores them at the
    # base's quantization; lora.target_parameters adapts them; expert parallelism spreads each layer's experts
    # over that many processes, context parallelism each sequence (the figures are then per process).
    expert_quantization: Literal["none", "nf4", "fp4", "int8"] = "none"
    # A base saved by NVIDIA ModelOpt in NVFP4 (hubtune.nvfp4): its decoder Linear weights and experts stay packed,
    # 4 bits and an E4M3 scale per 16 weights, and the adapters train as on a 16-bit base (method lora).
    base_nvfp4: bool = False
    target_parameters: tuple[str, ...] = ()
    expert_parallel: int = 1
    context_parallel: int = 1
    context_sharded: bool = True  # context parallelism under fsdp (FSDP2 over its GPUs); under ddp each holds all

    @classmethod
    def from_run_config(cls, config, model_path: str | None = None, **changes) -> Settings:
        """The settings of a RunConfig (hubtune.config) as the recipe runs them on a GPU, with `changes`
        (Settings fields; None leaves the config's value). Tokens the config adds are counted against the
        base's tokenizer (at `model_path`, else the config's model) unless `changes` gives new_tokens."""
        t, m = config.training, config.model
        if m.new_token_texts() and changes.get("new_tokens") is None:
            changes["new_tokens"], changes["vocab"] = vocabulary_growth(model_path or m.id, m)
        # An 8-bit base is estimated as a 16-bit one (LoRA): an upper bound on its weights.
        settings = cls(method="lora" if m.quantization in ("none", "int8") else "qlora",
                       quantization="nf4" if m.quantization in ("none", "int8") else m.quantization,
                       double_quant=m.double_quant,
                       compute_dtype=m.compute_dtype if m.compute_dtype != "auto" else "bfloat16",
                       seq_len=config.data.max_seq_len, micro_batch=t.micro_batch_size,
                       gradient_accumulation=t.gradient_accumulation_steps, lora_r=config.lora.r,
                       lora_dropout=config.lora.dropout, target_modules=config.lora.target_modules,
                       gradient_checkpointing=t.gradient_checkpointing is not False,  # auto: on, to be safe
                       optimizer=CUDA_OPTIMIZER if t.optimizer == "auto" else t.optimizer,
                       training_method=t.method, num_generations=t.grpo.num_generations,
                       max_completion_length=t.grpo.max_completion_length,
                       modules_to_save=tuple(config.lora.modules_to_save),
                       unfrozen_parameters=tuple(config.lora.unfrozen_parameters), relora=t.relora is not None,
                       expert_quantization=m.quantization if m.quantize_experts else "none",
                       target_parameters=tuple(config.lora.target_parameters),
                       expert_parallel=t.expert_parallel_size, context_parallel=t.context_parallel_size,
                       context_sharded=t.distributed == "fsdp")
        if _saved_nvfp4(model_path or m.id):
            settings = replace(settings, method="lora", base_nvfp4=True, expert_quantization="none")
        changes = {k: v for k, v in changes.items() if v is not None}
        targets = changes.get("target_modules")
        if isinstance(targets, list) and len(targets) == 1 and targets[0] in ("qv", "attention", "all-linear"):
            changes["target_modules"] = targets[0]  # a preset given on the command line
        return replace(settings, **changes)

    @property
    def recipe(self) -> str:
        """Which measured activation profile applies."""
        return "qlora-fp16" if self.method == "qlora" and self.compute_dtype == "float16" else self.method

    @property
    def activation_coefficients(self) -> tuple[float, float, float]:
        """Bytes saved per token and layer as (per hidden, per intermediate, per kv_dim) unit, measured for
        this recipe and these adapted modules."""
        from hubtune.config import TARGET_PRESETS

        t = self.target_modules
        names = TARGET_PRESETS.get(t, t) if isinstance(t, str) else t
        if self.method != "full" and names != "all-linear" and set(names) <= {"q_proj", "v_proj"}:
            return QV_ACTIVATION_COEFFICIENTS.get(self.recipe, ACTIVATION_COEFFICIENTS[self.recipe])
        return ACTIVATION_COEFFICIENTS[self.recipe]

    def describe(self) -> str:
        what = {"qlora": f"QLoRA ({self.quantization.upper()}{' + double quantization' if self.double_quant else ''})",
                "lora": "16-bit LoRA", "full": "full fine-tuning"}[self.method]
        lora = (f", r {self.lora_r} on {_targets(self.target_modules)}, dropout {self.lora_dropout:g}"
                if self.method != "full" else "")
        method = "" if self.training_method == "sft" else f"{self.training_method.upper()}, "
        if self.method != "full":
            lora += "".join([f", {self.new_tokens} new token{'s' if self.new_tokens > 1 else ''} (embedding and head "
                             f"trained in full)" if self.new_tokens else "",
                             f", modules_to_save {', '.join(self.modules_to_save)}" if self.modules_to_save else "",
                             f", unfrozen {', '.join(self.unfrozen_parameters)}" if self.unfrozen_parameters else "",
                             ", ReLoRA" if self.relora else "",
                             f", experts' {', '.join(self.target_parameters)}" if self.target_parameters else ""])
        experts = f", experts quantized {self.expert_quantization.upper()}" if self.expert_quantization != "none" else ""
        if self.base_nvfp4:
            what, experts = "LoRA on an NVFP4 base", ""
        return (f"{method}{what}{experts}{lora}, {self.compute_dtype} compute, "
                f"{self.sequences_described()}, checkpointing {'on' if self.gradient_checkpointing else 'off'}, {self.optimizer}"
                + (f", {self.gpus} GPUs" if self.gpus > 1 else "")
                + (f", experts over {self.expert_parallel} processes" if self.expert_parallel > 1 else "")
                + (f", each sequence over {self.context_parallel} GPUs" if self.context_parallel > 1 else ""))


    @property
    def sequences(self) -> int:
        """Sequences in one forward pass: DPO and ORPO put chosen and rejected in one batch; GRPO trains on
        each prompt's group of num_generations completions."""
        per_example = {"dpo": 2, "orpo": 2, "grpo": self.num_generations}.get(self.training_method, 1)
        return self.micro_batch * per_example

    @property
    def sequence_length(self) -> int:
        return self.seq_len + (self.max_completion_length if self.training_method == "grpo" else 0)

    def sequences_described(self) -> str:
        if self.training_method in ("dpo", "orpo"):
            return f"micro-batch {self.micro_batch} pairs (chosen + rejected: {self.sequences} sequences) x {self.seq_len} tokens"
        if self.training_method == "grpo":
            return (f"micro-batch {self.micro_batch} prompts x {self.num_generations} generations ({self.sequences} "
                    f"sequences) x {self.seq_len} + {self.max_completion_length} tokens")
        return f"micro-batch {self.micro_batch} x {self.seq_len} tokens"


CUDA_OPTIMIZER = "paged_adamw_8bit"  # what training.optimizer: auto picks on CUDA (hubtune.hardware)


_GROWTH: dict[tuple, tuple[int, int]] = {}  # the tokenizer is read once per process and model


def _growth(where: str, revision: str | None, model) -> tuple[int, int]:
    key = (where, revision, model.model_dump_json())
    if key not in _GROWTH:
        _GROWTH[key] = _read_growth(where, revision, model)
    return _GROWTH[key]


def _read_growth(where: str, revision: str | None, model) -> tuple[int, int]:
    from hubtune.train import add_tokens, load_tokenizer

    if revision is not None:  # a Hub repo: its tokenizer files alone, at the pinned revision
        from hubtune.hub import hub_errors, require_access, token
        from transformers import AutoTokenizer

        with hub_errors(where, "model", revision):
            require_access(where, "model", revision)
            tokenizer = AutoTokenizer.from_pretrained(where, revision=revision, token=token(),
                                                      trust_remote_code=model.trust_remote_code)
    else:
        tokenizer = load_tokenizer(where, model)
    return len(add_tokens(tokenizer, model)), len(tokenizer)


def vocabulary_growth(where: str, model) -> tuple[int, int]:
    """(tokens new to the vocabulary, the tokenizer's length after adding them) for the run config's model
    section `model`, as hubtune.train adds them, read from the tokenizer at `where` (a Hub repo at the
    config's revision, a local folder or a hubtune: asset)."""
    from hubtune.refs import RepoRef

    ref = RepoRef.parse(where)
    hub = ref.is_hub
    try:
        return _growth(where if hub else str(ref.path), (model.revision or "main") if hub else None, model)
    except OSError as err:
        raise HubtuneError(f"model.special_tokens / model.added_tokens: cannot read the tokenizer of {where} to "
                           f"tell which tokens are new to its vocabulary ({err})") from None


def _targets(t: str | list[str]) -> str:
    return t if isinstance(t, str) else ", ".join(t)


@dataclass
class Estimate:
    architecture: Architecture
    settings: Settings
    parameters: dict[str, int]
    trainable: int
    breakdown: dict[str, int]  # bytes per part, in the order they are printed; they sum to the total
    notes: list[str] = field(default_factory=list)
    # base weights trained in full beside the adapter: PEFT's copied modules, embedding rows, parameters
    trained_in_full: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def total_gb(self) -> float:
        return self.total / GB

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def to_dict(self) -> dict:
        return {
            "model": self.architecture.name, "model_type": self.architecture.model_type,
            "settings": asdict(self.settings), "parameters": self.parameters, "trainable_parameters": self.trainable,
            "trained_in_full": self.trained_in_full,
            "breakdown_gb": {k: round(v / GB, 3) for k, v in self.breakdown.items()},
            "total_gb": round(self.total_gb, 2), "total_gib": round(self.total_gib, 2), "notes": self.notes,
        }


def estimate(arch: Architecture, settings: Settings | None = None) -> Estimate:
    """Peak GPU memory of one training step, part by part (bytes)."""
    s = settings or Settings()
    if arch.saved_nvfp4 and s.method != "full" and not s.base_nvfp4:  # it loads as saved, whatever quantization says
        s = replace(s, method="lora", base_nvfp4=True, expert_quantization="none")
    if s.new_tokens or s.vocab:  # the embedding and head resized to the tokenizer
        arch = replace(arch, vocab=s.vocab or arch.vocab + s.new_tokens)
    p = arch.parameters()
    # Context parallelism gives each GPU a 1/N slice of every sequence (hubtune pads rows to a multiple of 2N).
    tokens = math.ceil(s.sequences * s.sequence_length / s.context_parallel)
    # Frozen embeddings, head, norms, routers (and a vision tower) stay 16-bit, except that in float16 PEFT
    # upcasts them to float32 (hubtune.train.load_base).
    unquantized = p["embeddings"] + p["lm_head"] + p["vision"] + p["norms"] + p["routers"]
    wide = 4 if s.recipe == "qlora-fp16" or s.compute_dtype == "float32" else 2
    per_block = 1 + 4 / DQ_BLOCK if s.double_quant else 4
    if s.base_nvfp4 and s.method != "full":
        weights = p["decoder_linear"] * NVFP4_BYTES + wide * unquantized
        label = (f"weights: NVFP4 decoder layers (packed, with their E4M3 block scales), "
                 f"{'float32' if wide == 4 else '16-bit'} embeddings, head, norms and routers")
    elif s.method == "qlora":
        quantized = p["decoder_linear"]
        weights = quantized / 2 + quantized / NF4_BLOCK * per_block + wide * unquantized
        label = (f"weights: {s.quantization.upper()} decoder layers, "
                 f"{'float32' if wide == 4 else '16-bit'} embeddings, head and norms")
    else:
        weights = wide * (p["total"] - p["experts"])
        label = f"weights: {'32' if wide == 4 else '16'}-bit" + (" (all but the routed experts)" if arch.moe else "")
    if s.expert_parallel > 1:
        # transformers' expert parallelism shards every other weight with FSDP2 over all the processes, at least
        # expert_parallel_size of them (hubtune.distributed.expert_parallel_config): 1/N is an upper bound
        weights /= s.expert_parallel
        label += f", sharded over {s.expert_parallel} processes"
    breakdown = {label: int(weights)}
    if arch.moe:
        breakdown[_experts_label(arch, s, wide)] = _expert_weight_bytes(arch, s, wide, per_block)
    if s.method == "full":
        from hubtune.trained import Beside

        trainable, full = p["total"], Beside()
        breakdown["gradients"] = trainable * wide
        breakdown[f"optimizer states ({s.optimizer})"] = _optimizer_bytes(arch, s, trainable, wide)
    else:
        from hubtune.trained import beside

        full = beside(arch, s)
        # TRL keeps a 4-bit base's trainable parameters in bfloat16; PEFT keeps a 16-bit base's adapters (and
        # token rows) in float32 and its copies of whole modules in the base's dtype.
        adapter_bytes = 2 if s.method == "qlora" else 4
        copy_bytes = 2 if s.method == "qlora" else wide
        unadapted = Counter(name.rsplit(".", 1)[-1] for name in full.unadapted)  # per linear: layers without LoRA
        if arch.moe:  # PEFT's own placement: it moves MLP names onto the stacked experts, with ranks of its own
            tensors = [(shape, adapter_bytes, False, n) for shape, n in
                       moe_adapter_shapes(arch, s.lora_r, _names(s.target_modules), s.target_parameters,
                                          s.modules_to_save)]
        else:
            tensors = [(shape, adapter_bytes, False, arch.layers - unadapted[m.name])  # (shape, bytes, embedding, count)
                       for m in arch.target_linears(s.target_modules)
                       for shape in ((s.lora_r, m.fan_in), (m.fan_out, s.lora_r))]
        adapter = sum(math.prod(shape) * n for shape, _, _, n in tensors)
        tensors += [(shape, copy_bytes, c.embedding, 1) for c in full.copies for shape in c.trained]
        if full.rows:
            tensors.append(((full.rows, arch.hidden), adapter_bytes, False, 1))
        trainable = adapter + full.parameters
        breakdown[f"LoRA adapters (r {s.lora_r}, {adapter / 1e6:.1f}M parameters)"] = adapter * adapter_bytes
        if full:
            # the copies (a frozen bias beside a named weight included) and the token rows' delta and originals
            held = sum(c.numbers for c in full.copies) * copy_bytes + full.rows * arch.hidden * (adapter_bytes + wide)
            breakdown[f"trained in full beside the adapter: {full.described(arch)} "
                      f"({_count(full.parameters)} parameters)"] = held
        breakdown["gradients"] = sum(math.prod(shape) * size * n for shape, size, _, n in tensors)
        breakdown[f"optimizer states ({s.optimizer})"] = sum(
            n * _tensor_optimizer_bytes(s.optimizer, shape, size, embedding) for shape, size, embedding, n in tensors)
    # FSDP shards weights, gradients and optimizer states; activations stay per GPU. Context parallelism under
    # fsdp runs on FSDP2 over at least its N GPUs (hubtune.distributed): 1/N of each is an upper bound.
    shards = max(s.gpus, s.context_parallel if s.context_sharded else 1)
    if shards > 1:
        breakdown = {k: math.ceil(v / shards) for k, v in breakdown.items()}
    layer = layer_activation_bytes(arch, s, tokens)
    head = _head_bytes(arch, s, tokens, head_trained=s.method == "full" or full.head_trained)
    activations = {}
    stack = _expert_stack_transient(arch, s)
    if s.base_nvfp4 and s.method != "full":
        # Each NVFP4 Linear weight is dequantized when its layer reads it, and autograd keeps that 16-bit copy
        # for the backward (the input's gradient needs it): one layer's worth with checkpointing, all without.
        held = p["decoder_linear"] * wide // arch.layers * (1 if s.gradient_checkpointing else arch.layers)
        activations[f"dequantized NVFP4 weights kept for the backward ({'one layer' if s.gradient_checkpointing else 'every layer'})"] = held
    if s.gradient_checkpointing:
        # The LM head's backward runs before any layer is recomputed: the two are never alive together.
        activations[f"activations: {arch.layers} checkpointed layer inputs"] = arch.layers * tokens * arch.hidden * wide
        shown = "LM head's logit tiles" if s.loss == "fused" else "float32 logits of the whole vocabulary"
        recomputed = max(layer, layer_activation_bytes(arch, s, tokens, sparse=True) + stack[0]) if arch.moe else layer
        activations[f"activations: the layer being recomputed, or the {shown}"] = max(recomputed, head)
    else:
        if arch.moe:
            sparse = len(arch.moe.sparse_layers)
            layers = (arch.layers - sparse) * layer + sparse * layer_activation_bytes(arch, s, tokens, sparse=True)
            activations[f"activations: all {arch.layers} layers"] = layers + sparse * stack[1] + stack[0] - stack[1]
        else:
            activations[f"activations: all {arch.layers} layers"] = arch.layers * layer
        activations[_head_name(s)] = head
    if s.method == "full":
        # Every weight's gradient is written as the backward frees the activations that made it: the peak
        # holds the larger of the two, not their sum.
        gradients = breakdown.pop("gradients")
        optimizer = breakdown.popitem()
        breakdown.update(activations)
        breakdown["gradients, beyond the activations freed by then"] = max(0, gradients - sum(activations.values()))
        breakdown[optimizer[0]] = optimizer[1]
    else:
        breakdown.update(activations)
    alive = sum(activations.values())
    if full.rows and arch.vocab * arch.hidden * wide > alive:
        # PEFT's trainable token rows: the embedding's weight with the rows written in, before the first layer,
        # and the embedding's dense gradient, after the last; no activations are alive at either moment.
        breakdown["trainable token rows: the embedding's merged weight or its dense gradient, beyond the "
                  "activations"] = arch.vocab * arch.hidden * wide - alive
    if s.relora and s.method != "full":
        # A restart, between steps (no activations, no gradients): one adapted layer at a time, its base weight
        # read again in float32, the merged update B A in float32, and the result in the weight's dtype (a 4-bit
        # base's quantized from a float32 copy on the GPU). The merged cycles' factors stay in CPU memory.
        largest = max(m.fan_in * m.fan_out for m in arch.target_linears(s.target_modules))
        restart = largest * (4 + 4 + (4 if s.method == "qlora" else wide))
        gradients = breakdown["gradients"]
        if restart > alive + gradients:
            breakdown["ReLoRA restart: a layer's base weight and update in float32, beyond the activations"] = \
                restart - alive - gradients
    if s.training_method == "grpo":
        # Sampling keeps a key/value cache for every sequence of the group; it is freed before the training
        # forward, so only what it needs beyond the training activations raises the peak.
        cache = 2 * arch.layers * arch.kv_dim * (4 if s.compute_dtype == "float32" else 2) * tokens
        breakdown[f"generation: key/value cache of {s.sequences} sequences x {s.sequence_length} tokens, beyond the "
                  f"activations"] = max(0, cache - sum(activations.values()))
    tensors = sum(breakdown.values())
    breakdown["framework: CUDA context, allocator slack"] = int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * tensors)
    notes = [f"the logits are computed in {HEAD_TOKEN_TILE:,} x {HEAD_VOCAB_TILE:,} tiles (TRL's fused LM head); "
             f"whole, in float32, they would take {tokens * arch.vocab * 4 / GB:.2f} GB"] if s.loss == "fused" else []
    if s.relora and s.method != "full":
        notes.append("ReLoRA: the adapter stays rank r during training; each cycle's factors are kept in CPU memory "
                     "and join the adapter (rank r x cycles) once training ends")
    if s.training_method in ("dpo", "kto"):
        notes.append("the reference is the base with the adapter disabled: no second copy of the weights; its "
                     "forward runs without gradients and saves no activations")
    if arch.max_positions and s.seq_len > arch.max_positions:
        notes.append(f"seq_len {s.seq_len} exceeds the model's context of {arch.max_positions} tokens")
    if arch.moe:
        notes += _moe_notes(arch, s)
    beside = {"modules": [c.module for c in full.copies], "embedding_rows": full.rows, "parameters": full.parameters}
    return Estimate(arch, s, p, trainable, breakdown, notes, beside if full else {})


def layer_activation_bytes(arch: Architecture, s: Settings, tokens: int, sparse: bool = False) -> int:
    """Bytes one decoder layer saves for the backward pass (`sparse`: a mixture-of-experts layer)."""
    a, b, c = s.activation_coefficients
    per_token = a * arch.hidden + b * arch.intermediate + c * arch.kv_dim
    if sparse:
        # Each token runs through its top-k experts (and any shared expert): the MLP's intermediates are those
        # of k experts. Routing adds, per token and routed expert, its copy of the input and its output before
        # the routing weight scales it (16-bit), and per expert the router's 16-bit logits and float32
        # probabilities (transformers' eager and grouped experts save these). Derived from the code, not measured.
        moe = arch.moe
        per_token = (a * arch.hidden + b * (moe.active * moe.intermediate + moe.shared_intermediate)
                     + c * arch.kv_dim + 2 * moe.active * arch.hidden * 2 + moe.count * (2 + 4))
    if s.method != "full" and s.lora_dropout > 0:
        per_token += DROPOUT_BYTES[s.recipe] * sum(m.fan_in for m in arch.target_linears(s.target_modules))
    if s.compute_dtype == "float32":  # measured in 16-bit autocast; float32 tensors are twice the size
        per_token *= 2
    return int(tokens * per_token)


def _names(targets: str | list[str]) -> tuple[str, ...] | str:
    return targets if isinstance(targets, str) else tuple(targets)


def _experts_label(arch: Architecture, s: Settings, wide: int) -> str:
    moe = arch.moe
    local = moe.count // s.expert_parallel
    where = (f"{local} of {moe.count} per layer in each of {s.expert_parallel} processes" if s.expert_parallel > 1
             else f"{moe.count} per layer")
    if s.base_nvfp4 and s.method != "full":
        how = "NVFP4, with a float32 global scale per row"
    elif s.method == "full" or s.expert_quantization == "none":
        how = f"{'32' if wide == 4 else '16'}-bit" + (", not quantized without model.quantize_experts"
                                                       if s.method == "qlora" else "")
    else:
        how = s.expert_quantization.upper() if s.expert_quantization != "int8" else "int8 with a float32 scale per row"
    return f"weights: routed experts ({where}), {how}"


def _expert_weight_bytes(arch: Architecture, s: Settings, wide: int, per_block: float) -> int:
    """The stacked experts one process holds: 16-bit; NF4/FP4 with bitsandbytes' constants (the base's
    double quantization); or int8 rows with a float32 absmax each (hubtune.experts.Int8Rows)."""
    moe = arch.moe
    n = len(moe.sparse_layers) * moe.per_layer(arch.hidden) // s.expert_parallel
    if s.base_nvfp4 and s.method != "full":
        rows = len(moe.sparse_layers) * moe.count * (2 * moe.intermediate + arch.hidden) // s.expert_parallel
        return int(n * NVFP4_BYTES) + rows * 4
    if s.method == "full" or s.expert_quantization == "none":
        return n * wide
    if s.expert_quantization == "int8":
        rows = len(moe.sparse_layers) * moe.count * (2 * moe.intermediate + arch.hidden) // s.expert_parallel
        return n + rows * 4
    return int(n / 2 + n / NF4_BLOCK * per_block)


def _saved_nvfp4(model: str | None) -> bool:
    """Whether a local base folder is saved by NVIDIA ModelOpt in NVFP4 (a Hub id is not read here)."""
    from pathlib import Path

    from hubtune import nvfp4

    return bool(model) and Path(model).is_dir() and nvfp4.is_nvfp4(nvfp4.saved_format(model))


def _expert_stack_transient(arch: Architecture, s: Settings) -> tuple[int, int]:
    """(alive while one MoE layer computes, saved per MoE layer for the backward) by the expert stacks. A
    quantized stack is dequantized whole to the compute dtype for the layer's forward (bitsandbytes'
    parametrization, hubtune.experts.Int8Rows) and that copy is what the matmuls save; an adapted stack is
    merged with its LoRA delta (PEFT's ParamWrapper: W + B A, one tensor the size of the stack) and saved the
    same way, and the backward adds that merged weight's gradient before it reaches the factors."""
    moe = arch.moe
    if moe is None or s.method == "full":
        return 0, 0
    stack = moe.per_layer(arch.hidden) // s.expert_parallel * 2  # 16-bit compute dtype
    adapted = _adapts_experts(arch, s)
    if s.expert_quantization == "none" and not s.base_nvfp4 and not adapted:
        return 0, 0
    return stack * (2 if adapted else 1), stack


def _adapts_experts(arch: Architecture, s: Settings) -> bool:
    """Whether PEFT puts LoRA on the stacked experts (lora.target_parameters, or MLP names it moves onto them)."""
    return bool(s.target_parameters) or any(
        ".experts." in name for name in moe_adapter_names(arch, s.lora_r, _names(s.target_modules), (),
                                                          s.modules_to_save))


def _moe_notes(arch: Architecture, s: Settings) -> list[str]:
    moe = arch.moe
    notes = [f"mixture of experts: {moe.count} experts per MoE layer ({len(moe.sparse_layers)} of {arch.layers} "
             f"layers), {moe.active} active per token; the activations count the active experts' intermediates, "
             f"the routed copies of each token and the router's logits (derived from transformers' code, not "
             f"measured)"]
    if s.method == "qlora" and s.expert_quantization == "none":
        notes.append("model.quantization quantizes Linear layers only: transformers stores the experts as stacked 3D "
                     "parameters, which stay 16-bit; model.quantize_experts: true stores them at the base's "
                     "quantization")
    if s.method != "full" and s.lora_dropout > 0 and _adapts_experts(arch, s):
        notes.append(f"PEFT puts this adapter on the stacked experts, where it refuses LoRA dropout (ParamWrapper): "
                     f"set lora.dropout: 0 (this run has {s.lora_dropout:g})")
    if s.method != "full" and (s.expert_quantization != "none" or _adapts_experts(arch, s)):
        notes.append("each MoE layer's expert stack is read whole in 16 bits while the layer computes (dequantized, "
                     "or merged with its LoRA delta) and saved for its backward")
    if s.base_nvfp4 and s.method != "full" and s.gpus > 1:
        notes.append(f"figures are per process: under FSDP every process loads the whole packed NVFP4 base onto its "
                     f"GPU (hubtune's FSDP2 launch, distributed.loads_whole_base) before FSDP2 shards it 1/{s.gpus} "
                     f"a process, so the load needs the whole base's weights on each GPU first")
    if s.expert_parallel > 1 or s.context_parallel > 1:
        notes.append("figures are per process: " + ", ".join(
            ([f"each holds 1/{s.expert_parallel} of the experts and, sharded by FSDP2, at most 1/{s.expert_parallel} "
              f"of the other weights"] if s.expert_parallel > 1 else [])
            + ([f"each computes 1/{s.context_parallel} of every sequence"
                + (f" and, sharded by FSDP2, holds at most 1/{s.context_parallel} of the weights, gradients and "
                   f"optimizer states" if s.context_sharded else " and holds the whole model (ddp)")
                + " (attention layers also hold the whole sequence's keys and values)"]
               if s.context_parallel > 1 else [])))
    return notes


@functools.lru_cache(maxsize=64)  # the fit search estimates the same run many times
def _peft_on_meta(config_json: str, r: int, targets: tuple[str, ...] | str, target_parameters: tuple[str, ...],
                  modules_to_save: tuple[str, ...]) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The LoRA parameters PEFT adds to the base built from its config on the meta device (shapes only, no
    memory), with hubtune's own LoraConfig (hubtune.train.lora_config): PEFT moves MLP names onto a MoE's
    stacked experts and gives them ranks of its own, which only PEFT itself knows."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from hubtune import config as cfg
    from hubtune.train import lora_config

    config = AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    lora = cfg.LoraSection(r=r, dropout=0.0, target_modules=list(targets) if isinstance(targets, tuple) else targets,
                           target_parameters=list(target_parameters), modules_to_save=list(modules_to_save))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, lora_config(lora, model_config=config, model=model), low_cpu_mem_usage=True)
    return tuple((n, tuple(p.shape)) for n, p in peft_model.named_parameters() if "lora_" in n)


def moe_adapter_names(arch: Architecture, r: int, targets, target_parameters=(), modules_to_save=()) -> list[str]:
    return [n for n, _ in _peft_on_meta(arch.config_json, r, targets, tuple(target_parameters), tuple(modules_to_save))]


def moe_adapter_shapes(arch: Architecture, r: int, targets, target_parameters=(), modules_to_save=()
                       ) -> list[tuple[tuple[int, ...], int]]:
    """(shape, how many) of the LoRA parameters PEFT adds to a MoE base."""
    shapes = Counter(shape for _, shape in _peft_on_meta(arch.config_json, r, targets, tuple(target_parameters),
                                                         tuple(modules_to_save)))
    return list(shapes.items())


def _head_name(s: Settings) -> str:
    return ("logits: float32 tiles of TRL's fused LM head" if s.loss == "fused"
            else "logits: the whole vocabulary, upcast to float32 for the loss")


def _head_bytes(arch: Architecture, s: Settings, tokens: int, head_trained: bool = False) -> int:
    """TRL's fused head: one 16-bit tile of logits (plus the head's rows cast to the compute dtype when
    it is float32), float32 per-token statistics and, in the backward, the float32 gradient of the
    hidden states (and of the head itself when it is trained). The unfused float32 loss: the logits in
    the compute dtype (the model's output keeps them), the float32 log-probabilities cross-entropy saves,
    and their float32 gradient."""
    grad_head = arch.vocab * arch.hidden * 4 if head_trained else 0
    if s.loss == "float32":
        wide = 4 if s.compute_dtype == "float32" else 2
        return int(tokens * arch.vocab * (wide + 4 + 4) + grad_head)
    vocab_tile = min(arch.vocab, HEAD_VOCAB_TILE)
    tile = min(tokens, HEAD_TOKEN_TILE) * vocab_tile * 2
    cast = vocab_tile * arch.hidden * 2 if s.recipe == "qlora-fp16" else 0
    grad_hidden = tokens * arch.hidden * 4
    stats = tokens * 8 * 4
    return int(tile + cast + grad_hidden + stats + grad_head)


BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps a smaller tensor's states in float32


def _tensor_optimizer_bytes(opt: str, shape: tuple[int, ...], param_bytes: int, embedding: bool) -> int:
    """The optimizer's states of one trainable tensor."""
    n = math.prod(shape)
    if opt in ("adamw_8bit", "paged_adamw_8bit"):
        # transformers' Trainer keeps an nn.Embedding's states in 32 bits (register_module_override)
        if embedding or n < BNB_MIN_8BIT_SIZE:
            return n * 8
        return n * 2 + 2 * 4 * math.ceil(n / 256)  # two 8-bit moments, a float32 scale per 256
    if opt == "adamw_torch_8bit":  # torchao's AdamW8bit: two 8-bit moments, a float32 scale per block of 256
        return n * 2 + 2 * 4 * math.ceil(n / 256)
    if opt == "paged_adamw_32bit":
        return n * 8
    if opt in ("adamw_torch", "adamw_torch_fused"):
        return n * 2 * param_bytes  # torch keeps both moments in the parameter's dtype
    if opt == "adafactor":  # factored second moment: a row and a column vector per matrix
        return (sum(shape) if len(shape) >= 2 else n) * 4
    if opt == "sgd":
        return 0
    raise HubtuneError(f"unknown optimizer {opt!r}; the estimate knows {', '.join(OPTIMIZERS)}")


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _optimizer_bytes(arch: Architecture, s: Settings, trainable: int, param_bytes: int) -> int:
    """Full fine-tuning's optimizer states."""
    opt = s.optimizer
    if opt in ("adamw_8bit", "paged_adamw_8bit", "adamw_torch_8bit"):
        return int(trainable * (2 + 2 * 4 / 256))  # two 8-bit moments, a float32 scale per 256
    if opt == "paged_adamw_32bit":
        return trainable * 8
    if opt in ("adamw_torch", "adamw_torch_fused"):
        return trainable * 2 * param_bytes  # torch keeps both moments in the parameter's dtype
    if opt == "adafactor":  # factored second moment: a row and a column vector per matrix
        return arch.layers * sum(m.fan_in + m.fan_out for m in arch.linears) * 4
    if opt == "sgd":
        return 0
    raise HubtuneError(f"unknown optimizer {opt!r}; the estimate knows {', '.join(OPTIMIZERS)}")


# ---- GPUs and what to change ------------------------------------------------------------------------
def gpu_spec(gpu: str | float) -> tuple[str, int, bool]:
    """(name, bytes, computes in bfloat16) of a GPU from GPUS (case and spaces ignored) or a size in GB."""
    if isinstance(gpu, (int, float)):
        return f"{gpu:g} GB", int(gpu * GB), True
    key = gpu.replace(" ", "").lower()
    for name, (mib, bf16) in GPUS.items():
        if name.replace(" ", "").lower() == key:
            return name, mib * 2**20, bf16
    try:
        size = float(key.removesuffix("gb"))
    except ValueError:
        raise HubtuneError(f"unknown GPU {gpu!r}; give one of {', '.join(GPUS)} or a size in GB (e.g. 24)") from None
    return f"{size:g} GB", int(size * GB), True


def on_gpu(settings: Settings, gpu: str | float) -> Settings:
    """The settings as they run on this GPU: float16 compute where it has no bfloat16."""
    if gpu_spec(gpu)[2] or settings.compute_dtype != "bfloat16":
        return settings
    return replace(settings, compute_dtype="float16")


# ---- the field guide's table ------------------------------------------------------------------------
GUIDE = [  # (row, reference configs, full, 16-bit LoRA, QLoRA) in GB, as the field guide prints them
    ("1B-3B", ("Llama-3.2-1B", "Llama-3.2-3B"), 24, 8, 4),
    ("7B-8B", ("Mistral-7B-v0.3", "Qwen2.5-7B-Instruct", "Llama-3.1-8B", "Qwen3-8B"), 60, 16, 8),
    ("13B", ("Llama-2-13b-hf", "phi-4"), 120, 32, 14),
    ("70B", ("Llama-3.1-70B",), None, 160, 40),  # None: "a cluster"
]


def reference_config(name: str) -> Path:
    """A config.json shipped with hubtune (hubtune/assets/model_configs/NAME.json)."""
    from hubtune.config import ASSETS

    path = ASSETS / "model_configs" / f"{name}.json"
    if not path.is_file():
        raise HubtuneError(f"no shipped config {name!r}")
    return path


def guide_table(settings: Settings | None = None) -> list[dict]:
    """The guide's hardware table computed from real configs: per row and method, the estimate for each
    reference model and the largest of them (what a GPU for that row must hold) beside the guide's figure.
    Default settings: hubtune's run-config defaults."""
    settings = settings or Settings()
    rows = []
    for row, names, *guide in GUIDE:
        archs = [architecture(json.loads(reference_config(n).read_text()), n) for n in names]
        cells = {}
        for method, figure in zip(("full", "lora", "qlora"), guide):
            totals = [estimate(a, replace(settings, method=method)).total / GB for a in archs]
            cells[method] = {"estimate_gb": round(max(totals), 1), "models_gb": [round(t, 1) for t in totals],
                             "guide_gb": figure}
        rows.append({"row": row, "models": list(names),
                     "parameters_b": [round(a.parameters()["total"] / 1e9, 2) for a in archs], **cells})
    return rows


# ---- printing ---------------------------------------------------------------------------------------
def format_estimate(est: Estimate, fits: list[dict]) -> str:
    """The estimate as text: parameters, settings, the breakdown, the total and each GPU's verdict."""
    a, p = est.architecture, est.parameters
    lines = [f"{a.name} ({a.model_type}): {p['total'] / 1e9:.2f}B parameters "
             f"(embeddings {p['embeddings'] / 1e9:.2f}B, decoder layers {p['decoder_linear'] / 1e9:.2f}B"
             + (f", routed experts {p['experts'] / 1e9:.2f}B" if p["experts"] else "")
             + (f", output head {p['lm_head'] / 1e9:.2f}B" if p["lm_head"] else ", tied output head")
             + (f", vision {p['vision'] / 1e9:.2f}B" if p["vision"] else "") + ")",
             est.settings.describe(), ""]
    width = max(len(k) for k in est.breakdown) + 2
    lines += [f"  {k:<{width}}{v / GB:7.2f} GB" for k, v in est.breakdown.items()]
    lines.append(f"  {'total':<{width}}{est.total_gb:7.2f} GB ({est.total_gib:.2f} GiB)")
    lines += [f"note: {n}" for n in est.notes] + [""]
    for f in fits:
        line = f"{f['gpu']} ({f['gpu_gib']:g} GiB): {'fits' if f['fits'] else 'does not fit'}"
        if f["compute_dtype"] != est.settings.compute_dtype:
            line += f" ({f['total_gb']:.2f} GB: no bfloat16 on this GPU, so float16 with float32 embeddings and norms)"
        if not f["fits"]:
            tip = f["suggestion"]
            line += (f"; nearest that fits: {tip['change']} ({tip['total_gb']:.2f} GB)" if tip
                     else "; no single change makes it fit")
        lines.append(line)
    return "\n".join(lines)


def format_guide_table(rows: list[dict]) -> str:
    """The guide's table beside the estimates (GB; the largest reference model of each row). Full
    fine-tuning trains bfloat16 weights in place; 16-bit LoRA and QLoRA train adapters."""
    from hubtune.tables import text_table

    def cell(c: dict) -> str:
        guide = "cluster" if c["guide_gb"] is None else f"{c['guide_gb']:g}"
        return f"{c['estimate_gb']:>5.1f} / {guide}"

    s = Settings()
    title = (f"hubtune estimate vs the field guide, GB: the largest reference model of each row, micro-batch "
             f"{s.micro_batch} x {s.seq_len} tokens, checkpointing, {s.optimizer}, LoRA r {s.lora_r} on all linear "
             f"layers")
    table = text_table(
        ("size", "full: ours / guide", "16-bit LoRA: ours / guide", "QLoRA: ours / guide", "reference configs"),
        [(r["row"], cell(r["full"]), cell(r["lora"]), cell(r["qlora"]),
          ", ".join(f"{m} {b:g}B" for m, b in zip(r["models"], r["parameters_b"]))) for r in rows])
    return f"{title}\n\n{table}"
