"""GRPO rewards built from what hubtune already measures: exact match and token F1 against the row's
reference, a format check (a regex, valid JSON), length, the LLM judge, or a user's own function.

Each reward is a function TRL's GRPOTrainer calls as `f(prompts, completions, reference=..., **columns)`
and logs under its `__name__` (`rewards/exact_match/mean` in metrics.jsonl). Every one is wrapped so that
one that raises, returns NaN or the wrong count is a RewardError naming it, never a silent zero.

    funcs, weights = build_rewards(config.training.grpo.rewards, config.eval)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Sequence

from hubtune.config import EvalSection, RewardSpec
from hubtune.errors import ConfigError, RewardError

Reward = Callable[..., list[float]]


def completion_text(completion) -> str:
    """A completion as text: TRL hands conversational completions over as a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m.get("content") or "" for m in prompt if m.get("role") != "system")


def _references(reference, n: int, name: str) -> list[str]:
    if reference is None:
        raise RewardError(f"reward {name} compares with the row's reference answer, and the rows have none: train "
                          f"GRPO on rows with an answer (alpaca output, completion, or a column mapped to completion)",
                          name)
    return [str(r) for r in reference][:n]


def exact_match(prompts, completions, reference=None, **_) -> list[float]:
    """1.0 when the completion is the reference (whitespace around stripped), else 0.0."""
    from hubtune.evaluation.scoring import exact_match_scores

    return [float(s) for s in exact_match_scores([completion_text(c) for c in completions],
                                                 _references(reference, len(completions), "exact_match"))]


def f1(prompts, completions, reference=None, **_) -> list[float]:
    """SQuAD token F1 against the reference, in [0, 1]."""
    from hubtune.evaluation.scoring import token_f1_scores

    return [float(s) for s in token_f1_scores([completion_text(c) for c in completions],
                                              _references(reference, len(completions), "f1"))]


def regex(pattern: str) -> Reward:
    compiled = re.compile(pattern)

    def reward(prompts, completions, **_) -> list[float]:
        return [1.0 if compiled.search(completion_text(c)) else 0.0 for c in completions]
    return reward


def valid_json(prompts, completions, **_) -> list[float]:
    """1.0 when the completion (inside a ```json fence or bare) parses as JSON."""
    out = []
    for c in completions:
        text = completion_text(c).strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
        try:
            json.loads(fenced.group(1) if fenced else text)
            out.append(1.0)
        except ValueError:
            out.append(0.0)
    return out


def length(target_chars: int) -> Reward:
    """1.0 up to target_chars, falling linearly to 0.0 at twice that: brevity without a cliff."""
    def reward(prompts, completions, **_) -> list[float]:
        return [max(0.0, 1.0 - max(0, len(completion_text(c)) - target_chars) / target_chars) for c in completions]
    return reward


def judge(settings: EvalSection) -> Reward:
    """The judge's mean 1-5 rubric score through hubtune's judge client, mapped to [0, 1]; an unreadable
    reply scores 0 (and counts in the rubric's favour of clear answers)."""
    from hubtune.evaluation.judge import Judge, JudgePrompt, parse_scores

    client = Judge(settings.judge, model=settings.judge_model, timeout=settings.judge_timeout,
                   retries=settings.judge_retries, backoff=settings.judge_backoff)
    prompt = JudgePrompt.load("single_answer")

    def reward(prompts, completions, reference=None, **_) -> list[float]:
        refs = [str(r) for r in reference] if reference is not None else [""] * len(completions)
        out = []
        for p, c, ref in zip(prompts, completions, refs):
            scores = parse_scores(client.complete(prompt.messages(question=prompt_text(p), reference=ref,
                                                                  answer=completion_text(c))))
            out.append(0.0 if scores is None else (sum(scores.values()) / len(scores) - 1) / 4)
        return out
    return reward


def user_function(spec: str, signature: str = "hubtune") -> Reward:
    """A user's module:function(prompts, completions, references) -> numbers, with prompts and completions
    as text. Refused on a shared Space (SPACE_ID set): a visitor's code never runs on the owner's machine."""
    from hubtune.data.quality import load_scorer

    if os.environ.get("SPACE_ID"):
        raise ConfigError([("training.grpo.rewards", f"{spec}: a reward function of your own runs on the command line "
                                                     f"or a local page, not on a shared Space; use the built-in rewards")])
    fn = load_scorer(spec, "training.grpo.rewards.callable", lambda message: RewardError(message, spec))

    if signature == "trl":
        def trl_reward(prompts, completions, **kwargs) -> list[float]:
            # TRL's (and Axolotl's) convention: keywords, the row's columns among them (the answer as `reference`)
            return list(fn(prompts=prompts, completions=completions, **kwargs))
        return trl_reward

    def reward(prompts, completions, reference=None, **_) -> list[float]:
        refs = [str(r) for r in reference] if reference is not None else [None] * len(completions)
        return list(fn([prompt_text(p) for p in prompts], [completion_text(c) for c in completions], refs))
    return reward


def checked(name: str, fn: Reward) -> Reward:
    """fn, with every way it can go wrong turned into a RewardError naming it."""
    def reward(prompts, completions, **kwargs) -> list[float]:
        try:
            got = fn(prompts, completions, **kwargs)
        except RewardError:
            raise
        except Exception as err:
            raise RewardError(f"reward {name} raised {type(err).__name__}: {err} (scoring {len(completions)} "
                              f"completions, the first: {completion_text(completions[0])[:80]!r}); fix it, or take "
                              f"it out of training.grpo.rewards", name) from err
        if not isinstance(got, Sequence) or len(got) != len(completions):
            count = len(got) if isinstance(got, Sequence) else type(got).__name__
            raise RewardError(f"reward {name} returned {count} for {len(completions)} completions; it must return one "
                              f"number per completion", name)
        scores = []
        for i, value in enumerate(got):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RewardError(f"reward {name} returned {value!r} for completion {i} "
                                  f"({completion_text(completions[i])[:80]!r}); a reward must be a finite number", name)
            scores.append(float(value))
        return scores
    reward.__name__ = name  # TRL logs each reward under its function's name
    return reward


def build_rewards(specs: list[RewardSpec], judge_settings: EvalSection) -> tuple[list[Reward], list[float]]:
    """(reward functions, weights) for GRPOTrainer, in the configured order."""
    funcs = []
    for spec in specs:
        if spec.name == "judge" and not judge_settings.judge:
            raise ConfigError([("training.grpo.rewards", "the judge reward needs a judge: set eval.judge to an "
                                                         "OpenAI-compatible base URL, a Hub model id or a model folder")])
        fn = {"exact_match": lambda: exact_match, "f1": lambda: f1, "json": lambda: valid_json,
              "regex": lambda: regex(spec.pattern), "length": lambda: length(spec.target_chars),
              "judge": lambda: judge(judge_settings), "callable": lambda: user_function(spec.callable, spec.signature)}[spec.name]()
        funcs.append(checked(spec.label, fn))
    return funcs, [spec.weight for spec in specs]


def score_completions(funcs: list[Reward], prompts: list, completions: list, references: list[str]) -> dict[str, float]:
    """Each reward's mean over completions (held-out prompts before and after training)."""
    return {f.__name__: round(sum(s := f(prompts, completions, reference=references)) / max(len(s), 1), 4)
            for f in funcs}
