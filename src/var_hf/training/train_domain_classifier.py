"""Training the domain classifier ([`DomainClassifier`]) on a dataset's real training split.

A plain PyTorch loop (AdamW, one-cycle learning rate, seeded shuffling): the network is small (about 70k parameters)
and trains in minutes on a CPU, so it needs none of the VAR training harness (no checkpoints, no Accelerate).
"""

from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from transformers.utils import logging

from var_hf.file_utils import default_device
from var_hf.modeling_domain_classifier import DomainClassifier, DomainClassifierConfig

logger = logging.get_logger(__name__)


def train_domain_classifier(
    dataset,
    output_dir: Optional[str] = None,
    image_column: Optional[str] = None,
    label_column: Optional[str] = None,
    num_channels: Optional[int] = None,
    image_size: Optional[int] = None,
    hidden_channels: Sequence[int] = (16, 32, 64),
    num_epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    id2label: Optional[Dict[int, str]] = None,
) -> DomainClassifier:
    r"""
    Train a [`DomainClassifier`] on a dataset's real training split and, with `output_dir`, save it there
    (`model.safetensors` + `config.json`; load it back with `DomainClassifier.from_pretrained(output_dir)`).

    Args:
        dataset (`datasets.Dataset`, `datasets.DatasetDict` or `(images, labels)`):
            The training images with labels. A `DatasetDict` uses its `"train"` split. `images` is uint8
            `(N, H, W)`, `(N, H, W, C)` or a list of PIL images.
        output_dir (`str`, *optional*):
            Where to save the trained classifier.
        image_column, label_column (`str`, *optional*):
            Columns of a `datasets.Dataset`; default to its first `Image` and `ClassLabel` features (else `"image"` /
            `"label"`).
        num_channels (`int`, *optional*):
            1 (grayscale) or 3; defaults to 1 when every training image is grayscale.
        image_size (`int`, *optional*):
            Input side; defaults to the training images' side.
        hidden_channels (`Sequence[int]`, *optional*, defaults to `(16, 32, 64)`):
            Conv stage widths.
        num_epochs, batch_size, learning_rate, weight_decay (*optional*):
            AdamW with a one-cycle (warm-up then cosine) learning-rate schedule.
        seed (`int`, *optional*, defaults to 0):
            Seeds the initialisation and the shuffling.
        device (`str`, *optional*):
            Defaults to CUDA when available.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar over the training steps.
        id2label (`Dict[int, str]`, *optional*):
            Class names, for an `(images, labels)` pair (a `datasets.Dataset` brings its own).

    Returns:
        [`DomainClassifier`] in eval mode.
    """
    from var_hf.evaluation.images import find_column, images_to_array

    for name, value in (("num_epochs", num_epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive finite number, got {learning_rate!r}.")
    images_NHWC, labels_N, names = _training_arrays(dataset, image_column, label_column, images_to_array, find_column)
    id2label = names or id2label
    if num_channels is None:
        gray = (images_NHWC[..., :1] == images_NHWC).all()
        num_channels = 1 if gray else 3
    if image_size is None:
        image_size = images_NHWC.shape[1]
    num_classes = int(labels_N.max()) + 1 if id2label is None else len(id2label)
    device = torch.device(default_device(device))

    torch.manual_seed(seed)
    scaled = images_NHWC.astype(np.float32) / 255.0
    config = DomainClassifierConfig(
        num_classes=num_classes,
        num_channels=num_channels,
        image_size=image_size,
        hidden_channels=hidden_channels,
        pixel_mean=float(scaled.mean()),
        pixel_std=float(max(scaled.std(), 1e-3)),
        id2label=id2label or {i: str(i) for i in range(num_classes)},
    )
    model = DomainClassifier(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = -(-len(labels_N) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=num_epochs * steps_per_epoch, pct_start=0.15
    )
    pixels_NCHW = torch.from_numpy(images_NHWC).permute(0, 3, 1, 2).contiguous()
    targets_N = torch.from_numpy(labels_N.astype(np.int64))
    shuffle = torch.Generator().manual_seed(seed)
    from tqdm.auto import tqdm

    bar = tqdm(total=num_epochs * steps_per_epoch, desc="training domain classifier", disable=not progress)
    for epoch in range(num_epochs):
        order = torch.randperm(len(targets_N), generator=shuffle)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = model(pixels_NCHW[idx].to(device), labels=targets_N[idx].to(device)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            bar.update(1)
        if not np.isfinite(total):
            raise RuntimeError(f"The domain classifier's loss became non-finite in epoch {epoch + 1}; lower the learning rate.")
        logger.info(f"domain classifier epoch {epoch + 1}/{num_epochs}: loss {total / len(order):.4f}")
    bar.close()
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


def _training_arrays(dataset, image_column, label_column, images_to_array, find_column):
    """(images uint8 (N, H, W, C), labels (N,), id2label or None) from a dataset or an (images, labels) pair."""
    if isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
        return images_to_array(images), np.asarray(labels).reshape(-1), None
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"A DatasetDict needs a 'train' split to train on; it has {list(dataset)}.")
        dataset = dataset["train"]
    image_column = image_column or find_column(dataset, datasets.Image, "image")
    label_column = label_column or find_column(dataset, datasets.ClassLabel, "label")
    for column in (image_column, label_column):
        if column not in dataset.column_names:
            raise ValueError(f"Column {column!r} not in the dataset (columns: {dataset.column_names}).")
    label_feature = dataset.features[label_column]
    id2label = dict(enumerate(label_feature.names)) if isinstance(label_feature, datasets.ClassLabel) else None
    images = images_to_array(dataset[image_column])
    return images, np.asarray(dataset[label_column]).reshape(-1), id2label


__all__ = ["train_domain_classifier"]
