"""Sample-quality metrics for generative models: FID, Inception Score, precision/recall, class accuracy.

Every function works on features (or class probabilities) that a feature extractor already produced, so the math is
independent of the network; the rest of `var_hf.evaluation` holds the extractors and the sampling protocol. The formulas follow
the ADM evaluator (Dhariwal & Nichol, `guided-diffusion/evaluations/evaluator.py`), which VAR (arXiv 2404.02905,
Sec. 5) used for its ImageNet numbers:

- FID (Heusel et al., 2017): `||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))` between the Gaussians fitted to
  two feature sets, with the matrix square root from `scipy.linalg.sqrtm`.
- Inception Score (Salimans et al., 2016): `exp(E_x KL(p(y|x) || p(y)))`, averaged over splits of 5,000 samples.
- Precision and recall (Kynkäänniemi et al., 2019): the k-NN manifold estimate with k=3.

Each metric is also an `evaluate` module (see `load_metric`).

No metric is computed from non-finite inputs: NaN or infinite features, statistics or probabilities raise a
`ValueError` naming the array, and a result that comes out non-finite raises too (a NaN is never returned).
"""

import os
import warnings
from typing import Optional, Tuple

import numpy as np
import scipy.linalg
import scipy.special
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

EVALUATE_MODULES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules")
METRIC_NAMES = ("fid", "inception_score", "precision_recall")


# ----------------------------------------------------------------------------------------------------------------------
# Fréchet distance
# ----------------------------------------------------------------------------------------------------------------------


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set.

    Args:
        features (`np.ndarray` or `torch.Tensor` of shape `(num_samples, dim)`):
            One feature vector per sample.

    Returns:
        `(mu, sigma)`: float64 arrays of shapes `(dim,)` and `(dim, dim)`; `sigma` is the unbiased covariance
        (`np.cov`, divided by `num_samples - 1`) as in the ADM evaluator and pytorch-fid.
    """
    features_ND = _as_2d_float64(features, "features")
    if features_ND.shape[0] < 2:
        raise ValueError(f"At least 2 samples are needed for a covariance, got {features_ND.shape[0]}.")
    return features_ND.mean(axis=0), np.cov(features_ND, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians `N(mu1, sigma1)` and `N(mu2, sigma2)`.

    `||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`, the ADM evaluator's `frechet_distance`: the
    square root is `scipy.linalg.sqrtm`; if the product is singular, `eps` is added to both diagonals; an imaginary part
    left by round-off is dropped unless it is large.

    Args:
        mu1, mu2 (`np.ndarray` of shape `(dim,)`):
            Means.
        sigma1, sigma2 (`np.ndarray` of shape `(dim, dim)`):
            Covariances.
        eps (`float`, *optional*, defaults to 1e-6):
            Diagonal offset used only when `sigma1 @ sigma2` has no finite square root.

    Returns:
        `float`: the distance (FID when the features come from InceptionV3's pool layer).

    Example:

    ```python
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import frechet_distance
    >>> round(frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)), 6)  # 2 + 2 * (1 + 4 - 2 * 2)
    4.0

    ```
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(f"Means have different shapes: {mu1.shape} and {mu2.shape} (features of different extractors?).")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"Covariances of shapes {sigma1.shape} and {sigma2.shape} do not match means of {mu1.shape}.")
    for name, array in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        check_finite(array, name)

    diff = mu1 - mu2
    with warnings.catch_warnings():
        # A singular product is handled below, as in the ADM evaluator; scipy's own warning would only repeat it.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        logger.warning(f"FID: sigma1 @ sigma2 is singular; adding {eps} to the diagonals.")
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in the matrix square root.")
        covmean = covmean.real
    distance = float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
    if not np.isfinite(distance):
        raise ValueError(f"FID: the distance is not finite ({distance}); the covariances are too ill-conditioned.")
    return distance


def frechet_distance_from_features(
    features,
    reference_features=None,
    reference_mu: Optional[np.ndarray] = None,
    reference_sigma: Optional[np.ndarray] = None,
) -> float:
    """FID between generated features and a reference given as features or as precomputed `(mu, sigma)`.

    Args:
        features (`np.ndarray` of shape `(num_samples, dim)`):
            Features of the generated samples.
        reference_features (`np.ndarray` of shape `(num_reference, dim)`, *optional*):
            Features of the reference set.
        reference_mu, reference_sigma (`np.ndarray`, *optional*):
            Precomputed reference statistics (e.g. `mu`/`sigma` of the ADM reference batch); used instead of
            `reference_features`.
    """
    mu, sigma = feature_statistics(features)
    if reference_mu is not None or reference_sigma is not None:
        if reference_mu is None or reference_sigma is None:
            raise ValueError("Give both reference_mu and reference_sigma.")
        if reference_features is not None:
            raise ValueError("Give either reference_features or reference_mu/reference_sigma, not both.")
        return frechet_distance(mu, sigma, reference_mu, reference_sigma)
    if reference_features is None:
        raise ValueError("A reference is needed: reference_features, or reference_mu and reference_sigma.")
    return frechet_distance(mu, sigma, *feature_statistics(reference_features))


# ----------------------------------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------------------------------


def inception_score(probs, split_size: int = 5000) -> float:
    """Inception Score `exp(E_x KL(p(y|x) || p(y)))` of class probabilities, averaged over splits.

    As in the ADM evaluator, the samples are cut in consecutive splits of `split_size` (5,000 for 50,000 samples gives
    the usual 10 splits); `p(y)` is the mean prediction of each split. `0 log 0` is taken as 0
    (`scipy.special.rel_entr`), so one-hot predictions are allowed.

    Args:
        probs (`np.ndarray` of shape `(num_samples, num_classes)`):
            Class probabilities (rows sum to 1), e.g. the softmax of InceptionV3's unbiased logits.
        split_size (`int`, *optional*, defaults to 5000):
            Samples per split.

    Returns:
        `float`: between 1 (every sample gets the same prediction) and `num_classes` (confident, uniformly spread).

    Example:

    ```python
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import inception_score
    >>> round(inception_score(np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3]]), 6)
    4.0

    ```
    """
    probs_NK = _as_2d_float64(probs, "probs")
    if (probs_NK < 0).any() or not np.allclose(probs_NK.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be probabilities (non-negative rows summing to 1); apply a softmax to logits.")
    if split_size < 1:
        raise ValueError(f"split_size must be positive, got {split_size}.")
    scores = []
    for start in range(0, probs_NK.shape[0], split_size):
        part_nK = probs_NK[start : start + split_size]
        marginal_1K = part_nK.mean(axis=0, keepdims=True)
        kl = scipy.special.rel_entr(part_nK, marginal_1K).sum(axis=1).mean()
        scores.append(np.exp(kl))
    score = float(np.mean(scores))
    if not np.isfinite(score):
        raise ValueError(f"Inception Score: the result is not finite ({score}); the probabilities overflow exp(KL).")
    return score


# ----------------------------------------------------------------------------------------------------------------------
# Precision and recall (k-NN manifolds)
# ----------------------------------------------------------------------------------------------------------------------


def _squared_distances(a_MD: torch.Tensor, b_ND: torch.Tensor) -> torch.Tensor:
    # |a|^2 - 2 a.b + |b|^2 as in the ADM evaluator, clamped at 0 against round-off; float64 keeps exact duplicates at 0.
    d_MN = (a_MD * a_MD).sum(1, keepdim=True) - 2 * a_MD @ b_ND.T + (b_ND * b_ND).sum(1)[None]
    return d_MN.clamp_min_(0)


def manifold_radii(features, nearest_k: int = 3, batch_size: int = 1024) -> np.ndarray:
    """Squared distance of every sample to its `nearest_k`-th nearest neighbour in the same set (itself excluded).

    Args:
        features (`np.ndarray` of shape `(num_samples, dim)`):
            The set whose manifold is estimated.
        nearest_k (`int`, *optional*, defaults to 3):
            The neighbourhood size (3 in Kynkäänniemi et al. and the ADM evaluator).
        batch_size (`int`, *optional*, defaults to 1024):
            Rows of the distance matrix computed at once.
    """
    feats_ND = torch.from_numpy(_as_2d_float64(features, "features"))
    if not 1 <= nearest_k < feats_ND.shape[0]:
        raise ValueError(f"nearest_k={nearest_k} needs at least {nearest_k + 1} samples, got {feats_ND.shape[0]}.")
    radii = []
    for start in range(0, feats_ND.shape[0], batch_size):
        d_bN = _squared_distances(feats_ND[start : start + batch_size], feats_ND)
        # The k+1-th smallest distance: the first is the sample itself (0).
        radii.append(torch.kthvalue(d_bN, nearest_k + 1, dim=1).values)
    return torch.cat(radii).numpy()


def _coverage(queries_MD: torch.Tensor, points_ND: torch.Tensor, radii_N: torch.Tensor, batch_size: int) -> float:
    """Fraction of queries inside at least one ball (point, radius) of the other set."""
    inside = []
    for start in range(0, queries_MD.shape[0], batch_size):
        d_bN = _squared_distances(queries_MD[start : start + batch_size], points_ND)
        inside.append((d_bN <= radii_N[None]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(features, reference_features, nearest_k: int = 3, batch_size: int = 1024) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of generated features against reference features.

    Each set's manifold is the union of balls around its samples, of radius the distance to the `nearest_k`-th
    neighbour. Precision is the fraction of generated samples inside the reference manifold (fidelity); recall the
    fraction of reference samples inside the generated manifold (coverage).

    Args:
        features (`np.ndarray` of shape `(num_samples, dim)`):
            Features of the generated samples.
        reference_features (`np.ndarray` of shape `(num_reference, dim)`):
            Features of the reference set.
        nearest_k (`int`, *optional*, defaults to 3):
            Neighbourhood size.
        batch_size (`int`, *optional*, defaults to 1024):
            Rows of each distance block.

    Returns:
        `(precision, recall)`, both in [0, 1].
    """
    gen_ND = torch.from_numpy(_as_2d_float64(features, "features"))
    ref_MD = torch.from_numpy(_as_2d_float64(reference_features, "reference_features"))
    if gen_ND.shape[1] != ref_MD.shape[1]:
        raise ValueError(f"Feature dimensions differ: {gen_ND.shape[1]} and {ref_MD.shape[1]}.")
    ref_radii = torch.from_numpy(manifold_radii(ref_MD.numpy(), nearest_k, batch_size))
    gen_radii = torch.from_numpy(manifold_radii(gen_ND.numpy(), nearest_k, batch_size))
    precision = _coverage(gen_ND, ref_MD, ref_radii, batch_size)
    recall = _coverage(ref_MD, gen_ND, gen_radii, batch_size)
    return precision, recall


# ----------------------------------------------------------------------------------------------------------------------
# Class accuracy and helpers
# ----------------------------------------------------------------------------------------------------------------------


def class_accuracy(logits_or_probs, class_labels) -> float:
    """Fraction of samples whose arg-max class is the class they were generated for.

    Args:
        logits_or_probs (`np.ndarray` of shape `(num_samples, num_classes)`):
            A classifier's outputs on the generated samples.
        class_labels (`np.ndarray` of shape `(num_samples,)`):
            The requested classes.
    """
    scores_NK = _as_2d_float64(logits_or_probs, "logits_or_probs")
    labels_N = np.asarray(class_labels).reshape(-1)
    if labels_N.shape[0] != scores_NK.shape[0]:
        raise ValueError(f"{scores_NK.shape[0]} predictions but {labels_N.shape[0]} labels.")
    return float((scores_NK.argmax(axis=1) == labels_N).mean())


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64 (`scipy.special.softmax`)."""
    return scipy.special.softmax(_as_2d_float64(logits, "logits"), axis=1)


def check_finite(array, name: str) -> np.ndarray:
    """`array` as float64 if every value is finite, else a `ValueError` that names it and counts the bad values."""
    array = np.asarray(array, dtype=np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf) of {array.size}; no metric is computed "
            "from them. Check the images or statistics they came from (a NaN model output, a corrupt file)."
        )
    return array


def _as_2d_float64(array, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().double().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_samples, dim), got shape {array.shape}.")
    return check_finite(array, name)


def metric_module_path(name: str) -> str:
    """Path of the `evaluate` module script of metric `name` (one of `METRIC_NAMES`) inside the installed package."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; known: {list(METRIC_NAMES)}.")
    return os.path.join(EVALUATE_MODULES_DIR, name, f"{name}.py")


def feature_metric_info(description: str, citation: str, inputs_description: str, paper_url: str):
    """The `evaluate.MetricInfo` of our metric modules: `predictions` are rows of features (or class probabilities)
    as float64, and a reference, when the metric needs one, is a keyword argument of `compute`."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation=citation,
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))}),
        reference_urls=[paper_url],
    )


def load_metric(name: str, **kwargs):
    """Load one of our metrics as an `evaluate` module (`evaluate.load` on the script shipped in the package).

    Args:
        name (`str`):
            `"fid"`, `"inception_score"` or `"precision_recall"`.
        kwargs:
            Passed to `evaluate.load`.

    Example:

    ```python
    >>> import numpy as np
    >>> from var_hf.evaluation.metrics import load_metric
    >>> fid = load_metric("fid")
    >>> features = np.random.default_rng(0).normal(size=(64, 8))
    >>> abs(fid.compute(predictions=features, reference_features=features)["fid"]) < 1e-6
    True

    ```
    """
    import evaluate  # imported lazily: it is slow to import and only this helper needs it

    return evaluate.load(metric_module_path(name), **kwargs)


__all__ = [
    "METRIC_NAMES",
    "check_finite",
    "class_accuracy",
    "feature_metric_info",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_features",
    "inception_score",
    "load_metric",
    "manifold_radii",
    "metric_module_path",
    "precision_recall",
    "softmax",
]
