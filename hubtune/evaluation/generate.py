"""Load a tuned model from a run folder and generate answers from it, greedily and in batches.

    model, tokenizer = load_tuned("runs/demo")
    answers = generate_answers(model, tokenizer, [[{"role": "user", "content": "..."}]])
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from hubtune.config import EvalSection, ModelSection
from hubtune.data.budget import check_renders
from hubtune.errors import EvalError


def load_base(model: ModelSection, quantization: str | None = None):
    """The base model as training loaded it (4-bit nf4/fp4 or unquantized), in eval mode.

    quantization: "nf4", "fp4" or "none"; None keeps the configured one.
    """
    from hubtune import hardware, hub
    from hubtune.train import load_base as load_training_base

    if quantization is not None:
        model = model.model_copy(update={"quantization": quantization})
    path = hub.resolve_model(model).path  # the pinned revision, from the local cache when offline
    base = load_training_base(path, model, hardware.detect(model), for_training=False)
    base.eval()
    return base


def load_tuned(run_path: str | Path, quantization: str | None = None):
    """(PeftModel, tokenizer) from a run folder: the base of RUN/config.yaml plus RUN/adapter.

    quantization: "nf4", "fp4" or "none"; None loads the base the way the run trained it.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from hubtune import experts
    from hubtune.runs import RunFolder
    from hubtune.train import fit_vocabulary

    run = RunFolder.open(run_path)
    if not (run.adapter / "adapter_config.json").is_file():
        raise EvalError(f"{run.adapter} holds no adapter_config.json; finish the run with "
                        f"`hubtune train --resume {run.path}`")
    run.check_adapter_weights()
    base = load_base(run.config.model, quantization)
    fit_vocabulary(base, run.adapter)
    model = experts.under_lora(base, lambda: PeftModel.from_pretrained(base, str(run.adapter)))
    if run.config.lora.nvfp4_merge_aware:
        from hubtune import nvfp4

        nvfp4.merge_aware(model)  # it computes what it trained on: Q(W + s·B·A)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run.adapter))
    return model, tokenizer


@contextmanager
def _left_padding(tokenizer):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def chat_for(model, tokenizer, thinking: str = "auto"):
    """The ChatFormat evaluation renders prompts with: the model's family, and every token it stops on
    (the tokenizer's EOS, generation_config's eos_token_id list, the family's end-of-turn token)."""
    from hubtune.data.template import chat_format

    config = getattr(model, "config", None)
    return chat_format(tokenizer, "auto", config, getattr(model, "generation_config", None), thinking)[0]


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int | None = None,
                     batch_size: int | None = None, chat=None, thinking: bool | None = None) -> list[str]:
    """Greedy answers to chat prompts, one string per prompt, in the order given.

    Each prompt is a list of chat messages; the chat template renders it with the assistant
    turn opened, generation stops at the end-of-sequence token, and the answer is the decoded
    new text without special tokens. Prompts are batched by length with left padding.

    With `chat` (a hubtune.data.chat.ChatFormat) the prompt is rendered as the family needs (a system prompt
    folded, `thinking` on or off), generation stops on every stop token of the family, and the text is
    returned as generated, special tokens kept: `chat.answer(text)` is the answer, `chat.stopped(text)`
    whether it ended on a stop token.
    """
    if not prompts:
        return []
    # Unset, the eval section's own defaults apply.
    max_new_tokens = max_new_tokens or EvalSection.model_fields["max_new_tokens"].default
    batch_size = batch_size or EvalSection.model_fields["batch_size"].default
    if chat is not None:  # a prompt may come with the tools it can call: {"messages": [...], "tools": "[...]"}
        check_renders(tokenizer, [chat.messages(p["messages"] if isinstance(p, dict) else p) for p in prompts],
                      _name(tokenizer), add_generation_prompt=True)
        texts = [chat.generation_prompt(p["messages"], thinking, p.get("tools")) if isinstance(p, dict)
                 else chat.generation_prompt(p, thinking) for p in prompts]
    else:
        check_renders(tokenizer, prompts, _name(tokenizer), add_generation_prompt=True)
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    stop = chat.stop_ids if chat is not None else tokenizer.eos_token_id
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    answers: list[str] = [""] * len(texts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with _left_padding(tokenizer):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=False, padding=True,
                            return_tensors="pt").to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, ids in zip(idx, new):
                if chat is None:
                    answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
                    continue
                ids = ids.tolist()
                end = next((k for k, t in enumerate(ids) if t in chat.stop_ids), None)
                answers[i] = tokenizer.decode(ids if end is None else ids[:end + 1], skip_special_tokens=False)
    model.train(was_training)
    return answers


def stream_answer(model, tokenizer, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
                  top_p: float = 1.0):
    """The answer to a conversation, yielded as the text so far after each new token (for a chat UI):
    greedy at temperature 0, else sampled at that temperature and top-p."""
    from threading import Thread

    from transformers import TextIteratorStreamer

    chat = chat_for(model, tokenizer)  # the family's rendering (a system prompt folded) and every stop token
    check_renders(tokenizer, [chat.messages(messages)], _name(tokenizer), add_generation_prompt=True)
    text = chat.generation_prompt(messages)
    enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    kwargs = dict(**enc, max_new_tokens=max_new_tokens, streamer=streamer, eos_token_id=chat.stop_ids,
                  pad_token_id=pad, **sampling)
    worker = Thread(target=torch.inference_mode()(model.generate), kwargs=kwargs, daemon=True)
    worker.start()
    answer = ""
    for piece in streamer:
        answer += piece
        yield answer
    worker.join()


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or "the model"
