"""The runner behind `var-hf evaluate`: sample a pipeline with a [`SamplingProtocol`] (or take real images in place
of samples), measure, and write `metrics.json`.

Everything that can fail before the long work (feature extractor weights, the reference) is loaded first. The
metrics file is written atomically with `allow_nan=False`, after every number has been checked to be finite.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from var_hf.file_utils import file_digest, library_versions, write_json_atomically
from var_hf.modeling_domain_classifier import DomainClassifier

from .features import load_feature_extractor
from .images import prepare_images
from .protocol import SamplingProtocol, SamplingResult, generate_samples, make_protocol, write_samples_npz
from .references import Reference, default_preprocessing, load_reference
from .sample_metrics import compute_sample_metrics

METRICS_FILENAME = "metrics.json"
SAMPLES_DIRNAME = "samples"
SAMPLES_NPZ_FILENAME = "samples.npz"
REFERENCE_CACHE_FILENAME = "reference_features.npz"


@dataclass
class EvaluationResult:
    """What [`evaluate_pipeline`] / [`evaluate_real_images`] wrote and measured. `report` is the metrics JSON's
    content; `sampling` is `None` for real images."""

    metrics: Dict[str, float]
    report: Dict[str, Any]
    sampling: Optional[SamplingResult]
    metrics_path: Optional[str] = None
    npz_path: Optional[str] = None
    sample_dir: Optional[str] = None


def _resolve(feature_extractor, inception_weights, domain_classifier, device):
    if isinstance(feature_extractor, nn.Module):
        return feature_extractor
    return load_feature_extractor(feature_extractor, inception_weights, domain_classifier, device)


def _load_reference(reference, reference_options: Dict[str, Any], resolution: int, seed: int) -> Reference:
    if isinstance(reference, Reference):
        return reference
    options = dict(reference_options)
    options["resolution"] = options.get("resolution") or resolution
    return load_reference(reference, seed=seed, **options)


def evaluate_pipeline(
    pipe,
    output_dir: str,
    reference: Optional[Union[str, Reference]] = None,
    feature_extractor: Union[str, nn.Module] = "inception",
    inception_weights: Optional[str] = None,
    domain_classifier: Optional[str] = None,
    protocol: Optional[SamplingProtocol] = None,
    reference_split: str = "train",
    reference_image_column: Optional[str] = None,
    reference_max_samples: Optional[int] = None,
    reference_resolution: Optional[int] = None,
    reference_preprocessing: Optional[str] = None,
    nearest_k: int = 3,
    is_split_size: int = 5000,
    feature_batch_size: int = 64,
    compute_metrics: bool = True,
    model_name_or_path: Optional[str] = None,
    progress: bool = True,
    **sampling_settings,
) -> EvaluationResult:
    r"""
    Sample with the protocol, write the PNGs, the ADM-layout `.npz` and a metrics JSON.

    Args:
        pipe (`VARPipeline`):
            The pipeline, on the device to sample on.
        output_dir (`str`):
            Gets `samples/<class>/<index>.png`, `samples.npz`, `metrics.json` (and `reference_features.npz`, a cache).
        reference (`str` or [`Reference`], *optional*):
            See [`load_reference`]. Needed unless `compute_metrics=False`.
        feature_extractor (`str` or `nn.Module`, *optional*, defaults to `"inception"`):
            `"inception"`, `"domain"`, or a loaded extractor.
        inception_weights (`str`, *optional*):
            The FID InceptionV3 weights file (see [`find_inception_weights`]).
        domain_classifier (`str`, *optional*):
            Folder of a [`DomainClassifier`] for `feature_extractor="domain"`.
        protocol ([`SamplingProtocol`], *optional*):
            Sampling settings (default: the reference protocol); `sampling_settings` override its fields
            (`num_per_class=10`, `class_ids=[0]`, `batch_size=50`, ...).
        reference_split, reference_image_column, reference_max_samples, reference_resolution, reference_preprocessing:
            See [`load_reference`]; the resolution defaults to the samples'.
        nearest_k (`int`, *optional*, defaults to 3), is_split_size (`int`, *optional*, defaults to 5000):
            Metric settings.
        compute_metrics (`bool`, *optional*, defaults to `True`):
            `False` only samples and writes the `.npz` (e.g. for the ADM evaluator).
        model_name_or_path (`str`, *optional*):
            Recorded in the JSON.
    """
    protocol = make_protocol(protocol, **sampling_settings)
    if compute_metrics and reference is None:
        raise ValueError("A reference is needed to compute metrics (or pass compute_metrics=False).")
    device = pipe._execution_device
    num_classes = pipe.transformer.config.num_classes
    protocol.resolved_class_ids(num_classes)  # out-of-range classes fail before anything is loaded
    protocol.check_num_scales(pipe.scheduler.config.patch_nums)  # and so does a per-scale temperature of wrong length
    extractor = ref = None
    image_size = pipe.vqvae.config.image_size
    if compute_metrics:
        extractor = _resolve(feature_extractor, inception_weights, domain_classifier, device)
        ref = _load_reference(reference, dict(
            split=reference_split, image_column=reference_image_column, max_samples=reference_max_samples,
            resolution=reference_resolution, preprocessing=reference_preprocessing,
        ), image_size, protocol.seed)
        _check_extractor_and_reference(extractor, ref)

    os.makedirs(output_dir, exist_ok=True)
    sampling = generate_samples(pipe, os.path.join(output_dir, SAMPLES_DIRNAME), protocol, progress=progress)
    npz_path = write_samples_npz(os.path.join(output_dir, SAMPLES_NPZ_FILENAME), sampling.paths, sampling.class_labels)

    results, details = {}, {}
    if compute_metrics:
        results, details = compute_sample_metrics(
            sampling.paths, sampling.class_labels, extractor, ref, nearest_k, is_split_size, feature_batch_size,
            reference_cache=os.path.join(output_dir, REFERENCE_CACHE_FILENAME), progress=progress,
        )
    sampling_report = protocol.report(num_classes)
    sampling_report.update(num_samples=len(sampling.paths), device=str(device))
    model = {
        "name_or_path": model_name_or_path or getattr(pipe, "name_or_path", None),
        "num_classes": num_classes,
        "image_size": image_size,
        "depth": pipe.transformer.config.depth,
        "dtype": str(pipe.transformer.dtype).replace("torch.", ""),
        "weights_fingerprint": sampling.model_fingerprint,
    }
    files = {"samples": SAMPLES_DIRNAME, "npz": SAMPLES_NPZ_FILENAME}
    report = _write_report(output_dir, results, details, model, sampling_report, ref, extractor, files)
    return EvaluationResult(
        results, report, sampling, os.path.join(output_dir, METRICS_FILENAME), npz_path,
        os.path.join(output_dir, SAMPLES_DIRNAME),
    )


def load_real_images(
    source: str,
    split: str,
    resolution: int,
    num_per_class: int,
    class_ids: Optional[Sequence[int]] = None,
    preprocessing: Optional[str] = None,
    seed: int = 0,
):
    """`num_per_class` labelled real images of each class (a seeded choice, class-major), prepared like a reference.

    Returns:
        `(images uint8 (N, resolution, resolution, 3), labels (N,), info)`.
    """
    from var_hf.data import load_image_dataset

    preprocessing = preprocessing or default_preprocessing(source)
    dataset = load_image_dataset(source, split)
    labels_all = np.asarray(dataset["label"], dtype=np.int64)
    num_classes = len(dataset.features["label"].names)
    classes = list(range(num_classes)) if class_ids is None else [int(c) for c in class_ids]
    order = np.random.default_rng(seed).permutation(len(labels_all))
    chosen = []
    for c in classes:
        picks = order[labels_all[order] == c][:num_per_class]
        if len(picks) < num_per_class:
            raise ValueError(
                f"{source} ({split}) has {len(picks)} images of class {c}, fewer than --num-per-class {num_per_class}."
            )
        chosen.extend(picks.tolist())
    subset = dataset.select(chosen)
    images = prepare_images(subset["image"], resolution, preprocessing)
    info = {"source": source, "split": split, "num_per_class": num_per_class, "seed": seed,
            "resolution": resolution, "preprocessing": preprocessing,
            "classes": "all" if class_ids is None else classes, "num_samples": len(chosen)}
    return images, labels_all[chosen], info


def evaluate_real_images(
    real_images: str,
    output_dir: str,
    reference: Union[str, Reference],
    resolution: int,
    real_split: str = "train",
    num_per_class: int = 100,
    class_ids: Optional[Sequence[int]] = None,
    real_preprocessing: Optional[str] = None,
    feature_extractor: Union[str, nn.Module] = "domain",
    inception_weights: Optional[str] = None,
    domain_classifier: Optional[str] = None,
    reference_split: str = "test",
    reference_image_column: Optional[str] = None,
    reference_max_samples: Optional[int] = None,
    reference_preprocessing: Optional[str] = None,
    nearest_k: int = 3,
    is_split_size: int = 5000,
    feature_batch_size: int = 64,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> EvaluationResult:
    r"""
    Score real images in place of samples, exactly as [`evaluate_pipeline`] scores samples: the ceiling a generator is
    compared with (a perfect generator's samples are real images). The real images are chosen per class and prepared
    like the reference (for Fashion-MNIST: the training transform, full frame).

    Args:
        real_images (`str`):
            A labelled dataset ([`var_hf.data.load_image_dataset`]: `"fashion-mnist"`, a folder, a Hub id).
        resolution (`int`):
            Side the real and reference images are brought to (the generator's image size, 32 for the default model).
        real_split (`str`, *optional*, defaults to `"train"`), num_per_class (`int`, *optional*, defaults to 100):
            Which real images, and how many of each class (a seeded choice).
        other arguments:
            As in [`evaluate_pipeline`].
    """
    extractor = _resolve(feature_extractor, inception_weights, domain_classifier, device)
    ref = _load_reference(reference, dict(
        split=reference_split, image_column=reference_image_column, max_samples=reference_max_samples,
        resolution=resolution, preprocessing=reference_preprocessing,
    ), resolution, seed)
    _check_extractor_and_reference(extractor, ref)
    images, labels, info = load_real_images(
        real_images, real_split, resolution, num_per_class, class_ids, real_preprocessing, seed
    )
    results, details = compute_sample_metrics(
        images, labels, extractor, ref, nearest_k, is_split_size, feature_batch_size,
        reference_cache=os.path.join(output_dir, REFERENCE_CACHE_FILENAME), progress=progress, what="real images",
    )
    report = _write_report(output_dir, results, details, None, {"real_images": info}, ref, extractor, {})
    return EvaluationResult(results, report, None, os.path.join(output_dir, METRICS_FILENAME))


def _check_extractor_and_reference(extractor, ref: Reference):
    if ref.images is None and not (ref.mu is not None and extractor.name == "inception-v3-fid"):
        raise ValueError(
            f"The reference {ref.info['source']!r} holds only precomputed statistics, which are InceptionV3 "
            f"statistics; the {extractor.name} extractor needs reference images."
        )


def _write_report(output_dir, results, details, model, sampling, ref, extractor, files) -> Dict[str, Any]:
    details = dict(details)
    per_class = details.pop("class_accuracy_per_class", None)
    report = {
        "metrics": results,
        "model": model,
        "sampling": sampling,
        "reference": None if ref is None else dict(ref.info),
        "feature_extractor": None if extractor is None else _extractor_info(extractor),
        "metric_settings": details,
        "files": files,
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if per_class is not None:
        report["class_accuracy_per_class"] = per_class
    # allow_nan=False: a non-finite number is an error, never a file (compute_sample_metrics checked them already).
    write_json_atomically(os.path.join(output_dir, METRICS_FILENAME), report, default=_json_default)
    return report


def _extractor_info(extractor) -> Dict[str, Any]:
    info = {"name": extractor.name, "feature_dim": int(extractor.feature_dim)}
    path = getattr(extractor, "weights_path", None)
    if path is not None:
        info["weights"] = os.path.abspath(path)
        if os.path.isfile(path):
            info["weights_sha256"] = file_digest(path, "sha256")
    if isinstance(extractor, DomainClassifier):
        info["num_classes"] = extractor.config.num_classes
        info["image_size"] = extractor.config.image_size
        info["precision_recall_dim"] = extractor.precision_recall_dim
    else:
        info["softmax_layer"] = extractor.fc is not None
    return info


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


__all__ = [
    "EvaluationResult",
    "METRICS_FILENAME",
    "REFERENCE_CACHE_FILENAME",
    "SAMPLES_DIRNAME",
    "SAMPLES_NPZ_FILENAME",
    "evaluate_pipeline",
    "evaluate_real_images",
    "load_real_images",
]
