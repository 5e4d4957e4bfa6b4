"""Evaluation of a run: base zero-shot, base few-shot and tuned side by side."""

from hubtune.evaluation.generate import generate_answers, load_base, load_tuned
from hubtune.evaluation.pipeline import evaluate
from hubtune.evaluation.scoring import exact_match, token_f1

__all__ = ["evaluate", "exact_match", "generate_answers", "load_base", "load_tuned", "token_f1"]
