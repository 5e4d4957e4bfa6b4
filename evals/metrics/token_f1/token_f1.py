"""Token-level F1 of generated answers against references, SQuAD style.

Both texts are normalised (lower case, no punctuation, no articles, single spaces) and split
on whitespace; F1 is the harmonic mean of the precision and recall of the shared tokens,
counted with multiplicity. Two empty answers score 1, one empty answer scores 0.
"""

import collections
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
Returns:
    f1: mean token F1, in [0, 1].
    scores: token F1 per prediction.
"""


def normalize_answer(text):
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction, reference):
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1(evaluate.Metric):
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

    def _compute(self, predictions, references):
        scores = [f1_score(p, r) for p, r in zip(predictions, references)]
        return {"f1": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
