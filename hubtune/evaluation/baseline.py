"""Is fine-tuning needed? Before any training: the base model zero-shot and with k solved training
examples in its prompt, scored on the test set, so the fine-tune has a number to beat.

    result = score_prompting(config, limit=20)
    print(result["line"])   # "best prompt: base 3-shot, exact match 0.45 (95% CI 0.26-0.66), token F1 0.80 (n=20 ...)"
"""

from __future__ import annotations

import random

from hubtune import config as cfg
from hubtune.errors import EvalError


def score_prompting(config: cfg.RunConfig, limit: int | None = 20) -> dict:
    """Exact match and token F1 of the base zero-shot and few-shot (eval.few_shot_k shots) on eval.test,
    or on the held-out split of the prepared data when eval.test is unset; at most `limit` examples."""
    from hubtune import data
    from hubtune.data import pipeline
    from hubtune.evaluation.generate import chat_for, generate_answers, load_base
    from hubtune.evaluation.intervals import bootstrap_mean, proportion
    from hubtune.evaluation.pipeline import EvalData, _context_length
    from hubtune.evaluation.scoring import exact_match_scores, token_f1_scores

    ev = config.eval
    tokenizer = data.load_tokenizer(config.model.id, config.model.revision, config.model.trust_remote_code)
    prepared = data.prepare(config.data, tokenizer, seed=config.training.seed)
    train = [r for r in prepared.train if "prompt" in r]
    if ev.test is not None:
        examples, _, _ = pipeline.read_examples([ev.test], config.data)
        test, where = [ex.row() for ex in examples if ex.text is None], f"{ev.test.path} ({ev.test.split})"
    else:
        test = [r for r in (prepared.eval or []) if "prompt" in r]
        where = "the held-out split of the training data"
    test = test[:limit] if limit else test
    if not test:
        raise EvalError("nothing to score the prompts on: set eval.test to a test set, or keep a held-out split "
                        "(data.val_set_size > 0)")
    shots = EvalData()
    shots.shots = random.Random(config.training.seed).sample(train, min(ev.few_shot_k, len(train)))
    model = load_base(config.model)
    chat = chat_for(model, tokenizer, config.data.thinking)  # the family's rendering and stop tokens
    room = _context_length(model, tokenizer) - ev.max_new_tokens
    refs = [r["completion"][-1]["content"] for r in test]
    prompts = {"base": [r["prompt"] for r in test]}
    if shots.shots:
        prompts["base_few_shot"] = [shots.few_shot_prompt(r["prompt"], tokenizer, room, chat)[0] for r in test]
    result = {"test": where, "n": len(test), "few_shot_k": len(shots.shots)}
    for name, batch in prompts.items():
        generated = generate_answers(model, tokenizer, batch, max_new_tokens=ev.max_new_tokens,
                                     batch_size=ev.batch_size, chat=chat)
        answers = [chat.answer(t) for t in generated]
        result[name] = {"exact_match": proportion(exact_match_scores(answers, refs)),
                        "token_f1": bootstrap_mean(token_f1_scores(answers, refs)),
                        "prompt_turns": sum(len(p) for p in batch) / len(batch),
                        "samples": [{"reference": ref, "answer": a} for ref, a in list(zip(refs, answers))[:3]]}
    best = max(prompts, key=lambda m: (result[m]["exact_match"]["mean"], result[m]["token_f1"]["mean"]))
    label = "base zero-shot" if best == "base" else f"base {len(shots.shots)}-shot"
    em, f1 = result[best]["exact_match"], result[best]["token_f1"]
    ci = f" (95% CI {em['ci95'][0]:.2f}-{em['ci95'][1]:.2f})" if em["ci95"] else ""
    result["best_prompt"] = best
    result["line"] = (f"best prompt: {label}, exact match {em['mean']:.2f}{ci}, token F1 {f1['mean']:.2f} "
                      f"(n={len(test)} from {where}): the fine-tune has to beat this")
    return result
