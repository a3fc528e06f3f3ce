"""Bad input to evaluation: every class fails early with an error that names the file, array or option and the fix.

No metric is computed from non-finite inputs, and no non-finite number is ever written to metrics.json.
"""

import json
import os

import numpy as np
import pytest
import torch

from var_hf.commands import evaluate as evaluate_command
from var_hf.evaluation import (
    DomainClassifier,
    DomainClassifierConfig,
    Reference,
    SamplingProtocol,
    compute_sample_metrics,
    evaluate_pipeline,
    load_reference,
    metrics,
)
from var_hf.evaluation.sample_metrics import reference_feature_set


def _truncated(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, arr_0=np.zeros((4, 8, 8, 3), np.uint8), mu=np.zeros(4), sigma=np.eye(4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(tmp_path):
    path = tmp_path / "ref.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    return path


def _npz(**arrays):
    def make(tmp_path):
        path = tmp_path / "ref.npz"
        np.savez(path, **arrays)
        return path

    return make


BAD_REFERENCES = {
    "truncated": (_truncated, r"ref\.npz.*not a readable \.npz"),
    "random bytes": (_random_bytes, r"ref\.npz.*not a readable \.npz"),
    "mu without sigma": (_npz(mu=np.zeros(4)), r"'mu' without 'sigma'"),
    "sigma without mu": (_npz(sigma=np.eye(4)), r"'sigma' without 'mu'"),
    "mu_s without sigma_s": (_npz(mu=np.zeros(4), sigma=np.eye(4), mu_s=np.zeros(3)), r"'mu_s' without 'sigma_s'"),
    "NaN mu": (_npz(mu=np.full(4, np.nan), sigma=np.eye(4)), r"'mu'.*non-finite"),
    "inf sigma": (_npz(mu=np.zeros(4), sigma=np.full((4, 4), np.inf)), r"'sigma'.*non-finite"),
    "sigma of the wrong shape": (_npz(mu=np.zeros(4), sigma=np.eye(3)), r"'sigma' \(dim, dim\)"),
    "float images": (_npz(arr_0=np.zeros((4, 8, 8, 3), np.float32)), r"arr_0 must be uint8"),
    "no images": (_npz(arr_0=np.zeros((0, 8, 8, 3), np.uint8)), r"arr_0 holds no images"),
    "nothing usable": (_npz(labels=np.zeros(3)), r"neither images \(arr_0\) nor statistics"),
}


@pytest.mark.parametrize("case", sorted(BAD_REFERENCES))
def test_a_bad_reference_npz_is_a_clear_error(case, tmp_path):
    make, message = BAD_REFERENCES[case]
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message):
        load_reference(str(path))


def _with(value, where, shape=(20, 4)):
    array = np.random.default_rng(0).normal(size=shape)
    array[where] = value
    return array


NON_FINITE_CALLS = {
    "feature_statistics": lambda bad: metrics.feature_statistics(bad),
    "frechet_distance_from_features (samples)": lambda bad: metrics.frechet_distance_from_features(bad, _with(0.0, 0)),
    "frechet_distance_from_features (reference)": lambda bad: metrics.frechet_distance_from_features(_with(0.0, 0), bad),
    "frechet_distance (sigma)": lambda bad: metrics.frechet_distance(np.zeros(4), bad[:4], np.zeros(4), np.eye(4)),
    "precision_recall (samples)": lambda bad: metrics.precision_recall(bad, _with(0.0, 0)),
    "precision_recall (reference)": lambda bad: metrics.precision_recall(_with(0.0, 0), bad),
    "manifold_radii": lambda bad: metrics.manifold_radii(bad),
    "class_accuracy": lambda bad: metrics.class_accuracy(bad, np.zeros(20, int)),
    "softmax": lambda bad: metrics.softmax(bad),
    "inception_score": lambda bad: metrics.inception_score(bad),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("call", sorted(NON_FINITE_CALLS))
def test_no_metric_is_computed_from_non_finite_inputs(call, value):
    with pytest.raises(ValueError, match="non-finite"):
        NON_FINITE_CALLS[call](_with(value, (3, 1)))


def _nan_classifier(num_classes=4):
    model = DomainClassifier(DomainClassifierConfig(num_classes=num_classes, hidden_channels=(8, 16))).eval()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))  # NaN logits; the pooled features stay finite
    return model


def test_nan_features_from_the_extractor_are_an_error_naming_the_images():
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    reference = Reference(info={"source": "noise"}, images=images)
    with pytest.raises(ValueError, match=r"logits of 6 of 6 samples are NaN or infinite"):
        compute_sample_metrics(images, [0] * 6, _nan_classifier(), reference)


def test_a_nan_metric_is_never_written(tiny_pipeline, tmp_path):
    reference = Reference(
        info={"source": "noise"}, images=np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    )
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_pipeline(
            tiny_pipeline, str(tmp_path), reference=reference, feature_extractor=_nan_classifier(),
            num_per_class=2, progress=False,
        )
    assert not (tmp_path / "metrics.json").exists()


def test_a_corrupt_reference_feature_cache_is_recomputed(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    model = DomainClassifier(DomainClassifierConfig(num_classes=2, hidden_channels=(8,))).eval()
    reference = Reference(info={"source": "noise"}, images=images)
    cache = tmp_path / "reference_features.npz"
    first = reference_feature_set(reference, model, 4, str(cache))
    cache.write_bytes(cache.read_bytes()[:100])
    again = reference_feature_set(reference, model, 4, str(cache))
    np.testing.assert_array_equal(first.features, again.features)
    np.testing.assert_array_equal(first.precision_recall, again.precision_recall)
    with np.load(cache) as npz:  # rewritten whole
        np.testing.assert_array_equal(npz["features"], first.features)


BAD_PROTOCOLS = {
    "num_per_class": (dict(num_per_class=0), "num_per_class"),
    "batch_size": (dict(batch_size=-4), "batch_size"),
    "top_k": (dict(top_k=1.5), "top_k"),
    "top_p": (dict(top_p=1.5), "top_p"),
    "temperature zero": (dict(temperature=0.0), "temperature"),
    "temperature nan": (dict(temperature=float("nan")), "temperature"),
    "temperature per scale, one negative": (dict(temperature=[1.3, -1.0, 1.0]), r"temperature\[1\]"),
    "temperature empty list": (dict(temperature=[]), "temperature"),
    "guidance_scale": (dict(guidance_scale=float("nan")), "guidance_scale"),
    "guidance_scale str": (dict(guidance_scale="4"), "guidance_scale"),
    "class_ids": (dict(class_ids=[-1]), "class_ids"),
    "seed": (dict(seed="0"), "seed"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROTOCOLS))
def test_a_bad_sampling_protocol_names_the_setting(case):
    settings, name = BAD_PROTOCOLS[case]
    with pytest.raises(ValueError, match=name):
        SamplingProtocol(**settings)


def test_a_per_scale_temperature_of_the_wrong_length_fails_before_sampling(tiny_pipeline, tmp_path):
    num_scales = len(tiny_pipeline.scheduler.config.patch_nums)
    with pytest.raises(ValueError, match=f"temperature has {num_scales + 1} values but this pipeline samples {num_scales}"):
        evaluate_pipeline(tiny_pipeline, str(tmp_path / "out"), temperature=[1.0] * (num_scales + 1),
                          compute_metrics=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_out_of_range_classes_fail_before_sampling(tiny_pipeline, tmp_path):
    with pytest.raises(ValueError, match=r"out of range for a 4-class model"):
        evaluate_pipeline(tiny_pipeline, str(tmp_path / "out"), class_ids=[7], compute_metrics=False, progress=False)
    assert not (tmp_path / "out").exists()


BAD_COMMAND_LINES = {
    "neither model nor real images": ([], "exactly one of --model"),
    "both model and real images": (["--model", "m", "--real-images", "fashion-mnist"], "exactly one of --model"),
    "no reference": (["--model", "m"], "--reference is required"),
    "zero per class": (["--model", "m", "--reference", "r", "--num-per-class", "0"], "--num-per-class must be >= 1"),
    "bad classes": (["--model", "m", "--reference", "r", "--classes", "a-b"], "--classes"),
    "bad top-p": (["--model", "m", "--reference", "r", "--top-p", "2"], "--top-p"),
    "zero temperature": (["--model", "m", "--reference", "r", "--temperature", "0"], "--temperature"),
    "nan temperature": (["--model", "m", "--reference", "r", "--temperature", "nan"], "--temperature"),
    "bad per-scale temperature": (["--model", "m", "--reference", "r", "--temperature", "1.3,0,1"], "--temperature"),
    "not a temperature list": (["--model", "m", "--reference", "r", "--temperature", "1.3;1"], "--temperature"),
    "real images without a resolution": (
        ["--real-images", "fashion-mnist", "--reference", "fashion-mnist"], "--reference-resolution"
    ),
    "missing domain classifier": (["--model", "m", "--reference", "r", "--domain-classifier", "nowhere"],
                                  "--domain-classifier nowhere: no such folder"),
    "unknown option": (["--model", "m", "--reference", "r", "--bogus"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMAND_LINES))
def test_usage_errors_exit_2_with_one_line(case, tmp_path, capsys):
    argv, message = BAD_COMMAND_LINES[case]
    assert evaluate_command.main([*argv, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_truncated_reference_through_the_command_is_one_line_naming_the_file(tiny_pipeline, tmp_path, capsys):
    model_dir = str(tmp_path / "model")
    tiny_pipeline.save_pretrained(model_dir)
    reference = _truncated(tmp_path)
    folder = str(tmp_path / "classifier")
    DomainClassifier(DomainClassifierConfig(num_classes=4, hidden_channels=(8,))).save_pretrained(folder)
    capsys.readouterr()
    code = evaluate_command.main([
        "--model", model_dir, "--reference", str(reference), "--output-dir", str(tmp_path / "out"),
        "--feature-extractor", "domain", "--domain-classifier", folder, "--device", "cpu", "--quiet",
    ])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(reference) in err and "not a readable .npz" in err
    assert not os.path.exists(tmp_path / "out" / "samples")  # failed before sampling


def test_metrics_json_refuses_non_finite_numbers(tmp_path):
    from var_hf.file_utils import write_json_atomically

    with pytest.raises(ValueError):
        write_json_atomically(tmp_path / "metrics.json", {"metrics": {"fid": float("nan")}})
    assert not (tmp_path / "metrics.json").exists()
    write_json_atomically(tmp_path / "metrics.json", {"metrics": {"fid": 1.0}})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"metrics": {"fid": 1.0}}
