"""Exact match of generated answers against references.

`normalize=False` (default) compares whole answers after stripping surrounding whitespace:
an extraction is right only if every line, name and price is right. `normalize=True`
applies SQuAD normalisation first (lower case, no punctuation, no articles, single spaces).
"""

import re
import string

import datasets
import evaluate

_CITATION = """\
@inproceedings{rajpurkar-etal-2016-squad,
    title = "{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text",
    author = "Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy",
    booktitle = "Proceedings of EMNLP 2016",
    year = "2016",
}
"""

_KWARGS = """
Args:
    predictions: list of generated answers.
    references: list of reference answers.
    normalize: apply SQuAD normalisation before comparing (default False: strip only).
Returns:
    exact_match: share of predictions equal to their reference, in [0, 1].
    scores: 1.0 or 0.0 per prediction.
"""


def normalize_answer(text):
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions, references, normalize=False):
        prep = normalize_answer if normalize else str.strip
        scores = [float(prep(p) == prep(r)) for p, r in zip(predictions, references)]
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
