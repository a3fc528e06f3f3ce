"""Images as the evaluator sees them: uint8 `(N, H, W, 3)` arrays, read from PIL images, arrays or files, and the
two ways a reference image is brought to the samples' size.

- `"adm"` ([`center_crop_arr`]): the ADM reference-batch preprocessing (box-halving, bicubic resize of the short
  side, centre crop), for ImageNet-like references.
- `"full-frame"` ([`prepare_like_training`]): `var_hf.data.ImageTransform(size, mid_ratio=1.0, random_crop=False)`,
  the transform the default Fashion-MNIST model is trained with (Lanczos resize of the whole image, nothing cut),
  turned back into uint8 exactly (its output is `k / 127.5 - 1` for the uint8 `k` of the resized image).
"""

from typing import Iterator, Optional, Sequence, Union

import numpy as np
import PIL.Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PREPROCESSING = ("adm", "full-frame")

ImagesOrPaths = Union[np.ndarray, Sequence[str]]


def center_crop_arr(image: PIL.Image.Image, image_size: int) -> np.ndarray:
    """The ADM reference-batch preprocessing: box-halve while the short side is >= 2x, bicubic-resize the short side
    to `image_size`, centre-crop to a square. Returns uint8 (image_size, image_size, 3)."""
    image = image.convert("RGB")
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=PIL.Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=PIL.Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def images_to_array(images, resolution: Optional[int] = None) -> np.ndarray:
    """PIL images, uint8 arrays or a uint8 batch -> uint8 (N, H, W, 3) (grayscale is replicated to RGB).

    With `resolution`, images of another size go through [`center_crop_arr`]; images already square at `resolution`
    are kept as they are.
    """
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim in (3, 4):
        batch = images[..., None] if images.ndim == 3 else images
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        if batch.shape[-1] == 3 and (resolution is None or batch.shape[1:3] == (resolution, resolution)):
            return np.ascontiguousarray(batch)
        images = list(batch)
    arrays = []
    for image in images:
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image).squeeze())
        if resolution is not None and image.size != (resolution, resolution):
            arrays.append(center_crop_arr(image, resolution))
        else:
            arrays.append(np.asarray(image.convert("RGB")))
    if not arrays:
        raise ValueError("No images.")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"Images have different sizes {sorted(shapes)[:4]}; give a resolution to crop them to.")
    return np.stack(arrays)


def iter_image_batches(images: ImagesOrPaths, batch_size: int) -> Iterator[np.ndarray]:
    """uint8 (b, H, W, 3) batches from an array, or from image files read a batch at a time (50,000 ImageNet samples
    are 9.8 GB as one array)."""
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        if isinstance(images, np.ndarray):
            yield chunk
        else:
            yield np.stack([np.asarray(PIL.Image.open(p).convert("RGB")) for p in chunk])


def prepare_like_training(images, image_size: int) -> np.ndarray:
    """Images -> uint8 (N, image_size, image_size, 3) through the training transform
    `ImageTransform(image_size, mid_ratio=1.0, random_crop=False)` (full frame, Lanczos), back in [0, 255]."""
    import torch

    from var_hf.data import ImageTransform

    transform = ImageTransform(image_size, mid_ratio=1.0, random_crop=False)
    arrays = []
    for image in images:
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image).squeeze())
        pixels_CHW = transform(image)  # k / 127.5 - 1 for the resized uint8 k
        arrays.append(((pixels_CHW + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    if not arrays:
        raise ValueError("No images.")
    return np.stack(arrays)


def prepare_images(images, resolution: Optional[int], preprocessing: str = "adm") -> np.ndarray:
    """[`images_to_array`] (`"adm"`) or [`prepare_like_training`] (`"full-frame"`) at `resolution`."""
    if preprocessing not in PREPROCESSING:
        raise ValueError(f"Unknown reference preprocessing {preprocessing!r}; use one of {list(PREPROCESSING)}.")
    if preprocessing == "full-frame" and resolution is not None:
        return prepare_like_training(images, resolution)
    return images_to_array(images, resolution)


def find_column(dataset, feature_type, fallback: str) -> str:
    """The first column of a `datasets.Dataset` whose feature is `feature_type`, else `fallback`."""
    for name, feature in dataset.features.items():
        if isinstance(feature, feature_type):
            return name
    return fallback


def load_samples(paths: Sequence[str]) -> np.ndarray:
    """Read sample PNGs back as uint8 (N, H, W, 3): metrics are computed on the quantised files, as ADM does."""
    return np.concatenate(list(iter_image_batches(list(paths), 256)))


__all__ = [
    "IMAGE_EXTENSIONS",
    "PREPROCESSING",
    "center_crop_arr",
    "find_column",
    "images_to_array",
    "iter_image_batches",
    "load_samples",
    "prepare_images",
    "prepare_like_training",
]
