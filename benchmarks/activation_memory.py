"""Activation memory of hubtune's recipe, measured: the bytes autograd saves for the backward pass
per token and decoder layer, and the coefficients hubtune/memory.py uses for them.

    python benchmarks/activation_memory.py [--widths 2048,3072,4096] [--tokens 256] [--targets qv]

For each method (qlora: the 4-bit base as hubtune.train.load_base prepares it for bfloat16 compute;
qlora-fp16: the same for float16 compute, where PEFT upcasts the embeddings, head and norms to
float32; lora: a 16-bit base with PEFT adapters; full: every weight trainable) and each Llama width, it builds the model from
config with random weights, runs one forward in bfloat16 (or float16) autocast with SDPA attention under
autograd's saved-tensor hooks, and counts the distinct storages saved (parameters excluded).
The difference between 2 layers and 1 is one layer's share. A least-squares fit over the widths gives
bytes per token and layer = a*hidden + b*intermediate + c*kv_dim. The last line is:

    activations: qlora=<a,b,c> lora=<a,b,c> full=<a,b,c>
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

WIDTHS = {  # hidden: (intermediate, heads, kv heads), Llama-3.2-1B/3B and Llama-3.1-8B shapes
    1024: (2816, 16, 4), 2048: (8192, 32, 8), 3072: (8192, 24, 8), 4096: (14336, 32, 8),
}


def build(method: str, hidden: int, layers: int, dropout: float = 0.05, targets: str = "all-linear"):
    """A Llama of the given width with hubtune's training setup for `method`."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hubtune.config import LoraSection, ModelSection
    from hubtune.hardware import Hardware
    from hubtune.train import load_base, lora_config

    inter, heads, kv = WIDTHS[hidden]
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=1024,
                         max_position_embeddings=4096)
    folder = tempfile.mkdtemp(prefix="hubtune-act-")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, attn_implementation="sdpa")
        model.train()
        return model
    dtype = torch.float16 if method == "qlora-fp16" else torch.bfloat16
    hw = Hardware("cpu", dtype, "adamw_torch")
    section = ModelSection(id=folder, quantization="none" if method == "lora" else "nf4")
    base = load_base(folder, section, hw)
    model = get_peft_model(base, lora_config(LoraSection(r=16, dropout=dropout, target_modules=targets), model=base))
    if method.startswith("qlora"):  # as TRL does for a quantized base
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    return model


def saved_bytes(model, tokens: int, dtype=torch.bfloat16) -> int:
    """Bytes of the distinct storages autograd saves in one forward of the decoder (no LM head)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    params |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without plain storage
            return t
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    ids = torch.randint(0, 1024, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=dtype):
        backbone(input_ids=ids)
    return sum(seen.values())


def per_layer_per_token(method: str, hidden: int, tokens: int, dropout: float = 0.05,
                        targets: str = "all-linear") -> float:
    dtype = torch.float16 if method == "qlora-fp16" else torch.bfloat16
    one = saved_bytes(build(method, hidden, 1, dropout, targets), tokens, dtype)
    two = saved_bytes(build(method, hidden, 2, dropout, targets), tokens, dtype)
    return (two - one) / tokens


def fit(method: str, widths: list[int], tokens: int, dropout: float = 0.05,
        targets: str = "all-linear") -> tuple[np.ndarray, list[float]]:
    rows, measured = [], []
    for h in widths:
        inter, heads, kv = WIDTHS[h]
        rows.append([h, inter, kv * h // heads])
        measured.append(per_layer_per_token(method, h, tokens, dropout, targets))
        print(f"{method} on {targets} (LoRA dropout {dropout}) hidden {h}: {measured[-1]:.0f} bytes per token and "
              f"layer", flush=True)
    coef = np.linalg.lstsq(np.asarray(rows, float), np.asarray(measured), rcond=None)[0]
    return coef, measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="2048,3072,4096")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--methods", default="qlora,lora,full")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0 saves no dropout masks)")
    parser.add_argument("--targets", default="all-linear", help="LoRA target modules: all-linear, attention or qv")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    found = {}
    for method in args.methods.split(","):
        coef, _ = fit(method, widths, args.tokens, args.dropout, args.targets)
        found[method] = ",".join(f"{c:.1f}" for c in coef)
    print("activations: " + " ".join(f"{m}={c}" for m, c in found.items()))


if __name__ == "__main__":
    main()
