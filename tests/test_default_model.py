"""The bundled default model (`var_hf.DEFAULT_MODEL`, Fashion-MNIST 32x32): it loads strictly, samples every class,
and its model card's published class accuracy still holds on a small re-evaluation, so a change that breaks the
model (or the sampling code under it) fails here."""

import os

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from var_hf import DEFAULT_MODEL, VARPipeline
from var_hf.evaluation import extract_feature_set, load_domain_classifier
from var_hf.evaluation.metrics import class_accuracy

# Samples per class of the re-evaluation. With 10 a class (100 images) the binomial standard deviation of an accuracy
# near 0.95 is about 0.02; the tolerance is five of them.
NUM_PER_CLASS = 10
ACCURACY_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def pipe():
    return VARPipeline.from_pretrained(DEFAULT_MODEL).to("cpu")


def card_metric(metric_type: str):
    card = ModelCard.load(os.path.join(DEFAULT_MODEL, "README.md"))
    results = [r for r in (card.data.eval_results or []) if r.metric_type == metric_type]
    assert results, f"the default model's card publishes no {metric_type!r} metric"
    return results[0]


def test_loads_with_its_own_sampling_defaults_and_samples_every_class(pipe):
    assert pipe.transformer.config.num_classes == 10
    measured_with = card_metric("accuracy").metric_args
    for name in ("guidance_scale", "top_k", "top_p", "temperature"):  # the card's figures are for these defaults
        assert pipe.sampling_defaults[name] == measured_with[name], name
    images = pipe(class_labels=list(range(10)), generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (10, 32, 32, 3)
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert all(image.std() > 0.05 for image in images)  # no blank or constant image


def test_different_seeds_give_different_garments(pipe):
    """The README grid's promise: samples of one class with different seeds differ."""
    images = pipe(class_labels=[7] * 4, generator=[torch.Generator().manual_seed(s) for s in range(4)],
                  output_type="np").images
    differences = [np.abs(images[i] - images[j]).mean() for i in range(4) for j in range(i + 1, 4)]
    assert min(differences) > 0.02


def test_published_class_accuracy_holds_on_a_small_reevaluation(pipe):
    published = card_metric("accuracy")
    classifier = load_domain_classifier(os.path.join(DEFAULT_MODEL, "domain_classifier"))
    labels = [c for c in range(10) for _ in range(NUM_PER_CLASS)]
    generators = [torch.Generator().manual_seed(1000 + i) for i in range(len(labels))]
    images = pipe(class_labels=labels, generator=generators, output_type="np").images  # the card's settings
    pixels = (images * 255).round().astype(np.uint8)
    logits = extract_feature_set(classifier, pixels).logits
    accuracy = class_accuracy(logits, labels)
    assert abs(accuracy - published.metric_value) <= ACCURACY_TOLERANCE, (accuracy, published.metric_value)
