"""An Ollama Modelfile beside a GGUF file, whose Go template renders the prompt the tokenizer's chat template does.

Ollama does not run Jinja: its TEMPLATE is a Go text/template over .Messages. The template here is
derived from the run's own chat template by rendering marker messages through it (what comes before and
after a system, user and assistant message, and the generation prompt), then checked: the derived
pieces must rebuild the Jinja rendering of sample conversations exactly. A chat template that is not a
plain sequence of wrapped messages (one that folds the system prompt into the first user turn, say)
fails that check, and the Modelfile then says so instead of guessing.

    ollama create my-model -f Modelfile
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

_MARK = "\u2063HUBTUNE-{}\u2063"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class ChatShape:
    """A chat template as Go text/template sees it: prefix + wrapped messages + generation prompt."""

    prefix: str
    wraps: dict[str, tuple[str, str]]  # role -> (before the content, after it)
    generation_prompt: str

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        body = "".join(self.wraps[m["role"]][0] + m["content"] + self.wraps[m["role"]][1] for m in messages
                       if m["role"] in self.wraps)  # as the Go template: a role without a branch prints nothing
        return self.prefix + body + (self.generation_prompt if add_generation_prompt else "")

    def go_template(self) -> str:
        def literal(text: str) -> str:  # a Go template action that prints text exactly
            return "{{ " + _go_string(text) + " }}" if text else ""

        branches = "".join(
            f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}'
            f"{literal(self.wraps[role][0])}{{{{ .Content }}}}{literal(self.wraps[role][1])}"
            for i, role in enumerate(r for r in ROLES if r in self.wraps))
        return (f"{literal(self.prefix)}{{{{ range .Messages }}}}{branches}{{{{ end }}}}{{{{ end }}}}"
                f"{literal(self.generation_prompt)}")


def _go_string(text: str) -> str:
    """A Go interpreted string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


def _render(tokenizer, messages, add_generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def chat_shape(tokenizer) -> ChatShape | None:
    """The template's pieces, or None when it is not prefix + wrapped messages + generation prompt."""
    U, S, A = (_MARK.format(x) for x in "USA")
    user, assistant = {"role": "user", "content": U}, {"role": "assistant", "content": A}
    try:
        only_user = _render(tokenizer, [user])
        with_prompt = _render(tokenizer, [user], add_generation_prompt=True)
        pair = _render(tokenizer, [user, assistant])
    except Exception:
        return None
    if not with_prompt.startswith(only_user) or only_user.count(U) != 1 or pair.count(A) != 1:
        return None
    generation_prompt = with_prompt[len(only_user):]
    before, after = only_user.split(U)
    try:
        system = _render(tokenizer, [{"role": "system", "content": S}, user])
    except Exception:  # a template without a system role
        system = ""
    # Where the prefix shared by every conversation ends is ambiguous from one rendering ("<s><|start" could
    # split anywhere): each split is tried and the first whose pieces rebuild the sample conversations wins.
    for cut in range(len(before) + 1):
        prefix, wraps = before[:cut], {"user": (before[cut:], after)}
        if S in system:
            tail = before[cut:] + U + after
            if not (system.startswith(prefix) and system.endswith(tail)):
                continue
            middle = system[len(prefix):len(system) - len(tail)]
            if middle.count(S) != 1:
                continue
            wraps["system"] = tuple(middle.split(S))
        if not pair.startswith(only_user):
            return None
        wraps["assistant"] = tuple(pair[len(only_user):].split(A))
        shape = ChatShape(prefix, wraps, generation_prompt)
        if _rebuilds(shape, tokenizer):
            return shape
    return None


SAMPLES = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour.\nJust one."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Say \"yes\" {{ twice }}."}],
]


def _rebuilds(shape: ChatShape, tokenizer) -> bool:
    for messages in SAMPLES:
        try:
            expected = _render(tokenizer, messages, add_generation_prompt=True)
        except Exception:
            continue  # a template that refuses a conversation (no system role, say) is judged on the others
        if shape.render(messages) != expected:
            return False
    return True


def modelfile(gguf_name: str, tokenizer, stop: list[str]) -> str:
    """The Modelfile text for `gguf_name` (a path relative to the Modelfile)."""
    shape = chat_shape(tokenizer)
    lines = [f"# Ollama: ollama create NAME -f Modelfile, then ollama run NAME", f"FROM ./{gguf_name}", ""]
    if shape is None:
        lines += ["# The run's chat template is not a plain sequence of wrapped messages, so no Go template was",
                  "# derived: Ollama falls back to the template it recognises in the GGUF's metadata.", ""]
    else:
        lines += [f'TEMPLATE """{shape.go_template()}"""', ""]
    lines += [f"PARAMETER stop {_go_string(s)}" for s in stop]
    lines += ["# greedy decoding, as hubtune's parity check ran it", "PARAMETER temperature 0", ""]
    return "\n".join(lines)


def write_modelfile(folder: Path, gguf_name: str, tokenizer, stop: list[str]) -> Path:
    path = folder / "Modelfile"
    path.write_text(modelfile(gguf_name, tokenizer, stop))
    return path
