"""What the mixture-of-experts benchmarks share (expert_quantization.py, nvfp4_base.py): the Qwen3-MoE they
build, the peak they read, and the loop that measures each setting in a fresh process, so one setting's
memory never counts in another's."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def qwen3_moe(hidden: int, layers: int, experts: int):
    """A Qwen3-MoE config of the given size (4 experts per token, 8 heads, 4 key/value heads)."""
    from transformers import Qwen3MoeConfig

    return Qwen3MoeConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=2 * hidden,
                          moe_intermediate_size=hidden // 2, num_hidden_layers=layers, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=hidden // 8, num_experts=experts, num_experts_per_tok=4)


def peak_bytes() -> int:
    """The GPU's peak allocation on a CUDA machine; elsewhere this process's peak resident memory (VmHWM, which
    starts afresh in a new program, where getrusage's ru_maxrss would carry over the parent's peak)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def each_in_its_process(script: str, settings, *args: str) -> dict[str, dict]:
    """Run `script --load *args SETTING` once per setting, each in a fresh interpreter; its last stdout line
    is the setting's figures as JSON."""
    got = {}
    for setting in settings:
        out = subprocess.run([sys.executable, script, "--load", *args, setting], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{setting} failed:\n{out.stderr[-3000:]}")
        got[setting] = json.loads(out.stdout.strip().splitlines()[-1])
    return got
