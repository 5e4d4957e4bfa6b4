"""Row formats: detect them from the columns, map columns, and turn every row into chat
messages (a prompt of system/user/assistant turns and a completion of the last assistant
turn), or plain text for the text format.

| format            | columns                                     |
|-------------------|---------------------------------------------|
| alpaca            | instruction, output, optional input, system |
| sharegpt          | conversations: [{from, value}, ...]         |
| messages          | messages: [{role, content}, ...]            |
| prompt_completion | prompt, completion (strings or messages)    |
| text              | text                                        |
| preference        | chosen, rejected, optional prompt (pairs for DPO / ORPO / KTO) |
| kto               | prompt, completion, label (unpaired, for KTO) |

Preference rows without a prompt column hold whole conversations in chosen and rejected: the turns
they share are the prompt (an implicit prompt, as in Anthropic's HH data).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace

from hubtune.errors import DataError

REQUIRED = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "preference": ("chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
}
OPTIONAL = {"alpaca": ("input", "system"), "prompt_completion": ("system",), "preference": ("prompt", "system"),
            "kto": ("system",)}
PREFERENCE_FORMATS = ("preference", "kto")
LABELS = {"true": True, "false": False, "1": True, "0": False, "desirable": True, "undesirable": False,
          "good": True, "bad": False}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                  "system": "system"}
ROLES = ("system", "user", "assistant")
TOOL_ROLE = {"tool": "tool"}  # a tool's result, in the messages format
JSON_TURNS = re.compile(r"^\s*\[\s*(\{|\])")  # a list of turns stored as JSON text (CSV cells)


class BadRow(ValueError):
    """One row that cannot be turned into an example; the caller adds where it is."""


@dataclass(slots=True)
class Example:
    prompt: list[dict] | None  # chat turns before the answer
    completion: list[dict] | None  # the answer: one assistant turn
    text: str | None  # plain-text format only
    task: str | None
    origin: str  # "file, line N"
    tools: str | None = None  # the tools the conversation may call, as JSON text (a list of function schemas)
    rejected: list[dict] | None = None  # preference pairs: the answer not to give (completion is the chosen one)
    label: bool | None = None  # unpaired KTO rows: whether the completion is desirable

    @property
    def kind(self) -> str:
        """text | chat | preference | kto: what a method can train on."""
        if self.text is not None:
            return "text"
        return "preference" if self.rejected is not None else "kto" if self.label is not None else "chat"

    def row(self) -> dict:
        """The training row: TRL conversational prompt-completion (with "tools" when it has some), preference
        (prompt/chosen/rejected), unpaired preference (prompt/completion/label), or {"text": ...}."""
        if self.text is not None:
            return {"text": self.text}
        if self.rejected is not None:
            return {"prompt": self.prompt, "chosen": self.completion, "rejected": self.rejected}
        if self.label is not None:
            return {"prompt": self.prompt, "completion": self.completion, "label": self.label}
        return {"prompt": self.prompt, "completion": self.completion, **({"tools": self.tools} if self.tools else {})}

    def comparison_parts(self) -> tuple[str, str]:
        """(prompt, response) as plain strings, for deduplication and statistics."""
        if self.text is not None:
            return "", self.text
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)
        response = "\n".join(_said(m) for m in self.completion)
        if self.rejected is not None:  # a pair repeats another only when both answers do
            response += "\n\x00 rejected: " + "\n".join(_said(m) for m in self.rejected)
        if self.label is not None:
            response += f"\n\x00 label: {self.label}"
        return prompt, response

    @property
    def response(self) -> str:
        return self.text if self.text is not None else _said(self.completion[-1])


def _said(message: dict) -> str:
    """What an assistant turn says: its text, then its tool calls (name and JSON arguments)."""
    calls = [f"{c['function']['name']}({c['function']['arguments']})" for c in message.get("tool_calls") or []]
    return "\n".join([message["content"], *calls]) if calls else message["content"]


def describe_formats() -> str:
    return "; ".join(f"{name} ({', '.join(cols)})" for name, cols in REQUIRED.items())


def map_columns(row: dict, columns: dict[str, str]) -> dict:
    """Rename the user's columns to hubtune's field names (columns: {field: their_column})."""
    if not columns:
        return row
    out = dict(row)
    for name, theirs in columns.items():
        if theirs in row:
            out[name] = row[theirs]
    return out


def detect_format(row: dict) -> str | None:
    keys = set(row)
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if {"prompt", "completion", "label"} <= keys:
        return "kto"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    return None


def column_list(names, shown: int = 20, width: int = 40) -> str:
    """Column names for a message: the first `shown`, each cut to `width` characters, and how many in all
    (a file with a million columns still gives a message one can read)."""
    names = list(names)
    cut = [n if len(n) <= width else n[:width] + "…" for n in map(str, names[:shown])]
    more = f", … ({len(names):,} columns in all)" if len(names) > shown else ""
    return ", ".join(cut) + more


def rename_turn_key(row: dict, old: str, new: str) -> dict:
    """The row with each turn's `old` key (a reasoning field named `thinking`, say) under `new`, in every
    list of turns it holds."""
    def turn(m):
        return {(new if k == old else k): v for k, v in m.items()} if isinstance(m, dict) and old in m else m
    return {k: [turn(m) for m in v] if isinstance(v, list) else v for k, v in row.items()}


def without_system(ex: Example) -> Example:
    """The example with its system turns dropped (a source's drop_system_message)."""
    if ex.prompt is None or all(m["role"] != "system" for m in ex.prompt):
        return ex
    prompt = [m for m in ex.prompt if m["role"] != "system"]
    if not prompt:
        raise BadRow("the prompt holds only a system message, which drop_system_message drops")
    return replace(ex, prompt=prompt)


def resolve_format(first_row: dict, wanted: str, columns: dict[str, str], source: str) -> str:
    """The format of a source from its first row; a DataError lists what was found and expected."""
    found = column_list(first_row) or "(none)"
    mapped = map_columns(first_row, columns)
    mapping_hint = ("map your columns with data.columns, e.g. {output: answer} "
                    "(CLI: --column output=answer)")
    page_hint = "map your columns in the Column mapping box, e.g. output=answer"
    if wanted == "auto":
        fmt = detect_format(mapped)
        if fmt is None:
            what = (f"{source}: cannot tell the format from the columns found: {found}. "
                    f"Expected one of: {describe_formats()}.")
            raise DataError(f"{what} Set data.format and {mapping_hint}").for_page(
                f"{what} Choose the Format and {page_hint}")
        return fmt
    missing = [c for c in REQUIRED[wanted] if c not in mapped]
    if missing:
        optional = f" (optional: {', '.join(OPTIONAL[wanted])})" if wanted in OPTIONAL else ""
        what = (f"{source}: missing column {', '.join(missing)} for format {wanted}, which expects "
                f"{', '.join(REQUIRED[wanted])}{optional}; columns found: {found}.")
        raise DataError(f"{what} Fix: {mapping_hint}").for_page(f"{what} Fix: {page_hint}")
    return wanted


def to_example(row: dict, fmt: str, task_column: str, origin: str) -> Example:
    """One row in the given format -> Example; raises BadRow."""
    missing = [c for c in REQUIRED[fmt] if row.get(c) is None]
    if missing:
        columns = column_list(row) or "none"
        raise BadRow(f"no value for {', '.join(missing)} (format {fmt}; columns here: {columns})")
    task = _optional_text(row.get(task_column), task_column) or None
    if fmt == "text":
        return Example(None, None, _text(row["text"], "text"), task, origin)
    if fmt == "preference":
        return _preference(row, task, origin)
    if fmt == "kto":
        prompt = _turns(row["prompt"], "user", "prompt")
        if all(m["role"] != "system" for m in prompt):
            prompt = _with_system(row, prompt)
        return Example(prompt, _turns(row["completion"], "assistant", "completion"), None, task, origin,
                       label=_label(row["label"]))
    if fmt == "alpaca":
        user = _text(row["instruction"], "instruction")
        extra = _optional_text(row.get("input"), "input")
        prompt = _with_system(row, [{"role": "user", "content": user + ("\n\n" + extra if extra else "")}])
        turns = prompt + [{"role": "assistant", "content": _text(row["output"], "output")}]
    elif fmt == "prompt_completion":
        prompt = _turns(row["prompt"], "user", "prompt")
        if all(m["role"] != "system" for m in prompt):
            prompt = _with_system(row, prompt)
        turns = prompt + _turns(row["completion"], "assistant", "completion")
    elif fmt == "messages":
        turns = _messages(_list(row["messages"], "messages"), "role", "content", dict(zip(ROLES, ROLES)) | TOOL_ROLE)
    else:
        conv = _list(row["conversations"], "conversations")
        keys = ("role", "content") if conv and isinstance(conv[0], dict) and "role" in conv[0] else ("from", "value")
        turns = _messages(conv, *keys, SHAREGPT_ROLES)
    prompt, completion = split_turns(turns)
    return Example(prompt, completion, None, task, origin, _tools(row.get("tools")))


def _preference(row: dict, task: str | None, origin: str) -> Example:
    """prompt / chosen / rejected as text or turns; without a prompt, chosen and rejected are whole
    conversations and the turns they share are the prompt."""
    if row.get("prompt") is not None and not _whole_conversations(row):
        prompt = _turns(row["prompt"], "user", "prompt")
        if all(m["role"] != "system" for m in prompt):
            prompt = _with_system(row, prompt)
        chosen = _turns(row["chosen"], "assistant", "chosen")
        rejected = _turns(row["rejected"], "assistant", "rejected")
    else:
        if isinstance(row["chosen"], str) and not JSON_TURNS.match(row["chosen"]):
            raise BadRow("no prompt: add a prompt column, or give chosen and rejected as conversations "
                         "(lists of {role, content}) that share their prompt turns")
        whole_chosen = _messages(_list(row["chosen"], "chosen"), "role", "content", dict(zip(ROLES, ROLES)))
        whole_rejected = _messages(_list(row["rejected"], "rejected"), "role", "content", dict(zip(ROLES, ROLES)))
        shared = 0
        while (shared < min(len(whole_chosen), len(whole_rejected)) - 1
               and whole_chosen[shared] == whole_rejected[shared]):
            shared += 1
        prompt, chosen, rejected = whole_chosen[:shared], whole_chosen[shared:], whole_rejected[shared:]
        if not prompt:
            raise BadRow("chosen and rejected share no prompt turns: add a prompt column")
        for name, turns in (("chosen", chosen), ("rejected", rejected)):
            if any(m["role"] != "assistant" for m in turns):
                raise BadRow(f"{name} goes on with a turn that is not the assistant's after the shared prompt")
    if not any(m["content"].strip() for m in chosen) or not any(m["content"].strip() for m in rejected):
        raise BadRow("chosen or rejected is empty")
    if [m["content"].strip() for m in chosen] == [m["content"].strip() for m in rejected]:
        raise BadRow("chosen and rejected are the same answer: a pair must prefer one answer over another")
    return Example(prompt, chosen, None, task, origin, rejected=rejected)


def _whole_conversations(row: dict) -> bool:
    """chosen and rejected hold the user's turns too (UltraFeedback's layout, beside a prompt column): the turns
    they share are then the prompt, as without a prompt column."""
    chosen = row.get("chosen")
    if isinstance(chosen, str) and JSON_TURNS.match(chosen):
        try:
            chosen = json.loads(chosen)
        except json.JSONDecodeError:
            return False
    return (isinstance(chosen, list) and bool(chosen) and isinstance(chosen[0], dict)
            and str(chosen[0].get("role", "")).lower() in ("user", "system"))


def _label(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return LABELS[value.strip().lower()]
    raise BadRow(f"label is {value!r}; expected true (a desirable completion) or false")


def split_turns(turns: list[dict]) -> tuple[list[dict], list[dict]]:
    """Everything before the last assistant turn is the prompt; turns after it have no answer and go."""
    last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=None)
    if last is None:
        raise BadRow("the conversation has no assistant turn to learn from")
    if last == 0:
        raise BadRow("the conversation starts with the assistant: there is no prompt")
    return turns[:last], [turns[last]]


def _text(value, name: str) -> str:
    """A field's text. Numbers become their digits (an answer of 0 is "0"); NaN and infinity are refused:
    they are what an empty spreadsheet cell or a failed computation turns into, never text to train on."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRow(f"{name} is {value} (an empty cell read as a number, or a failed computation), expected text")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadRow(f"{name} is a {type(value).__name__}, expected text")


def _optional_text(value, name: str) -> str:
    """An optional field: absent, null, NaN or "" mean "none" and give ""; anything else is read as by _text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return _text(value, name)


def _with_system(row: dict, turns: list[dict]) -> list[dict]:
    system = _optional_text(row.get("system"), "system")
    return ([{"role": "system", "content": system}] if system else []) + turns


def _list(value, name: str) -> list:
    if isinstance(value, str) and JSON_TURNS.match(value):
        try:
            value = json.loads(value)  # CSV cells hold lists as JSON text
        except json.JSONDecodeError as err:
            raise BadRow(f"{name} is not valid JSON ({err.msg})") from None
    if not isinstance(value, list):
        raise BadRow(f"{name} is a {type(value).__name__}, expected a list of turns")
    return value


def _turns(value, role: str, name: str) -> list[dict]:
    """A prompt or completion given as a string (one turn of `role`) or as a list of messages."""
    if isinstance(value, str) and not JSON_TURNS.match(value):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):  # one message: {role, content}
        value = [value]
    turns = _messages(_list(value, name), "role", "content", dict(zip(ROLES, ROLES)))
    if name in ("completion", "chosen", "rejected") and any(m["role"] != "assistant" for m in turns):
        raise BadRow(f"{name} holds a turn that is not the assistant's")
    return turns


def _messages(items: list, role_key: str, content_key: str, roles: dict[str, str]) -> list[dict]:
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            raise BadRow(f"turn {i} needs {role_key!r} and {content_key!r} keys")
        role = roles.get(str(m[role_key]).lower())
        if role is None:
            raise BadRow(f"turn {i} has role {m[role_key]!r}; known roles: {', '.join(sorted(roles))}")
        message = {"role": role, "content": _content(m[content_key], i)}
        if role == "assistant" and m.get("reasoning_content"):  # a reasoning model's thinking, kept apart
            message["reasoning_content"] = _text(m["reasoning_content"], f"turn {i} reasoning_content")
        if role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = _tool_calls(m["tool_calls"], i)
        if role == "tool" and m.get("tool_call_id"):
            message["tool_call_id"] = _text(m["tool_call_id"], f"turn {i} tool_call_id")
        out.append(message)
    return out


def _content(value, i: int) -> str:
    """Message content: text, or a list of OpenAI-style parts of which only text ones are allowed."""
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRow(f"turn {i} holds a non-text part; only text is supported")
            parts.append(_text(part.get("text", ""), "text"))
        return "".join(parts)
    if value is None:
        return ""
    return _text(value, f"turn {i} content")


def _tool_calls(value, i: int) -> list[dict]:
    """OpenAI-style tool calls ({"type": "function", "function": {"name", "arguments"}}, or the function part
    alone), with the arguments kept as JSON text: rows of a dataset hold them as one column whatever their keys."""
    calls = []
    for k, call in enumerate(_list(value, f"turn {i} tool_calls")):
        fn = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRow(f"turn {i} tool call {k} needs a function name: {{'function': {{'name': ..., 'arguments': {{...}}}}}}")
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as err:
                raise BadRow(f"turn {i} tool call {fn['name']!r}: arguments are not JSON ({err.msg})") from None
        if not isinstance(arguments, dict):
            raise BadRow(f"turn {i} tool call {fn['name']!r}: arguments must be a JSON object")
        out = {"type": "function", "function": {"name": fn["name"], "arguments": json.dumps(arguments, ensure_ascii=False)}}
        if isinstance(call, dict) and call.get("id"):
            out["id"] = str(call["id"])
        calls.append(out)
    return calls


def _tools(value) -> str | None:
    """The row's tool list (function schemas, as a list or as JSON text) as JSON text; None when it has none."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    tools = _list(value, "tools")
    if not all(isinstance(t, dict) for t in tools):
        raise BadRow("tools must be a list of function schemas ({'type': 'function', 'function': {...}})")
    return json.dumps(tools, ensure_ascii=False) if tools else None
