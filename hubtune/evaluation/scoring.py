"""Exact match and token F1 through the `evaluate` metric modules shipped in evals/metrics/.

Exact match is strict by default (whole answers equal after stripping whitespace);
normalize=True compares after SQuAD normalisation. Token F1 always normalises.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from hubtune.errors import EvalError

# A checkout keeps evals/ beside the package; an installed wheel carries it as hubtune/evals.
_CHECKOUT_EVALS = Path(__file__).resolve().parents[2] / "evals"
EVALS_DIR = _CHECKOUT_EVALS if _CHECKOUT_EVALS.is_dir() else Path(__file__).resolve().parents[1] / "evals"


def evals_dir() -> Path:
    """The evals/ folder (metrics, harness tasks, judge prompts, regression sets)."""
    if not EVALS_DIR.is_dir():
        raise EvalError(f"{EVALS_DIR} is missing; reinstall hubtune (its wheel carries hubtune/evals)")
    return EVALS_DIR


@lru_cache(maxsize=None)
def _metric(name: str):
    import evaluate

    return evaluate.load(str(evals_dir() / "metrics" / name), keep_in_memory=True)


def exact_match_scores(predictions: list[str], references: list[str], normalize: bool = False) -> list[float]:
    if not predictions:
        return []
    return _metric("exact_match").compute(predictions=predictions, references=references, normalize=normalize)["scores"]


def token_f1_scores(predictions: list[str], references: list[str]) -> list[float]:
    if not predictions:
        return []
    return _metric("token_f1").compute(predictions=predictions, references=references)["scores"]


def exact_match(pred: str, ref: str, normalize: bool = False) -> bool:
    """Strict: equal after stripping surrounding whitespace. normalize=True: equal after SQuAD normalisation."""
    return exact_match_scores([pred], [ref], normalize=normalize)[0] == 1.0


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token F1 in [0, 1] between a prediction and a reference."""
    return token_f1_scores([pred], [ref])[0]
