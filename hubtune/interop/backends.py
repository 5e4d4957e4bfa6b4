"""The training backend: `hf` (transformers + PEFT, runs anywhere) or `unsloth` (Unsloth's
FastLanguageModel: its own kernels and gradient checkpointing, NVIDIA GPUs only). Both read the same
run config and write the same run folder; the adapter is a plain PEFT adapter either way.

    choice = select("auto", hw, config.model)   # Backend("hf", "auto: Unsloth needs a CUDA GPU ...")
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubtune import families
from hubtune.config import LoraSection, ModelSection
from hubtune.errors import ConfigError

if TYPE_CHECKING:
    from hubtune.hardware import Hardware


@dataclass(frozen=True)
class Backend:
    name: str  # "hf" or "unsloth"
    why: str  # one line: how it was chosen

    def to_dict(self) -> dict:
        return {"name": self.name, "why": self.why}


def unsloth_missing(hw: Hardware, model: ModelSection) -> list[str]:
    """What this machine or config lacks for Unsloth; empty when it can run."""
    missing = []
    if hw.device != "cuda":
        missing.append("a CUDA GPU (torch sees none)")
    if importlib.util.find_spec("unsloth") is None:
        missing.append("the unsloth package (pip install unsloth)")
    if model.quantization in ("fp4", "int8") or (model.quantization == "nf4" and not model.double_quant):
        missing.append("model.quantization: nf4 with model.double_quant: true (Unsloth's 4-bit format)")
    if model.linearized_experts:
        missing.append("transformers' own Llama 4 layout (Unsloth loads no linearized experts)")
    return missing


def select(wanted: str, hw: Hardware, model: ModelSection) -> Backend:
    """The backend to train with: `unsloth` where it cannot run is a ConfigError naming what is missing;
    `auto` takes Unsloth when it can run and says why not otherwise."""
    if wanted == "hf":
        return Backend("hf", "training.backend: hf")
    missing = unsloth_missing(hw, model)
    if wanted == "unsloth":
        if missing:
            raise ConfigError([("training.backend", f"unsloth cannot run here: it needs {'; '.join(missing)}. "
                                                    f"Fix that, or set training.backend: hf (or auto)")])
        return Backend("unsloth", "training.backend: unsloth")
    if missing:
        return Backend("hf", f"auto: Unsloth needs {'; '.join(missing)}")
    return Backend("unsloth", "auto: a CUDA GPU and unsloth are present")


def import_unsloth() -> None:
    """Unsloth patches transformers, PEFT and TRL when imported, so it must come first."""
    import unsloth  # noqa: F401


def unsloth_base(path: str, model: ModelSection, hw: Hardware, max_seq_len: int, prequantized: bool):
    """The frozen base through FastLanguageModel.from_pretrained (its tokenizer is not used: data was
    already prepared with the base's own)."""
    from unsloth import FastLanguageModel

    base, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=max_seq_len,
        dtype=hw.compute_dtype,
        # A pre-quantized repo (unsloth/...-bnb-4bit) loads as saved; load_in_4bit is how Unsloth's docs load them.
        load_in_4bit=prequantized or model.quantization != "none",
        fix_tokenizer=False,
        trust_remote_code=model.trust_remote_code,
    )
    return base


def unsloth_lora(base, lora: LoraSection, gradient_checkpointing: bool, seed: int):
    """LoRA adapters through FastLanguageModel.get_peft_model, with Unsloth's gradient checkpointing."""
    from unsloth import FastLanguageModel

    targets = lora.peft_target_modules()
    return FastLanguageModel.get_peft_model(
        base,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=families.linear_module_names(base) if targets == "all-linear" else targets,
        bias="none",
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
