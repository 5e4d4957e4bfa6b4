"""Does the exported file still do the task? Its answers in llama.cpp beside the adapter's in PyTorch.

On the run's test prompts (eval.test, else its held-out split), each GGUF file is run in llama.cpp with
greedy decoding, the prompt rendered by the tokenizer's chat template and tokenized by llama.cpp itself
(the check that its tokenizer agrees is part of the table), and its answers scored with the run's own
metrics (exact match, token F1) beside the adapter's answers, generated the way `hubtune eval` does
(same cache, so an evaluated run pays nothing for them). Each score carries its 95% interval.

The tolerance, stated once: an f16 or q8_0 file passes when its exact match is not below the lower end
of the adapter's 95% interval, when its answers stop (end-of-turn before max_new_tokens) at a rate not
below the lower end of the adapter's stop-rate interval, and when llama.cpp tokenizes every prompt as
transformers does. Lower quants (q4_k_m) are measured the same way and reported, with a warning when
they fall below; they do not fail the export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hubtune.evaluation.intervals import bootstrap_mean, proportion
from hubtune.export import toolchain
from hubtune.runs import RunFolder

log = logging.getLogger("hubtune")
STRICT = ("f16", "q8_0", "f32", "bf16")


@dataclass
class Generations:
    answers: list[str]
    stopped: list[bool]  # ended on an end-of-generation token before max_new_tokens
    tokens_identical: int | None = None  # prompts llama.cpp tokenized exactly as transformers


def test_prompts(run, limit: int | None = None) -> tuple[list[list[dict]], list[str], dict]:
    """(prompts, references, where they come from) of the run's test set, as `hubtune eval` reads it."""
    from hubtune.evaluation.pipeline import EvalData

    config = run.config
    data = EvalData.load(run, config, config.eval)
    rows = data.test[:limit] if limit else data.test
    return ([r["prompt"] for r in rows], [r["completion"][-1]["content"] for r in rows],
            {"dataset": data.test_dataset, "split": data.test_split, "n": len(rows)})


def adapter_generations(run, prompts: list[list[dict]]) -> Generations:
    """The adapter's greedy answers in PyTorch, on the base as the run trained it, through the eval cache."""
    from hubtune.evaluation.cache import AnswerCache, cached_answers, file_fingerprint
    from hubtune.evaluation.generate import generate_answers, load_tuned
    from hubtune.evaluation.pipeline import _adapter_weights

    ev, quant = run.config.eval, run.config.model.quantization
    model, tokenizer = load_tuned(run.path, quantization=quant)
    cache = AnswerCache(run.path / RunFolder.GENERATIONS_CACHE)
    key = f"tuned|{file_fingerprint(_adapter_weights(run))}|{quant}"  # the key `hubtune eval` uses

    def generate(batch):
        return generate_answers(model, tokenizer, batch, max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size)

    answers, _ = cached_answers(cache, key, generate, prompts, {"max_new_tokens": ev.max_new_tokens},
                                chunk=ev.batch_size * 4)
    # An answer that stopped is shorter than the limit (decoding and re-encoding give the same tokens).
    stopped = [len(tokenizer(a, add_special_tokens=False)["input_ids"]) < ev.max_new_tokens for a in answers]
    return Generations(answers, stopped)


def gguf_generations(path: Path, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     lora: Path | None = None, threads: int | None = None) -> Generations:
    """Greedy answers from a GGUF file in llama.cpp (optionally with a LoRA GGUF over it)."""
    import torch

    llama_cpp = toolchain.llama_cpp()
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    context = max(len(ids) for ids in expected) + max_new_tokens + 8
    llm = llama_cpp.Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=context,
                          n_batch=min(context, 2048), n_threads=threads or torch.get_num_threads(), seed=0,
                          verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    answers, stopped, same = [], [], 0
    for text, ids in zip(texts, expected):
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        same += tokens == ids
        out, stop = [], False
        for token in llm.generate(tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stop = True
                break
            out.append(token)
            if len(out) >= max_new_tokens:
                break
        answers.append(llm.detokenize(out).decode("utf-8", errors="replace"))
        stopped.append(stop)
    llm.close()
    return Generations(answers, stopped, same)


def score(gen: Generations, refs: list[str]) -> dict:
    from hubtune.evaluation.scoring import exact_match_scores, token_f1_scores

    em = exact_match_scores(gen.answers, refs)
    out = {"exact_match": proportion(em), "token_f1": bootstrap_mean(token_f1_scores(gen.answers, refs)),
           "stopped": proportion([float(s) for s in gen.stopped])}
    if gen.tokens_identical is not None:
        out["tokens_identical"] = gen.tokens_identical
    return out


def verdict(quant: str, row: dict, adapter: dict, n: int) -> tuple[str, list[str]]:
    """pass | warn | fail for one exported file against the adapter, with the reasons."""
    problems = []
    em, low = row["exact_match"]["mean"], adapter["exact_match"]["ci95"][0]
    if em < low - 1e-12:
        problems.append(f"exact match {em:.3f} is below the adapter's 95% interval "
                        f"[{low:.3f}, {adapter['exact_match']['ci95'][1]:.3f}]")
    stop, stop_low = row["stopped"]["mean"], adapter["stopped"]["ci95"][0]
    if stop < stop_low - 1e-12:
        problems.append(f"{row['stopped']['mean']:.1%} of its answers stop, against the adapter's "
                        f"{adapter['stopped']['mean']:.1%} (interval from {stop_low:.1%})")
    if row.get("tokens_identical") is not None and row["tokens_identical"] < n:
        problems.append(f"llama.cpp tokenized {n - row['tokens_identical']} of {n} prompts differently from "
                        f"transformers")
    if not problems:
        return "pass", []
    return ("fail" if quant in STRICT else "warn"), problems


def agreement(a: list[str], b: list[str]) -> float:
    return sum(x.strip() == y.strip() for x, y in zip(a, b)) / max(len(a), 1)
