"""Layers that carry a state from token to token (state-space, linear attention, short convolutions) and
whether packed rows keep their examples apart through them.

A packed row (data.packing, or padding-free rows) holds several examples, each with position_ids restarting at
0. Attention keeps them apart by those position_ids; a recurrent layer's state and conv window run on from one
example into the next unless its forward restarts at each example's start. hubtune does that for Nemotron-H's
Mamba-2 layers (hubtune.context_parallel.keep_packed_examples_apart). For the other architectures below,
transformers' forward takes no boundary from position_ids (its torch paths ignore them, its kernels get none),
so hubtune refuses packed rows for them before training rather than train on leaked state."""

from __future__ import annotations

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
EXAMPLE_AWARE = frozenset({"nemotron_h"})
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


def packing_problem(model_config) -> str | None:
    """Why packed rows would mix this model's examples, or None."""
    layers = stateful_layers(model_config)
    model_type = getattr(_text(model_config), "model_type", None)
    if layers is None or model_type in EXAMPLE_AWARE:
        return None
    return (f"the model's {layers} layers carry a state from token to token, and hubtune cannot restart it at "
            f"each example of a packed row for {model_type} (only Nemotron-H's Mamba-2): each example would "
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
            f"to token, and hubtune cannot restart it at each example of a packed row for {model_type} (only "
            f"Nemotron-H's Mamba-2): each example would start from the state the one before it left")
