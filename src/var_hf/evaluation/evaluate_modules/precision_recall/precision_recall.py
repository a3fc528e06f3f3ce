"""Improved precision and recall (k-NN manifolds) as an `evaluate` metric; the math is
`var_hf.evaluation.metrics.precision_recall`."""

import evaluate

from var_hf.evaluation.metrics import feature_metric_info, precision_recall

_DESCRIPTION = """
Improved precision and recall of Kynkäänniemi et al. (2019): each set's manifold is the union of balls around its
samples with radius the distance to the k-th nearest neighbour (k=3 as in the ADM evaluator). Precision is the
fraction of generated samples inside the reference manifold, recall the fraction of reference samples inside the
generated one.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of feature vectors): features of the generated samples.
    reference_features (`np.ndarray` of shape `(num_reference, dim)`): features of the reference set (any count;
        evaluate's `references` must match `predictions` row for row, so the reference is a keyword argument).
    nearest_k (`int`, *optional*, defaults to 3): neighbourhood size.
Returns:
    precision (`float`), recall (`float`).
Examples:
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import load_metric
    >>> metric = load_metric("precision_recall")
    >>> x = np.random.default_rng(0).normal(size=(16, 4))
    >>> metric.compute(predictions=x, reference_features=x)
    {'precision': 1.0, 'recall': 1.0}
"""

_CITATION = """
@inproceedings{kynkaanniemi2019improved,
  title={Improved Precision and Recall Metric for Assessing Generative Models},
  author={Kynk{\\"a}{\\"a}nniemi, Tuomas and Karras, Tero and Laine, Samuli and Lehtinen, Jaakko and Aila, Timo},
  booktitle={Advances in Neural Information Processing Systems},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PrecisionRecall(evaluate.Metric):
    def _info(self):
        return feature_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/1904.06991")

    def _compute(self, predictions, reference_features=None, nearest_k=3):
        if reference_features is None:
            raise ValueError("A reference is needed: pass reference_features.")
        precision, recall = precision_recall(predictions, reference_features, nearest_k=nearest_k)
        return {"precision": precision, "recall": recall}
