"""LLM-as-judge: single-answer grading on a 1-5 rubric and pairwise comparison against the base.

The judge is any chat endpoint reachable through huggingface_hub.InferenceClient (an
OpenAI-compatible base URL such as vLLM, TGI or `transformers serve`; a Hub model id through
Inference Providers) or a local transformers model folder. Prompts live in evals/judges/.

Pairwise comparisons are asked in both orders (base first, then tuned first): a win counts only
when both orders agree, so a judge that always prefers the first answer produces ties, not wins.
Each call is retried with exponential backoff; when the judge keeps failing, judging stops and
the result says how many items were judged. Replies are cached in the run folder.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml

from hubtune.errors import EvalError, JudgeError
from hubtune.evaluation.cache import AnswerCache, key_of
from hubtune.evaluation.intervals import bootstrap_mean, wilson
from hubtune.evaluation.scoring import evals_dir

JUDGE_KEY_VARIABLE = "HUBTUNE_JUDGE_API_KEY"  # the key of a base-URL judge; the Hub token never goes there
NO_KEY = "EMPTY"  # what OpenAI-compatible servers started without a key are sent by convention (vLLM's docs)
CRITERIA = ("helpfulness", "accuracy", "format")
_SCORE = {c: re.compile(rf"\b{c}(?:\s+adherence)?\**\s*[:=]\s*\**\s*\[*\s*([1-5])(?![\d.])", re.IGNORECASE)
          for c in CRITERIA}
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_scores(reply: str) -> dict[str, int] | None:
    """{"helpfulness": 4, "accuracy": 5, "format": 3} from the judge's last such line, or None."""
    found = {}
    for c in CRITERIA:
        hits = _SCORE[c].findall(reply or "")
        if not hits:
            return None
        found[c] = int(hits[-1])
    return found


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "C" (tie) when the reply names exactly one verdict, else None."""
    verdicts = set(_VERDICT.findall(reply or ""))
    return verdicts.pop() if len(verdicts) == 1 else None


def per_order(base_first: str, tuned_first: str) -> tuple[str, str]:
    """The tuned model's result ("win", "tie", "loss") in each order."""
    return ({"B": "win", "A": "loss", "C": "tie"}[base_first],   # order 1: A = base, B = tuned
            {"A": "win", "B": "loss", "C": "tie"}[tuned_first])  # order 2: A = tuned, B = base


def pairwise_outcome(base_first: str, tuned_first: str) -> str:
    """Tuned model's result over both orders: "win" or "loss" only when the orders agree, else "tie"."""
    a, b = per_order(base_first, tuned_first)
    return a if a == b else "tie"


@dataclass
class JudgePrompt:
    system: str
    user: jinja2.Template

    @classmethod
    def load(cls, name: str) -> JudgePrompt:
        spec = yaml.safe_load((evals_dir() / "judges" / f"{name}.yaml").read_text())
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
        return cls(spec["system"].strip(), env.from_string(spec["user"]))

    def messages(self, **fields) -> list[dict]:
        user = re.sub(r"\n{3,}", "\n\n", self.user.render(**fields)).strip()
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


class Judge:
    """A chat endpoint that answers judge prompts, retried with exponential backoff."""

    def __init__(self, spec: str, *, model: str | None = None, timeout: float = 60.0, retries: int = 3,
                 backoff: float = 2.0, max_tokens: int = 512, api_key: str | None = None):
        self.spec = spec
        self.model = model
        self.retries = retries
        self.backoff = backoff
        self.max_tokens = max_tokens
        self.identity = f"{spec}|{model or ''}"
        self._local = None
        if spec.startswith(("http://", "https://")):
            from huggingface_hub import InferenceClient

            # Its own key only: without one, InferenceClient would send the Hub token to this host.
            key = api_key if api_key is not None else os.environ.get(JUDGE_KEY_VARIABLE)
            self._client = InferenceClient(base_url=spec, timeout=timeout, api_key=key or NO_KEY)
        elif Path(spec).expanduser().is_dir():
            self._client = None
        elif spec.startswith((".", "/", "~")):
            raise EvalError(f"judge {spec}: no such model folder; give a local model folder, an OpenAI-compatible "
                            f"base URL (http://host:port/v1) or a Hub model id")
        else:
            from huggingface_hub import InferenceClient

            from hubtune.hub import token

            # A Hub model id is served by the Hub's Inference Providers: the Hub token is its key. Judges run
            # in `hubtune eval`, whose environment holds only its own user's token.
            self._client = InferenceClient(model=spec, timeout=timeout, token=token() or None)

    def _send(self, messages: list[dict]) -> str:
        if self._client is None:
            return self._local_reply(messages)
        reply = self._client.chat_completion(messages, model=self.model, max_tokens=self.max_tokens, temperature=0.0)
        text = reply.choices[0].message.content
        if not isinstance(text, str):
            raise ValueError(f"reply without text: {reply!r:.200}")
        return text

    def _local_reply(self, messages: list[dict]) -> str:
        if self._local is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(Path(self.spec).expanduser())
            self._local = (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
        from hubtune.evaluation.generate import generate_answers

        model, tokenizer = self._local
        return generate_answers(model, tokenizer, [messages], max_new_tokens=self.max_tokens)[0]

    def complete(self, messages: list[dict]) -> str:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                return self._send(messages)
            except Exception as err:  # down, slow or malformed: every transport failure is retried alike
                last = err
                if attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
        raise JudgeError(f"judge {self.spec} failed {self.retries + 1} times in a row: {type(last).__name__}: {last}",
                         endpoint=self.spec)


def cached_asker(judge: Judge, cache: AnswerCache):
    """ask(messages) -> the judge's reply, from the cache when this judge was asked the same before."""
    def ask(messages: list[dict]) -> str:
        key = key_of(judge.identity, messages)
        if key not in cache:
            cache.put_many({key: judge.complete(messages)})
        return cache.get(key)
    return ask


def answer_grader(judge: Judge, cache: AnswerCache):
    """grade(question, reference, {name: answer}) -> {name: the mean 1-5 rubric score, or None when the
    judge's reply holds no readable scores}. Replies are cached: an answer graded once (by `hubtune eval`
    with the same judge, or an earlier call) is not sent again."""
    single = JudgePrompt.load("single_answer")
    ask = cached_asker(judge, cache)

    def grade(question: str, reference: str | None, answers: dict[str, str]) -> dict[str, float | None]:
        out = {}
        for name, answer in answers.items():
            scores = parse_scores(ask(single.messages(question=question, reference=reference or "", answer=answer)))
            out[name] = None if scores is None else sum(scores.values()) / len(scores)
        return out
    return grade


def run_grader(run_dir: str | Path, judge: str | None = None, judge_model: str | None = None):
    """(answer_grader, the judge) for an evaluated run: this judge or the run's eval.judge, with the run's
    judge settings (timeout, retries); replies cached where `hubtune eval` caches them. (None, None) when
    neither names a judge."""
    from hubtune.config import EvalSection
    from hubtune.runs import RunFolder

    folder = RunFolder(run_dir)
    ev = folder.config.eval if (folder.path / RunFolder.CONFIG).is_file() else EvalSection()
    spec = judge or ev.judge
    if not spec:
        return None, None
    client = Judge(spec, model=judge_model or ev.judge_model, timeout=ev.judge_timeout, retries=ev.judge_retries,
                   backoff=ev.judge_backoff)
    return answer_grader(client, AnswerCache(folder.path / RunFolder.JUDGE_CACHE)), spec


def judge_answers(judge: Judge, items: list[dict], cache: AnswerCache) -> dict:
    """Grade tuned and base answers and compare them pairwise, item by item.

    items: {"question", "reference", "tuned", "base"} dicts. Returns the aggregate report; on a
    judge that keeps failing, the items judged so far with "partial": true and the error.
    """
    single = JudgePrompt.load("single_answer")
    pair = JudgePrompt.load("pairwise")
    ask = cached_asker(judge, cache)
    records, error = [], None
    for item in items:
        q, ref = item["question"], item.get("reference") or ""
        try:
            record = {
                "tuned": parse_scores(ask(single.messages(question=q, reference=ref, answer=item["tuned"]))),
                "base": parse_scores(ask(single.messages(question=q, reference=ref, answer=item["base"]))),
                "base_first": parse_verdict(ask(pair.messages(question=q, reference=ref, answer_a=item["base"],
                                                              answer_b=item["tuned"]))),
                "tuned_first": parse_verdict(ask(pair.messages(question=q, reference=ref, answer_a=item["tuned"],
                                                               answer_b=item["base"]))),
            }
        except JudgeError as err:
            error = str(err)
            break
        records.append(record)
    return {"judge": judge.identity.rstrip("|"), "items": len(items), "judged": len(records),
            "partial": len(records) < len(items), "error": error, **aggregate(records)}


def aggregate(records: list[dict]) -> dict:
    """Rubric means with bootstrap 95% intervals per model, pairwise win/tie/loss rates with Wilson
    intervals, unparsable counts."""
    single = {}
    for model in ("tuned", "base"):
        graded = [r[model] for r in records if r[model] is not None]
        single[model] = {"overall": bootstrap_mean([sum(g.values()) / len(CRITERIA) for g in graded]),
                         **{c: bootstrap_mean([g[c] for g in graded]) for c in CRITERIA},
                         "unparsable": sum(r[model] is None for r in records)}
    both = [r for r in records if r["base_first"] and r["tuned_first"]]
    outcomes = [pairwise_outcome(r["base_first"], r["tuned_first"]) for r in both]
    n = len(outcomes)
    verdicts = [v for r in records for v in (r["base_first"], r["tuned_first"]) if v]
    decisive = [v for v in verdicts if v != "C"]
    pairwise = {
        "n": n,
        "wins": outcomes.count("win"), "ties": outcomes.count("tie"), "losses": outcomes.count("loss"),
        "win_rate": outcomes.count("win") / n if n else None,
        "tie_rate": outcomes.count("tie") / n if n else None,
        "loss_rate": outcomes.count("loss") / n if n else None,
        "ci95": {f"{o}_rate": list(wilson(outcomes.count(o), n)) if n else None for o in ("win", "tie", "loss")},
        # Share of items where both orders give the same result (same winner, or both a tie).
        "position_consistency": sum(a == b for a, b in (per_order(r["base_first"], r["tuned_first"])
                                                        for r in both)) / n if n else None,
        # Share of decisive verdicts for whichever answer came first: 0.5 means no position bias.
        "first_position_preferred": decisive.count("A") / len(decisive) if decisive else None,
        "unparsable": sum((r["base_first"] is None) + (r["tuned_first"] is None) for r in records),
        "unparsable_items": len(records) - n,
    }
    return {"single": single, "pairwise": pairwise}
