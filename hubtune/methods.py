"""The training methods and the TRL trainer behind each: which data each trains on, its settings, and
the trainer the recipe in train.py builds.

| method | TRL trainer                             | data                                            | reference |
|--------|-----------------------------------------|-------------------------------------------------|-----------|
| sft    | trl.SFTTrainer                          | instructions, chats, prompt/completion, text    | none |
| dpo    | trl.DPOTrainer                          | pairs: prompt / chosen / rejected               | the base, adapter disabled |
| orpo   | trl.experimental.orpo.ORPOTrainer       | pairs                                           | none (odds ratio) |
| kto    | trl.KTOTrainer                          | prompt / completion / label, or pairs (unpaired) | the base, adapter disabled |
| grpo   | trl.GRPOTrainer                         | prompts with a reference answer (any SFT format) | the base when beta > 0 |

With a PEFT adapter TRL takes the base with the adapter disabled as the reference (ref_model=None):
the same weights serve both, no second copy in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubtune import config as cfg
from hubtune.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

TRAINERS = {"sft": "trl.SFTTrainer", "dpo": "trl.DPOTrainer", "orpo": "trl.experimental.orpo.ORPOTrainer",
            "kto": "trl.KTOTrainer", "grpo": "trl.GRPOTrainer"}
DATA_KINDS = {"sft": ("chat", "text"), "dpo": ("preference",), "orpo": ("preference",), "kto": ("preference", "kto"),
              "grpo": ("chat",)}
PREFERENCE_METHODS = ("dpo", "orpo", "kto")
_FIX = {
    "sft": "these rows are preference data: set training.method to dpo, orpo or kto",
    "dpo": "give pairs with prompt, chosen and rejected columns (or map yours with data.columns)",
    "orpo": "give pairs with prompt, chosen and rejected columns (or map yours with data.columns)",
    "kto": "give prompt/completion/label rows, or prompt/chosen/rejected pairs",
    "grpo": "give prompts with their reference answers (alpaca instruction/output, prompt/completion, messages)",
}


def reference_policy(config: cfg.RunConfig) -> str:
    """What the method measures the policy against, in words for the card and the console."""
    method = config.training.method
    if method in ("dpo", "kto") or (method == "grpo" and config.training.method_beta() > 0):
        return "the base model with the adapter disabled (no second copy)"
    return "none"


def check_data(method: str, kind: str, formats: str) -> None:
    """A DataError when the prepared rows are not what the method trains on."""
    if kind not in DATA_KINDS[method]:
        raise DataError(f"training.method {method} cannot train on {kind} rows (format {formats}): {_FIX[method]}")


def method_dataset(method: str, dataset: Dataset | None) -> Dataset | None:
    """The prepared rows as the method's trainer reads them: KTO takes pairs as two unpaired rows;
    GRPO takes the prompt and keeps the answer as `reference`, the column the rewards compare with."""
    if dataset is None:
        return None
    if method == "kto" and "chosen" in dataset.column_names:
        from trl.data_utils import unpair_preference_dataset

        return unpair_preference_dataset(dataset)
    if method == "grpo":
        return dataset.map(lambda row: {"reference": row["completion"][-1]["content"]}, remove_columns=["completion"])
    return dataset


def method_args(config: cfg.RunConfig, common: dict, sft_args):
    """The method's TRL config over the shared TrainingArguments (`sft_args()` builds SFT's own)."""
    t = config.training
    method = t.method
    if method == "sft":
        return sft_args()
    common = dict(common, eval_strategy="no")  # held-out measures are taken before and after (train.py)
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig(**common, beta=t.method_beta(), max_length=config.data.max_seq_len)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**common, beta=t.method_beta(), max_length=config.data.max_seq_len)
    if method == "kto":
        from trl import KTOConfig

        return KTOConfig(**common, beta=t.method_beta(), max_length=config.data.max_seq_len,
                         desirable_weight=t.desirable_weight, undesirable_weight=t.undesirable_weight)
    from trl import GRPOConfig

    g = t.grpo
    # micro_batch_size counts prompts: each brings its group of num_generations completions.
    common["per_device_train_batch_size"] = t.micro_batch_size * g.num_generations
    common["per_device_eval_batch_size"] = t.micro_batch_size * g.num_generations
    common["include_num_input_tokens_seen"] = "no"  # GRPO's batches are sampled, not read: nothing to count
    return GRPOConfig(**common, beta=t.method_beta(), num_generations=g.num_generations,
                      max_completion_length=g.max_completion_length, temperature=g.temperature, top_k=g.top_k,
                      loss_type=g.loss_type, scale_rewards=g.scale_rewards, epsilon=g.epsilon,
                      reward_weights=[r.weight for r in g.rewards])


def build_trainer(config: cfg.RunConfig, model, tokenizer, args, train: Dataset, eval_: Dataset | None,
                  callbacks: list, rewards: list | None = None):
    """The TRL trainer for config.training.method, on the LoRA model (PEFT: ref_model=None)."""
    method = config.training.method
    train, eval_ = method_dataset(method, train), method_dataset(method, eval_)
    shared = dict(model=model, args=args, train_dataset=train, processing_class=tokenizer, callbacks=callbacks)
    if method == "sft":
        from trl import SFTTrainer

        if config.data.packing and config.data.packing_strategy == "sequential":
            from hubtune.packing import SequentialPackingSFTTrainer as SFTTrainer
        if config.training.context_parallel_size > 1:
            from hubtune import context_parallel

            SFTTrainer = context_parallel.trainer_class(SFTTrainer, config.training.context_parallel_size)
        return SFTTrainer(**shared, eval_dataset=eval_)
    if method == "dpo":
        from trl import DPOTrainer

        return DPOTrainer(**shared, ref_model=None)
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(**shared)
    if method == "kto":
        from trl import KTOTrainer

        return KTOTrainer(**shared, ref_model=None)
    from trl import GRPOTrainer

    return GRPOTrainer(**shared, reward_funcs=rewards)


def held_out_measures(config: cfg.RunConfig, model, tokenizer, held_out: Dataset | None, rewards: list | None) -> dict:
    """The method's own measure on held-out rows, taken before and after training: preference accuracy and
    reward margin (dpo, orpo, kto on pairs), each reward's mean over greedy answers (grpo); {} otherwise."""
    method = config.training.method
    if held_out is None or method == "sft":
        return {}
    rows = held_out.select(range(min(len(held_out), config.eval.limit or len(held_out))))
    if method in PREFERENCE_METHODS:
        if "chosen" not in rows.column_names:
            return {}  # unpaired KTO rows hold no pairs to compare
        from hubtune.evaluation.preference import preference_metrics

        return {"preference": preference_metrics(model, tokenizer, list(rows), config.training.method_beta() or 0.1,
                                                 config.eval.batch_size)}
    from hubtune.evaluation.generate import generate_answers
    from hubtune.evaluation.rewards import score_completions

    answers = generate_answers(model, tokenizer, rows["prompt"], config.training.grpo.max_completion_length,
                               config.eval.batch_size)
    references = [c[-1]["content"] for c in rows["completion"]]
    return {"rewards": score_completions(rewards, rows["prompt"], answers, references), "prompts": len(rows)}


def settings_record(config: cfg.RunConfig) -> dict:
    """What the card and the summary say about the method: its trainer, beta, reference, rewards."""
    t = config.training
    record = {"method": t.method, "trainer": TRAINERS[t.method], "reference": reference_policy(config)}
    if t.method != "sft":
        record["beta"] = t.method_beta()
    if t.method == "grpo":
        record |= {"rewards": [{"name": r.label, "weight": r.weight} for r in t.grpo.rewards],
                   "num_generations": t.grpo.num_generations, "max_completion_length": t.grpo.max_completion_length,
                   "temperature": t.grpo.temperature, "top_k": t.grpo.top_k, "loss_type": t.grpo.loss_type}
    if t.method == "kto" and (t.desirable_weight, t.undesirable_weight) != (1.0, 1.0):
        record |= {"desirable_weight": t.desirable_weight, "undesirable_weight": t.undesirable_weight}
    if config.lora.init_from:
        record["init_from"] = config.lora.init_from
    return record


def describe_measures(held_out: dict) -> str:
    """`preference accuracy 0.50 -> 0.97, margin 0.00 -> 1.20` or `exact_match 0.20 -> 0.45`."""
    before, after = held_out.get("before", {}), held_out["after"]
    parts = []
    if "preference" in after:
        b, a = before.get("preference", {}), after["preference"]
        parts += [f"preference accuracy {b.get('accuracy', float('nan')):.2f} -> {a['accuracy']:.2f}",
                  f"margin {b.get('margin', float('nan')):.2f} -> {a['margin']:.2f}"]
    for name, value in after.get("rewards", {}).items():
        parts.append(f"{name} {before.get('rewards', {}).get(name, float('nan')):.2f} -> {value:.2f}")
    return ", ".join(parts) + " on held-out rows"
