"""`hubtune merge RUN --out DIR [--dtype ...]`: the adapter folded into its base, as one standalone model.

The base is loaded unquantized at the commit the run trained on, the adapter applied and merged in
float32, and the result saved in the asked dtype as safetensors, with the tokenizer and a card that
says what it is. A base that exists only in 4 bits (a pre-quantized repo) is dequantized first, with a
warning: the merged weights then carry the 4-bit rounding of the base. `hubtune push --merged` uses the
same merge.

    result = merge("runs/my-adapter", "merged/my-model", dtype="bfloat16")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from hubtune.errors import HubtuneError
from hubtune.runs import RunFolder

log = logging.getLogger("hubtune")
DTYPES = ("auto", "bfloat16", "float16", "float32")
RESULT = RunFolder.MERGE


@dataclass(frozen=True)
class MergeResult:
    path: Path
    dtype: str
    base: str  # the base's path or repo id, with its commit when pinned
    warnings: list[str] = field(default_factory=list)
    max_logit_difference: float | None = None  # merged vs adapter on held-out prompts (logit_difference)


def merge(run_dir: str | Path, out: str | Path, dtype: str = "auto") -> MergeResult:
    """Merge a finished run's adapter into its base and save a standalone model (with tokenizer and card) in `out`."""
    from hubtune import card as cards
    from hubtune.distributed import world_size

    run = RunFolder.open(run_dir).require_finished()
    out = Path(out)
    if world_size() > 1:
        raise HubtuneError("merge runs in one process: start `hubtune merge` directly, not under accelerate launch "
                           "(an FSDP or DeepSpeed run's adapter merges like any other once training is done)")
    if out.exists() and any(out.iterdir()):
        raise HubtuneError(f"{out} is not empty; give a new folder to --out")
    out.mkdir(parents=True, exist_ok=True)
    saved_dtype, warnings = merge_into(run, out, dtype)
    difference = logit_difference(run, out)

    card = cards.build_card(run, out.name, cards.publishing_verdict(run), merged=True, loss_curve_file=None)
    s = run.summary
    at = f"@{s.base_revision}" if s.base_revision else ""
    card.text += (f"\n## How it was merged\n\n`hubtune merge` applied the adapter of run `{run.path.name}` to "
                  f"`{s.base_model}{at}` in float32 and saved the merged weights in {saved_dtype}."
                  + (f" On {difference['prompts']} held-out prompts the largest logit difference between the merged "
                     f"model and the adapter over the same base is {difference['max']:.2e}."
                     if difference["max"] is not None else "") + "\n"
                  + "".join(f"\n> **Warning:** {w}\n" for w in warnings))
    card.save(out / "README.md")
    run.write_json(RESULT, {"folder": str(out.resolve()), "dtype": saved_dtype, "base": f"{s.base_model}{at}",
                            "max_logit_difference": difference["max"], "logit_prompts": difference["prompts"],
                            "warnings": warnings, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return MergeResult(out, saved_dtype, f"{s.base_model}{at}", warnings, difference["max"])


def merge_into(run: RunFolder, out: Path, dtype: str = "auto") -> tuple[str, list[str]]:
    """Write the merged model's weights, config and tokenizer into `out`; returns (saved dtype, warnings)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoTokenizer

    from hubtune.train import fit_vocabulary

    if dtype not in DTYPES:
        raise HubtuneError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    s = run.summary
    trust = run.config.model.trust_remote_code
    path = base_path(run)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    warnings = []
    if _is_nvfp4(path):
        stored = "in FP8 with NVFP4 experts" if (s.base_quantization or "").endswith("with NVFP4 experts") else \
            "in NVFP4"
        warnings.append(f"{s.base_model} is stored {stored}: the merged model holds its dequantized weights plus the "
                        f"adapter's delta (what the run trained on), in 16 bits; it is not quantized back")
        base = _base(run, path, dtype=torch.float32, trust_remote_code=trust)
    elif _is_4bit(config):
        warnings.append(f"only a 4-bit base is available ({s.base_model} is stored quantized): it was dequantized "
                        f"before merging, so the merged weights carry its 4-bit rounding and differ from a merge "
                        f"into the original 16-bit base. Merge into the unquantized base for full precision.")
        log.warning(warnings[-1])
        base = _base(run, path, trust_remote_code=trust).dequantize()
        base = base.to(torch.float32)
    else:
        base = _base(run, path, dtype=torch.float32, trust_remote_code=trust)
    fit_vocabulary(base, run.adapter)
    if run.config.lora.nvfp4_merge_aware:
        model = _merge_aware_merge(run, path, trust)
        warnings.append("the adapter was trained merge-aware: each of its layers over an NVFP4 weight is merged as "
                        "Q(W + s·B·A), the weight quantized to NVFP4 again that the run trained with, written "
                        "dequantized")
    else:
        model = PeftModel.from_pretrained(base, str(run.adapter)).merge_and_unload()
    if run.config.model.linearized_experts:
        from hubtune.linearized import fuse_experts

        fuse_experts(model)  # saved in transformers' own Llama 4 layout, as Axolotl's delinearize_llama4 writes it
        warnings.append("the base's linearized experts (one linear layer per expert) were written back stacked, in "
                        "transformers' own Llama 4 layout: the merged model loads with AutoModelForCausalLM")
    if dtype == "auto":
        dtype = _dtype_name(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)) or "float32"
    model = model.to(getattr(torch, dtype))
    model.config.quantization_config = None  # the merged weights are plain tensors, whatever the base was
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(run.adapter)).save_pretrained(out)
    return dtype, warnings


def _merge_aware_adapter(run: RunFolder, path: str, trust: bool):
    """The run's merge-aware adapter on its NVFP4 base, loaded packed, as the run computed (hubtune.nvfp4)."""
    import torch
    from peft import PeftModel

    from hubtune import experts, nvfp4
    from hubtune.train import fit_vocabulary

    base = nvfp4.load(path, dtype=torch.float32, trust_remote_code=trust)
    fit_vocabulary(base, run.adapter)
    adapter = experts.under_lora(base, lambda: PeftModel.from_pretrained(base, str(run.adapter)))
    nvfp4.merge_aware(adapter)
    return adapter.eval()


def _merge_aware_merge(run: RunFolder, path: str, trust: bool):
    """The base with every merge-aware layer's weight set to Q(W + delta) and the rest of the adapter merged as
    PEFT merges it (modules_to_save, layers over 16-bit weights)."""
    import torch

    from hubtune import nvfp4

    adapter = _merge_aware_adapter(run, path, trust)
    snapped = nvfp4.merge_aware_weights(adapter)
    nvfp4.dequantized(adapter.base_model.model)  # plain weights, which PEFT merges into
    model = adapter.merge_and_unload()
    with torch.no_grad():
        for name, value in snapped.items():
            model.get_parameter(name).copy_(value)
    return model


def _base(run: RunFolder, path: str, **kwargs):
    """The base as the run loaded it: AutoModelForCausalLM, with one linear layer per expert when the run's base
    was saved so (model.linearized_experts)."""
    from transformers import AutoModelForCausalLM

    if _is_nvfp4(path):
        from hubtune import nvfp4

        return nvfp4.dequantized(nvfp4.load(path, **{k: v for k, v in kwargs.items()
                                                    if k in ("dtype", "trust_remote_code")}))
    if run.config.model.linearized_experts:
        from hubtune import linearized

        return linearized.load(path, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def base_path(run: RunFolder) -> str:
    """The base's folder in its original precision, at the commit the run trained on."""
    from hubtune.config import ModelSection
    from hubtune.hub import resolve_model

    s = run.summary
    return resolve_model(ModelSection(id=s.base_model, revision=s.base_revision, quantization="none",
                                      trust_remote_code=run.config.model.trust_remote_code)).path


def logit_difference(run: RunFolder, merged: Path, limit: int = 8) -> dict:
    """The largest absolute logit difference between the merged model in `merged` and the adapter applied
    (unmerged) to the same original-precision base, over up to `limit` held-out conversations: how much
    merging (and saving in a lower dtype) changed what the model computes. {max, prompts}."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    trust = run.config.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter))
    rows: list[dict] = []
    for split in ("validation", "train"):  # held-out prompts, else training ones for a run that held none out
        try:
            rows = [r for r in run.rows(split) if "prompt" in r][:limit]
        except HubtuneError:  # a run written before the prepared rows were kept
            continue
        if rows:
            break
    if not rows:
        return {"max": None, "prompts": 0}
    texts = [tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False) for r in rows]
    path = base_path(run)
    if _is_4bit(AutoConfig.from_pretrained(path, trust_remote_code=trust)):
        base = _base(run, path, trust_remote_code=trust).dequantize().to(torch.float32)
    else:
        base = _base(run, path, dtype=torch.float32, trust_remote_code=trust)
    if run.config.lora.nvfp4_merge_aware:
        adapter = _merge_aware_adapter(run, path, trust)
    else:
        adapter = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    merged_model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, trust_remote_code=trust).eval()
    largest = 0.0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            diff = (adapter(input_ids=ids).logits - merged_model(input_ids=ids).logits).abs().max().item()
            largest = max(largest, diff)
    return {"max": largest, "prompts": len(texts)}


def _is_nvfp4(path: str) -> bool:
    """A base saved by NVIDIA ModelOpt in NVFP4 (hubtune.nvfp4), which transformers cannot load."""
    from hubtune import nvfp4
    from hubtune.interop import prequantized

    return nvfp4.is_nvfp4(prequantized.quantization_config(path))


def _is_4bit(config) -> bool:
    q = getattr(config, "quantization_config", None)
    if q is None:
        return False
    q = q if isinstance(q, dict) else q.to_dict()
    return bool(q.get("load_in_4bit") or q.get("_load_in_4bit"))


def _dtype_name(value) -> str | None:
    name = str(value).removeprefix("torch.") if value is not None else None
    return name if name in DTYPES else None
