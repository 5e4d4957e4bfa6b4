"""Layers that carry a state from token to token (state-space, linear attention, short convolutions) and
whether packed rows keep their examples apart through them.

A packed row (data.packing, or padding-free rows) holds several examples, each with position_ids restarting at
0. Attention keeps them apart by those position_ids; a recurrent layer's state and conv window run on from one
example into the next unless its forward restarts at each example's start, which transformers' does not (its
torch paths ignore position_ids, its kernels get no boundaries). hubtune restarts them for Nemotron-H's Mamba-2
layers (hubtune.context_parallel) and for the mixers in KERNELS below (keep_examples_apart: each example run
alone through transformers' own mixer, or the boundaries handed to the CUDA kernels that take them; the examples
reach the mixer from its decoder layer (LAYERS) or, where position_ids never reach the layers, from the model
(MODELS)), and refuses packed rows for the other families (RWKV, xLSTM) before training rather than train on
leaked state."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

# model_type (of the text model) -> the layers that carry state across tokens.
STATEFUL = {
    "nemotron_h": "Mamba-2", "falcon_h1": "Mamba-2", "granitemoehybrid": "Mamba-2", "bamba": "Mamba-2",
    "zamba": "Mamba", "zamba2": "Mamba-2", "jamba": "Mamba", "mamba": "Mamba", "mamba2": "Mamba-2",
    "falcon_mamba": "Mamba", "qwen3_next": "Gated DeltaNet (linear attention)",
    "qwen3_5": "Gated DeltaNet (linear attention)", "qwen3_5_text": "Gated DeltaNet (linear attention)",
    "qwen3_5_moe": "Gated DeltaNet (linear attention)", "qwen3_5_moe_text": "Gated DeltaNet (linear attention)",
    "olmo_hybrid": "Gated DeltaNet (linear attention)", "kimi_linear": "Kimi Delta Attention (linear attention)",
    "minimax": "lightning (linear) attention", "lfm2": "short-convolution", "lfm2_moe": "short-convolution",
    "recurrent_gemma": "RG-LRU recurrent", "rwkv": "RWKV", "xlstm": "xLSTM",
}
# Packed rows keep their examples apart through these (hubtune.context_parallel).
EXAMPLE_AWARE = frozenset({"nemotron_h", "qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text",
                           "lfm2", "lfm2_moe", "falcon_h1", "kimi_linear", "jamba", "granitemoehybrid", "bamba",
                           "zamba", "zamba2", "mamba", "mamba2", "falcon_mamba", "olmo_hybrid", "minimax",
                           "recurrent_gemma"})
AWARE_IN_WORDS = ("Nemotron-H, Granite 4.0 hybrids, Bamba, Zamba, Zamba2, Falcon-H1, Jamba, Mamba, Mamba-2, "
                  "FalconMamba, Qwen3-Next, Qwen3.5 (+MoE), OLMo-Hybrid, LFM2 (+MoE), Kimi-Linear, "
                  "MiniMax-Text-01 and RecurrentGemma")
# Families with no attention layer at all (transformers refuses an attn_implementation for them).
ATTENTION_FREE = frozenset({"mamba", "mamba2", "falcon_mamba", "rwkv", "xlstm"})
ATTENTION = frozenset({"full_attention", "sliding_attention", "chunked_attention", "attention", "global", "local"})
NOT_MIXING = frozenset({"mlp", "moe", "dense", "sparse"})  # layer kinds that mix no tokens (Nemotron-H, Kimi)
RECURRENT_WORDS = ("linear", "mamba", "conv", "ssm", "recurrent", "delta", "rnn", "lightning")
# Hub repo names that say the architecture (for the Axolotl converter, which reads no config.json).
REPO_NAMES = (
    (r"nemotron-h\b|nemotron-3-(nano|super|ultra)", "nemotron_h"), (r"qwen3-next", "qwen3_next"),
    (r"qwen3\.5-", "qwen3_5"), (r"falcon-h1", "falcon_h1"), (r"falcon-mamba", "falcon_mamba"),
    (r"jamba", "jamba"), (r"kimi-linear", "kimi_linear"), (r"lfm2", "lfm2"),
    (r"granite-4\.0-(h-|tiny|small)", "granitemoehybrid"), (r"bamba", "bamba"), (r"zamba2", "zamba2"),
    (r"zamba", "zamba"), (r"(^|/)mamba-", "mamba"), (r"mamba2", "mamba2"), (r"minimax-text-01", "minimax"),
    (r"recurrentgemma", "recurrent_gemma"), (r"rwkv", "rwkv"), (r"xlstm", "xlstm"),
)


def _text(model_config):
    return model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config


def stateful_layers(model_config) -> str | None:
    """The model's layers that carry state from token to token, in words, or None (attention only)."""
    text = _text(model_config)
    model_type = getattr(text, "model_type", None)
    kinds = getattr(text, "layer_types", None) or getattr(text, "layers_block_type", None)
    mixing = {str(k) for k in kinds or ()} - NOT_MIXING
    if kinds is not None and mixing <= ATTENTION:
        return None  # a hybrid family's all-attention member (Granite 4.0 Micro)
    if model_type in STATEFUL:
        return STATEFUL[model_type]
    other = sorted(k for k in mixing - ATTENTION if any(word in k for word in RECURRENT_WORDS))
    if other:
        return ", ".join(other)
    to_dict = text.to_dict() if hasattr(text, "to_dict") else {}
    if any(key.startswith(("mamba", "ssm")) for key in to_dict):
        return "state-space (Mamba)"
    return None


def attention_free(model_config) -> bool:
    """Whether the model has no attention layer (pure state-space or RNN models)."""
    return getattr(_text(model_config), "model_type", None) in ATTENTION_FREE


def packing_problem(model_config) -> str | None:
    """Why packed rows would mix this model's examples, or None."""
    layers = stateful_layers(model_config)
    model_type = getattr(_text(model_config), "model_type", None)
    if layers is None or model_type in EXAMPLE_AWARE:
        return None
    return (f"the model's {layers} layers carry a state from token to token, and hubtune cannot restart it at "
            f"each example of a packed row for {model_type} (only for {AWARE_IN_WORDS}): each example would "
            f"start from the state the one before it left")


def model_type_of(base_model: str) -> str | None:
    """The architecture a base names: a local folder's config.json, else what its Hub repo name says."""
    config = Path(base_model) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            return None
        text = data.get("text_config") or {}
        return text.get("model_type") or data.get("model_type")
    name = base_model.lower()
    return next((model_type for pattern, model_type in REPO_NAMES if re.search(pattern, name)), None)


def packing_problem_by_name(base_model: str) -> str | None:
    """packing_problem for a base known only by its id (or local folder)."""
    from transformers import AutoConfig

    model_type = model_type_of(base_model)
    if model_type is None or model_type in EXAMPLE_AWARE or model_type not in STATEFUL:
        return None
    config = Path(base_model) / "config.json"
    if config.is_file():
        try:
            return packing_problem(AutoConfig.from_pretrained(base_model))
        except Exception:  # an architecture transformers does not know: judged by its model_type
            pass
    return (f"{base_model} is a {model_type} model: its {STATEFUL[model_type]} layers carry a state from token "
            f"to token, and hubtune cannot restart it at each example of a packed row for {model_type} (only for "
            f"{AWARE_IN_WORDS}): each example would start from the state the one before it left")


# ---- keeping a packed row's examples apart ---------------------------------------------------------------
# Decoder layer class -> the attribute holding its recurrent mixer, and the mixer classes that carry state.
# Each of these layers hands its keyword arguments on to the mixer, so the boundaries travel as one (and a
# recomputation under gradient checkpointing, which replays the layer's class forward with them, does the same).
LAYERS = {"Qwen3NextDecoderLayer": "linear_attn", "Qwen3_5DecoderLayer": "linear_attn",
          "Qwen3_5MoeDecoderLayer": "linear_attn", "Lfm2DecoderLayer": "conv", "Lfm2MoeDecoderLayer": "conv",
          "FalconH1DecoderLayer": "mamba", "KimiLinearDecoderLayer": "self_attn", "JambaMambaDecoderLayer": "mamba",
          "BambaDecoderLayer": "mamba", "Mamba2Block": "mixer", "Zamba2MambaDecoderLayer": "mamba",
          # Zamba2's hybrid layer hands its Mamba layer everything but position_ids
          "Zamba2HybridLayer": "mamba_decoder.mamba",
          "OlmoHybridLinearAttentionDecoderLayer": "linear_attn", "MiniMaxDecoderLayer": "self_attn"}
# Models whose forward never hands position_ids to its layers, and how the examples reach the mixers instead:
# "kwargs": the model hands them to each layer as a keyword argument, which the layers pass on to their mixers
# (Zamba; RecurrentGemma, whose model hands its layers position_ids as a positional argument; and Mamba-2's
# backbone, given them on its mask by Mamba2ForCausalLM, which drops position_ids);
# "masks": the same, and the model's masks are built with position_ids (Granite 4.0's hybrids build their
# attention masks without them); "mask": they ride on the attention_mask (Carried: the pure Mamba models drop
# position_ids, and their blocks hand the mixer only the mask).
# The pure Mamba backbones are patched too: TRL's fused loss calls the backbone itself, with position_ids.
MODELS = {"GraniteMoeHybridModel": "masks", "MambaForCausalLM": "mask", "FalconMambaForCausalLM": "mask",
          "MambaModel": "mask", "FalconMambaModel": "mask", "Mamba2ForCausalLM": "mask", "Mamba2Model": "kwargs",
          "ZambaModel": "kwargs", "RecurrentGemmaModel": "kwargs"}
# Layers that hand their mixer no keyword arguments but attention_mask: the examples ride on it (Carried).
THROUGH_MASK = frozenset({"JambaMambaDecoderLayer"})
_GATED_DELTA = (("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"), ("causal_conv1d", "causal_conv1d_fn"))
_MAMBA2 = (("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
           ("mamba_ssm.ops.triton.ssd_combined", "mamba_split_conv1d_scan_combined"),
           ("causal_conv1d", "causal_conv1d_fn"))
# Mixer class -> the kernels that keep packed examples apart on CUDA (module, function: all must import) and
# the keyword arguments that carry the boundaries to them through the mixer.
KERNELS = {
    "Qwen3NextGatedDeltaNet": (_GATED_DELTA, ("cu_seq_lens_q", "seq_idx")),  # the mixer renames it cu_seqlens
    "Qwen3_5GatedDeltaNet": (_GATED_DELTA, ("cu_seq_lens_q", "seq_idx")),
    "Qwen3_5MoeGatedDeltaNet": (_GATED_DELTA, ("cu_seq_lens_q", "seq_idx")),
    "OlmoHybridGatedDeltaNet": (_GATED_DELTA, ("cu_seq_lens_q", "seq_idx")),
    "KimiLinearDeltaAttention": ((("fla.ops.kda", "chunk_kda"), ("causal_conv1d", "causal_conv1d_fn")),
                                 ("cu_seqlens", "seq_idx")),
    "Lfm2ShortConv": ((("causal_conv1d", "causal_conv1d_fn"),), ("seq_idx",)),
    "Lfm2MoeShortConv": ((("causal_conv1d", "causal_conv1d_fn"),), ("seq_idx",)),
    "FalconH1Mixer": (_MAMBA2, ("seq_idx",)),
    "BambaMixer": (_MAMBA2, ("seq_idx",)),
    "GraniteMoeHybridMambaLayer": (_MAMBA2, ("seq_idx",)),
    "Zamba2MambaMixer": (_MAMBA2, ("seq_idx",)),
    "Mamba2Mixer": (_MAMBA2, ("seq_idx",)),
    # No kernel that takes boundaries, so one call per example everywhere: MiniMax's lightning attention and
    # RecurrentGemma's conv and RG-LRU scan are torch code, and mamba-ssm's selective scan (Mamba-1) takes none.
    "MiniMaxLightningAttention": ((), ()), "RecurrentGemmaRecurrentBlock": ((), ()),
    "JambaMambaMixer": ((), ()), "MambaMixer": ((), ()), "FalconMambaMixer": ((), ()), "ZambaMambaMixer": ((), ()),
}
MIXERS = frozenset(KERNELS)
KWARG = "packed_examples"
FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx", "cu_seqlens")


@functools.cache
def kernels_take_boundaries(mixer: str) -> bool:
    """Whether transformers runs this mixer on kernels that restart at packed boundaries (FLA's cu_seqlens,
    causal-conv1d's seq_idx): transformers picks each package when it imports, and its torch fallbacks refuse
    boundaries."""
    import importlib

    kernels = KERNELS[mixer][0]
    try:
        return bool(kernels) and all(hasattr(importlib.import_module(module), name) for module, name in kernels)
    except Exception:
        return False


def _examples(position_ids, attention_mask):
    """Each token's packed example (from 0 in every row; padding joins the example before it)."""
    from hubtune.context_parallel import seq_idx

    mask = attention_mask if getattr(attention_mask, "dim", lambda: 0)() == 2 else None
    return seq_idx(position_ids, mask)


def _mixer(layer, attribute):
    return functools.reduce(lambda module, name: getattr(module, name, None), attribute.split("."), layer)


def _layer_forward(layer, attribute, original):
    def forward(*args, **kwargs):
        position_ids = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        # Packed rows come without a cache (TRL's trainers pass use_cache=False); generation's left-padded rows
        # restart position_ids too, and keep transformers' own path.
        if (type(_mixer(layer, attribute)).__name__ not in MIXERS or position_ids is None or KWARG in kwargs
                or cache is not None or position_ids.dim() != 2 or not packed(position_ids)):
            return original(*args, **kwargs)
        examples = _examples(position_ids, kwargs.get("attention_mask"))
        if type(layer).__name__ in THROUGH_MASK:
            return original(*args, **{**kwargs, "attention_mask": Carried(kwargs.get("attention_mask"), examples)})
        return original(*args, **kwargs, **{KWARG: examples})

    return forward


def _model_forward(model, how, original):
    def forward(*args, **kwargs):
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Carried) and how == "kwargs":
            return original(*args, **{**kwargs, "attention_mask": mask.mask, KWARG: mask.examples})
        position_ids = kwargs.get("position_ids")
        use_cache = kwargs.get("use_cache")
        use_cache = getattr(model.config, "use_cache", False) if use_cache is None else use_cache
        if (position_ids is None or use_cache or kwargs.get("cache", kwargs.get("past_key_values")) is not None
                or position_ids.dim() != 2 or not packed(position_ids)):
            return original(*args, **kwargs)
        examples = _examples(position_ids, mask)
        if how == "mask":
            return original(*args, **{**kwargs, "attention_mask": Carried(mask, examples)})
        if how == "masks" and not isinstance(mask, dict):
            kwargs["attention_mask"] = _packed_masks(model, position_ids, mask, kwargs)
        return original(*args, **kwargs, **{KWARG: examples})

    return forward


def _packed_masks(model, position_ids, mask, kwargs):
    """The masks of a model that builds them without position_ids (Granite 4.0's hybrids), built with them:
    attention then keeps each packed example to itself, as transformers does where position_ids reach the mask
    (flash attention gets the examples' cu_seqlens from transformers' own helper)."""
    import torch
    from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        ids = kwargs["input_ids"]
        embeds = torch.empty(*ids.shape, 1, dtype=model.get_input_embeddings().weight.dtype, device=ids.device)
    if "flash" in str(model.config._attn_implementation) and "cu_seq_lens_q" not in kwargs:
        (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
        kwargs.update(cu_seq_lens_q=cu_q, cu_seq_lens_k=cu_k, max_length_q=max_q, max_length_k=max_k)
    common = {"config": model.config, "inputs_embeds": embeds, "attention_mask": mask, "cache": None}
    return {"full_attention": create_causal_mask(**common, position_ids=position_ids),
            "linear_attention": create_recurrent_attention_mask(**common)}


class Carried:
    """A recurrent mixer's attention_mask with the packed examples riding on it, for layers that hand their mixer
    nothing else (a recomputation under gradient checkpointing replays the layer with it)."""

    def __init__(self, mask, examples):
        self.mask, self.examples = mask, examples


def _slice_mask(mask, row, start, end):
    dim = getattr(mask, "dim", lambda: 0)()
    if dim == 2:
        return mask[row:row + 1, start:end]
    if dim == 4:
        return mask[row:row + 1, :, start:end, start:end]
    return mask


def _slice_positions(kwargs, shape, row, start, end):
    """The mixer's keyword arguments for one example: its own position_ids where the mixer reads them
    (RecurrentGemma's RG-LRU)."""
    positions = kwargs.get("position_ids")
    if getattr(positions, "shape", None) is not None and tuple(positions.shape) == tuple(shape):
        return {**kwargs, "position_ids": positions[row:row + 1, start:end]}
    return kwargs


def by_example(original, hidden_states, examples, *args, **kwargs):
    """The mixer run on each packed example of each row alone (its hidden states, a fresh state), concatenated:
    what each example gives run by itself."""
    import torch

    mask = kwargs.pop("attention_mask", None)
    for name in FLASH_KWARGS:  # boundaries for kernels, which the torch path refuses: each call is one example
        kwargs.pop(name, None)
    rows, rest = [], ()
    for row in range(hidden_states.shape[0]):
        starts = (torch.nonzero(examples[row, 1:] != examples[row, :-1]).flatten() + 1).tolist()
        bounds = [0, *starts, hidden_states.shape[1]]
        outputs = [original(hidden_states[row:row + 1, start:end], *args,
                            attention_mask=_slice_mask(mask, row, start, end),
                            **_slice_positions(kwargs, hidden_states.shape[:2], row, start, end))
                   for start, end in zip(bounds, bounds[1:])]
        if isinstance(outputs[0], tuple):  # (output, state): MiniMax's lightning attention, whose state is unused
            outputs, rest = [out[0] for out in outputs], (None,) * (len(outputs[0]) - 1)
        rows.append(torch.cat(outputs, dim=1))
    out = torch.cat(rows, dim=0)
    return (out, *rest) if rest else out


def with_boundaries(original, names, hidden_states, examples, *args, **kwargs):
    """The mixer over the batch as one row of its examples, the boundaries handed to the kernels: FLA's
    chunk_gated_delta_rule takes cu_seqlens (transformers passes it cu_seq_lens_q, and FLA wants a batch of
    one; int64), causal-conv1d's causal_conv1d_fn and mamba-ssm's kernels take seq_idx (int32, non-decreasing along
    the row)."""
    import torch

    batch, length = hidden_states.shape[:2]
    offsets = torch.cumsum(examples[:, -1] + 1, dim=0) - (examples[:, -1] + 1)
    flat = (examples + offsets[:, None]).reshape(1, -1).to(torch.int32)
    counts = torch.bincount(flat[0].long())
    cu_seqlens = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])  # int64: FLA's LongTensor
    mask = kwargs.pop("attention_mask", None)
    if getattr(mask, "dim", lambda: 0)() == 2:
        mask = mask.reshape(1, -1)
    given = {"cu_seq_lens_q": cu_seqlens, "cu_seqlens": cu_seqlens, "seq_idx": flat}
    out = original(hidden_states.reshape(1, batch * length, -1), *args, attention_mask=mask,
                   **{**kwargs, **{name: given[name] for name in names}})
    return out.reshape(batch, length, *out.shape[2:])


def _mixer_forward(mixer, original):
    def forward(hidden_states, *args, **kwargs):
        examples = kwargs.pop(KWARG, None)
        if isinstance(kwargs.get("attention_mask"), Carried):
            carried = kwargs.pop("attention_mask")
            kwargs["attention_mask"], examples = carried.mask, carried.examples
        if examples is None or kwargs.get("cache", kwargs.get("cache_params")) is not None:
            return original(hidden_states, *args, **kwargs)
        if hidden_states.is_cuda and kernels_take_boundaries(type(mixer).__name__):
            names = KERNELS[type(mixer).__name__][1]
            return with_boundaries(original, names, hidden_states, examples, *args, **kwargs)
        return by_example(original, hidden_states, examples, *args, **kwargs)

    return forward


def keep_examples_apart(model) -> int:
    """Without context parallelism: each example of a packed row starts the model's recurrent mixers (LAYERS)
    from a fresh state, as run alone; the number of mixers patched."""
    count = 0
    for module in model.modules():
        name = type(module).__name__
        if name in MODELS and not getattr(module, "_packed_examples_apart", False):
            module.forward = _model_forward(module, MODELS[name], module.forward)
            module._packed_examples_apart = True
        if name in LAYERS and not getattr(module, "_packed_examples_apart", False):
            module.forward = _layer_forward(module, LAYERS[name], module.forward)
            module._packed_examples_apart = True
        if name in MIXERS and not getattr(module, "_packed_examples_apart", False):
            module.forward = _mixer_forward(module, module.forward)
            module._packed_examples_apart = True
            count += 1
    return count


def packed(position_ids) -> bool:
    """Whether a row holds several examples: position_ids restart at 0 after its first token."""
    return bool((position_ids[..., 1:] == 0).any())
