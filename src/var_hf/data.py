"""Image datasets for training and evaluation: loading through `datasets`, the reference's augmentation, and a
deterministic, resumable, distributed sampler.

Three kinds of source give the same thing, a `datasets.Dataset` with an image column and a `ClassLabel` label column:

- `"fashion-mnist"`: Fashion-MNIST read from the gzip'd idx files Debian installs under
  `/usr/share/datasets/fashion-mnist` (splits `train` and `test`);
- a folder in ImageNet's layout (`<root>/train/<class>/*.JPEG`, `<root>/val/<class>/*.JPEG`), read with the
  `imagefolder` builder;
- any other `datasets` dataset: a `save_to_disk` folder or a Hub id.

Randomness. Every random decision of the training transform (crop offset, flip) is drawn from a `torch.Generator`
seeded with `(seed, epoch, position in the epoch)`, and the order of an epoch is a permutation seeded with
`(seed, epoch)`. A batch is therefore a pure function of the run's seed and of the step, whatever the number of
loader workers or processes, so a resumed run sees exactly the batches an uninterrupted one would.
"""

import gzip
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Split names tried, in order, when the requested one does not exist (ImageNet's `val` folder becomes `validation`).
SPLIT_ALIASES = {
    "validation": ("validation", "val", "valid", "test"),
    "val": ("validation", "val", "valid", "test"),
    "test": ("test", "validation", "val"),
    "train": ("train",),
}


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def read_idx(path: str) -> np.ndarray:
    """Read a (gzip'd) idx file, the format of MNIST and Fashion-MNIST: magic (0, 0, dtype, ndim), dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (magic {raw[:4].hex()}).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but holds {data.size} values (truncated file?).")
    return data.reshape(dims)


def fashion_mnist_available(root: str = FASHION_MNIST_DIR) -> bool:
    return all(
        os.path.exists(os.path.join(root, f"{split}-{kind}-ubyte.gz"))
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    )


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_DIR, max_samples: Optional[int] = None):
    """Fashion-MNIST as a `datasets.Dataset` with columns `image` (28x28 grayscale PIL) and `label` (`ClassLabel`).

    Args:
        split (`str`, *optional*, defaults to `"train"`):
            `"train"` (60,000 images) or `"test"` (10,000; `"validation"`, `"val"` and `"t10k"` are aliases).
        root (`str`, *optional*, defaults to `/usr/share/datasets/fashion-mnist`):
            Folder holding `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` images.
    """
    import datasets

    prefix = {"train": "train", "test": "t10k", "t10k": "t10k", "validation": "t10k", "val": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST has the splits 'train' and 'test', got {split!r}.")
    images_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    for path in (images_path, labels_path):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Fashion-MNIST file {path} not found; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` installs it "
                "there, or pass the folder holding the idx files."
            )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if max_samples is not None:
        images, labels = images[:max_samples], labels[:max_samples]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    return datasets.Dataset.from_dict(
        {"image": [PIL.Image.fromarray(a, mode="L") for a in images], "label": labels.astype(np.int64).tolist()},
        features=features,
        split=split,
    )


def pick_split(available: Sequence[str], split: str, source: str) -> str:
    """The requested split, or its first available alias (`SPLIT_ALIASES`)."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        if name in available:
            if name != split:
                logger.info(f"Using split {name!r} of {source} for the requested {split!r}.")
            return name
    raise ValueError(f"{source} has no split {split!r}; it has {sorted(available)}.")


def load_image_dataset(
    source: str,
    split: str = "train",
    image_column: str = "image",
    label_column: str = "label",
    max_samples: Optional[int] = None,
    require_labels: bool = True,
):
    """Load an image classification dataset and return it with columns `image` and `label` (a `ClassLabel`).

    Args:
        source (`str`):
            `"fashion-mnist"`, a folder in ImageNet's `train/<class>/…`, `val/<class>/…` layout (`imagefolder:<path>`
            names the same), a folder of images without split folders (its images are the `train` split), a folder
            written by `Dataset.save_to_disk`/`DatasetDict.save_to_disk`, or a Hub dataset id.
        split (`str`, *optional*, defaults to `"train"`):
            Split to read; `validation`, `val` and `test` stand in for one another when only one exists.
        image_column (`str`, *optional*, defaults to `"image"`), label_column (`str`, *optional*, defaults to `"label"`):
            Column names in the source; they are renamed to `image` and `label`.
        max_samples (`int`, *optional*):
            Keep only the first `max_samples` rows.
        require_labels (`bool`, *optional*, defaults to `True`):
            With `False`, a source without a label column is returned with the `image` column only (stage-1 training
            needs no labels; [`TransformedDataset`] then yields label -1).
    """
    import datasets

    if source.startswith("imagefolder:"):
        source = source[len("imagefolder:"):]
        if not os.path.isdir(source):
            raise FileNotFoundError(f"imagefolder:{source}: no such folder.")
    if source.lower() in FASHION_MNIST_NAMES:
        return load_fashion_mnist(split, max_samples=max_samples)
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "train-images-idx3-ubyte.gz")):
        return load_fashion_mnist(split, root=source, max_samples=max_samples)

    if os.path.isdir(source):
        is_saved = any(
            os.path.exists(os.path.join(source, name))
            for name in ("dataset_dict.json", "dataset_info.json", "state.json")
        )
        if is_saved:
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded[pick_split(list(loaded.keys()), split, source)]
            dataset = loaded
        else:
            subdirs = [d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))]
            flat = any(os.path.isfile(os.path.join(source, f)) and f.lower().endswith(IMAGE_EXTENSIONS)
                       for f in os.listdir(source))
            if flat and not any(name in subdirs for name in ("train", "val", "validation", "test")):
                if split != "train":
                    raise ValueError(
                        f"{source} is a folder of images without split folders: it is the 'train' split only, and has "
                        f"no {split!r} split (pass --validate-every -1, or make train/ and val/ subfolders)."
                    )
                dataset = datasets.load_dataset("imagefolder", data_dir=source, split="train")
            else:
                folder_split = pick_split(subdirs, split, source)
                dataset = datasets.load_dataset(
                    "imagefolder", data_files={split: os.path.join(source, folder_split, "**")}, split=split
                )
    else:
        builder_splits = datasets.get_dataset_split_names(source)
        dataset = datasets.load_dataset(source, split=pick_split(builder_splits, split, source))

    has_labels = label_column in dataset.column_names
    for wanted, column in (("image", image_column), ("label", label_column)):
        if column not in dataset.column_names and (wanted == "image" or require_labels):
            raise ValueError(
                f"{source} ({split}) has no column {column!r} for the {wanted}s; its columns are "
                f"{dataset.column_names}. Pass --{wanted}-column."
            )
    dataset = dataset.select_columns([image_column, label_column] if has_labels else [image_column])
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if has_labels and label_column != "label":
        dataset = dataset.rename_column(label_column, "label")
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    if has_labels and not isinstance(dataset.features["label"], datasets.ClassLabel):
        num_classes = int(max(dataset["label"])) + 1
        dataset = dataset.cast_column("label", datasets.ClassLabel(names=[str(i) for i in range(num_classes)]))
    return dataset


def class_names(dataset) -> List[str]:
    """Class names from the dataset's `label` ClassLabel feature (index order); empty for an unlabeled dataset."""
    if "label" not in dataset.features:
        return []
    return list(dataset.features["label"].names)


# ----------------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------------


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (mixed with `numpy.random.SeedSequence`, so nearby tuples give
    unrelated streams)."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ImageTransform:
    r"""
    The reference's augmentation (VAR `utils/data.py`): resize the shorter side to `round(mid_ratio * image_size)` with
    Lanczos, crop `image_size` x `image_size` (random for training, centred for evaluation), optionally flip
    horizontally, and map to [-1, 1]. Grayscale and RGBA images become RGB.

    Args:
        image_size (`int`):
            Output side.
        mid_ratio (`float`, *optional*, defaults to 1.125):
            Resize target of the shorter side, relative to `image_size`.
        random_crop (`bool`, *optional*, defaults to `True`):
            Random crop (training) or centre crop (evaluation).
        hflip (`bool`, *optional*, defaults to `False`):
            Random horizontal flip with probability 1/2 (training only).

    Example:

    ```python
    >>> import PIL.Image
    >>> from var_hf.data import ImageTransform, seeded_generator
    >>> transform = ImageTransform(16)
    >>> transform(PIL.Image.new("L", (28, 28)), generator=seeded_generator(0, 0, 0)).shape
    torch.Size([3, 16, 16])

    ```
    """

    def __init__(self, image_size: int, mid_ratio: float = 1.125, random_crop: bool = True, hflip: bool = False):
        if mid_ratio < 1:
            raise ValueError(f"mid_ratio must be >= 1 (the image is resized, then cropped), got {mid_ratio}.")
        self.image_size = image_size
        self.mid_size = round(mid_ratio * image_size)
        self.random_crop = random_crop
        self.hflip = hflip

    def resize(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Shorter side to `mid_size`, keeping the aspect ratio (torchvision's `Resize(int)` rounding)."""
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.mid_size, int(self.mid_size * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if size == (w, h):
            return image
        return image.resize(size, resample=PIL.Image.LANCZOS)

    def __call__(self, image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if not isinstance(image, PIL.Image.Image):
            image = PIL.Image.fromarray(np.asarray(image))
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self.resize(image)
        w, h = image.size
        size = self.image_size
        if self.random_crop:
            if generator is None:
                raise ValueError("A random-crop transform needs a generator (see `seeded_generator`).")
            top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
            flip = self.hflip and bool(torch.rand((), generator=generator) < 0.5)
        else:
            top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
            flip = False
        image = image.crop((left, top, left + size, top + size))
        if flip:
            image = image.transpose(PIL.Image.FLIP_LEFT_RIGHT)
        pixels_HWC = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return pixels_HWC.permute(2, 0, 1).float().div_(127.5).sub_(1.0)  # [0, 255] -> [-1, 1]

    def __repr__(self):
        return (
            f"{type(self).__name__}(image_size={self.image_size}, mid_size={self.mid_size}, "
            f"random_crop={self.random_crop}, hflip={self.hflip})"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------


class TrainBatchSampler(torch.utils.data.Sampler):
    r"""
    Infinite, deterministic, distributed batch sampler.

    Epoch `e` is the permutation `randperm(N)` seeded with `(seed, e)`, cut into global micro-batches of
    `batch_size * num_processes` samples (the incomplete tail is dropped). Process `r` takes the `r`-th contiguous slice
    of every global micro-batch, so one process with batch `2b` and two processes with batch `b` see the same
    samples. Each yielded key is `(epoch, position in the epoch, dataset index)`; [`TransformedDataset`] seeds the
    augmentation of that sample from it.

    Args:
        dataset_size (`int`): Number of samples.
        batch_size (`int`): Samples per process and micro-batch.
        num_processes (`int`, *optional*, defaults to 1), process_index (`int`, *optional*, defaults to 0).
        seed (`int`, *optional*, defaults to 0).
        start_batch (`int`, *optional*, defaults to 0):
            Index of the first global micro-batch to yield (resuming at step `s` with `a` accumulation steps starts
            at `s * a`).
    """

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int = 0,
        start_batch: int = 0,
    ):
        global_batch = batch_size * num_processes
        if dataset_size < global_batch:
            raise ValueError(
                f"The dataset has {dataset_size} samples, fewer than one global batch ({global_batch}); lower "
                "--batch-size or use more data."
            )
        self.dataset_size, self.batch_size = dataset_size, batch_size
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.start_batch = seed, start_batch
        self.batches_per_epoch = dataset_size // global_batch

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.dataset_size, generator=seeded_generator(self.seed, epoch))

    def __iter__(self) -> Iterator[List[Tuple[int, int, int]]]:
        global_batch = self.batch_size * self.num_processes
        batch_index = self.start_batch
        epoch, order = None, None
        while True:
            e, b = divmod(batch_index, self.batches_per_epoch)
            if e != epoch:
                epoch, order = e, self.epoch_permutation(e).tolist()
            begin = b * global_batch + self.process_index * self.batch_size
            yield [(epoch, pos, order[pos]) for pos in range(begin, begin + self.batch_size)]
            batch_index += 1

    def __len__(self):
        # Infinite; the training loop decides when to stop. DataLoader only needs a length for its repr.
        return self.batches_per_epoch


def shard_range(num_samples: int, num_processes: int, process_index: int) -> range:
    """Contiguous evaluation shard of this process (the reference's `EvalDistributedSampler`)."""
    bounds = np.linspace(0, num_samples, num_processes + 1, dtype=int)
    return range(int(bounds[process_index]), int(bounds[process_index + 1]))


class TransformedDataset(torch.utils.data.Dataset):
    """A `datasets.Dataset` seen through a transform. Keys are either a plain index (evaluation: deterministic
    transform) or `(epoch, position, index)` from [`TrainBatchSampler`] (training: seeded augmentation). Items are
    `(pixel_values (3, H, W) in [-1, 1], label)`."""

    def __init__(self, dataset, transform: ImageTransform, seed: int = 0):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            epoch, position, index = key
            generator = seeded_generator(self.seed, epoch, position, 1)
        else:
            index, generator = int(key), None
        row = self.dataset[int(index)]
        return self.transform(row["image"], generator=generator), int(row.get("label", -1))


class TokenDataset(torch.utils.data.Dataset):
    """A tokenized dataset (written by `var-hf tokenize`: columns `tokens`, all scales concatenated, and `label`),
    held in memory. Accepts the same keys as [`TransformedDataset`]; items are `(tokens (L,) long, label)`."""

    def __init__(self, dataset):
        self.tokens = np.asarray(dataset.with_format("numpy")["tokens"], dtype=np.int64)
        self.labels = np.asarray(dataset["label"], dtype=np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, key):
        index = int(key[2]) if isinstance(key, (tuple, list)) else int(key)
        return torch.from_numpy(self.tokens[index]), int(self.labels[index])


def build_train_loader(
    dataset,
    transform: Optional[ImageTransform],
    batch_size: int,
    num_processes: int = 1,
    process_index: int = 0,
    seed: int = 0,
    start_batch: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """Infinite training loader (see [`TrainBatchSampler`]). With a transform, `dataset` is an image dataset and
    batches are `(pixel_values, labels)`; without, it is a [`TokenDataset`] and batches are `(tokens, labels)`."""
    sampler = TrainBatchSampler(len(dataset), batch_size, num_processes, process_index, seed, start_batch)
    return torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform, seed) if transform is not None else dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        # A private generator: otherwise the loader draws its worker base seed from the global RNG, which would
        # shift the model's random stream (class dropout) between a resumed and an uninterrupted run.
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def build_eval_loader(
    dataset, transform: Optional[ImageTransform], batch_size: int, num_processes: int = 1, process_index: int = 0,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """This process's contiguous shard of `dataset`, in order, deterministic transform, last batch kept (a
    [`TokenDataset`] when `transform` is None)."""
    indices = list(shard_range(len(dataset), num_processes, process_index))
    return torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform) if transform is not None else dataset,
        sampler=indices,
        batch_size=batch_size,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
    )


__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "ImageTransform",
    "TokenDataset",
    "TrainBatchSampler",
    "TransformedDataset",
    "build_eval_loader",
    "build_train_loader",
    "class_names",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "load_image_dataset",
    "pick_split",
    "read_idx",
    "seeded_generator",
    "shard_range",
]
