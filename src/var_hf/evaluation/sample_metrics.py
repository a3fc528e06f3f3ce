"""Metrics of a set of images (samples, or real images scored the same way) against a reference.

FID, sFID, the Inception Score, precision/recall and, with a domain classifier, class accuracy overall and per class.
Which feature space each metric uses:

| metric | InceptionV3 | domain classifier |
| --- | --- | --- |
| FID | 2048-d pool | last-stage pool (`features`) |
| sFID | `mixed_6/conv` (2023-d) | - |
| Inception Score | 1008-way softmax (absent from pool-only weights) | softmax over the dataset's classes |
| precision / recall | 2048-d pool | multi-stage unit-length pools (`precision_recall_features`) |
| class accuracy | - | arg-max of the logits |
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch.nn as nn
from transformers.utils import logging

from var_hf.file_utils import save_npz_atomically
from var_hf.modeling_domain_classifier import DomainClassifier

from . import metrics
from .features import FeatureSet, extract_feature_set
from .images import ImagesOrPaths
from .inception import InceptionV3FeatureExtractor
from .references import Reference, read_npz

logger = logging.get_logger(__name__)

# Bumped whenever what the cache holds changes, so an older cache is recomputed rather than misread.
CACHE_VERSION = 2


def per_class_accuracy(logits, class_labels, id2label: Optional[Dict[int, str]] = None) -> List[Dict[str, Any]]:
    """Class accuracy of each requested class, in class order: `[{"class": id, "name": name, "accuracy": a,
    "num_samples": n}, ...]` (a list, so the order survives JSON's sorted keys)."""
    logits_NK = np.asarray(logits)
    labels_N = np.asarray(class_labels).reshape(-1)
    out = []
    for c in sorted(set(labels_N.tolist())):
        mask = labels_N == c
        out.append({
            "class": int(c),
            "name": str(id2label.get(int(c), c)) if id2label else str(c),
            "accuracy": metrics.class_accuracy(logits_NK[mask], labels_N[mask]),
            "num_samples": int(mask.sum()),
        })
    return out


def compute_sample_metrics(
    images: ImagesOrPaths,
    class_labels: Sequence[int],
    extractor: nn.Module,
    reference: Optional[Reference] = None,
    nearest_k: int = 3,
    is_split_size: int = 5000,
    batch_size: int = 64,
    reference_cache: Optional[str] = None,
    progress: bool = False,
    what: str = "samples",
) -> Tuple[Dict[str, float], Dict[str, Any]]:
    r"""
    FID, Inception Score, precision/recall and (for a [`DomainClassifier`]) class accuracy of images given as uint8
    (N, H, W, 3) or as PNG paths (read a batch at a time).

    FID uses the reference's precomputed `mu`/`sigma` when it has them and the extractor is the InceptionV3 (the ADM
    evaluator's rule); otherwise statistics of the reference images' features. Precision/recall need reference images.
    The Inception Score is computed on the extractor's softmax (InceptionV3: 1008 ImageNet classes; the domain
    classifier: the dataset's classes); an InceptionV3 without its softmax layer gives none.

    Args:
        reference_cache (`str`, *optional*):
            An `.npz` to keep the reference features in; reused when its key (source, extractor, count) matches.

    Returns:
        `(metrics, details)`: the numbers and how each was obtained (written to the metrics JSON); with a domain
        classifier, `details["class_accuracy_per_class"]` holds the accuracy of every class.
    """
    is_inception = isinstance(extractor, InceptionV3FeatureExtractor)
    if reference is not None:  # a reference that cannot serve this extractor fails before any feature is computed
        if reference.images is None and not (reference.mu is not None and is_inception):
            raise ValueError(
                f"The reference {reference.info['source']!r} holds only precomputed statistics, which are InceptionV3 "
                f"statistics; the {extractor.name} extractor needs reference images."
            )
    ours = extract_feature_set(extractor, images, batch_size, spatial=is_inception, progress=progress, what=what)
    results: Dict[str, float] = {}
    details: Dict[str, Any] = {"num_samples": int(len(images)), "is_split_size": is_split_size}
    if ours.logits is not None:
        results["inception_score"] = metrics.inception_score(metrics.softmax(ours.logits), is_split_size)
    else:
        details["inception_score"] = "not available: the InceptionV3 weights have no softmax layer"
    if isinstance(extractor, DomainClassifier):
        results["class_accuracy"] = metrics.class_accuracy(ours.logits, class_labels)
        details["class_accuracy_per_class"] = per_class_accuracy(ours.logits, class_labels, extractor.config.id2label)
    if reference is None:
        return _finite(results), details

    use_statistics = reference.mu is not None and is_inception
    ref = None
    if reference.images is not None:
        ref = reference_feature_set(reference, extractor, batch_size, reference_cache, progress)
    if use_statistics:
        results["fid"] = metrics.frechet_distance(*metrics.feature_statistics(ours.features), reference.mu, reference.sigma)
        details["fid_reference"] = "precomputed statistics (mu, sigma)"
    else:
        results["fid"] = metrics.frechet_distance_from_features(ours.features, ref.features)
        details["fid_reference"] = "reference image features"
    if is_inception and reference.mu_s is not None:  # sFID, by the same rule as FID
        results["sfid"] = metrics.frechet_distance(
            *metrics.feature_statistics(ours.spatial), reference.mu_s, reference.sigma_s
        )
        details["sfid_reference"] = "precomputed statistics (mu_s, sigma_s)"
    elif ref is not None and ref.spatial is not None:
        results["sfid"] = metrics.frechet_distance_from_features(ours.spatial, ref.spatial)
        details["sfid_reference"] = "reference image features"
    if ref is not None:
        results["precision"], results["recall"] = metrics.precision_recall(
            ours.precision_recall, ref.precision_recall, nearest_k
        )
        details.update(nearest_k=nearest_k, num_reference_images=int(len(ref.features)))
        details["precision_recall_space"] = (
            "multi-stage unit-length pools" if isinstance(extractor, DomainClassifier) else "pool features"
        )
    return _finite(results), details


def _finite(results: Dict[str, float]) -> Dict[str, float]:
    bad = {k: v for k, v in results.items() if not np.isfinite(v)}
    if bad:
        raise ValueError(f"Metrics {sorted(bad)} came out non-finite ({bad}); nothing is reported.")
    return results


def reference_feature_set(
    reference: Reference, extractor, batch_size: int, cache: Optional[str], progress: bool = False
) -> FeatureSet:
    """Features of the reference images (and, for the InceptionV3, their sFID features), cached in `cache`."""
    spatial = isinstance(extractor, InceptionV3FeatureExtractor)
    key = json.dumps(
        [CACHE_VERSION, reference.info, extractor.name, str(getattr(extractor, "weights_path", "")),
         int(len(reference.images)), spatial],
        sort_keys=True,
        default=str,
    )
    if cache is not None and os.path.isfile(cache):
        try:
            arrays = read_npz(cache, what="Reference feature cache")
        except ValueError as err:  # our own cache: recompute rather than fail
            logger.warning(f"{err} Recomputing it.")
            arrays = {}
        if "key" in arrays and str(arrays["key"]) == key:
            logger.info(f"Reusing reference features from {cache}.")
            return FeatureSet(
                features=arrays["features"],
                spatial=arrays.get("spatial"),
                precision_recall=arrays.get("precision_recall", arrays["features"]),
            )
    out = extract_feature_set(extractor, reference.images, batch_size, spatial=spatial, progress=progress,
                              what="the reference")
    if cache is not None:
        arrays = {"features": out.features, "precision_recall": out.precision_recall}
        if out.spatial is not None:
            arrays["spatial"] = out.spatial
        save_npz_atomically(cache, key=np.array(key), **arrays)
    return out


__all__ = ["compute_sample_metrics", "per_class_accuracy", "reference_feature_set"]
