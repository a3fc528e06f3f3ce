"""Strict loading: a folder whose config.json and weights disagree, that holds another model, has no config.json or an
unreadable weight file is refused with a message naming the keys, the model type or the file; nothing loads with
random or dropped weights."""

import json
import os
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_var_config, make_vqvae_config, perturb_
from var_hf import DEFAULT_MODEL, MultiScaleVQVAE, VARTransformer
from var_hf.modeling_utils import WeightsMismatchError


def _save(model, folder):
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Saved tiny models: transformers of depth 1, 2, 3, one of another width, and a VQVAE."""
    root = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    folders = {f"d{depth}": _save(perturb_(VARTransformer(make_var_config(depth=depth))), root / f"d{depth}") for depth in (1, 2, 3)}
    folders["wide"] = _save(VARTransformer(make_var_config(embed_dim=64, num_heads=2)), root / "wide")
    folders["vqvae"] = _save(perturb_(MultiScaleVQVAE(make_vqvae_config())), root / "vqvae")
    return folders


def _mix(tmp_path, config_from, weights_from, name="mixed"):
    """A folder with one save's config.json and another's model.safetensors."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(config_from / "config.json", folder / "config.json")
    shutil.copy(weights_from / "model.safetensors", folder / "model.safetensors")
    return folder


def test_round_trip_is_exact_and_reports_nothing_missing(saved):
    for name, cls in (("d2", VARTransformer), ("vqvae", MultiScaleVQVAE)):
        model, info = cls.from_pretrained(saved[name], output_loading_info=True)
        assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"])
        on_disk = load_file(os.path.join(saved[name], "model.safetensors"))
        state = model.state_dict()
        assert set(on_disk) == set(state)
        assert all(torch.equal(on_disk[key], state[key]) for key in on_disk)


def test_the_bundled_default_model_loads_strictly():
    assert VARTransformer.from_pretrained(DEFAULT_MODEL, subfolder="transformer").config.depth >= 1
    assert MultiScaleVQVAE.from_pretrained(os.path.join(DEFAULT_MODEL, "vqvae")).config.vocab_size >= 2


@pytest.mark.parametrize(
    "config_from, weights_from, cls, expected",
    [
        # config depth 3 with depth-2 weights: block 2 would be random
        ("d3", "d2", VARTransformer, [r"not in the checkpoint", r"blocks\.2\.", r"2 blocks but config\.json says depth=3"]),
        # config depth 1 with depth-2 weights: block 1 would be dropped
        ("d1", "d2", VARTransformer, [r"no place in the model", r"blocks\.1\.", r"depth=1"]),
        # same depth, another width: every shape differs
        ("d2", "wide", VARTransformer, [r"another shape", r"checkpoint \(", r"\.\.\. \(\d+ more\)"]),
        # the VQVAE's weights in the transformer's folder: a random transformer
        ("d2", "vqvae", VARTransformer, [r"MultiScaleVQVAE's", r"encoder\.|decoder\.|quantizer\."]),
        # the transformer's weights in the VQVAE's folder
        ("vqvae", "d2", MultiScaleVQVAE, [r"VARTransformer's", r"blocks\.|head\."]),
    ],
)
def test_config_and_weights_that_disagree_are_refused(saved, tmp_path, config_from, weights_from, cls, expected):
    folder = _mix(tmp_path, saved[config_from], saved[weights_from])
    with pytest.raises(WeightsMismatchError) as caught:
        cls.from_pretrained(folder)
    message = str(caught.value)
    assert str(folder) in message
    for pattern in expected:
        assert re.search(pattern, message), (pattern, message)


def test_an_explicit_ignore_mismatched_sizes_accepts_other_shapes_only(saved, tmp_path):
    # Fine-tuning to another class count: class_embedding differs, the rest fits.
    source = VARTransformer(make_var_config(num_classes=9))
    folder = _save(source, tmp_path / "nine")
    config = json.loads((saved["d2"] / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config))  # num_classes 6
    with pytest.raises(WeightsMismatchError, match="class_embedding.weight"):
        VARTransformer.from_pretrained(folder)
    model = VARTransformer.from_pretrained(folder, ignore_mismatched_sizes=True)
    assert model.class_embedding.weight.shape[0] == 7
    assert torch.equal(model.head.weight, source.head.weight)
    # ... but never missing keys
    depth3 = _mix(tmp_path, saved["d3"], saved["d2"], name="depth3")
    with pytest.raises(WeightsMismatchError, match="not in the checkpoint"):
        VARTransformer.from_pretrained(depth3, ignore_mismatched_sizes=True)


@pytest.mark.parametrize(
    "cls, folder, wrong_type, right_class",
    [
        (VARTransformer, "vqvae", "var_multiscale_vqvae", "MultiScaleVQVAE"),
        (MultiScaleVQVAE, "d2", "var_transformer", "VARTransformer"),
    ],
)
def test_a_folder_of_another_model_type_is_refused(saved, cls, folder, wrong_type, right_class):
    with pytest.raises(ValueError, match=wrong_type) as caught:
        cls.from_pretrained(saved[folder])
    assert right_class in str(caught.value)


def test_a_pipeline_component_folder_of_the_other_kind_is_refused(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"'transformer/'"):
        VARTransformer.from_pretrained(tmp_path / "pipe" / "vqvae")
    with pytest.raises(ValueError, match=r"'vqvae/'"):
        MultiScaleVQVAE.from_pretrained(tmp_path / "pipe", subfolder="transformer")


def test_a_pipeline_whose_component_weights_disagree_is_refused(tiny_pipeline, tmp_path):
    from var_hf import VARPipeline

    tiny_pipeline.save_pretrained(tmp_path / "pipe")
    config_path = tmp_path / "pipe" / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["depth"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(WeightsMismatchError, match=r"blocks\.2\."):
        VARPipeline.from_pretrained(tmp_path / "pipe")


def test_a_missing_config_json_is_refused_not_replaced_by_defaults(saved, tmp_path):
    folder = tmp_path / "no_config"
    folder.mkdir()
    shutil.copy(saved["d2"] / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(OSError, match=r"No config\.json in .*no_config"):
        VARTransformer.from_pretrained(folder)
    with pytest.raises(OSError, match=r"No config\.json"):
        MultiScaleVQVAE.from_pretrained(folder)
    # An explicit config is the documented way around it.
    assert VARTransformer.from_pretrained(folder, config=make_var_config(depth=2)).config.depth == 2


@pytest.mark.parametrize("cut", ["header", "middle", "last_byte", "garbage"])
def test_an_unreadable_weight_file_is_named(saved, tmp_path, cut):
    folder = tmp_path / "bad"
    shutil.copytree(saved["d2"], folder)
    path = folder / "model.safetensors"
    data = path.read_bytes()
    data = {
        "header": data[:100], "middle": data[: len(data) // 2], "last_byte": data[:-1], "garbage": os.urandom(4096)
    }[cut]
    path.write_bytes(data)
    with pytest.raises(OSError) as caught:
        VARTransformer.from_pretrained(folder)
    assert str(path) in str(caught.value) and "truncated" in str(caught.value)


def test_a_weight_file_with_a_renamed_key_is_refused(saved, tmp_path):
    folder = tmp_path / "renamed"
    shutil.copytree(saved["vqvae"], folder)
    weights = load_file(folder / "model.safetensors")
    weights["quantizer.codebook.weight_old"] = weights.pop("quantizer.codebook.weight")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsMismatchError, match=r"quantizer\.codebook\.weight\b.*quantizer\.codebook\.weight_old"):
        MultiScaleVQVAE.from_pretrained(folder)


def test_the_refusal_comes_before_random_initialisation_and_the_load_table(saved, tmp_path):
    from transformers import modeling_utils as hf_modeling_utils
    from transformers.testing_utils import CaptureLogger

    folder = _mix(tmp_path, saved["d3"], saved["d2"])
    with CaptureLogger(hf_modeling_utils.logger) as captured, pytest.raises(WeightsMismatchError):
        VARTransformer.from_pretrained(folder)
    assert "LOAD REPORT" not in captured.out
