"""Chat templates come from model repos, so a template is untrusted code: it is rendered the way
transformers renders it (Jinja's ImmutableSandboxedEnvironment, the same filters and globals) and, here,
under a budget of time and output. `check_renders` renders conversations in that budgeted sandbox and
raises TemplateError when the template fails or runs past its budget; callers check first, then let
transformers render, which then costs what the check cost.

The budget: HUBTUNE_TEMPLATE_SECONDS (default 5) seconds per check, and at most HUBTUNE_TEMPLATE_CHARS
(default 4,000,000) characters rendered per conversation. Loops are counted by the range() they draw from,
by every call, attribute access and string operation; a loop that does none of these is stopped by a
watchdog that raises in the rendering thread once the time is up.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime

from hubtune.errors import TemplateError


class TemplateTimeout(Exception):
    """Raised inside a render that ran past its time (see _watchdog)."""


def _setting(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class _Budget:
    def __init__(self, seconds: float, chars: int):
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.chars = chars
        self.used = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateTimeout

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.chars:
            raise TemplateError(f"renders more than {self.chars:,} characters for one conversation")
        self.tick()


class _Range(Sequence):
    """range() that counts its steps against the budget."""

    def __init__(self, budget: _Budget, inner: range):
        self.budget, self.inner = budget, inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def __iter__(self):
        for i in self.inner:
            self.budget.tick()
            yield i


def _environment(budget: _Budget):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

    class Generation(jinja2.ext.Extension):
        """{% generation %}...{% endgeneration %} as transformers knows it; the body is rendered as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Budgeted(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator, left, right):
            budget.tick()
            sized = [x for x in (left, right) if isinstance(x, (str, list, tuple))]
            if operator == "*" and sized and isinstance(right if sized[0] is left else left, int):
                times = right if sized[0] is left else left
                budget.take(len(sized[0]) * max(times, 0) if isinstance(sized[0], str) else 0)
                if not isinstance(sized[0], str) and len(sized[0]) * max(times, 0) > 100_000:
                    raise TemplateError("builds a list of more than 100,000 items")
            if operator == "**" and isinstance(right, int) and abs(right) > 1000:
                raise TemplateError(f"raises a number to the power {right}")
            return super().call_binop(context, operator, left, right)

        def call(self, __context, __obj, *args, **kwargs):
            budget.tick()
            return super().call(__context, __obj, *args, **kwargs)

        def getattr(self, obj, attribute):
            budget.tick()
            return super().getattr(obj, attribute)

        def getitem(self, obj, argument):
            budget.tick()
            return super().getitem(obj, argument)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Namespace(jinja2.utils.Namespace):
        def __setitem__(self, name, value):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_': {name!r}")
            super().__setitem__(name, value)

    env = Budgeted(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                       dict=dict, namespace=Namespace, range=lambda *a: _Range(budget, safe_range(*a)))
    return env


@contextmanager
def _watchdog(seconds: float):
    """Raise TemplateTimeout in this thread after `seconds`, unless the block has ended by then."""
    target, lock, state = threading.get_ident(), threading.Lock(), {"done": False}

    def fire():
        with lock:
            if not state["done"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(target), ctypes.py_object(TemplateTimeout))

    timer = threading.Timer(seconds + 0.5, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
        timer.cancel()


def check_renders(tokenizer, conversations: list[list[dict]], name: str, add_generation_prompt: bool = False,
                  template: str | None = None) -> None:
    """Render each conversation with the tokenizer's chat template in the budgeted sandbox; TemplateError
    (what went wrong, and the fix) when it fails or runs past its budget."""
    source = template or getattr(tokenizer, "chat_template", None)
    if not source or not conversations:
        return
    if isinstance(source, dict):  # several named templates: the default one
        source = source.get("default") or next(iter(source.values()))
    seconds = _setting("HUBTUNE_TEMPLATE_SECONDS", 5.0)
    chars = int(_setting("HUBTUNE_TEMPLATE_CHARS", 4_000_000))
    budget = _Budget(seconds, chars)
    special = {k: v for k, v in (getattr(tokenizer, "special_tokens_map", None) or {}).items() if isinstance(v, str)}
    fix = "use hubtune's template with data.chat_template: default, or fix the model's chat_template"
    try:
        with _watchdog(seconds):
            compiled = _environment(budget).from_string(source)
            for messages in conversations:
                budget.used = 0
                for chunk in compiled.generate(messages=messages, tools=None, documents=None,
                                               add_generation_prompt=add_generation_prompt, **special):
                    budget.take(len(chunk))
    except TemplateTimeout:
        raise TemplateError(f"the chat template of {name} ran past its budget of {seconds:g} s "
                            f"(HUBTUNE_TEMPLATE_SECONDS) for {len(conversations)} conversation(s); {fix}") from None
    except TemplateError as err:
        raise TemplateError(f"the chat template of {name} {err} (HUBTUNE_TEMPLATE_CHARS); {fix}") from None
    except RecursionError:
        raise TemplateError(f"the chat template of {name} recurses without end; {fix}") from None
    except Exception as err:  # Jinja's own errors and what the template raises (raise_exception)
        raise TemplateError(f"the chat template of {name} does not render ({type(err).__name__}: {err}); "
                            f"{fix}") from None
