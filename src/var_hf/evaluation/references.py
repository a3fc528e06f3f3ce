"""Reference sets for FID, precision and recall: images, precomputed Inception statistics, or both.

A reference is read once, checked (readable file, complete statistics, finite values, image layout), and brought to
the samples' resolution with one of the two preprocessings of [`var_hf.evaluation.images`]. Fashion-MNIST
(`"fashion-mnist"`) defaults to `"full-frame"`, the training transform of the default model, so samples and
reference are prepared alike; every other source defaults to the ADM preprocessing.
"""

import glob
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import PIL.Image

from .images import IMAGE_EXTENSIONS, find_column, prepare_images

ADM_REFERENCE_BATCH_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz"
)


@dataclass
class Reference:
    """A reference set: images, precomputed Inception statistics (`mu`, `sigma`), or both (the ADM batch).

    `info` describes where it came from and is written to the metrics JSON.
    """

    info: Dict[str, Any]
    images: Optional[np.ndarray] = None  # uint8 (N, H, W, 3)
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    mu_s: Optional[np.ndarray] = None  # sFID statistics, as in the ADM reference batch
    sigma_s: Optional[np.ndarray] = None


def default_preprocessing(reference: str) -> str:
    """`"full-frame"` for Fashion-MNIST (prepared as the default model's training images), `"adm"` otherwise."""
    from var_hf.data import FASHION_MNIST_NAMES

    return "full-frame" if str(reference).lower() in FASHION_MNIST_NAMES else "adm"


def load_reference(
    reference: str,
    split: str = "train",
    image_column: Optional[str] = None,
    max_samples: Optional[int] = None,
    resolution: Optional[int] = None,
    seed: int = 0,
    preprocessing: Optional[str] = None,
) -> Reference:
    r"""
    Load a reference for FID / precision / recall.

    Args:
        reference (`str`):
            - an `.npz`: `arr_0` uint8 images and/or precomputed `mu`, `sigma` (and sFID's `mu_s`, `sigma_s`; the
              ADM reference batch `VIRTUAL_imagenet256_labeled.npz` holds all of them);
            - a folder saved with `datasets`' `save_to_disk`;
            - a folder of images (searched recursively; png, jpg, webp, bmp, tif);
            - `"fashion-mnist"`: Debian's Fashion-MNIST idx files ([`var_hf.data.load_fashion_mnist`]; the same
              images as the Hub's `zalando-datasets/fashion_mnist`, no network needed);
            - otherwise, a Hub dataset id (needs the network or the local `datasets` cache).
        split (`str`, *optional*, defaults to `"train"`):
            Split of a `datasets` reference.
        image_column (`str`, *optional*):
            Image column of a `datasets` reference; defaults to its first `Image` feature.
        max_samples (`int`, *optional*):
            Keep a seeded random subset of this many images.
        resolution (`int`, *optional*):
            Bring images to this side (use the samples' resolution); `None` keeps them as they are.
        seed (`int`, *optional*, defaults to 0):
            Seeds the `max_samples` subset.
        preprocessing (`str`, *optional*):
            `"adm"` (centre crop, [`center_crop_arr`]) or `"full-frame"` (the training transform,
            [`prepare_like_training`]); defaults to [`default_preprocessing`].
    """
    preprocessing = preprocessing or default_preprocessing(reference)
    info: Dict[str, Any] = {"source": reference, "max_samples": max_samples, "resolution": resolution}
    if resolution is not None:
        info["preprocessing"] = preprocessing
    if max_samples is not None and (isinstance(max_samples, bool) or int(max_samples) < 1):
        raise ValueError(f"max_samples must be a positive integer, got {max_samples!r}.")

    def subset(n: int) -> Optional[np.ndarray]:
        if max_samples is None or max_samples >= n:
            return None
        return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))

    if str(reference).endswith(".npz"):
        return _reference_from_npz(reference, info, subset, resolution, preprocessing)

    if os.path.isdir(reference):
        if os.path.isfile(os.path.join(reference, "dataset_info.json")) or os.path.isfile(
            os.path.join(reference, "dataset_dict.json")
        ):
            import datasets

            dataset = datasets.load_from_disk(reference)
            info.update(kind="datasets-disk", split=split)
            return _reference_from_dataset(dataset, info, split, image_column, subset, resolution, preprocessing)
        paths = sorted(
            p for p in glob.glob(os.path.join(reference, "**", "*"), recursive=True)
            if p.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not paths:
            raise ValueError(f"Reference folder {reference!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
        idx = subset(len(paths))
        paths = paths if idx is None else [paths[i] for i in idx]
        images = prepare_images([_open_image(p) for p in paths], resolution, preprocessing)
        info.update(kind="image-folder", num_images=len(images))
        return Reference(info=info, images=images)

    from var_hf.data import FASHION_MNIST_NAMES, load_fashion_mnist

    if str(reference).lower() in FASHION_MNIST_NAMES and not os.path.exists(reference):
        info.update(kind="fashion-mnist-idx", split=split)
        dataset = load_fashion_mnist(split)
        return _reference_from_dataset(dataset, info, split, image_column, subset, resolution, preprocessing)

    if os.path.exists(reference) or str(reference).startswith((".", "/")):
        raise FileNotFoundError(f"Reference {reference!r} is neither an .npz, a folder, nor a Hub dataset id.")
    import datasets

    try:
        dataset = datasets.load_dataset(reference, split=split)
    except Exception as err:  # datasets raises many types for "could not get it"; all mean the same to the user
        raise ValueError(
            f"Could not load the reference {reference!r} as a Hub dataset (split {split!r}): {type(err).__name__}: "
            f"{err}. Give an .npz, an image folder or a dataset saved with save_to_disk instead."
        ) from err
    info.update(kind="hub-dataset", split=split)
    return _reference_from_dataset(dataset, info, split, image_column, subset, resolution, preprocessing)


def _open_image(path: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError) as err:
        raise ValueError(f"Reference image {path!r} cannot be read ({err}); remove or replace it.") from err


def read_npz(path: str, what: str = "Reference") -> Dict[str, np.ndarray]:
    """Every array of an `.npz`, with one clear error for a missing, truncated or corrupt file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} does not exist (for ImageNet 256: {ADM_REFERENCE_BATCH_URL}).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise ValueError(
            f"{what} {path!r} is not a readable .npz ({type(err).__name__}: {err}); the file is truncated or corrupt. "
            "Download or write it again."
        ) from err


def _statistics_pair(arrays, path: str, mean_key: str, cov_key: str):
    has_mean, has_cov = mean_key in arrays, cov_key in arrays
    if not has_mean and not has_cov:
        return None, None
    if has_mean != has_cov:
        present, absent = (mean_key, cov_key) if has_mean else (cov_key, mean_key)
        raise ValueError(
            f"Reference {path!r} holds {present!r} without {absent!r}: Fréchet statistics need both. Store both "
            f"(mu = features.mean(0), sigma = np.cov(features, rowvar=False)), or neither and give images (arr_0)."
        )
    mu, sigma = np.asarray(arrays[mean_key]), np.asarray(arrays[cov_key])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"Reference {path!r}: {mean_key!r} must be (dim,) and {cov_key!r} (dim, dim), got {mu.shape} and "
            f"{sigma.shape}."
        )
    for key, array in ((mean_key, mu), (cov_key, sigma)):
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise ValueError(f"Reference {path!r}: array {key!r} holds non-finite or non-numeric values; recompute it.")
    return mu.astype(np.float64), sigma.astype(np.float64)


def _reference_from_npz(path, info, subset, resolution, preprocessing) -> Reference:
    arrays = read_npz(path)
    if "arr_0" not in arrays and "mu" not in arrays and "sigma" not in arrays:
        raise ValueError(
            f"Reference {path!r} has neither images (arr_0) nor statistics (mu, sigma): {sorted(arrays)}."
        )
    mu, sigma = _statistics_pair(arrays, path, "mu", "sigma")
    mu_s, sigma_s = _statistics_pair(arrays, path, "mu_s", "sigma_s")
    images = arrays.get("arr_0")
    if images is not None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(
                f"Reference {path!r}: arr_0 must be uint8 images (N, H, W, 3) or (N, H, W), got {images.dtype} "
                f"{images.shape}."
            )
        if len(images) == 0:
            raise ValueError(f"Reference {path!r}: arr_0 holds no images.")
        idx = subset(len(images))
        images = prepare_images(images if idx is None else images[idx], resolution, preprocessing)
    info.update(kind="npz", has_statistics=mu is not None, has_spatial_statistics=mu_s is not None,
                num_images=0 if images is None else len(images))
    return Reference(info=info, images=images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)


def _reference_from_dataset(dataset, info, split, image_column, subset, resolution, preprocessing) -> Reference:
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"Split {split!r} not in the reference dataset (splits: {list(dataset)}).")
        dataset = dataset[split]
    image_column = image_column or find_column(dataset, datasets.Image, "image")
    if image_column not in dataset.column_names:
        raise ValueError(f"Image column {image_column!r} not in the reference dataset ({dataset.column_names}).")
    idx = subset(len(dataset))
    if idx is not None:
        dataset = dataset.select(idx)
    images = prepare_images(dataset[image_column], resolution, preprocessing)
    info.update(image_column=image_column, num_images=len(images))
    return Reference(info=info, images=images)


__all__ = ["ADM_REFERENCE_BATCH_URL", "Reference", "default_preprocessing", "load_reference", "read_npz"]
