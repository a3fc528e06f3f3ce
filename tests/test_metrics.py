"""The metric math: FID, Inception Score, precision/recall and class accuracy, and their `evaluate` modules."""

import warnings

import numpy as np
import pytest
import scipy.stats
import torch

from var_hf.evaluation import metrics


def _gaussian(rng, n, dim, mean=0.0, scale=1.0):
    return rng.normal(mean, scale, size=(n, dim))


# ----------------------------------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero():
    features = _gaussian(np.random.default_rng(0), 300, 16)
    assert abs(metrics.frechet_distance_from_features(features, features)) < 1e-6


def test_fid_of_diagonal_gaussians_matches_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.2, 3.0, size=8), rng.uniform(0.2, 3.0, size=8)
    # Diagonal covariances: (S1 S2)^(1/2) is elementwise sqrt(var1 * var2).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_of_commuting_full_covariances_matches_closed_form():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T commute, so Tr((S1 S2)^(1/2)) = sum sqrt(a b): a non-diagonal check of
    # the matrix square root.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 2.0, size=6), rng.uniform(0.1, 2.0, size=6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = metrics.frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fid_matches_an_eigenvalue_computation_on_features():
    # Tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1 S2) (real, non-negative for covariances).
    rng = np.random.default_rng(3)
    x, y = _gaussian(rng, 200, 12), _gaussian(rng, 150, 12, mean=0.3, scale=1.5)
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    trace_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
    assert metrics.frechet_distance_from_features(x, y) == pytest.approx(expected, rel=1e-8)


def test_fid_equals_torchmetrics_on_the_same_features():
    torchmetrics_fid = pytest.importorskip("torchmetrics.image.fid")

    class Features(torch.nn.Module):
        """Passes features through, so torchmetrics computes FID on exactly our features."""

        num_features = 10

        def forward(self, x):
            return x

    rng = np.random.default_rng(4)
    x, y = _gaussian(rng, 256, 10), _gaussian(rng, 256, 10, mean=0.2, scale=1.2)
    fid = torchmetrics_fid.FrechetInceptionDistance(feature=Features())
    fid.update(torch.from_numpy(y), real=True)
    fid.update(torch.from_numpy(x), real=False)
    assert metrics.frechet_distance_from_features(x, y) == pytest.approx(fid.compute().item(), rel=1e-6)


def test_fid_from_precomputed_statistics_equals_fid_from_features():
    rng = np.random.default_rng(5)
    x, y = _gaussian(rng, 100, 6), _gaussian(rng, 80, 6, mean=1.0)
    mu, sigma = metrics.feature_statistics(y)
    np.testing.assert_allclose(sigma, np.cov(y.T))  # unbiased, as ADM and pytorch-fid
    from_stats = metrics.frechet_distance_from_features(x, reference_mu=mu, reference_sigma=sigma)
    assert from_stats == pytest.approx(metrics.frechet_distance_from_features(x, y), rel=1e-12)


def test_fid_is_symmetric_and_grows_with_the_mean_shift():
    rng = np.random.default_rng(6)
    x = _gaussian(rng, 200, 4)
    near, far = x + 0.1, x + 1.0
    assert metrics.frechet_distance_from_features(x, far) == pytest.approx(
        metrics.frechet_distance_from_features(far, x), rel=1e-9
    )
    # A pure shift keeps the covariance: FID = ||shift||^2.
    assert metrics.frechet_distance_from_features(x, near) == pytest.approx(4 * 0.01, rel=1e-6)
    assert metrics.frechet_distance_from_features(x, far) == pytest.approx(4 * 1.0, rel=1e-6)


def test_fid_of_singular_covariances_uses_the_offset():
    # Fewer samples than dimensions: singular covariances, as with a small sample set.
    rng = np.random.default_rng(7)
    x, y = _gaussian(rng, 5, 20), _gaussian(rng, 5, 20)
    value = metrics.frechet_distance_from_features(x, y)
    assert np.isfinite(value) and value > 0


def test_fid_errors():
    with pytest.raises(ValueError, match="different shapes"):
        metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="reference is needed"):
        metrics.frechet_distance_from_features(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="2-D"):
        metrics.feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="At least 2"):
        metrics.feature_statistics(np.zeros((1, 5)))


# ----------------------------------------------------------------------------------------------------------------------
# Inception Score
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 2, 5, 10])
def test_inception_score_of_uniform_one_hot_predictions_is_the_class_count(num_classes):
    probs = np.eye(num_classes)[np.arange(7 * num_classes) % num_classes]
    assert metrics.inception_score(probs) == pytest.approx(num_classes, rel=1e-12)


def test_inception_score_of_identical_predictions_is_one():
    probs = np.tile(np.array([[0.7, 0.2, 0.1]]), (50, 1))
    assert metrics.inception_score(probs) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_averages_over_splits():
    # Split 1 holds 4 classes uniformly, split 2 only 2: the mean is (4 + 2) / 2.
    split1 = np.eye(4)[np.arange(8) % 4]
    split2 = np.eye(4)[np.arange(8) % 2]
    assert metrics.inception_score(np.concatenate([split1, split2]), split_size=8) == pytest.approx(3.0)


def test_inception_score_matches_scipy_kl_and_torchmetrics():
    rng = np.random.default_rng(8)
    logits = rng.normal(scale=3.0, size=(120, 7))
    probs = metrics.softmax(logits)
    marginal = probs.mean(0)
    expected = np.exp(np.mean([scipy.stats.entropy(p, marginal) for p in probs]))
    assert metrics.inception_score(probs) == pytest.approx(expected, rel=1e-10)

    torchmetrics_is = pytest.importorskip("torchmetrics.image.inception")

    class Logits(torch.nn.Module):
        def forward(self, x):
            return x

    with warnings.catch_warnings():  # torchmetrics warns about its feature buffer and the std of a single split
        warnings.simplefilter("ignore", UserWarning)
        metric = torchmetrics_is.InceptionScore(feature=Logits(), splits=1)
        metric.update(torch.from_numpy(logits))
        mean, _ = metric.compute()
    assert metrics.inception_score(probs) == pytest.approx(mean.item(), rel=1e-6)


def test_inception_score_rejects_logits():
    with pytest.raises(ValueError, match="softmax"):
        metrics.inception_score(np.random.default_rng(0).normal(size=(4, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Precision and recall
# ----------------------------------------------------------------------------------------------------------------------


def _clusters(rng, centers, per_cluster, spread=0.1):
    return np.concatenate([c + rng.normal(scale=spread, size=(per_cluster, len(c))) for c in centers])


def test_manifold_radii_are_kth_neighbour_distances():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # nearest other point: 1, 1, 2, 3, 4; second nearest: 3, 2, 3, 4, 7 (squared distances are returned).
    np.testing.assert_allclose(metrics.manifold_radii(points, nearest_k=1), [1, 1, 4, 9, 16])
    np.testing.assert_allclose(metrics.manifold_radii(points, nearest_k=2, batch_size=2), [9, 4, 9, 16, 49])
    with pytest.raises(ValueError, match="needs at least"):
        metrics.manifold_radii(points, nearest_k=5)


def test_precision_recall_of_identical_sets_is_one():
    x = _gaussian(np.random.default_rng(9), 64, 5)
    assert metrics.precision_recall(x, x.copy()) == (1.0, 1.0)


def test_precision_recall_of_disjoint_far_apart_sets_is_zero():
    rng = np.random.default_rng(10)
    assert metrics.precision_recall(_gaussian(rng, 40, 5), _gaussian(rng, 40, 5, mean=100.0)) == (0.0, 0.0)


def test_precision_recall_when_generated_covers_half_the_modes():
    rng = np.random.default_rng(11)
    centers = np.eye(4) * 50.0  # four far-apart modes
    reference = _clusters(rng, centers, per_cluster=25)
    # The generator reproduces modes 0 and 1 (up to tiny noise) and misses 2 and 3: every generated sample is real
    # (precision 1), half of the real samples are covered (recall 1/2).
    generated = reference[:50] + rng.normal(scale=1e-4, size=(50, 4))
    precision, recall = metrics.precision_recall(generated, reference, batch_size=16)
    assert precision == 1.0
    assert recall == 0.5


def test_precision_recall_when_half_the_samples_are_off_manifold():
    rng = np.random.default_rng(12)
    reference = _clusters(rng, np.eye(2) * 50.0, per_cluster=30)
    on = reference[:30] + rng.normal(scale=1e-4, size=(30, 2))
    off = _gaussian(rng, 30, 2, mean=-500.0)
    precision, recall = metrics.precision_recall(np.concatenate([on, off]), reference)
    assert precision == 0.5
    assert recall == 0.5


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------------------------------------------------
# Class accuracy
# ----------------------------------------------------------------------------------------------------------------------


def test_class_accuracy():
    logits = np.array([[2.0, 0.1], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    assert metrics.class_accuracy(logits, [0, 1, 1, 1]) == 0.75
    with pytest.raises(ValueError, match="labels"):
        metrics.class_accuracy(logits, [0, 1])


# ----------------------------------------------------------------------------------------------------------------------
# evaluate modules
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluate_lib():
    return pytest.importorskip("evaluate")


def test_evaluate_modules_load_by_path_and_match_the_functions(evaluate_lib):
    rng = np.random.default_rng(13)
    x, y = _gaussian(rng, 40, 6), _gaussian(rng, 30, 6, mean=0.5)

    fid = evaluate_lib.load(metrics.metric_module_path("fid"))
    assert fid.compute(predictions=x, reference_features=y)["fid"] == pytest.approx(
        metrics.frechet_distance_from_features(x, y), rel=1e-12
    )
    mu, sigma = metrics.feature_statistics(y)
    assert fid.compute(predictions=x, reference_mu=mu, reference_sigma=sigma)["fid"] == pytest.approx(
        metrics.frechet_distance_from_features(x, y), rel=1e-12
    )

    probs = metrics.softmax(rng.normal(size=(30, 5)))
    inception = metrics.load_metric("inception_score")
    assert inception.compute(predictions=probs, split_size=10)["inception_score"] == pytest.approx(
        metrics.inception_score(probs, split_size=10), rel=1e-12
    )
    assert inception.compute(predictions=np.log(probs), from_logits=True)["inception_score"] == pytest.approx(
        metrics.inception_score(probs), rel=1e-9
    )

    pr = metrics.load_metric("precision_recall")
    precision, recall = metrics.precision_recall(x, y, nearest_k=2)
    assert pr.compute(predictions=x, reference_features=y, nearest_k=2) == {"precision": precision, "recall": recall}


def test_load_metric_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown metric"):
        metrics.load_metric("kid")
