"""What loading an NVFP4 base packed (hubtune.nvfp4) saves against its 16-bit twin, and what reading it
dequantized costs a LoRA training step.

    python benchmarks/nvfp4_base.py [--hidden 1024] [--layers 4] [--experts 32]

It saves a Qwen3-MoE with random weights at the given size in NVIDIA ModelOpt's NVFP4 layout (attention
projections and experts quantized, with the tests' own quantizer, tests/nvfp4_checkpoint.py) and, beside it, as a
bfloat16 checkpoint of the weights that layout dequantizes to. Each is loaded in a fresh process through
hubtune.train.load_base (bfloat16 compute); LoRA (r 16 on q/k/v/o and on the stacked experts) then trains
`--steps` steps of 2 x 128 tokens, timed after one warm-up step. On a CUDA machine the peak is the GPU's
(torch.cuda.max_memory_allocated); elsewhere it is the process's peak resident memory (VmHWM), which also
counts the checkpoint's pages the loader reads. The last line is:

    nvfp4: weights_mb=<16-bit>,<nvfp4> peak_mb=<16-bit>,<nvfp4> step_s=<16-bit>,<nvfp4> device=<cuda|cpu>
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from moe_driver import each_in_its_process, peak_bytes, qwen3_moe

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("16-bit", "nvfp4")


def build(folder: Path, hidden: int, layers: int, experts: int) -> int:
    import torch
    from transformers import Qwen3MoeForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from nvfp4_checkpoint import write

    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(qwen3_moe(hidden, layers, experts))
    model.save_pretrained(folder / "original")
    write(folder / "original", folder / "nvfp4", folder / "sixteen-f32")
    sixteen = Qwen3MoeForCausalLM.from_pretrained(folder / "sixteen-f32", dtype=torch.bfloat16)
    sixteen.save_pretrained(folder / "16-bit")
    return sum(p.numel() for p in model.parameters())


def load(folder: str, setting: str, steps: int) -> dict:
    """One load and a few LoRA steps in this process: the weights' bytes, the peak, the mean step time."""
    import torch

    from hubtune import config as cfg
    from hubtune.hardware import Hardware
    from hubtune.train import attach_lora, load_base

    cuda = torch.cuda.is_available()
    hw = Hardware("cuda" if cuda else "cpu", torch.bfloat16, "adamw_torch")
    path = str(Path(folder) / setting)
    model = load_base(path, cfg.ModelSection(id=path, quantization="none"), hw, gradient_checkpointing=True)
    tensors = [*model.parameters(), *model.buffers()]
    weights = sum(t.numel() * t.element_size() for t in tensors)
    lora = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.0,
            "target_parameters": ["experts.gate_up_proj", "experts.down_proj"]}
    model = attach_lora(model, cfg.build({"model": {"id": path, "quantization": "none"}, "lora": lora}), "hf", True)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 1024, (2, 128), generator=torch.Generator().manual_seed(0)).to(model.device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"weights_mb": weights / 2**20, "peak_mb": peak_bytes() / 2**20, "step_s": sum(times[1:]) / steps,
            "device": "cuda" if cuda else "cpu"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--load", nargs=3, metavar=("FOLDER", "STEPS", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(json.dumps(load(args.load[0], args.load[2], int(args.load[1]))))
        return
    with tempfile.TemporaryDirectory(prefix="hubtune-nvfp4-") as folder:
        params = build(Path(folder), args.hidden, args.layers, args.experts)
        print(f"Qwen3-MoE hidden {args.hidden}, {args.layers} layers, {args.experts} experts: "
              f"{params / 1e6:.0f}M parameters")
        got = each_in_its_process(__file__, SETTINGS, folder, str(args.steps))
        for setting in SETTINGS:
            print(f"{setting:>6}: weights {got[setting]['weights_mb']:8.1f} MB, peak {got[setting]['peak_mb']:8.1f} "
                  f"MB, LoRA step {got[setting]['step_s']:.2f} s")
    column = lambda key, f: ",".join(f"{got[s][key]:{f}}" for s in SETTINGS)  # noqa: E731
    print(f"nvfp4: weights_mb={column('weights_mb', '.0f')} peak_mb={column('peak_mb', '.0f')} "
          f"step_s={column('step_s', '.2f')} device={got['nvfp4']['device']}")


if __name__ == "__main__":
    main()
