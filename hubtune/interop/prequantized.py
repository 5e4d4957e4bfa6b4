"""Bases saved already quantized (Unsloth's `...-bnb-4bit` repos, or any `save_pretrained` of a 4-bit
model): their config.json holds a `quantization_config`. They load as saved, never quantized a second
time, and their licence is the licence of the original model their card names as `base_model`.

    quantization_config("/path/to/folder")  -> {"quant_method": "bitsandbytes", ...} or None
    original_base(card_metadata, "unsloth/x-bnb-4bit", revision)  -> "meta-llama/Llama-3.1-8B" or None
"""

from __future__ import annotations

import json
from pathlib import Path


def quantization_config(folder: str | Path) -> dict | None:
    """The `quantization_config` of the config.json in a local model folder (or of the hf_quant_config.json
    NVIDIA ModelOpt writes beside it), or None."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    try:
        found = json.loads(config.read_text()).get("quantization_config")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(found, dict) and found:
        return found
    from hubtune import nvfp4

    return nvfp4.saved_format(folder)  # ModelOpt may name its format in hf_quant_config.json alone


def repo_quantization_config(ref: str, revision: str | None = None) -> dict | None:
    """The same for a local folder, a `hubtune:` asset or a Hub repo (only config.json is downloaded)."""
    from hubtune import hub
    from hubtune.refs import RepoRef

    parsed = RepoRef.parse(ref)
    if parsed.is_local:
        return quantization_config(parsed.path)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with hub.hub_errors(ref, "model", revision):
        hub.require_access(ref, "model", revision)
        try:
            path = hf_hub_download(ref, "config.json", revision=revision, token=hub.token())
        except EntryNotFoundError:
            return None
    return quantization_config(Path(path).parent)


def original_base(metadata: dict, ref: str, revision: str | None = None) -> str | None:
    """The model a pre-quantized repo is a copy of: the one `base_model` its card names. None when the
    repo is not pre-quantized, or its card names no single other model."""
    from hubtune.errors import HubAccessError

    base = metadata.get("base_model")
    if isinstance(base, list):
        base = base[0] if len(base) == 1 else None
    if not isinstance(base, str) or not base.strip() or base == ref:
        return None
    try:
        quantized = repo_quantization_config(ref, revision)
    except HubAccessError:
        # A gated repo without access, or no network: its own card (already read) is what can be judged.
        return None
    return base if quantized else None


def describe(quantization: dict) -> str:
    """`bitsandbytes nf4 (double quantization)` and the like, for messages and the run summary."""
    method = quantization.get("quant_method", "unknown method")
    from hubtune import nvfp4

    if nvfp4.is_mixed(quantization):
        return "fp8 with NVFP4 experts"  # DeepSeek V4's NVFP4 release, read by hubtune.nvfp4
    if method == "modelopt":
        return f"modelopt {quantization.get('quant_algo', '')}".strip()  # `modelopt NVFP4`
    if quantization.get("load_in_4bit") or quantization.get("_load_in_4bit"):
        kind = quantization.get("bnb_4bit_quant_type", "4-bit")
        double = " (double quantization)" if quantization.get("bnb_4bit_use_double_quant") else ""
        return f"{method} {kind}{double}"
    if quantization.get("load_in_8bit") or quantization.get("_load_in_8bit"):
        return f"{method} 8-bit"
    return str(method)


def unreadable(quantization: dict) -> str | None:
    """Why a base saved with this quantization_config cannot be loaded (a method transformers has no quantizer
    for, and not NVIDIA ModelOpt's NVFP4, which hubtune.nvfp4 reads), or None when it can."""
    import transformers
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

    from hubtune import nvfp4

    method = quantization.get("quant_method")
    if method == "modelopt":
        return nvfp4.unreadable(quantization)  # hubtune reads ModelOpt's NVFP4 checkpoints itself
    if method in AUTO_QUANTIZATION_CONFIG_MAPPING or str(method).startswith("bitsandbytes") or any(
            quantization.get(flag) for flag in ("load_in_4bit", "load_in_8bit", "_load_in_4bit", "_load_in_8bit")):
        return None
    return (f"saved in quant_method {method!r}, which transformers {transformers.__version__} has no quantizer for, so it cannot load "
            f"it (not even dequantized); use the 16-bit model it was made from (its card's base_model), with "
            f"model.quantization nf4 for 4-bit memory")
