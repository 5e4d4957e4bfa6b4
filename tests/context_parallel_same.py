"""One process of a 2-process context-parallel check on a gloo mesh, started by torchrun from
tests/test_context_parallel.py: a tiny Nemotron-H (Mamba-2, attention, MLP and MoE layers) over packed rows,
each process computing half of every row (hubtune.context_parallel), against this process's own reference:
every packed example run alone, unpacked, through transformers' own forward. Rank 0 writes both losses and
all gradients (each process's summed over the group) to OUT.

Then a hubtune run of that model (saved with the tiny base's tokenizer) on packed invoices, its sequences
split over the 2 processes under DDP: stopped after step 2 as SIGTERM stops it (a checkpoint, status
interrupted), then resumed from that checkpoint to step 3. The run folder is OUT's sibling `run`.

    torchrun --nproc_per_node 2 tests/context_parallel_same.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# Examples packed into rows of 32 tokens: row 0's third example crosses the processes' boundary (16), row 1's
# second starts on it, row 2's second runs from token 3 to the end; the Mamba chunk (4 tokens) and conv kernel
# (4) see examples start inside and across chunks.
ROWS = [[5, 9, 7, 3, 8], [16, 10, 6], [3, 29]]


def tiny_nemotron_h(vocab_size: int = 64):
    from transformers import AutoModelForCausalLM, NemotronHConfig

    config = NemotronHConfig(
        vocab_size=vocab_size, hidden_size=32, layers_block_type=["linear_attention", "full_attention", "mlp",
                                                          "linear_attention", "moe"],
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=4, mamba_head_dim=8,
        ssm_state_size=8, n_groups=2, conv_kernel=4, chunk_size=4, intermediate_size=48, moe_intermediate_size=16,
        moe_shared_expert_intermediate_size=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        initializer_range=0.1, dtype="float32")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # decays and steps that differ by head, so a state carried wrongly shows
        for name, param in model.named_parameters():
            if name.endswith(("dt_bias", "A_log")):
                param.uniform_(-1, 1)
    return model.train()


def examples():
    generator = torch.Generator().manual_seed(1)
    return [[torch.randint(0, 64, (n,), generator=generator) for n in row] for row in ROWS]


def packed(rows):
    """input_ids, labels (-100 on each example's first token: nothing before it in its example predicts it)
    and position_ids restarting at every example, as TRL's padding-free packing writes them."""
    ids = torch.stack([torch.cat(row) for row in rows])
    positions = torch.stack([torch.cat([torch.arange(len(e)) for e in row]) for row in rows])
    labels = ids.masked_fill(positions == 0, -100)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def grads(model) -> dict:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def each_alone(model, rows):
    """Each example of the rows run by itself: the rows' logits, the loss over all their tokens, its gradients."""
    model.zero_grad()
    tokens = sum(len(e) - 1 for row in rows for e in row)
    runs = [[model(input_ids=e[None], labels=e[None], use_cache=False) for e in row] for row in rows]
    alone = torch.stack([torch.cat([run.logits[0].detach() for run in row]) for row in runs])
    loss = sum(run.loss * (run.logits.shape[1] - 1) / tokens for row in runs for run in row)
    loss.backward()
    return alone, loss.item(), grads(model)


def saved_base(model, folder):
    """The model as a base folder hubtune can train: its weights, the tiny base's tokenizer and licence."""
    import shutil

    from hubtune.refs import resolve_builtin

    tiny = resolve_builtin("hubtune:tiny-llama")
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"):
        shutil.copy(f"{tiny}/{name}", f"{folder}/{name}")
    return folder


def hubtune_run(base, folder):
    """Three steps of packed rows split over the 2 processes, interrupted after step 2, resumed."""
    import os
    import signal

    from data_rows import invoice_file, tiny_tree
    from transformers import TrainerCallback

    from hubtune.train import resume, train
    from hubtune import config as cfg
    from hubtune.errors import TrainingInterrupted

    tokens_seen = []

    class TermBeforeStep2(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # StopOnSignal saves and stops at the step's end

        def on_step_end(self, args, state, control, **kwargs):
            tokens_seen.append(state.num_input_tokens_seen)

    data = invoice_file(Path(folder) / "rows.jsonl", 24) if dist.get_rank() == 0 else f"{folder}/rows.jsonl"
    dist.barrier()
    config = cfg.build(tiny_tree(data, f"{folder}/run", model={"id": base, "quantization": "none"},
                                 lora={"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj"]},
                                 data={"packing": True, "max_seq_len": 512, "val_set_size": 4},
                                 training={"distributed": "ddp", "context_parallel_size": 2, "max_steps": 3,
                                           "save_steps": 1, "eval_steps": 3, "learning_rate": 1e-2,
                                           "micro_batch_size": 1, "gradient_checkpointing": True}))
    from hubtune import context_parallel as cp

    seen, split_batch = [], cp.split_batch

    def recorded(inputs, group, rank, size):  # what each step and evaluation handed this process
        local, split = split_batch(inputs, group, rank, size)
        seen.append([int(split.documents[i].max()) for i in range(len(split.documents))]
                    + [torch.is_grad_enabled(), inputs["input_ids"].numel(), local["input_ids"].shape[1]])
        return local, split

    cp.split_batch = recorded
    try:
        train(config, run_dir=f"{folder}/run", callbacks=[TermBeforeStep2()])
    except TrainingInterrupted:
        pass
    resume(f"{folder}/run")
    return {"batches": seen, "tokens_seen": tokens_seen}


def split_over_two(model, rows, group, rank):
    """The loss and gradients of the packed rows, each process computing its half, summed over the two."""
    from hubtune import context_parallel as cp

    model.zero_grad()
    batch = packed(rows)
    local, split = cp.split_batch(batch, group, rank, 2)
    tokens = (batch["labels"][:, 1:] != -100).sum()
    with cp.computing(split):
        loss = model(**local, num_items_in_batch=tokens).loss
        loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    got = grads(model)
    for g in got.values():
        dist.all_reduce(g)
    return total.item(), got


def main(out: str) -> None:
    from hubtune import context_parallel as cp

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = tiny_nemotron_h()
    rows = examples()
    # A row of 4 tokens, 2 a process: fewer than the conv's kernel-1 inputs before the second half.
    short = [[torch.arange(10, 14)]]
    references = [each_alone(model, rows)[1:], each_alone(model, short)[1:]]
    cp.prepare(model)
    group, local_rank = cp.groups(2)
    splits = [split_over_two(model, rows, group, local_rank), split_over_two(model, short, group, local_rank)]
    if rank == 0:
        torch.save({"reference": references[0], "split": splits[0], "short": (references[1], splits[1]),
                    "mixers": sum(getattr(m, "_context_parallel", False) for m in model.modules()),
                    "attention": model.config._attn_implementation}, out)
    folder = str(Path(out).parent)
    base = saved_base(tiny_nemotron_h(902), f"{folder}/base") if rank == 0 else f"{folder}/base"
    dist.barrier()
    seen = hubtune_run(base, folder)
    if rank == 0:
        Path(f"{folder}/seen.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
