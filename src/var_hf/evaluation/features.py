"""Feature extraction: loading an extractor (the FID InceptionV3 or a domain classifier) and running it over images.

Every feature set is checked before it is used: a NaN or infinite feature (from NaN images or broken weights) raises
here, naming which images it came from, instead of turning into a NaN metric later.
"""

import os
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn as nn

from var_hf.modeling_domain_classifier import DomainClassifier, DomainClassifierOutput

from .images import ImagesOrPaths, iter_image_batches
from .inception import InceptionV3FeatureExtractor, load_inception

FEATURE_EXTRACTORS = ("inception", "domain")


def load_domain_classifier(path: str, device: Union[str, torch.device] = "cpu") -> DomainClassifier:
    """Load a [`DomainClassifier`] saved by `train_domain_classifier`, with a clear error when it is missing."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"No domain classifier in {path!r} (no config.json). Train one on the dataset's training split with "
            f"`var-hf train-domain-classifier --dataset DATA --output-dir {path}` (or "
            f"`var_hf.training.train_domain_classifier.train_domain_classifier(dataset, output_dir={path!r})`)."
        )
    model = DomainClassifier.from_pretrained(path)
    model.weights_path = path
    return model.eval().requires_grad_(False).to(device)


def load_feature_extractor(
    kind: str = "inception",
    inception_weights: Optional[str] = None,
    domain_classifier: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """`"inception"` -> [`load_inception`]; `"domain"` -> [`load_domain_classifier`]. Errors are raised here, before
    any sampling."""
    if kind == "inception":
        return load_inception(inception_weights, device)
    if kind == "domain":
        if domain_classifier is None:
            raise ValueError("The domain feature extractor needs --domain-classifier DIR (see train_domain_classifier).")
        return load_domain_classifier(domain_classifier, device)
    raise ValueError(f"Unknown feature extractor {kind!r}; use one of {list(FEATURE_EXTRACTORS)}.")


@dataclass
class FeatureSet:
    """Everything one pass of an extractor gives, float64 on the CPU.

    Args:
        features: `(N, feature_dim)`, the FID space.
        logits: `(N, num_classes)`, or `None` for an InceptionV3 without its softmax layer.
        spatial: `(N, 2023)` sFID features (InceptionV3 only, when asked for).
        precision_recall: `(N, P)` features for precision/recall: the domain classifier's multi-stage space, else
            `features`.
    """

    features: np.ndarray
    logits: Optional[np.ndarray] = None
    spatial: Optional[np.ndarray] = None
    precision_recall: Optional[np.ndarray] = None


def _check_finite(array: Optional[np.ndarray], what: str, name: str):
    if array is not None and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(
            f"The {name} of {bad} of {len(array)} {what} are NaN or infinite; no metric is computed from them. Check "
            "those images (a NaN model output saves as black PNGs, so this points at the extractor's weights or "
            "at images given as arrays)."
        )


@torch.no_grad()
def extract_feature_set(
    extractor: nn.Module,
    images: ImagesOrPaths,
    batch_size: int = 64,
    device: Union[str, torch.device, None] = None,
    spatial: bool = False,
    progress: bool = False,
    what: str = "images",
) -> FeatureSet:
    """Run a feature extractor over uint8 images `(N, H, W, 3)`, or over image files read a batch at a time."""
    if spatial and not isinstance(extractor, InceptionV3FeatureExtractor):
        raise ValueError(f"sFID features come from the FID InceptionV3; the {extractor.name} extractor has none.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"The feature batch size must be a positive integer, got {batch_size!r}.")
    from tqdm.auto import tqdm

    device = device or next(extractor.parameters()).device
    features, logits, spatials, pr_features = [], [], [], []
    with tqdm(total=len(images), desc=f"features of {what}", unit="img", disable=not progress) as bar:
        for batch in iter_image_batches(images, batch_size):
            pixels_BCHW = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)
            if isinstance(extractor, DomainClassifier):
                out: DomainClassifierOutput = extractor(pixels_BCHW)
                feats_BD, logits_BK = out.features, out.logits
                pr_features.append(out.precision_recall_features.double().cpu().numpy())
            elif spatial:
                feats_BD, logits_BK, spatial_BD = extractor(pixels_BCHW, output_spatial=True)
                spatials.append(spatial_BD.double().cpu().numpy())
            else:
                feats_BD, logits_BK = extractor(pixels_BCHW)
            features.append(feats_BD.double().cpu().numpy())
            if logits_BK is not None:
                logits.append(logits_BK.double().cpu().numpy())
            bar.update(len(batch))
    result = FeatureSet(
        features=np.concatenate(features),
        logits=np.concatenate(logits) if logits else None,
        spatial=np.concatenate(spatials) if spatials else None,
        precision_recall=np.concatenate(pr_features) if pr_features else None,
    )
    for name in ("features", "logits", "spatial", "precision_recall"):
        _check_finite(getattr(result, name), what, name.replace("_", "/") if name == "precision_recall" else name)
    if result.precision_recall is None:
        result.precision_recall = result.features
    return result


def extract_features(extractor: nn.Module, images: ImagesOrPaths, *args, **kwargs):
    """[`extract_feature_set`] (same arguments) as a tuple.

    Returns:
        `(features, logits)`: float64 arrays `(N, feature_dim)` and `(N, num_classes)` (logits `None` for an
        InceptionV3 without its softmax layer); with `spatial=True` (the InceptionV3 only) also the sFID features
        `(N, 2023)`. [`extract_feature_set`] gives the domain classifier's precision/recall features too.
    """
    out = extract_feature_set(extractor, images, *args, **kwargs)
    if out.spatial is not None:  # set exactly when spatial=True was asked for
        return out.features, out.logits, out.spatial
    return out.features, out.logits


__all__ = [
    "FEATURE_EXTRACTORS",
    "FeatureSet",
    "extract_feature_set",
    "extract_features",
    "load_domain_classifier",
    "load_feature_extractor",
]
