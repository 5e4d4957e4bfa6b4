"""Preference and GRPO training on the embedded tiny base, on CPU, measured on held-out data the runs
never saw (the pairs and prompts derived from the invoice test set).

    python benchmarks/methods.py                      # the committed figures (benchmarks/results/methods.txt)
    python benchmarks/methods.py --dpo-steps 2 --sft-steps 2 --grpo-steps 1 --test-rows 4   # a smoke run

DPO: preference accuracy (the tuned model's implicit reward favours the chosen answer) and reward margin on
held-out pairs, before (the policy is the reference: every pair a tie) and after.
GRPO: a short SFT first (a partial start: it gets some answers right, not all), then GRPO from the SFT
adapter with exact match and F1 against the reference as rewards; exact match of greedy answers on held-out
prompts for the SFT start and after GRPO, with Wilson 95% intervals and the prompts each one alone gets
right (a paired view: the same prompts before and after; p from the exact sign test on those).
`--keep DIR` keeps the run folders; `--sft-from DIR/sft` starts GRPO from a kept SFT run.
Last line: `methods: dpo_accuracy=B->A dpo_margin=B->A grpo_exact_match=B->A grpo_f1=B->A minutes=M`
(`not measured` for a part left out with --methods).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import hubtune
from hubtune import config as cfg
from hubtune.evaluation.generate import generate_answers, load_tuned
from hubtune.evaluation.intervals import wilson
from hubtune.evaluation.preference import preference_metrics
from hubtune.evaluation.scoring import exact_match_scores, token_f1_scores
from hubtune.runs import RunFolder

INVOICES = Path(cfg.resolve_builtin("hubtune:data/invoices"))
SHORT = "hubtune:data/invoices/short_train.jsonl"
# The GRPO settings of the committed figure (benchmarks/results/methods.txt).
SFT_STEPS, GRPO_STEPS, GRPO_LR, GRPO_TEMPERATURE, GRPO_TOP_K = 55, 64, 1e-4, 1.0, 2


def run_config(out: Path, method: str, source: str, steps: int, lr: float, batch: int, **training) -> cfg.RunConfig:
    return cfg.build({
        "model": {"id": "hubtune:tiny-llama", "quantization": "none"},
        "data": {"sources": [source], "val_set_size": 0, "max_seq_len": 256},
        "training": {"method": method, "max_steps": steps, "learning_rate": lr, "micro_batch_size": batch,
                     "gradient_accumulation_steps": 1, "warmup_steps": 0, "gradient_checkpointing": False,
                     "logging_steps": max(1, steps // 5), "save_steps": 10_000, **training},
        "eval": {"tasks": [], "regression_set": None},
        "output": {"dir": str(out / method)},
    })


def chat(text: str, role: str) -> list[dict]:
    return [{"role": role, "content": text}]


def scored(run_dir: Path, rows: list[dict], max_new_tokens: int) -> tuple[list[float], list[float]]:
    """Exact match and token F1 of the run's greedy answers, one per row."""
    model, tokenizer = load_tuned(run_dir)
    answers = generate_answers(model, tokenizer, [chat(r["prompt"], "user") for r in rows],
                               max_new_tokens=max_new_tokens, batch_size=32)
    refs = [r["completion"] for r in rows]
    return exact_match_scores(answers, refs), token_f1_scores(answers, refs)


def share(hits: list[float]) -> str:
    low, high = wilson(round(sum(hits)), len(hits))
    return f"{sum(hits) / len(hits):.3f} [{low:.2f}, {high:.2f}]"


def sign_test(gained: int, lost: int) -> float:
    """Two-sided exact sign test on the prompts that changed: p of a split at least this uneven by chance."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def reward_trace(run_dir: Path) -> str:
    """Each reward's mean over the sampled groups at the first and last logging step."""
    logged = [m for m in RunFolder(run_dir).metrics() if any(k.endswith("/mean") for k in m)]
    if not logged:
        return "no rewards logged"
    first, last = logged[0], logged[-1]
    names = [k for k in first if k.startswith("rewards/") and k.endswith("/mean")]
    return ", ".join(f"{k.split('/')[1]} {first[k]:.2f} (step {first['step']}) -> {last.get(k, float('nan')):.2f} "
                     f"(step {last['step']})" for k in names)


def measure_dpo(out: Path, pairs: list[dict], steps: int) -> str:
    # DPO on the pairs; before = the policy at its start, which is the reference itself.
    dpo = hubtune.train(run_config(out, "dpo", "hubtune:data/invoices/preferences_train.jsonl", steps, 1e-3, 8))
    model, tokenizer = load_tuned(dpo.path)
    rows = [{"prompt": chat(p["prompt"], "user"), "chosen": chat(p["chosen"], "assistant"),
             "rejected": chat(p["rejected"], "assistant")} for p in pairs]
    after = preference_metrics(model, tokenizer, rows, beta=0.1, batch_size=16)
    with model.disable_adapter():
        before = preference_metrics(model, tokenizer, rows, beta=0.1, batch_size=16)
    print(f"dpo: {steps} steps; held-out pairs {after['pairs']}: accuracy {before['accuracy']:.2f} "
          f"-> {after['accuracy']:.2f}, margin {before['margin']:.2f} -> {after['margin']:.2f}", flush=True)
    return (f"dpo_accuracy={before['accuracy']:.2f}->{after['accuracy']:.2f} "
            f"dpo_margin={before['margin']:.2f}->{after['margin']:.2f}")


def measure_grpo(out: Path, prompts: list[dict], args: argparse.Namespace) -> str:
    if args.sft_from:
        sft_path, start = Path(args.sft_from), f"the run {args.sft_from}"
    else:
        sft_path = hubtune.train(run_config(out, "sft", SHORT, args.sft_steps, args.sft_lr, 8,
                                            warmup_steps=min(10, args.sft_steps // 2))).path
        start = f"{args.sft_steps} steps x 8 rows, lr {args.sft_lr:g}"
    em_sft, f1_sft = scored(sft_path, prompts, args.completion_len)
    print(f"sft: {start}; held-out prompts {len(prompts)}: exact match {share(em_sft)}, "
          f"F1 {sum(f1_sft) / len(f1_sft):.3f}", flush=True)
    rewards = [{"name": name} for name in args.rewards.split(",")]
    config = run_config(out, "grpo", SHORT, args.grpo_steps, args.grpo_lr, args.prompts_per_step, beta=0.0,
                        grpo={"rewards": rewards, "num_generations": args.generations,
                              "max_completion_length": args.completion_len, "temperature": args.temperature,
                              "top_k": args.top_k})
    config.lora.init_from = str(sft_path)
    grpo = hubtune.train(config)
    em_grpo, f1_grpo = scored(grpo.path, prompts, args.completion_len)
    gained = sum(1 for b, a in zip(em_sft, em_grpo) if a > b)
    lost = sum(1 for b, a in zip(em_sft, em_grpo) if a < b)
    print(f"grpo: {args.grpo_steps} steps x {args.prompts_per_step} prompts x {args.generations} generations "
          f"(lr {args.grpo_lr:g}, temperature {args.temperature:g}, top_k {args.top_k}, rewards {args.rewards}); "
          f"training rewards: {reward_trace(grpo.path)}", flush=True)
    print(f"grpo: held-out exact match {share(em_sft)} -> {share(em_grpo)} (Wilson 95%); prompts right only "
          f"after GRPO {gained}, only before {lost} (sign test p={sign_test(gained, lost):.3f}); "
          f"F1 {sum(f1_sft) / len(f1_sft):.3f} -> {sum(f1_grpo) / len(f1_grpo):.3f}", flush=True)
    return (f"grpo_exact_match={sum(em_sft) / len(em_sft):.3f}->{sum(em_grpo) / len(em_grpo):.3f} "
            f"grpo_f1={sum(f1_sft) / len(f1_sft):.3f}->{sum(f1_grpo) / len(f1_grpo):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="dpo,grpo", help="which measurements to take: dpo, grpo or both")
    parser.add_argument("--dpo-steps", type=int, default=12)
    parser.add_argument("--sft-steps", type=int, default=SFT_STEPS, help="the SFT start (partial on purpose)")
    parser.add_argument("--sft-lr", type=float, default=2e-3)
    parser.add_argument("--sft-from", metavar="RUN", help="start GRPO from this SFT run instead of training one")
    parser.add_argument("--grpo-steps", type=int, default=GRPO_STEPS)
    parser.add_argument("--grpo-lr", type=float, default=GRPO_LR)
    parser.add_argument("--prompts-per-step", type=int, default=4, help="prompts per GRPO step, each with its group")
    parser.add_argument("--generations", type=int, default=8, help="completions sampled per prompt")
    parser.add_argument("--temperature", type=float, default=GRPO_TEMPERATURE)
    parser.add_argument("--top-k", type=int, default=GRPO_TOP_K, help="sample among the k likeliest tokens (0: all)")
    parser.add_argument("--completion-len", type=int, default=48, help="max new tokens, sampled and greedy")
    parser.add_argument("--rewards", default="exact_match,f1", help="comma-separated built-in rewards")
    parser.add_argument("--test-rows", type=int, default=58, help="held-out pairs and prompts (58: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", metavar="DIR", help="keep the run folders here (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    pairs = [json.loads(line) for line in (INVOICES / "preferences_test.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (INVOICES / "short_test.jsonl").read_text().splitlines()]
    pairs, prompts = pairs[:args.test_rows], prompts[:args.test_rows]
    methods = args.methods.split(",")
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        out = Path(tmp)
        dpo_line = measure_dpo(out, pairs, args.dpo_steps) if "dpo" in methods else "not measured"
        grpo_line = measure_grpo(out, prompts, args) if "grpo" in methods else "not measured"
    print(f"methods: {dpo_line} {grpo_line} minutes={(time.time() - started) / 60:.1f}")


if __name__ == "__main__":
    main()
