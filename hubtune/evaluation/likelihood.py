"""Held-out loss and perplexity on the completions: a forward pass per batch, completion tokens
scored as in training. (Multiple-choice accuracy, the regression set included, is the harness's.)"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> list[torch.Tensor]:
    """Per-token log-probabilities of each continuation given its context, for one batch."""
    seqs = [ctx + cont for ctx, cont in pairs]
    width = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s) - 1] = torch.tensor(s[:-1])
        mask[i, :len(s) - 1] = 1
    logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits.float()
    logprobs = F.log_softmax(logits, dim=-1).cpu()
    out = []
    for i, (ctx, cont) in enumerate(pairs):
        # The token at position p is predicted by the logits at p - 1.
        start = len(ctx) - 1
        positions = torch.arange(start, start + len(cont))
        out.append(logprobs[i, positions, torch.tensor(cont)])
    return out


def _batched(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.inference_mode()
def heldout_loss(model, tokenizer, rows: list[dict], max_seq_len: int, batch_size: int, chat=None) -> dict:
    """Mean cross-entropy per completion token over prompt/completion chat rows, and its perplexity.

    Each row holds "prompt" and "completion" message lists; the prompt is rendered with the
    assistant turn opened and only the completion's tokens are scored, as in training.
    """
    pairs = []
    for row in rows:
        if chat is not None:  # rendered as training rendered it (hubtune.data.chat)
            prompt, completion = chat.render(row["prompt"], row["completion"])
        else:
            prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
            completion = full[len(prompt):] if full.startswith(prompt) else row["completion"][-1]["content"]
        ctx = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cont = tokenizer(completion, add_special_tokens=False)["input_ids"]
        # Like training: the sequence is cut at max_seq_len, so a long prompt leaves fewer scored tokens.
        cont = cont[:max(max_seq_len - len(ctx), 0)]
        if cont:
            pairs.append((ctx, cont))
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for batch in _batched(sorted(pairs, key=lambda p: len(p[0]) + len(p[1])), batch_size):
        for lp in _continuation_logprobs(model, batch, pad):
            total -= lp.sum().item()
            tokens += lp.numel()
    model.train(was_training)
    loss = total / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "examples": len(rows)}
