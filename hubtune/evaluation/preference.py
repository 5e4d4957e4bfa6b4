"""Preference accuracy and reward margin on held-out pairs, as DPO defines them: the implicit reward of
an answer is beta x (log p_policy - log p_reference) summed over its tokens, and a pair counts as won
when the chosen answer's reward is the higher (a tie, as before any training, counts half).

With a PEFT adapter the reference is the base with the adapter disabled: the same weights, no copy.
The likelihood preference (the policy alone gives the chosen answer the higher mean log-probability
per token) is reported beside it for the base and the tuned model alike."""

from __future__ import annotations

import torch

from hubtune.evaluation.likelihood import _batched, _continuation_logprobs


def _answer_ids(tokenizer, prompt: list[dict], answer: list[dict]) -> tuple[list[int], list[int]]:
    rendered_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    rest = full[len(rendered_prompt):] if full.startswith(rendered_prompt) else answer[-1]["content"]
    return (tokenizer(rendered_prompt, add_special_tokens=False)["input_ids"],
            tokenizer(rest, add_special_tokens=False)["input_ids"])


@torch.inference_mode()
def _logprobs(model, tokenizer, items: list[tuple[list[int], list[int]]], batch_size: int) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each continuation, in the order given."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(items)), key=lambda i: len(items[i][0]) + len(items[i][1]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(items)
    for batch in _batched(order, batch_size):
        for i, lp in zip(batch, _continuation_logprobs(model, [items[i] for i in batch], pad)):
            out[i] = (lp.sum().item(), lp.numel())
    return out


def preference_metrics(model, tokenizer, pairs: list[dict], beta: float, batch_size: int = 8) -> dict:
    """{accuracy, margin, likelihood_accuracy, reference_likelihood_accuracy, pairs} over rows of
    {prompt, chosen, rejected} (message lists). `model` is a PeftModel: its adapter is the policy, the base
    with the adapter disabled the reference."""
    if not pairs:
        return {}
    items = []
    for row in pairs:
        items += [_answer_ids(tokenizer, row["prompt"], row["chosen"]),
                  _answer_ids(tokenizer, row["prompt"], row["rejected"])]
    was_training = model.training
    model.eval()
    policy = _logprobs(model, tokenizer, items, batch_size)
    with model.disable_adapter():
        reference = _logprobs(model, tokenizer, items, batch_size)
    model.train(was_training)
    wins, margins, likelihood, reference_likelihood = [], [], [], []
    for k in range(len(pairs)):
        (pc, nc), (pr, nr) = policy[2 * k], policy[2 * k + 1]
        (rc, _), (rr, _) = reference[2 * k], reference[2 * k + 1]
        margin = beta * ((pc - rc) - (pr - rr))
        margins.append(margin)
        wins.append(1.0 if margin > 1e-6 else 0.0 if margin < -1e-6 else 0.5)
        likelihood.append(float(pc / max(nc, 1) > pr / max(nr, 1)))
        reference_likelihood.append(float(rc / max(nc, 1) > rr / max(nr, 1)))
    n = len(pairs)
    return {"pairs": n, "accuracy": round(sum(wins) / n, 4), "margin": round(sum(margins) / n, 4),
            "likelihood_accuracy": round(sum(likelihood) / n, 4),
            "reference_likelihood_accuracy": round(sum(reference_likelihood) / n, 4)}
