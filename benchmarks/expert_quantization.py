"""What model.quantize_experts saves when a mixture-of-experts base loads: the bytes its weights take and the
peak memory of the load, with the experts in 16 bits (BitsAndBytesConfig quantizes the linear layers only)
and quantized as they load (nf4, int8).

    python benchmarks/expert_quantization.py [--hidden 1024] [--layers 4] [--experts 32]

It saves a Qwen3-MoE with random bfloat16 weights at the given size, then loads it once per setting, each in
a fresh process, through hubtune.train.load_base (bfloat16 compute). On a CUDA machine the peak is the GPU's
(torch.cuda.max_memory_allocated); elsewhere it is the process's peak resident memory (VmHWM), which also counts the
checkpoint's pages the loader reads. The last line is:

    experts: weights_mb=<16-bit>,<nf4>,<int8> peak_mb=<16-bit>,<nf4>,<int8> device=<cuda|cpu>
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from moe_driver import each_in_its_process, peak_bytes, qwen3_moe

SETTINGS = {"16-bit": {"quantization": "nf4"}, "nf4": {"quantization": "nf4", "quantize_experts": True},
            "int8": {"quantization": "int8", "quantize_experts": True}}


def build(folder: Path, hidden: int, layers: int, experts: int) -> int:
    import torch
    from transformers import Qwen3MoeForCausalLM

    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(qwen3_moe(hidden, layers, experts)).to(torch.bfloat16)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def load(folder: str, setting: str) -> dict:
    """One load in this process: the weights' bytes and the peak."""
    import torch

    from hubtune import config as cfg
    from hubtune.hardware import Hardware
    from hubtune.train import load_base

    cuda = torch.cuda.is_available()
    hw = Hardware("cuda" if cuda else "cpu", torch.bfloat16, "adamw_torch")
    model = load_base(folder, cfg.ModelSection(id=folder, **SETTINGS[setting]), hw, for_training=False)
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    return {"weights_mb": weights / 2**20, "peak_mb": peak_bytes() / 2**20, "device": "cuda" if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--load", nargs=2, metavar=("FOLDER", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load(*args.load)))
        return
    with tempfile.TemporaryDirectory(prefix="hubtune-moe-") as folder:
        params = build(Path(folder), args.hidden, args.layers, args.experts)
        print(f"Qwen3-MoE hidden {args.hidden}, {args.layers} layers, {args.experts} experts: "
              f"{params / 1e6:.0f}M parameters in bfloat16")
        got = each_in_its_process(__file__, SETTINGS, folder)
        for setting in SETTINGS:
            print(f"{setting:>6}: weights {got[setting]['weights_mb']:8.1f} MB, peak {got[setting]['peak_mb']:8.1f} MB")
    column = lambda key: ",".join(f"{got[s][key]:.0f}" for s in SETTINGS)  # noqa: E731
    print(f"experts: weights_mb={column('weights_mb')} peak_mb={column('peak_mb')} device={got['nf4']['device']}")


if __name__ == "__main__":
    main()
