"""Pretrain the tiny Llama base that ships in hubtune/assets/tiny-llama.

    python scripts/pretrain_base.py --out hubtune/assets/tiny-llama     # 3,000 steps, ~25 min on 2 cores

The corpus is generated here (fixed seed): invoices in six layouts, the same
records re-listed in other layouts (so the base learns to copy names and prices
from earlier in its context), random word spans repeated later in the sequence
(the curriculum that grows induction heads), and a small set of facts. A copy
probe (re-list held-out invoices, greedy, exact match) is logged while training.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
import general  # noqa: E402
import invoices  # noqa: E402

SPECIAL = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# The assistant turn ends with </s>, the token generation stops on. The
# generation markers let TRL's assistant_only_loss mask everything else.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}{% generation %}{{ message['content'] + '</s>' }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def copy_span(rng: random.Random) -> str:
    """A random span of known words and prices, then the same span again (twice, sometimes)."""
    pool = invoices.MATERIALS + invoices.QUALIFIERS + invoices.NOUNS + invoices.CITIES
    words = [invoices.price(rng) if rng.random() < 0.25 else rng.choice(pool) for _ in range(rng.randint(2, 10))]
    sep = rng.choice([" ", ", ", " | ", "; "])
    span = sep.join(words)
    return f"Copy: {span}" + f"\nAgain: {span}" * rng.randint(1, 2)


def document(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.50:
        # An invoice, then its records re-listed once or twice in other layouts.
        its = invoices.items(rng, 1, 5)
        relists = "\n\n".join(invoices.relisting(its, rng) for _ in range(rng.randint(1, 2)))
        return invoices.invoice(its, rng) + "\n\n" + relists
    if r < 0.58:
        return invoices.invoice(invoices.items(rng, 1, 5), rng)
    if r < 0.92:
        return "\n".join(copy_span(rng) for _ in range(rng.randint(1, 4)))
    facts = general.fact_sentences(rng)
    return " ".join(facts[: rng.randint(3, 8)])


def build_tokenizer(rng: random.Random, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Digits stay single tokens so prices copy digit by digit, as in Llama-family tokenizers.
    # Whitespace is its own token, so a word is the same token at a line start and after a
    # space: copying "Steel" from a CSV row into "- Steel" needs no second embedding.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((document(rng) for _ in range(20000)), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def batches(tok, rng: random.Random, batch: int, seq: int):
    buf: list[int] = []
    eos = tok.eos_token_id
    while True:
        while len(buf) < batch * seq:
            buf += tok(document(rng))["input_ids"] + [eos]
        chunk, buf = buf[: batch * seq], buf[batch * seq:]
        yield torch.tensor(chunk).view(batch, seq)


def probe_set(n: int = 64):
    rng = random.Random(999)
    rows = []
    for _ in range(n):
        its = invoices.items(rng, 1, 4)
        rows.append((invoices.invoice(its, rng) + "\n\nRecap:\n1.", invoices._relist_numbered(its)))
    return rows


@torch.no_grad()
def copy_probe(model, tok, rows) -> float:
    model.eval()
    tok.padding_side = "left"
    hits = 0
    for i in range(0, len(rows), 32):
        part = rows[i: i + 32]
        enc = tok([p for p, _ in part], return_tensors="pt", padding=True)
        out = model.generate(**enc, max_new_tokens=64, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)
        for (_, want), ids in zip(part, out[:, enc["input_ids"].shape[1]:]):
            text = tok.decode(ids, skip_special_tokens=True)
            hits += ("1." + text).split("\n\n")[0].strip() == want
    model.train()
    return hits / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="hubtune/assets/tiny-llama")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=6)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--probe-every", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = build_tokenizer(rng, args.vocab)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=512, tie_word_embeddings=True, rope_theta=10000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params={n_params} vocab={len(tok)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    rows = probe_set()
    out = Path(args.out)
    log = []
    start, tokens = time.time(), 0
    warmup = 100
    torch.set_num_threads(args.threads)
    for step, x in enumerate(batches(tok, rng, args.batch, args.seq), 1):
        if step > args.steps:
            break
        # Linear warm-up, then cosine decay to a tenth of the peak.
        progress = step / args.steps
        lr = args.lr * min(1.0, step / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
        if step % 25 == 0:
            print(f"step={step} loss={loss.item():.3f} lr={lr:.2e} tok/s={tokens / (time.time() - start):.0f}", flush=True)
        if step % args.probe_every == 0 and step < args.steps:
            acc = copy_probe(model, tok, rows)
            log.append({"step": step, "minutes": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 4), "copy_probe": acc})
            print(f"probe step={step} copy_exact={acc:.3f}", flush=True)
            save(model, tok, out, args, log, n_params)  # a usable base if the run is cut short
    step = args.steps
    acc = copy_probe(model, tok, rows)
    log.append({"step": step, "minutes": round((time.time() - start) / 60, 2), "loss": round(loss.item(), 4), "copy_probe": acc})
    print(f"final step={step} copy_exact={acc:.3f}", flush=True)
    save(model, tok, out, args, log, n_params)


def save(model, tok, out: Path, args, log, n_params) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.padding_side = "right"
    tok.save_pretrained(out)
    (out / "pretraining.json").write_text(json.dumps(
        {"args": vars(args), "parameters": n_params, "log": log}, indent=1))


if __name__ == "__main__":
    main()
