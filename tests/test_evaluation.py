"""The evaluation protocol: feature extractors, references, resumable sampling and the `var-hf evaluate` runner."""

import gzip
import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import evaluation
from var_hf.evaluation.protocol import make_protocol
from var_hf.commands import evaluate as evaluate_command
from var_hf.evaluation import (
    InceptionV3FeatureExtractor,
    extract_features,
    images_to_array,
    load_inception,
    load_reference,
    metrics,
)
from var_hf.evaluation.metrics import class_accuracy

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _read_idx(path):
    """A tiny reader for the idx files (big-endian dims after a 4-byte magic whose last byte is the rank)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


@pytest.fixture(scope="module")
def fashion():
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.skip(f"Fashion-MNIST idx files not found in {FASHION_MNIST_DIR}")

    def load(split, n):
        images = _read_idx(os.path.join(FASHION_MNIST_DIR, f"{split}-images-idx3-ubyte.gz"))[:n]
        labels = _read_idx(os.path.join(FASHION_MNIST_DIR, f"{split}-labels-idx1-ubyte.gz"))[:n]
        return images, labels.astype(np.int64)

    return {"train": load("train", 600), "test": load("t10k", 300)}


@pytest.fixture(scope="module")
def fashion_dataset(fashion):
    datasets = pytest.importorskip("datasets")
    images, labels = fashion["train"]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(10)])}
    )
    return datasets.Dataset.from_dict({"image": list(images), "label": labels}, features=features)


@pytest.fixture(scope="module")
def domain_classifier(fashion_dataset, tmp_path_factory):
    """A domain classifier trained on 600 real Fashion-MNIST training images (a few seconds on 2 cores)."""
    folder = str(tmp_path_factory.mktemp("domain_classifier"))
    model = evaluation.train_domain_classifier(
        fashion_dataset, folder, hidden_channels=(16, 32, 64), num_epochs=6, batch_size=32, learning_rate=5e-3,
        device="cpu",
    )
    return model, folder


# ----------------------------------------------------------------------------------------------------------------------
# Feature extractors
# ----------------------------------------------------------------------------------------------------------------------


def test_domain_classifier_beats_chance_and_round_trips(domain_classifier, fashion):
    model, folder = domain_classifier
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    test_images, test_labels = fashion["test"]
    _, logits = extract_features(model, images_to_array(test_images))
    accuracy = class_accuracy(logits, test_labels)
    assert accuracy > 0.5, f"accuracy {accuracy} on held-out images (chance is 0.1)"

    loaded = evaluation.load_domain_classifier(folder)
    assert loaded.config.id2label[3] == "c3"
    assert loaded.config.num_channels == 1 and loaded.config.image_size == 28
    features2, logits2 = extract_features(loaded, images_to_array(test_images[:16]))
    features1, logits1 = extract_features(model, images_to_array(test_images[:16]))
    np.testing.assert_allclose(logits2, logits1, rtol=1e-5, atol=1e-5)
    assert features2.shape == (16, 64)


def test_domain_classifier_missing_folder_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_domain_classifier"):
        evaluation.load_domain_classifier(str(tmp_path / "nothing"))


def test_resize_bilinear_tf1_uses_tensorflow1_coordinates():
    image = torch.tensor([[[[0.0, 10.0], [20.0, 30.0]]]])
    # TF1 (no half-pixel centres): source row/col = destination * 2 / 4 = 0, 0.5, 1, 1.5 (clamped to 1).
    expected = torch.tensor([[0, 5, 10, 10], [10, 15, 20, 20], [20, 25, 30, 30], [20, 25, 30, 30]]).float()
    torch.testing.assert_close(evaluation.resize_bilinear_tf1(image, 4)[0, 0], expected)
    same = torch.rand(1, 3, 5, 5)
    torch.testing.assert_close(evaluation.resize_bilinear_tf1(same, 5), same)


def test_inception_loads_a_torchvision_style_state_dict(tmp_path):
    torch.manual_seed(0)
    state_dict = InceptionV3FeatureExtractor().state_dict()
    state_dict["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)  # torchvision checkpoints carry these
    path = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    torch.save(state_dict, path)
    model = load_inception(path)
    features, logits = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (features >= 0).all()  # pooled after ReLU

    wrong = str(tmp_path / "wrong.pth")
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, wrong)
    with pytest.raises(ValueError, match="not the FID InceptionV3"):
        load_inception(wrong)


@pytest.fixture(scope="module")
def random_inception():
    """Random weights that keep activations alive through the depth (default inits shrink them towards zero)."""
    torch.manual_seed(0)
    model = InceptionV3FeatureExtractor().eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def test_sfid_features_are_mixed_6d_1x1_branch_in_tensorflow_order(random_inception):
    """sFID reads the graph's mixed_6/conv:0 (Mixed_6d's 1x1 branch), first 7 channels, flattened as (H, W, C)."""
    captured = {}
    handle = random_inception.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.setdefault("o", out))
    pixels = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            features, logits, spatial = random_inception(pixels, output_spatial=True)
            plain_features, plain_logits = random_inception(pixels)
    finally:
        handle.remove()
    branch_BChw = captured["o"]
    assert branch_BChw.shape == (2, 192, 17, 17) and spatial.shape == (2, InceptionV3FeatureExtractor.spatial_dim)
    torch.testing.assert_close(spatial, branch_BChw[:, :7].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=0)
    assert torch.equal(features, plain_features) and torch.equal(logits, plain_logits)


def test_sfid_is_computed_against_reference_images_or_adm_statistics(random_inception, tmp_path):
    rng = np.random.default_rng(0)
    reference_images = rng.integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    samples = np.zeros((6, 16, 16, 3), dtype=np.uint8)  # black: far from the noise reference
    with torch.no_grad():
        results, details = evaluation.compute_sample_metrics(
            samples, [0] * 6, random_inception, evaluation.Reference(info={"source": "noise"}, images=reference_images)
        )
    assert details["sfid_reference"] == "reference image features" and np.isfinite(results["sfid"])
    assert results["sfid"] > 1.0

    # With precomputed sFID statistics (the ADM rule), those are used, and give the same number.
    with torch.no_grad():
        _, _, reference_spatial = extract_features(random_inception, reference_images, spatial=True)
    mu_s, sigma_s = metrics.feature_statistics(reference_spatial)
    with torch.no_grad():
        from_statistics, details = evaluation.compute_sample_metrics(
            samples, [0] * 6, random_inception,
            evaluation.Reference(info={"source": "noise"}, images=reference_images, mu_s=mu_s, sigma_s=sigma_s),
        )
    assert details["sfid_reference"] == "precomputed statistics (mu_s, sigma_s)"
    assert from_statistics["sfid"] == pytest.approx(results["sfid"], rel=1e-6)

    # The ADM reference batch's layout: mu_s/sigma_s next to mu/sigma are read and flagged.
    np.savez(tmp_path / "adm.npz", mu=np.zeros(4), sigma=np.eye(4), mu_s=np.ones(3), sigma_s=2 * np.eye(3))
    ref = load_reference(str(tmp_path / "adm.npz"))
    assert ref.info["has_spatial_statistics"] and ref.mu_s.shape == (3,) and ref.sigma_s.shape == (3, 3)
    with pytest.raises(ValueError, match="sFID features come from the FID InceptionV3"):
        extract_features(evaluation.DomainClassifier(evaluation.DomainClassifierConfig(num_classes=2)), samples,
                         spatial=True)


def test_missing_inception_weights_error_says_where_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*pt_inception-2015-12-05"):
        evaluation.find_inception_weights(str(tmp_path / "missing.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    packaged = evaluation.fid_helper_weights_path()
    if packaged is None:
        with pytest.raises(FileNotFoundError, match="torch hub cache"):
            evaluation.find_inception_weights(None)
    else:  # var_hf[fid] installed: its weights are the fallback after the hub cache
        assert evaluation.find_inception_weights(None) == packaged
    # A copy in the hub cache is found without being given.
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    assert evaluation.find_inception_weights(None) == str(cache / "pt_inception-2015-12-05-6726825d.pth")


# ----------------------------------------------------------------------------------------------------------------------
# References, seeds, helpers
# ----------------------------------------------------------------------------------------------------------------------


def test_load_reference_from_every_kind(tmp_path, fashion, fashion_dataset):
    images = fashion["test"][0][:12]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / ("sub" if i % 2 else "") / f"{i:03d}.png")
    ref = load_reference(str(folder))
    assert ref.info["kind"] == "image-folder" and ref.images.shape == (12, 28, 28, 3) and ref.images.dtype == np.uint8

    ref = load_reference(str(folder), resolution=8, max_samples=5)
    assert ref.images.shape == (5, 8, 8, 3)

    fashion_dataset.save_to_disk(str(tmp_path / "disk"))
    ref = load_reference(str(tmp_path / "disk"), max_samples=20)
    assert ref.info["kind"] == "datasets-disk" and ref.info["image_column"] == "image"
    assert ref.images.shape == (20, 28, 28, 3)

    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    ref = load_reference(str(tmp_path / "stats.npz"))
    assert ref.images is None and ref.mu.shape == (4,) and ref.info["has_statistics"]

    np.savez(tmp_path / "batch.npz", arr_0=np.stack([images] * 3, axis=-1), mu=np.zeros(4), sigma=np.eye(4))
    ref = load_reference(str(tmp_path / "batch.npz"))
    assert ref.images.shape == (12, 28, 28, 3) and ref.mu is not None

    with pytest.raises(FileNotFoundError):
        load_reference(str(tmp_path / "missing.npz"))


def test_fashion_mnist_reference_reads_the_local_idx_files(fashion):
    ref = load_reference("fashion-mnist", split="test", max_samples=50, seed=3)
    assert ref.info["kind"] == "fashion-mnist-idx" and ref.images.shape == (50, 28, 28, 3)
    # A seeded subset of the real test images, grey replicated to RGB.
    test_images = _read_idx(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
    idx = np.sort(np.random.default_rng(3).choice(len(test_images), size=50, replace=False))
    np.testing.assert_array_equal(ref.images[..., 0], test_images[idx])
    np.testing.assert_array_equal(ref.images[..., 0], ref.images[..., 2])


def test_center_crop_arr_matches_the_adm_preprocessing():
    image = PIL.Image.fromarray(np.arange(60 * 40 * 3, dtype=np.uint8).reshape(60, 40, 3))
    out = evaluation.center_crop_arr(image, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # Short side 40 -> box-halved to 20 (40 >= 2 * 16 fails after one halving), bicubic to 16, centre crop.
    halved = image.resize((20, 30), resample=PIL.Image.BOX).resize((16, 24), resample=PIL.Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(halved)[4:20])


def test_npz_is_written_in_the_adm_layout_from_arrays_or_files(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 6, 5, 3), dtype=np.uint8)
    labels = [3, 3, 1, 1, 0, 2, 2]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        PIL.Image.fromarray(image).save(paths[-1])
    from_files = evaluation.write_samples_npz(str(tmp_path / "files.npz"), paths, labels, batch_size=3)
    from_array = evaluation.write_samples_npz(str(tmp_path / "array.npz"), images, labels)
    for path in (from_files, from_array):
        with np.load(path) as npz:
            assert sorted(npz.files) == ["arr_0", "arr_1"]
            assert npz["arr_0"].dtype == np.uint8 and npz["arr_1"].dtype == np.int64
            np.testing.assert_array_equal(npz["arr_0"], images)
            assert npz["arr_1"].tolist() == labels
    np.testing.assert_array_equal(evaluation.load_samples(paths), images)
    with pytest.raises(ValueError, match="labels"):
        evaluation.write_samples_npz(str(tmp_path / "bad.npz"), images, labels[:3])


def test_sample_seeds_are_stable_and_distinct():
    seeds = {evaluation.sample_seed(0, c, i) for c in range(20) for i in range(50)}
    assert len(seeds) == 1000
    assert evaluation.sample_seed(0, 3, 7) == evaluation.sample_seed(0, 3, 7) != evaluation.sample_seed(1, 3, 7)


def test_parse_class_ids():
    assert evaluation.parse_class_ids("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    assert evaluation.parse_class_ids(None) is None and evaluation.parse_class_ids("all") is None
    with pytest.raises(ValueError, match="Bad class list"):
        evaluation.parse_class_ids("3-1")


# ----------------------------------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_end_to_end_with_the_domain_extractor_and_resume(
    tiny_pipeline, domain_classifier, fashion_dataset, tmp_path, capsys
):
    model_dir, out = str(tmp_path / "model"), tmp_path / "eval"
    tiny_pipeline.save_pretrained(model_dir)
    fashion_dataset.save_to_disk(str(tmp_path / "reference"))
    argv = [
        "--model", model_dir, "--reference", str(tmp_path / "reference"), "--output-dir", str(out),
        "--num-per-class", "3", "--batch-size", "4", "--feature-extractor", "domain",
        "--domain-classifier", domain_classifier[1], "--reference-max-samples", "60", "--device", "cpu", "--quiet",
    ]
    assert evaluate_command.main(argv) == 0
    assert "12 generated, 0 already there" in capsys.readouterr().out

    pngs = sorted(os.path.relpath(p, out / "samples") for p in (out / "samples").glob("*/*.png"))
    assert pngs == [f"{c:04d}/{i:05d}.png" for c in range(4) for i in range(3)]
    with np.load(out / "samples.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (12, 8, 8, 3)
        assert npz["arr_1"].dtype == np.int64 and npz["arr_1"].tolist() == [c for c in range(4) for _ in range(3)]
        np.testing.assert_array_equal(npz["arr_0"][4], np.asarray(PIL.Image.open(out / "samples/0001/00001.png")))

    report = json.loads((out / "metrics.json").read_text())
    assert set(report["metrics"]) == {"fid", "inception_score", "precision", "recall", "class_accuracy"}
    assert report["metrics"]["fid"] > 0
    assert 1.0 <= report["metrics"]["inception_score"] <= 10.0
    for key in ("precision", "recall", "class_accuracy"):
        assert 0.0 <= report["metrics"][key] <= 1.0
    sampling = report["sampling"]
    assert (sampling["guidance_scale"], sampling["top_k"], sampling["top_p"]) == (1.5, 900, 0.96)
    assert (sampling["num_per_class"], sampling["num_samples"], sampling["seed"], sampling["batch_size"]) == (3, 12, 0, 4)
    assert sampling["image_format"] == "png" and sampling["classes"] == "all" and sampling["protocol"] == "custom"
    assert report["reference"]["kind"] == "datasets-disk" and report["reference"]["num_images"] == 60
    assert report["feature_extractor"]["name"] == "domain-classifier"
    assert report["metric_settings"]["nearest_k"] == 3
    assert report["model"]["name_or_path"] == model_dir and report["model"]["num_classes"] == 4
    # The weights that drew the samples, as recorded beside them: the saved and reloaded pipeline's, not another's.
    recorded = json.loads((out / "samples" / evaluation.protocol.SETTINGS_FILENAME).read_text())
    assert report["model"]["weights_fingerprint"] == recorded["model_fingerprint"]
    assert report["model"]["weights_fingerprint"] == evaluation.protocol.pipeline_fingerprint(tiny_pipeline)

    # Resume with everything present: no sampling, files untouched.
    mtimes = {p: os.stat(out / "samples" / p).st_mtime_ns for p in pngs}
    assert evaluate_command.main(argv) == 0
    assert "0 generated, 12 already there" in capsys.readouterr().out
    assert {p: os.stat(out / "samples" / p).st_mtime_ns for p in pngs} == mtimes

    # Resume after losing one sample: only its batch runs, and the redrawn file is identical (per-sample seed).
    lost = out / "samples" / "0002" / "00001.png"
    original = lost.read_bytes()
    lost.unlink()
    from var_hf.pipelines import VARPipeline

    result = evaluation.evaluate_pipeline(
        VARPipeline.from_pretrained(model_dir), str(out), reference=str(tmp_path / "reference"),
        feature_extractor="domain", domain_classifier=domain_classifier[1], num_per_class=3, batch_size=4,
        reference_max_samples=60, progress=False,
    )
    assert (result.sampling.num_generated, result.sampling.num_skipped, result.sampling.num_batches) == (1, 11, 1)
    assert lost.read_bytes() == original
    assert {p: os.stat(out / "samples" / p).st_mtime_ns for p in pngs if p != "0002/00001.png"} == {
        p: t for p, t in mtimes.items() if p != "0002/00001.png"
    }
    assert result.metrics == pytest.approx(report["metrics"])


def test_samples_do_not_depend_on_the_batch_size(tiny_pipeline, tmp_path):
    kwargs = dict(class_ids=[1, 3], num_per_class=2, progress=False)
    evaluation.generate_samples(tiny_pipeline, str(tmp_path / "b1"), batch_size=1, **kwargs)
    evaluation.generate_samples(tiny_pipeline, str(tmp_path / "b4"), batch_size=4, **kwargs)
    for c in (1, 3):
        for i in range(2):
            a = np.asarray(PIL.Image.open(evaluation.sample_path(str(tmp_path / "b1"), c, i, 4)))
            b = np.asarray(PIL.Image.open(evaluation.sample_path(str(tmp_path / "b4"), c, i, 4)))
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_temperature_is_part_of_the_protocol_and_saved_defaults_do_not_leak_in(tiny_pipeline, tmp_path):
    def draw(name, pipe, **settings):
        evaluation.generate_samples(pipe, str(tmp_path / name), class_ids=[2], num_per_class=3, progress=False,
                                    top_k=0, top_p=0.0, **settings)
        return np.stack([np.asarray(PIL.Image.open(evaluation.sample_path(str(tmp_path / name), 2, i, 4)))
                         for i in range(3)])

    cold_defaults = type(tiny_pipeline)(**tiny_pipeline.components, sampling_defaults={"temperature": 0.05})
    plain = draw("plain", tiny_pipeline)
    assert np.array_equal(draw("saved-cold", cold_defaults), plain)  # the protocol's temperature 1.0 is passed
    assert not np.array_equal(draw("cold", tiny_pipeline, temperature=0.05), plain)
    protocol = make_protocol(temperature=0.8)
    assert protocol.report(4)["temperature"] == 0.8 and not protocol.is_reference(4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make_protocol(temperature=0.0)


def test_samples_drawn_with_other_settings_are_never_reused(tiny_pipeline, tmp_path):
    folder = str(tmp_path / "samples")
    kwargs = dict(class_ids=[1], num_per_class=2, progress=False)
    first = evaluation.generate_samples(tiny_pipeline, folder, seed=0, **kwargs)
    for change, name in ((dict(seed=1), "seed"), (dict(temperature=0.5), "temperature"),
                         (dict(guidance_scale=3.0), "guidance_scale")):
        with pytest.raises(ValueError, match=f"other settings \\({name}: "):
            evaluation.generate_samples(tiny_pipeline, folder, seed=change.pop("seed", 0), **change, **kwargs)
    more = evaluation.generate_samples(tiny_pipeline, folder, seed=0, class_ids=[1], num_per_class=3, progress=False)
    assert more.num_generated == 1 and more.paths[:2] == first.paths  # same settings: extended, not redrawn
    os.remove(os.path.join(folder, evaluation.protocol.SETTINGS_FILENAME))
    with pytest.raises(ValueError, match="no sampling_settings.json"):
        evaluation.generate_samples(tiny_pipeline, folder, seed=0, **kwargs)


def test_samples_drawn_with_a_per_scale_temperature_are_reused_only_with_the_same_list(tiny_pipeline, tmp_path):
    # The settings file records the list as JSON does; the same list must read back as the same settings.
    folder = str(tmp_path / "samples")
    num_scales = len(tiny_pipeline.scheduler.config.patch_nums)
    per_scale = [1.5] + [1.0] * (num_scales - 1)
    kwargs = dict(class_ids=[1], seed=0, progress=False)
    first = evaluation.generate_samples(tiny_pipeline, folder, num_per_class=2, temperature=per_scale, **kwargs)
    more = evaluation.generate_samples(tiny_pipeline, folder, num_per_class=3, temperature=tuple(per_scale), **kwargs)
    assert more.num_generated == 1 and more.paths[:2] == first.paths
    with pytest.raises(ValueError, match="other settings \\(temperature: "):
        evaluation.generate_samples(tiny_pipeline, folder, num_per_class=2, temperature=[1.0] * num_scales, **kwargs)


def test_samples_drawn_by_other_weights_are_never_reused(tiny_pipeline, tmp_path):
    # Same architecture and settings, one decoder weight changed (as a decoder fine-tune would): the samples on
    # disk came from another model and must not be scored as this one's.
    folder = str(tmp_path / "samples")
    kwargs = dict(seed=0, class_ids=[1], num_per_class=2, progress=False)
    evaluation.generate_samples(tiny_pipeline, folder, **kwargs)
    weight = tiny_pipeline.vqvae.decoder.conv_out.weight
    before, original = evaluation.protocol.pipeline_fingerprint(tiny_pipeline), weight[0, 0, 0, 0].item()
    with torch.no_grad():
        weight[0, 0, 0, 0] += 0.5  # a value the fingerprint's subsample must see
    try:
        assert evaluation.protocol.pipeline_fingerprint(tiny_pipeline) != before
        with pytest.raises(ValueError, match=r"other settings \(model_fingerprint: "):
            evaluation.generate_samples(tiny_pipeline, folder, **kwargs)
    finally:
        with torch.no_grad():
            weight[0, 0, 0, 0] = original
    assert evaluation.protocol.pipeline_fingerprint(tiny_pipeline) == before
    assert evaluation.generate_samples(tiny_pipeline, folder, **kwargs).num_generated == 0


def _load_docs_script(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "scripts", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_spread_summarises_independent_draws(tiny_pipeline, domain_classifier, fashion_dataset, tmp_path):
    seed_spread = _load_docs_script("seed_spread")
    model_dir, out = str(tmp_path / "model"), tmp_path / "spread"
    tiny_pipeline.save_pretrained(model_dir)
    fashion_dataset.save_to_disk(str(tmp_path / "reference"))
    evaluate_args = [
        "--model", model_dir, "--reference", str(tmp_path / "reference"), "--num-per-class", "3", "--batch-size", "6",
        "--feature-extractor", "domain", "--domain-classifier", domain_classifier[1], "--reference-max-samples", "60",
        "--device", "cpu", "--quiet",
    ]
    assert seed_spread.main(["--seeds", "0-1,5", "--output-dir", str(out), "--"] + evaluate_args) == 0
    report = json.loads((out / "seed_spread.json").read_text())
    assert report["seeds"] == [0, 1, 5]
    fids = [report["per_seed"][s]["fid"] for s in ("0", "1", "5")]
    for s in ("0", "1", "5"):  # each seed is a real evaluation of its own draw
        assert json.loads((out / f"seed-{s}" / "metrics.json").read_text())["sampling"]["seed"] == int(s)
    assert len(set(fids)) == 3  # different seeds, different samples
    fid = report["summary"]["fid"]
    assert fid["mean"] == pytest.approx(np.mean(fids)) and fid["std"] == pytest.approx(np.std(fids, ddof=1))
    assert (fid["min"], fid["max"]) == (min(fids), max(fids))
    # The reference features of the first seed were reused, not recomputed.
    cache = "reference_features.npz"
    assert (out / "seed-1" / cache).read_bytes() == (out / "seed-0" / cache).read_bytes()
    assert seed_spread.summarise({"0": {"fid": float("nan"), "recall": 0.5}, "1": {"fid": 1.0, "recall": 0.7}}) == {
        "recall": {"mean": pytest.approx(0.6), "std": pytest.approx(0.1414, abs=1e-4), "min": 0.5, "max": 0.7}
    }  # a NaN metric is never averaged
    for bad in ("", "1-x", "2,2", "-1"):
        with pytest.raises(SystemExit, match="--seeds"):
            seed_spread.parse_seeds(bad)
    with pytest.raises(SystemExit, match="--seed is set by this script"):
        seed_spread.main(["--seeds", "0", "--output-dir", str(out), "--", "--seed", "3"] + evaluate_args)


def test_missing_inception_weights_fail_before_sampling(tiny_pipeline, tmp_path, capsys):
    model_dir, out = str(tmp_path / "model"), tmp_path / "eval"
    tiny_pipeline.save_pretrained(model_dir)
    np.savez(tmp_path / "ref.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    argv = [
        "--model", model_dir, "--reference", str(tmp_path / "ref.npz"), "--output-dir", str(out),
        "--inception-weights", str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"), "--device", "cpu",
    ]
    assert evaluate_command.main(argv) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "pytorch-fid/releases" in err
    assert not out.exists()


def test_statistics_only_reference_needs_the_inception_extractor(tiny_pipeline, domain_classifier, tmp_path):
    np.savez(tmp_path / "stats.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match="only precomputed statistics"):
        evaluation.evaluate_pipeline(
            tiny_pipeline, str(tmp_path / "eval"), reference=str(tmp_path / "stats.npz"), feature_extractor="domain",
            domain_classifier=domain_classifier[1], class_ids=[0], num_per_class=2, progress=False,
        )


def test_sampling_only_writes_the_adm_npz(tiny_pipeline, tmp_path):
    result = evaluation.evaluate_pipeline(
        tiny_pipeline, str(tmp_path), class_ids=[2], num_per_class=3, compute_metrics=False, progress=False
    )
    assert result.metrics == {}
    with np.load(result.npz_path) as npz:
        assert npz["arr_0"].shape == (3, 8, 8, 3) and npz["arr_1"].tolist() == [2, 2, 2]
    assert json.loads(open(result.metrics_path).read())["sampling"]["classes"] == [2]
