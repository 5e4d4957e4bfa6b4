"""The chat template: the base model's own, or hubtune's default when it has none, and the
check that the rendered assistant turn ends with the EOS token the model stops on. A model
tuned on turns without it never learns to stop."""

from __future__ import annotations

from hubtune.data.budget import check_renders
from hubtune.errors import DataError

# hubtune's default chat template, used when the base model ships none (or data.chat_template is
# "default"). Plain role markers, one line each; the assistant turn ends with the EOS token and
# nothing after it. The {% generation %} block marks assistant tokens for assistant-only loss.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)
PROBE_ANSWER = "The answer is 42."
PROBE = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is the answer?"},
         {"role": "assistant", "content": PROBE_ANSWER}]


def ensure_chat_template(tokenizer, choice: str = "auto") -> dict:
    """Give the tokenizer a chat template if it has none (or `choice` is "default"), check that
    the assistant turn ends with EOS, and say which template is used (for the report)."""
    name = getattr(tokenizer, "name_or_path", "") or "the base model"
    own = getattr(tokenizer, "chat_template", None)
    if choice not in ("auto", "default"):
        from hubtune.config import CHAT_TEMPLATES

        tokenizer.chat_template = (CHAT_TEMPLATES / f"{choice}.jinja").read_text()
        source = f"{choice} (data.chat_template)"
    elif choice == "default" or not own:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        source = "hubtune default" + (" (the base model has none)" if not own else " (data.chat_template: default)")
    else:
        source = f"the base model's own ({name})"
    check_renders(tokenizer, [PROBE], name)
    check_renders(tokenizer, [PROBE[:2]], name, add_generation_prompt=True)
    check_eos(tokenizer, name)
    return {"template": source, "eos_token": tokenizer.eos_token,
            "rendered_example": tokenizer.apply_chat_template(PROBE, tokenize=False)}


def check_eos(tokenizer, name: str) -> None:
    """The rendered assistant turn must be followed, whitespace aside, by the EOS token, and that
    text must encode to the EOS id (not to pieces of it)."""
    eos = tokenizer.eos_token
    if not eos or tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer of {name} has no EOS token, so a tuned model could not learn to stop; "
                        f"set eos_token in its tokenizer_config.json")
    try:
        rendered = tokenizer.apply_chat_template(PROBE, tokenize=False)
    except Exception as err:  # a broken Jinja template raises its own errors
        raise DataError(f"the chat template of {name} does not render a system/user/assistant conversation "
                        f"({type(err).__name__}: {err}); use hubtune's with data.chat_template: default") from None
    at = rendered.rfind(PROBE_ANSWER)
    tail = rendered[at + len(PROBE_ANSWER):] if at >= 0 else rendered
    ok = at >= 0 and tail.lstrip().startswith(eos)
    if ok:
        ids = tokenizer(tail.lstrip(), add_special_tokens=False)["input_ids"]
        ok = bool(ids) and ids[0] == tokenizer.eos_token_id
    if not ok:
        raise DataError(
            f"the chat template of {name} ends the assistant turn with {tail[:40]!r}, not the EOS token {eos!r} "
            f"(id {tokenizer.eos_token_id}): a model tuned on it would never learn to stop. Fix: use a template "
            f"whose assistant turn ends with {{{{ eos_token }}}}, or hubtune's with data.chat_template: default. "
            f"Rendered: {rendered!r}")
