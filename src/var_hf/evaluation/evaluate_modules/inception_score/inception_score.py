"""Inception Score as an `evaluate` metric; the math is `var_hf.evaluation.metrics.inception_score`."""

import evaluate

from var_hf.evaluation.metrics import feature_metric_info, inception_score, softmax

_DESCRIPTION = """
Inception Score exp(E_x KL(p(y|x) || p(y))) of class predictions on generated samples, averaged over consecutive
splits of `split_size` samples (5,000 as in the ADM evaluator). Higher is better; between 1 and the number of classes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of probability vectors): p(y|x) for every generated sample (rows sum to 1).
    split_size (`int`, *optional*, defaults to 5000): samples per split.
    from_logits (`bool`, *optional*, defaults to `False`): apply a softmax to `predictions` first.
Returns:
    inception_score (`float`).
Examples:
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import load_metric
    >>> metric = load_metric("inception_score")
    >>> round(metric.compute(predictions=np.eye(4)[[0, 1, 2, 3]])["inception_score"], 6)
    4.0
"""

_CITATION = """
@inproceedings{salimans2016improved,
  title={Improved Techniques for Training GANs},
  author={Salimans, Tim and Goodfellow, Ian and Zaremba, Wojciech and Cheung, Vicki and Radford, Alec and Chen, Xi},
  booktitle={Advances in Neural Information Processing Systems},
  year={2016}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class InceptionScore(evaluate.Metric):
    def _info(self):
        return feature_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/1606.03498")

    def _compute(self, predictions, split_size=5000, from_logits=False):
        probs = softmax(predictions) if from_logits else predictions
        return {"inception_score": inception_score(probs, split_size=split_size)}
