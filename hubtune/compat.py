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
    "llama4_backbone": {"transformers": "5.24.0", "trl": "1.16.0"},
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
