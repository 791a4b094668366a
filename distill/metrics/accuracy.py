"""Accuracy as an `evaluate` metric script, kept in the project so it loads offline by path.

`evaluate.load("accuracy")` looks on the Hub; `evaluate.load("<this file>")` does not.
"""

import datasets
import evaluate

_DESCRIPTION = "Accuracy: the fraction of predictions equal to their references."
_CITATION = ""
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
Returns:
    accuracy (float): fraction of correct predictions, in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        n = len(references)
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / n if n else 0.0}
