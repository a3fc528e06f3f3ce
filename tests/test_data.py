"""Data loading, the reference's augmentation, and the deterministic distributed sampler."""

import os

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf.data import (
    FASHION_MNIST_CLASSES,
    ImageTransform,
    TokenDataset,
    TrainBatchSampler,
    TransformedDataset,
    build_train_loader,
    class_names,
    fashion_mnist_available,
    load_fashion_mnist,
    load_image_dataset,
    read_idx,
    seeded_generator,
    shard_range,
)

from conftest import needs_fmnist



@pytest.fixture(scope="module")
def fmnist():
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST idx files missing from /usr/share/datasets/fashion-mnist")
    return load_fashion_mnist("train", max_samples=64)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


@needs_fmnist
def test_fashion_mnist_is_a_dataset_with_class_labels(fmnist):
    assert fmnist.column_names == ["image", "label"]
    assert class_names(fmnist) == list(FASHION_MNIST_CLASSES)
    image = fmnist[0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    labels = np.array(fmnist["label"])
    assert labels.min() >= 0 and labels.max() <= 9 and len(set(labels.tolist())) > 5
    # The first training image of Fashion-MNIST is an ankle boot (label 9).
    assert fmnist[0]["label"] == 9
    test = load_fashion_mnist("validation", max_samples=5)  # alias of the t10k split
    assert len(test) == 5 and test.split == "validation"


@needs_fmnist
def test_read_idx_rejects_truncated_files(tmp_path):
    import gzip

    with gzip.open("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz") as f:
        raw = f.read()
    assert read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape == (10000,)
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(raw[:100])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(bad))


def test_missing_fashion_mnist_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load_fashion_mnist("train", root=str(tmp_path))


def _write_imagefolder(root, classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in classes:
            os.makedirs(root / split / name)
            for i in range(per_class):
                array = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
                PIL.Image.fromarray(array).save(root / split / name / f"{i}.png")


def test_imagefolder_in_imagenet_layout(tmp_path):
    _write_imagefolder(tmp_path)
    train = load_image_dataset(str(tmp_path), "train")
    val = load_image_dataset(str(tmp_path), "validation")  # the `val` folder
    assert len(train) == 6 and len(val) == 6
    assert class_names(train) == ["cat", "dog"]
    assert sorted(set(train["label"])) == [0, 1]


def test_unlabeled_image_folders_for_stage_one(tmp_path):
    for i in range(3):
        PIL.Image.new("RGB", (10, 12), (i, 0, 0)).save(tmp_path / f"{i}.png")
    for source in (str(tmp_path), f"imagefolder:{tmp_path}"):
        dataset = load_image_dataset(source, "train", require_labels=False)
        assert dataset.column_names == ["image"] and len(dataset) == 3 and class_names(dataset) == []
        image, label = TransformedDataset(dataset, ImageTransform(8, random_crop=False))[0]
        assert image.shape == (3, 8, 8) and label == -1
    with pytest.raises(ValueError, match="label"):  # stage 2 needs classes
        load_image_dataset(str(tmp_path), "train")
    with pytest.raises(ValueError, match="no 'validation' split"):
        load_image_dataset(str(tmp_path), "validation", require_labels=False)
    with pytest.raises(FileNotFoundError, match="imagefolder:"):
        load_image_dataset(f"imagefolder:{tmp_path / 'missing'}")


def test_saved_dataset_with_custom_columns(tmp_path):
    import datasets

    images = [PIL.Image.fromarray(np.full((12, 12), i * 20, dtype=np.uint8)) for i in range(6)]
    ds = datasets.Dataset.from_dict({"img": images, "y": [0, 1, 2, 0, 1, 2]},
                                    features=datasets.Features({"img": datasets.Image(), "y": datasets.Value("int64")}))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "saved"))
    loaded = load_image_dataset(str(tmp_path / "saved"), "validation", image_column="img", label_column="y",
                                max_samples=4)
    assert loaded.column_names == ["image", "label"] and len(loaded) == 4
    assert class_names(loaded) == ["0", "1", "2"]  # plain ints become a ClassLabel
    with pytest.raises(ValueError, match="--label-column"):
        load_image_dataset(str(tmp_path / "saved"), "train", image_column="img", label_column="nope")


# ----------------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------------


@needs_fmnist
def test_transform_resizes_short_side_with_lanczos_and_crops(fmnist):
    image = fmnist[0]["image"]
    transform = ImageTransform(32, random_crop=False)
    out = transform(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # grayscale -> RGB
    # Reference: short side to round(1.125 * 32) = 36 with Lanczos, centre crop (36 - 32) / 2 = 2.
    expected = np.asarray(image.convert("RGB").resize((36, 36), PIL.Image.LANCZOS))[2:34, 2:34]
    assert torch.equal(out, torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 127.5 - 1)


def test_transform_keeps_aspect_ratio():
    transform = ImageTransform(16, random_crop=False)
    assert transform.resize(PIL.Image.new("RGB", (40, 20))).size == (36, 18)  # short side 18 = round(1.125 * 16)
    assert transform(PIL.Image.new("RGBA", (20, 40))).shape == (3, 16, 16)


def test_random_crop_and_flip_come_from_the_generator():
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    transform = ImageTransform(16, hflip=True)
    a = transform(image, generator=seeded_generator(1, 2, 3))
    b = transform(image, generator=seeded_generator(1, 2, 3))
    assert torch.equal(a, b)
    outs = {tuple(transform(image, generator=seeded_generator(1, 2, k)).flatten()[:40].tolist()) for k in range(12)}
    assert len(outs) > 3  # different seeds, different crops/flips
    with pytest.raises(ValueError, match="generator"):
        transform(image)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------------


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_epochs_are_seeded_permutations():
    batches = _take(TrainBatchSampler(10, 3, seed=5), 6)  # 3 batches per epoch, tail of 1 dropped
    epoch0 = [key[2] for batch in batches[:3] for key in batch]
    assert len(set(epoch0)) == 9 and all(key[0] == 0 for batch in batches[:3] for key in batch)
    assert all(key[0] == 1 for batch in batches[3:] for key in batch)
    assert batches == _take(TrainBatchSampler(10, 3, seed=5), 6)
    assert batches != _take(TrainBatchSampler(10, 3, seed=6), 6)


def test_sampler_splits_the_global_batch_across_processes_and_resumes():
    single = _take(TrainBatchSampler(20, 4, seed=0), 7)
    rank0 = _take(TrainBatchSampler(20, 2, num_processes=2, process_index=0, seed=0), 7)
    rank1 = _take(TrainBatchSampler(20, 2, num_processes=2, process_index=1, seed=0), 7)
    assert [a + b for a, b in zip(rank0, rank1)] == single
    assert _take(TrainBatchSampler(20, 4, seed=0, start_batch=3), 4) == single[3:]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TrainBatchSampler(3, 2, num_processes=2)


def test_shard_range_covers_everything_once():
    shards = [shard_range(10, 3, r) for r in range(3)]
    assert [i for s in shards for i in s] == list(range(10))


@needs_fmnist
def test_resumed_loader_reproduces_batches(fmnist):
    transform = ImageTransform(16, hflip=True)
    full = build_train_loader(fmnist, transform, batch_size=8, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(10)]  # 8 batches per epoch: crosses into epoch 1
    resumed = iter(build_train_loader(fmnist, transform, batch_size=8, seed=3, start_batch=6))
    for expected in batches[6:]:
        got = next(resumed)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # The same sample in two epochs gets different crops.
    ds = TransformedDataset(fmnist, transform, seed=3)
    assert not torch.equal(ds[(0, 0, 5)][0], ds[(1, 0, 5)][0])
    assert torch.equal(ds[(0, 0, 5)][0], ds[(0, 0, 5)][0])


def test_token_dataset():
    import datasets

    ds = datasets.Dataset.from_dict({"tokens": [[1, 2, 3], [4, 5, 6]], "label": [0, 1]})
    tokens = TokenDataset(ds)
    assert len(tokens) == 2
    t, label = tokens[(0, 0, 1)]
    assert t.dtype == torch.long and t.tolist() == [4, 5, 6] and label == 1
