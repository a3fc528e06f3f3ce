"""Fréchet Inception Distance as an `evaluate` metric; the math is `var_hf.evaluation.metrics.frechet_distance_from_features`."""

import evaluate

from var_hf.evaluation.metrics import feature_metric_info, frechet_distance_from_features

_DESCRIPTION = """
Fréchet distance between Gaussians fitted to two sets of features (FID when the features are InceptionV3 pool
features): ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), with the matrix square root from scipy, as in the
ADM evaluator. Lower is better; 0 for identical statistics.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of feature vectors): features of the generated samples.
    reference_features (`np.ndarray` of shape `(num_reference, dim)`): features of the reference set (any count;
        evaluate's `references` must match `predictions` row for row, so the reference is a keyword argument).
    reference_mu, reference_sigma (`np.ndarray`, *optional*): precomputed reference statistics (e.g. `mu`/`sigma`
        of the ADM reference batch `VIRTUAL_imagenet256_labeled.npz`).
Returns:
    fid (`float`): the Fréchet distance.
Examples:
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import feature_statistics, load_metric
    >>> reference = np.random.default_rng(0).normal(size=(256, 4))
    >>> mu, sigma = feature_statistics(reference)  # e.g. the `mu`/`sigma` stored in an ADM reference batch
    >>> samples = reference + 1.0  # every feature shifted by 1: FID is ||1||^2 = 4, the covariances being equal
    >>> round(load_metric("fid").compute(predictions=samples, reference_mu=mu, reference_sigma=sigma)["fid"], 4)
    4.0
"""

_CITATION = """
@inproceedings{heusel2017gans,
  title={GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium},
  author={Heusel, Martin and Ramsauer, Hubert and Unterthiner, Thomas and Nessler, Bernhard and Hochreiter, Sepp},
  booktitle={Advances in Neural Information Processing Systems},
  year={2017}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FID(evaluate.Metric):
    def _info(self):
        return feature_metric_info(_DESCRIPTION, _CITATION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/1706.08500")

    def _compute(self, predictions, reference_features=None, reference_mu=None, reference_sigma=None):
        fid = frechet_distance_from_features(predictions, reference_features, reference_mu, reference_sigma)
        return {"fid": fid}
