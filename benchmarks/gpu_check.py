"""On a CUDA GPU: measured peak memory beside `hubtune estimate`, and hubtune's throughput against the
docs' recipe, for Llama models of about 0.5B, 1B and 3B parameters. No network: the models are built
from config with random weights and saved locally, the data is generated.

    python benchmarks/gpu_check.py                 # on a CUDA machine, within 10 minutes
    python benchmarks/gpu_check.py --sizes tiny    # the CPU-sized variant the tests run

For each size: build and save the model, then run `--steps` optimizer steps of hubtune's recipe
(hubtune.train: QLoRA, the run config's defaults) and of the baseline (benchmarks/train_throughput.py:
bfloat16 compute, SFTTrainer's defaults), each after resetting CUDA's peak-memory counters. It prints
per size:

    gpu_check: size=<name> params_b=<B> estimate_gb=<e> measured_gb=<m> ratio=<m/e> hubtune_tok_s=<x> baseline_tok_s=<y> speedup=<x/y>

where measured_gb is torch.cuda.max_memory_reserved plus the CUDA context the estimate includes
(nvidia-smi's view of the process), and the last line says where it ran:

    gpu_check: device=<cuda name or cpu> sizes=<n> seconds=<s>
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tp  # noqa: E402  (the baseline recipe and the timing callback)

SIZES = {  # Llama shapes with a 32k vocabulary: (hidden, layers, heads, kv heads, intermediate)
    "0.5b": (1024, 24, 16, 4, 4096),
    "1b": (2048, 16, 32, 8, 8192),
    "3b": (3072, 28, 24, 8, 8192),
    "tiny": (64, 2, 4, 2, 192),  # the CPU-sized variant (widths that bitsandbytes' CPU kernels can repack)
}
README = "---\nlicense: apache-2.0\n---\nRandom weights for hubtune's GPU check.\n"


def build(size: str, folder: Path, device: str) -> Path:
    """A Llama of the given shape with random weights, saved with the embedded model's tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from hubtune.config import resolve_builtin

    hidden, layers, heads, kv, inter = SIZES[size]
    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin("hubtune:tiny-llama"))
    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter,
                         vocab_size=len(tokenizer) if size == "tiny" else 32000, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out = folder / f"llama-{size}"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text(README)
    del model
    return out


def measure(fn):
    """(result, peak bytes reserved on the GPU or None on CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    result = fn()
    peak = torch.cuda.max_memory_reserved() if torch.cuda.is_available() else None
    return result, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,1b,3b", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rows", type=int, default=None, help="rows generated (default: enough for the steps)")
    args = parser.parse_args()

    from hubtune import levers, memory
    from hubtune.data import load_tokenizer, prepare

    started = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (no GPU: peak memory not measured)"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data_file = work / "rows.jsonl"
    rows = args.rows or args.steps * args.batch + 16
    data_file.write_text("".join(json.dumps(r) + "\n" for r in tp.make_rows(rows, 0)))
    sizes = args.sizes.split(",")
    for size in sizes:
        folder = build(size, work, device)
        # The throughput benchmark's settings, on this model: same data, steps and optimization.
        args.eval_rows, args.epochs = 8, 1
        prepared = prepare(tp.hubtune_config(data_file, work / "unused", replace_steps(args)).data,
                           load_tokenizer(str(folder)), seed=tp.HYPER["seed"])
        run_args = replace_steps(args)
        tp.BASE = str(folder)
        hub_result, hub_peak = measure(lambda: tp.run_hubtune(data_file, run_args))
        base_result, base_peak = measure(lambda: tp.run_baseline(prepared, run_args))
        tokens = tp.real_tokens(prepared, 1) * args.steps * args.batch / max(len(prepared.train), 1)
        config = tp.hubtune_config(data_file, work / "unused", run_args)
        arch = memory.read_architecture(str(folder))
        settings = memory.Settings.from_run_config(config)
        settings = replace(settings, gradient_checkpointing=levers.checkpointing_needed(config, str(folder), device))
        estimate = memory.estimate(arch, settings)
        measured = None if hub_peak is None else (hub_peak + memory.CUDA_CONTEXT_BYTES) / memory.GB
        print(f"gpu_check: size={size} params_b={arch.parameters()['total'] / 1e9:.2f} "
              f"estimate_gb={estimate.total_gb:.2f} measured_gb={'n/a' if measured is None else f'{measured:.2f}'} "
              f"ratio={'n/a' if measured is None else f'{measured / estimate.total_gb:.2f}'} "
              f"hubtune_tok_s={tokens / hub_result['seconds']:.1f} baseline_tok_s={tokens / base_result['seconds']:.1f} "
              f"speedup={base_result['seconds'] / hub_result['seconds']:.2f} "
              f"(baseline peak {'n/a' if base_peak is None else f'{base_peak / memory.GB:.2f} GB'}; "
              f"loss {hub_result['eval_loss']:.3f} vs {base_result['eval_loss']:.3f})", flush=True)
    print(f"gpu_check: device={device_name} sizes={len(sizes)} seconds={time.time() - started:.0f}")


def replace_steps(args) -> argparse.Namespace:
    """The throughput benchmark's arguments with a fixed number of steps (not whole epochs)."""
    ns = argparse.Namespace(**vars(args))
    ns.steps = args.steps
    return ns


if __name__ == "__main__":
    main()
