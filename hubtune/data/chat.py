"""Chat examples rendered through the model's own template, the way its family needs, and tokenized with
the loss mask training uses: the prompt as the model sees it at inference (the generation prompt), then
the assistant's tokens up to and including the end-of-turn token, and nothing else.

    chat = ChatFormat(tokenizer, family_of(model_config, tokenizer.chat_template))
    row = chat.tokenize(prompt, completion)            # {"input_ids": [...], "completion_mask": [...]}
    text = chat.generation_prompt(prompt)              # what evaluation generates from
    answer = chat.answer(generated_text)               # the text after the thinking, without the stop token
"""

from __future__ import annotations

import json
import re

from hubtune.errors import DataError
from hubtune.families import Family, stop_token_ids

THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def reasoning_of(message: dict) -> tuple[str | None, str]:
    """(reasoning, answer) of an assistant message: its `reasoning_content`, or a leading <think> block."""
    content = message.get("content") or ""
    if message.get("reasoning_content"):
        return str(message["reasoning_content"]), content
    found = THINK.match(content)
    if found:
        return found.group(1).strip("\n"), content[found.end():]
    return None, content


def strip_thinking(text: str) -> str:
    """The answer after a model's thinking: the text after the last </think>, or all of it when it did not think."""
    return text.rsplit("</think>", 1)[-1].lstrip("\n") if "</think>" in text else text


class ChatFormat:
    """How one tokenizer's chat template renders training rows and generation prompts.

    thinking: "auto" (rows with reasoning train in thinking mode, rows without it with thinking off),
    "on" or "off" (every row; off drops the reasoning). Only families that think read it."""

    def __init__(self, tokenizer, family: Family | None = None, generation_config=None, thinking: str = "auto",
                 name: str | None = None, reasoning_key: str = "reasoning_content"):
        self.tokenizer, self.family, self.thinking = tokenizer, family, thinking
        self.reasoning_key = reasoning_key
        self.name = name or getattr(tokenizer, "name_or_path", "") or "the base model"
        self.stop_ids = stop_token_ids(tokenizer, generation_config, family)
        self.fold_system = family.system if family is not None and not family.takes_system else None
        self.separator = family.system_separator if family is not None else "\n\n"

    @property
    def who(self) -> str:
        return f"the {self.family.name} chat template of {self.name}" if self.family else f"the chat template of {self.name}"

    # -- messages -------------------------------------------------------------------------------------
    def messages(self, turns: list[dict]) -> list[dict]:
        """The turns as the template should receive them: a system prompt folded into a user turn where the
        template takes none (first_user) or puts it in the last user turn only (last_user)."""
        turns = [self._message(m) for m in turns]
        if not self.fold_system or not turns or turns[0]["role"] != "system":
            return turns
        system, rest = turns[0]["content"], turns[1:]
        users = [i for i, m in enumerate(rest) if m["role"] == "user"]
        if not users:
            return rest
        at = users[0] if self.fold_system == "first_user" else users[-1]
        rest[at]["content"] = system + self.separator + rest[at]["content"]
        return rest

    def _message(self, m: dict) -> dict:
        """A message as templates expect it: no keys set to None (a dataset column gives every message every
        key), tool call arguments as a JSON object (as JSON text for templates that concatenate them)."""
        out = {k: v for k, v in m.items() if v is not None}
        if self.reasoning_key != "reasoning_content" and "reasoning_content" in out:
            out[self.reasoning_key] = out.pop("reasoning_content")  # the key this template reads (gpt-oss: thinking)
        if out.get("tool_calls"):
            as_text = self.family is not None and self.family.tool_arguments == "text"
            out["tool_calls"] = [{**c, "function": {**c["function"], "arguments": (
                c["function"]["arguments"] if as_text else json.loads(c["function"]["arguments"]))}}
                for c in out["tool_calls"]]
        return out

    def _render(self, turns: list[dict], generation_prompt: bool, thinking: bool | None, tools=None) -> str:
        kwargs = {"tokenize": False, "add_generation_prompt": generation_prompt}
        if tools:
            kwargs["tools"] = json.loads(tools) if isinstance(tools, str) else tools
        if thinking is not None and self.family is not None and self.family.thinking == "switch":
            kwargs["enable_thinking"] = thinking
        try:
            return self.tokenizer.apply_chat_template(self.messages(turns), **kwargs)
        except Exception as err:  # a Jinja template raises its own errors (TemplateError, TypeError, ...)
            raise DataError(f"{self.who} does not render this conversation ({type(err).__name__}: {err}); "
                            f"fix the rows (roles must alternate user/assistant after an optional system "
                            f"prompt), or use hubtune's template with data.chat_template: default") from None

    def row_thinking(self, completion: list[dict]) -> bool | None:
        """Whether a row trains in thinking mode; None for families that do not think."""
        if self.family is None or self.family.thinking is None:
            return None
        if self.thinking != "auto":
            return self.thinking == "on"
        return reasoning_of(completion[-1])[0] is not None

    # -- training -------------------------------------------------------------------------------------
    def render(self, prompt: list[dict], completion: list[dict], tools=None) -> tuple[str, str]:
        """(prompt text, completion text): the generation prompt exactly as inference renders it, and what
        the assistant writes after it, end-of-turn token included (and whatever the template adds after)."""
        thinking = self.row_thinking(completion)
        reasoning, answer = reasoning_of(completion[-1])
        last = {k: v for k, v in completion[-1].items() if k != "reasoning_content"}
        last["content"] = answer
        if thinking and reasoning is not None and self.family.thinking == "switch":
            last["reasoning_content"] = reasoning
        prompt_text = self._render(prompt, True, thinking, tools)
        if self.family is not None and self.family.thinking == "forced":
            # The generation prompt opens <think>; the template's rendering of a finished turn drops the thinking
            # and never writes <think>. The completion is the thinking, </think> and the answer as the template ends it.
            full = self._render(prompt + completion[:-1] + [last], False, thinking, tools)
            at = full.rfind(answer) if answer else -1
            if at < 0:
                raise DataError(f"{self.who} does not write the answer into the rendered conversation; "
                                f"rendered: {full[-200:]!r}")
            think = (reasoning.strip("\n") + "\n") if (thinking and reasoning) else "\n"
            return prompt_text, think + "</think>\n\n" + answer + full[at + len(answer):]
        full = self._render(prompt + completion[:-1] + [last], False, thinking, tools)
        if not full.startswith(prompt_text):
            common = next((i for i, (a, b) in enumerate(zip(prompt_text, full)) if a != b), min(len(prompt_text), len(full)))
            raise DataError(
                f"{self.who}: the generation prompt is not a prefix of the rendered conversation, so training "
                f"would not see the text the model answers after at inference. They part at character {common}: "
                f"prompt {prompt_text[common:common + 60]!r} vs conversation {full[common:common + 60]!r}. "
                f"Use a template that renders the prompt the same way in both (or data.chat_template: default)")
        return prompt_text, full[len(prompt_text):]

    def tokenize(self, prompt: list[dict], completion: list[dict], tools=None, origin: str = "") -> dict:
        """input_ids and completion_mask (1 on the assistant's tokens through the end-of-turn token)."""
        prompt_text, completion_text = self.render(prompt, completion, tools)
        encode = self.tokenizer
        prompt_ids = encode(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = encode(completion_text, add_special_tokens=False)["input_ids"]
        end = next((i for i, t in enumerate(completion_ids) if t in self.stop_ids), None)
        if end is None:
            where = f" ({origin})" if origin else ""
            raise DataError(
                f"{self.who} ends the assistant turn{where} with {completion_text[-40:]!r}, not the EOS token "
                f"{self.tokenizer.eos_token!r} nor another token generation stops on ({self._stop_names()}): a model "
                f"tuned on it would never learn to stop. Fix: "
                f"set the end-of-turn token as eos_token (or list it in generation_config.json's eos_token_id), or "
                f"use hubtune's template with data.chat_template: default")
        mask = [0] * len(prompt_ids) + [1] * (end + 1) + [0] * (len(completion_ids) - end - 1)
        return {"input_ids": prompt_ids + completion_ids, "completion_mask": mask}

    def _stop_names(self) -> str:
        return ", ".join(f"{self.tokenizer.convert_ids_to_tokens(i)!s} (id {i})" for i in self.stop_ids)

    # -- inference ------------------------------------------------------------------------------------
    def generation_prompt(self, prompt: list[dict], thinking: bool | None = None, tools=None) -> str:
        """The prompt text a model generates from; thinking None: the template's default."""
        return self._render(prompt, True, thinking, tools)

    def answer(self, generated: str) -> str:
        """The answer in generated text (decoded with special tokens kept): cut at the first stop token,
        special tokens removed, the thinking before </think> dropped."""
        stops = [self.tokenizer.convert_ids_to_tokens(i) for i in self.stop_ids]
        cut = min((generated.find(s) for s in stops if s and s in generated), default=len(generated))
        text = generated[:cut]
        marker = self.family.answer_marker if self.family is not None else None
        if marker and marker in text:
            text = text.rsplit(marker, 1)[-1]
        # Special tokens out, as the tokenizer knows them (added tokens flagged special included).
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return strip_thinking(self.tokenizer.decode(ids, skip_special_tokens=True))

    def stopped(self, generated: str) -> bool:
        """Whether generation ended on a stop token rather than at the length limit."""
        return any(s and s in generated for s in (self.tokenizer.convert_ids_to_tokens(i) for i in self.stop_ids))


def tool_call_of(text: str) -> dict | None:
    """The first tool call written in generated text: a JSON object with a "name" and its "arguments" (or Llama's
    "parameters"), as Qwen's <tool_call> blocks, Llama 3's bare JSON and Mistral's [TOOL_CALLS] lists write it."""
    decoder = json.JSONDecoder()
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and isinstance(value.get("name"), str):
            arguments = value.get("arguments", value.get("parameters", {}))
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    pass
            return {"name": value["name"], "arguments": arguments}
    return None


def call_matches(generated: str, reference: dict) -> bool:
    """The call metric: the generated call names the reference function with equal JSON arguments."""
    call = tool_call_of(generated)
    return call is not None and call["name"] == reference["name"] and call["arguments"] == reference["arguments"]
