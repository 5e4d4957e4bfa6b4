"""Golden losses: a short QLoRA run of the tiny model at a fixed seed reproduces the training loss
measured at steps 1, 10 and 20. A new TRL, PEFT, transformers or bitsandbytes that changes the
numbers (loss masking, adapter init, quantization, optimizer) fails here first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_rows import tiny_config

import hubtune
from hubtune import config as cfg

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

# Measured on CPU (fp32 compute, one torch thread) with torch 2.13.0, transformers 5.24.0, peft 0.21.2,
# trl 1.16.0, bitsandbytes 0.50.2: two runs gave bit-identical losses at all 20 steps, so the tolerance
# only leaves room for another CPU's floating-point rounding.
GOLDEN = {1: 5.652464866638184, 10: 1.904528260231018, 20: 1.2532790899276733}
RELATIVE = 1e-3


def golden_config(tmp: Path) -> cfg.RunConfig:
    """The tiny base in 4 bits, the first 40 invoices, 20 steps of 2 examples, a loss line every step."""
    return tiny_config(tmp, rows=40, model={"quantization": "nf4", "compute_dtype": "float32"},
                       data={"max_seq_len": 256},
                       training={"learning_rate": 3e-3, "max_steps": 20, "warmup_steps": 2, "optimizer": "adamw_torch",
                                 "save_steps": 1000, "seed": 42})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the golden losses were measured on CPU")
def test_training_loss_matches_the_golden_values(tmp_path):
    run = hubtune.train(golden_config(tmp_path)).path
    losses = {m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "loss" in m}
    assert sorted(losses) == list(range(1, 21))
    got = {step: losses[step] for step in GOLDEN}
    assert got == pytest.approx(GOLDEN, rel=RELATIVE), f"training losses moved: {got} (golden {GOLDEN})"
