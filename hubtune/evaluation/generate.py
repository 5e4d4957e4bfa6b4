"""Load a tuned model from a run folder and generate answers from it, greedily and in batches.

    model, tokenizer = load_tuned("runs/demo")
    answers = generate_answers(model, tokenizer, [[{"role": "user", "content": "..."}]])
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from hubtune.errors import EvalError


def compute_dtype(setting: str = "auto") -> torch.dtype:
    """auto: bfloat16 on GPUs that support it, float16 on older GPUs, float32 on CPU."""
    if setting != "auto":
        return getattr(torch, setting)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_base(model_id: str, *, revision: str | None = None, quantization: str = "nf4",
              double_quant: bool = True, dtype: str = "auto", trust_remote_code: bool = False):
    """The base model as training saw it: 4-bit (nf4/fp4) with bitsandbytes, or unquantized ("none")."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from hubtune.config import resolve_builtin

    torch_dtype = compute_dtype(dtype)
    kwargs: dict = {"revision": revision, "trust_remote_code": trust_remote_code, "dtype": torch_dtype}
    if quantization != "none":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=torch_dtype)
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(resolve_builtin(model_id), **kwargs)
    if quantization == "none" and torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model


def load_tuned(run_path: str | Path, quantization: str | None = None):
    """(PeftModel, tokenizer) from a run folder: the base of RUN/config.yaml plus RUN/adapter.

    quantization: "nf4", "fp4" or "none"; None loads the base the way the run trained it.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    from hubtune import config as cfg
    from hubtune import hub

    run = Path(run_path)
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise EvalError(f"{adapter} holds no adapter_config.json; give a run folder written by `hubtune train`")
    m = cfg.load(run / "config.yaml").model
    base_path = hub.resolve_model(m).path  # the pinned revision, from the local cache when offline
    base = load_base(base_path, quantization=quantization or m.quantization, double_quant=m.double_quant,
                     dtype=m.compute_dtype, trust_remote_code=m.trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
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


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 256,
                     batch_size: int = 8) -> list[str]:
    """Greedy answers to chat prompts, one string per prompt, in the order given.

    Each prompt is a list of chat messages; the chat template renders it with the assistant
    turn opened, generation stops at the end-of-sequence token, and the answer is the decoded
    new text without special tokens. Prompts are batched by length with left padding.
    """
    if not prompts:
        return []
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
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
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, ids in zip(idx, new):
                answers[i] = tokenizer.decode(ids, skip_special_tokens=True)
    model.train(was_training)
    return answers
