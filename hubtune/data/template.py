"""The chat template: the base model's own, or hubtune's default when it has none, the model's family
(hubtune.families), and the check that the rendered assistant turn ends with a token the model stops on
(its EOS, or an end-of-turn token generation_config lists). A model tuned on turns without one never
learns to stop."""

from __future__ import annotations

from hubtune.data.budget import check_renders
from hubtune.data.chat import ChatFormat
from hubtune.errors import DataError
from hubtune.families import family_of

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


def ensure_chat_template(tokenizer, choice: str = "auto", model_config=None, generation_config=None,
                         thinking: str = "auto") -> dict:
    """Give the tokenizer a chat template if it has none (or `choice` is "default"), find the model's family,
    check that an assistant turn ends with a token generation stops on, and say what is used (for the report)."""
    return chat_format(tokenizer, choice, model_config, generation_config, thinking)[1]


def chat_format(tokenizer, choice: str = "auto", model_config=None, generation_config=None,
                thinking: str = "auto", reasoning_key: str = "reasoning_content") -> tuple[ChatFormat, dict]:
    """(ChatFormat, report): the family's rendering of the tokenizer's template, checked on a probe conversation."""
    name = getattr(tokenizer, "name_or_path", "") or "the base model"
    own = getattr(tokenizer, "chat_template", None)
    if choice not in ("auto", "default"):
        from hubtune.config import CHAT_TEMPLATES

        tokenizer.chat_template = (CHAT_TEMPLATES / f"{choice}.jinja").read_text()
        source = f"{choice} (data.chat_template)"
        family = family_of(model_config, tokenizer.chat_template)
    elif choice == "default" or not own:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
        source = "hubtune default" + (" (the base model has none)" if not own else " (data.chat_template: default)")
        family = None
    else:
        source = f"the base model's own ({name})"
        family = family_of(model_config, own)
    if not tokenizer.eos_token or tokenizer.eos_token_id is None:
        raise DataError(f"the tokenizer of {name} has no EOS token, so a tuned model could not learn to stop; "
                        f"set eos_token in its tokenizer_config.json")
    chat = ChatFormat(tokenizer, family, generation_config, thinking, name, reasoning_key)
    if family is None and not _takes_system(tokenizer, name):
        # A template that refuses a system message (as Gemma's do) gets it in the first user turn.
        chat.fold_system = "first_user"
    # In the budgeted sandbox first: a template that hangs or floods stops here, with its fix.
    check_renders(tokenizer, [chat.messages(PROBE)], name)
    check_renders(tokenizer, [chat.messages(PROBE[:2])], name, add_generation_prompt=True)
    chat.tokenize(PROBE[:2], PROBE[2:], origin="a probe conversation")
    report = {"template": source, "eos_token": tokenizer.eos_token,
              "family": family.name if family else None,
              "end_of_turn": family.end_of_turn if family else tokenizer.eos_token,
              "stop_token_ids": chat.stop_ids,
              "rendered_example": "".join(chat.render(PROBE[:2], PROBE[2:]))}
    if chat.fold_system:
        where = "first" if chat.fold_system == "first_user" else "last"
        report["system_prompt"] = (f"folded into the {where} user turn: "
                                   + (family.quirks.split(":")[0] if family else "the template takes no system message"))
    if family is not None and family.thinking:
        report["thinking"] = thinking
    return chat, report


def _takes_system(tokenizer, name: str) -> bool:
    """Whether the template renders a system turn (in the budgeted sandbox); a refusal that names the
    system role (Gemma's "System role not supported") means no, any other failure is the template's."""
    try:
        check_renders(tokenizer, [PROBE], name)
        return True
    except DataError as err:
        if "system" in str(err).lower():
            return False
        raise
