"""Preference and GRPO training on the embedded tiny base, on CPU, measured on held-out data the runs
never saw (the pairs and prompts derived from the invoice test set).

    python benchmarks/methods.py                      # the committed figures (benchmarks/results/methods.txt)
    python benchmarks/methods.py --dpo-steps 2 --sft-steps 2 --grpo-steps 1 --test-rows 4   # a smoke run

DPO: preference accuracy (the tuned model's implicit reward favours the chosen answer) and reward margin on
held-out pairs, before (the policy is the reference: every pair a tie) and after.
GRPO: SFT first, then GRPO from the SFT adapter with exact match and F1 against the reference as rewards;
exact match of greedy answers on held-out prompts for the SFT starting point and after GRPO.
Last line: `methods: dpo_accuracy=B->A dpo_margin=B->A grpo_exact_match=B->A grpo_f1=B->A minutes=M`
(`not measured` for a part left out with --methods).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import hubtune
from hubtune import config as cfg
from hubtune.evaluation.generate import generate_answers, load_tuned
from hubtune.evaluation.preference import preference_metrics
from hubtune.evaluation.scoring import exact_match_scores, token_f1_scores

INVOICES = Path(cfg.resolve_builtin("hubtune:data/invoices"))


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


def exact_and_f1(run_dir: Path, rows: list[dict]) -> tuple[float, float]:
    model, tokenizer = load_tuned(run_dir)
    answers = generate_answers(model, tokenizer, [chat(r["prompt"], "user") for r in rows], max_new_tokens=64,
                               batch_size=16)
    refs = [r["completion"] for r in rows]
    return (sum(exact_match_scores(answers, refs)) / len(rows), sum(token_f1_scores(answers, refs)) / len(rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dpo-steps", type=int, default=12)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--grpo-steps", type=int, default=20)
    parser.add_argument("--test-rows", type=int, default=58, help="held-out pairs and prompts (58: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="dpo,grpo", help="which measurements to take: dpo, grpo or both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    pairs = [json.loads(line) for line in (INVOICES / "preferences_test.jsonl").read_text().splitlines()]
    prompts = [json.loads(line) for line in (INVOICES / "short_test.jsonl").read_text().splitlines()]
    pairs, prompts = pairs[:args.test_rows], prompts[:args.test_rows]
    methods = args.methods.split(",")
    dpo_line = grpo_line = "not measured"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if "dpo" in methods:
            # DPO on the pairs; before = the policy at its start, which is the reference itself.
            dpo = hubtune.train(run_config(out, "dpo", "hubtune:data/invoices/preferences_train.jsonl",
                                           args.dpo_steps, 1e-3, 8))
            model, tokenizer = load_tuned(dpo.path)
            rows = [{"prompt": chat(p["prompt"], "user"), "chosen": chat(p["chosen"], "assistant"),
                     "rejected": chat(p["rejected"], "assistant")} for p in pairs]
            after = preference_metrics(model, tokenizer, rows, beta=0.1, batch_size=16)
            with model.disable_adapter():
                before = preference_metrics(model, tokenizer, rows, beta=0.1, batch_size=16)
            print(f"dpo: {args.dpo_steps} steps; held-out pairs {after['pairs']}: accuracy {before['accuracy']:.2f} "
                  f"-> {after['accuracy']:.2f}, margin {before['margin']:.2f} -> {after['margin']:.2f}", flush=True)
            dpo_line = (f"dpo_accuracy={before['accuracy']:.2f}->{after['accuracy']:.2f} "
                        f"dpo_margin={before['margin']:.2f}->{after['margin']:.2f}")
        if "grpo" in methods:
            # SFT, then GRPO from the SFT adapter.
            short = "hubtune:data/invoices/short_train.jsonl"
            sft = hubtune.train(run_config(out, "sft", short, args.sft_steps, 2e-3, 8, warmup_steps=10))
            em_sft, f1_sft = exact_and_f1(sft.path, prompts)
            print(f"sft: {args.sft_steps} steps; held-out prompts {len(prompts)}: exact match {em_sft:.3f}, "
                  f"F1 {f1_sft:.3f}", flush=True)
            config = run_config(out, "grpo", short, args.grpo_steps, 5e-4, 4, beta=0.0,
                                grpo={"rewards": ["exact_match", "f1"], "num_generations": 8,
                                      "max_completion_length": 64, "temperature": 1.0})
            config.lora.init_from = str(sft.path)
            grpo = hubtune.train(config)
            em_grpo, f1_grpo = exact_and_f1(grpo.path, prompts)
            print(f"grpo: {args.grpo_steps} steps from the SFT adapter; exact match {em_sft:.3f} -> {em_grpo:.3f}, "
                  f"F1 {f1_sft:.3f} -> {f1_grpo:.3f}", flush=True)
            grpo_line = f"grpo_exact_match={em_sft:.3f}->{em_grpo:.3f} grpo_f1={f1_sft:.3f}->{f1_grpo:.3f}"
    print(f"methods: {dpo_line} {grpo_line} minutes={(time.time() - started) / 60:.1f}")


if __name__ == "__main__":
    main()
