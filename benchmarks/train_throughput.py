"""Training throughput: hubtune's recipe against the one a user copies from the PEFT and TRL docs.

    python benchmarks/train_throughput.py [--rows 160] [--batch 8] [--epochs 2] [--rounds 1]

Both train the same tiny model (hubtune:tiny-llama) with the same LoRA adapters (r 16, alpha 32,
dropout 0.05, all linear layers, on the 4-bit NF4 base), the same optimization (learning rate, cosine
schedule, warm-up, clipping, micro-batch, seed) for the same number of optimizer steps (whole epochs),
on the same rows: invoice extractions of one to three invoices and short general questions, 24 to 511
tokens. They differ in how the machine is used:

- baseline, the docs' recipe: bfloat16 compute (BitsAndBytesConfig + prepare_model_for_kbit_training),
  SFTTrainer's defaults: gradient checkpointing, each batch padded to its longest example, no packing;
- hubtune: hubtune.train with the run config's defaults, which resolve on this machine to its levers
  (compute dtype, checkpointing only when memory needs it, each step's examples sorted by length into
  micro-batches of 2 with gradient accumulation, padding-free rows where the attention kernel has a
  variable-length path). The optimizer step sees the same number of examples (--batch) either way, and
  the loss is averaged over all their tokens either way.

Speed is real (non-padding) tokens per second of optimizer steps (evaluation and saving excluded), by
the wall clock and, less disturbed by other work on a shared machine, per CPU-second of this process;
the held-out loss is the mean loss over every completion token of the same held-out rows, computed the
same way after each run (the trainers' own eval_loss averages per-batch means, so it moves with their
eval batch sizes). A table
first adds hubtune's levers one at a time (its "+ length-sorted micro-batches" row is what the run config's
defaults resolve to on a CPU); then the two recipes run again, interleaved (`--rounds` times each, alternating, so
that a busy machine slows both alike), and the last line gives the medians over all their runs:

    throughput: hubtune_tok_s=<x> baseline_tok_s=<y> ratio=<x/y> hubtune_eval_loss=<a> baseline_eval_loss=<b>
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from hubtune import config as cfg
from hubtune.config import resolve_builtin

BASE = "hubtune:tiny-llama"
# The tiny model learns at 1e-3 (hubtune's default 2e-4 suits 1B-70B bases); over two epochs the held-out
# loss falls far enough that the comparison says something about training, not about batch order.
HYPER = {"learning_rate": 1e-3, "warmup_steps": 2, "lr_scheduler": "cosine", "max_grad_norm": 0.3, "seed": 42}


class StepTimer(TrainerCallback):
    """Seconds spent in optimizer steps (forward, backward, update), nothing else."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0
        self.steps = 0
        self._start = self._start_cpu = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start, self._start_cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.perf_counter() - self._start
        self.cpu_seconds += time.process_time() - self._start_cpu
        self.steps += 1


def completion_loss(model, dataloader, bf16: bool) -> float:
    """The mean loss over every completion token the dataloader holds (each batch's mean weighted by its
    token count, so the batch size does not matter), in the recipe's own precision."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total, tokens = 0.0, 0
    model.eval()
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for batch in dataloader:
            batch = {k: v.to(model.device) if hasattr(v, "to") else v for k, v in batch.items()}
            n = int((batch["labels"][..., 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    return total / tokens


class HeldOutLoss(TrainerCallback):
    """completion_loss on the held-out rows once training ends (hubtune.train evaluates, so the trainer
    has built its eval dataloader by then)."""

    def __init__(self):
        self.loss = None

    def on_train_end(self, args, state, control, model=None, eval_dataloader=None, **kwargs):
        self.loss = completion_loss(model, eval_dataloader, bool(args.bf16))


def make_rows(n: int, seed: int) -> list[dict]:
    """Alpaca rows of very different lengths: one to three invoices to extract, or a short question."""
    invoices = [json.loads(x) for x in Path(resolve_builtin("hubtune:data/invoices/train.jsonl")).read_text().splitlines()]
    general = [json.loads(x) for x in Path(resolve_builtin("hubtune:data/general/train.jsonl")).read_text().splitlines()]
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < 0.2:
            rows.append({k: v for k, v in rng.choice(general).items() if k in ("instruction", "input", "output")})
            continue
        picked = rng.sample(invoices, rng.choice([1, 1, 2, 3]))
        rows.append({"instruction": "Extract all product names and prices from these invoices.",
                     "input": "\n\n".join(p["input"] for p in picked),
                     "output": "\n".join(p["output"] for p in picked)})
    return rows


def hubtune_config(data_file: Path, out: Path, args, **changes) -> cfg.RunConfig:
    """hubtune's run-config defaults, with the benchmark's data and optimization; `changes` are
    dotted overrides that switch levers off."""
    tree = {
        "model": {"id": BASE},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "data": {"sources": [str(data_file)], "val_set_size": args.eval_rows, "max_seq_len": 512,
                 "near_dup_threshold": None, "dedup_exact": False},
        # hubtune's default shape, micro-batches of 2: the same examples per optimizer step as the baseline
        "training": {**HYPER, "micro_batch_size": 2, "gradient_accumulation_steps": args.batch // 2,
                     "max_steps": args.steps, "logging_steps": 10_000, "save_steps": 10_000, "eval_steps": args.steps},
        "output": {"dir": str(out)},
    }
    return cfg.build(tree, [f"{k}={str(v).format(batch=args.batch)}" for k, v in changes.items()])


def run_hubtune(data_file: Path, args, **changes) -> dict:
    import hubtune
    from hubtune.progress import Display

    timer, held_out = StepTimer(), HeldOutLoss()
    hubtune.train(hubtune_config(data_file, Path(tempfile.mkdtemp(prefix="hubtune-tp-")) / "run", args, **changes),
                  callbacks=[timer, held_out], display=Display(quiet=True))  # the table is this script's output
    return {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "steps": timer.steps,
            "eval_loss": held_out.loss}


def run_baseline(prepared, args) -> dict:
    """The PEFT + TRL docs recipe: QLoRA with bfloat16 compute, SFTTrainer's defaults."""
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTConfig, SFTTrainer

    path = resolve_builtin(BASE)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=torch.bfloat16)
    model = prepare_model_for_kbit_training(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=tempfile.mkdtemp(prefix="baseline-tp-"), max_steps=args.steps,
                       per_device_train_batch_size=args.batch, learning_rate=HYPER["learning_rate"],
                       lr_scheduler_type=HYPER["lr_scheduler"], warmup_steps=HYPER["warmup_steps"],
                       max_grad_norm=HYPER["max_grad_norm"], seed=HYPER["seed"], data_seed=HYPER["seed"],
                       max_length=512, use_cpu=not torch.cuda.is_available(), report_to="none",
                       logging_steps=10_000, save_strategy="no"),
        train_dataset=prepared.train, eval_dataset=prepared.eval, processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                               task_type="CAUSAL_LM"),
        callbacks=[timer],
    )
    trainer.remove_callback(ProgressCallback)  # its bar and its end-of-training dict would break up the table
    trainer.train()
    return {"seconds": timer.seconds, "cpu_seconds": timer.cpu_seconds, "steps": timer.steps,
            "eval_loss": completion_loss(trainer.model, trainer.get_eval_dataloader(), bool(trainer.args.bf16))}


def real_tokens(prepared, epochs: int) -> int:
    """Tokens of the training examples as rendered by the chat template (what both trainers see)."""
    from hubtune.data import load_tokenizer

    tokenizer = load_tokenizer(BASE)
    rendered = tokenizer.apply_chat_template([r["prompt"] + r["completion"] for r in prepared.train], tokenize=False)
    return epochs * sum(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"])


ONE_BATCH = {"training.micro_batch_size": "{batch}", "training.gradient_accumulation_steps": 1}
LEVERS = [  # (row, overrides): each row adds one of hubtune's levers to the one above
    ("hubtune, levers off: bf16, checkpointing, padded", {**ONE_BATCH, "model.compute_dtype": "bfloat16",
     "training.gradient_checkpointing": "true", "training.group_by_length": "false", "data.padding_free": "false"}),
    ("+ compute dtype auto (float32 on a CPU)", {**ONE_BATCH, "training.gradient_checkpointing": "true",
                                                 "training.group_by_length": "false", "data.padding_free": "false"}),
    ("+ checkpointing auto (off: memory allows)", {**ONE_BATCH, "training.group_by_length": "false",
                                                   "data.padding_free": "false"}),
    ("+ length-sorted micro-batches (2 x 4 per step)", {"data.padding_free": "false"}),
    ("+ padding-free rows (auto: only with FlashAttention)", {"data.padding_free": "true"}),
]
DEFAULTS_ROW = "+ length-sorted micro-batches (2 x 4 per step)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1,
                        help="more interleaved runs of each recipe for the last line (the table's baseline and "
                             "run-config-defaults rows count too)")
    parser.add_argument("--no-levers", action="store_true", help="skip the table of levers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from hubtune.data import load_tokenizer, prepare

    args.steps = 1  # set below, once the rows are known
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    data_file = work / "rows.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in make_rows(args.rows, args.seed)))
    prepared = prepare(hubtune_config(data_file, work / "unused", args).data, load_tokenizer(BASE), seed=HYPER["seed"])
    n = len(prepared.train)
    args.steps = args.epochs * -(-n // args.batch)  # whole epochs: both recipes see every example
    tokens = real_tokens(prepared, args.epochs)
    lengths = prepared.report["lengths"]["example_tokens"]
    print(f"data: {n} training rows ({lengths['min']}-{lengths['max']} tokens, mean {lengths['mean']}), "
          f"{len(prepared.eval)} held out; {args.steps} steps of {args.batch}; {tokens} real tokens; "
          f"{torch.get_num_threads()} threads", flush=True)

    def line(name: str, r: dict) -> str:
        return (f"{name:<56} {tokens / r['seconds']:>9.1f} {tokens / r['cpu_seconds']:>11.1f} "
                f"{r['seconds'] / r['steps']:>9.2f} {r['eval_loss']:>9.4f}")

    print(f"\n{'recipe':<56} {'tok/s':>9} {'tok/cpu-s':>11} {'s/step':>9} {'eval loss':>9}", flush=True)
    results = {"hubtune": [], "baseline": []}
    if not args.no_levers:
        r = run_baseline(prepared, args)
        results["baseline"].append(r)
        print(line("baseline: PEFT + TRL docs (bf16, checkpointing, padded)", r), flush=True)
        for name, changes in LEVERS:
            r = run_hubtune(data_file, args, **changes)
            if name == DEFAULTS_ROW:  # the run config's defaults resolve to exactly this on a CPU
                results["hubtune"].append(r)
            print(line(name, r), flush=True)
    for i in range(args.rounds):  # interleaved, so that a busy machine slows both alike
        for recipe in (("hubtune", "baseline") if i % 2 == 0 else ("baseline", "hubtune")):
            r = run_baseline(prepared, args) if recipe == "baseline" else run_hubtune(data_file, args)
            results[recipe].append(r)
            print(line(f"round {i + 1}: {recipe}" + (" (run-config defaults)" if recipe == "hubtune" else ""), r),
                  flush=True)
    speed = {k: statistics.median(tokens / r["seconds"] for r in v) for k, v in results.items()}
    loss = {k: statistics.median(r["eval_loss"] for r in v) for k, v in results.items()}
    print(f"throughput: hubtune_tok_s={speed['hubtune']:.1f} baseline_tok_s={speed['baseline']:.1f} "
          f"ratio={speed['hubtune'] / speed['baseline']:.2f} hubtune_eval_loss={loss['hubtune']:.4f} "
          f"baseline_eval_loss={loss['baseline']:.4f}")


if __name__ == "__main__":
    main()
