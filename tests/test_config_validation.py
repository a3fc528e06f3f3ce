"""Configurations are checked when built, loaded and saved: a wrong type or an impossible value is a `ValueError`
naming the field, and the paths transformers takes internally (defaults, `to_dict`, `from_dict`, `from_pretrained`,
`save_pretrained`) keep working."""

import json

import pytest

from conftest import make_var_config, make_vqvae_config
from var_hf import MultiScaleVQVAEConfig, VARTransformerConfig
from var_hf.configuration_utils import ConfigFieldError

BAD_VAR_FIELDS = [
    ("depth", 0), ("depth", -2), ("depth", "2"), ("depth", 2.0), ("depth", True),
    ("vocab_size", 1), ("vocab_size", 0), ("vocab_size", "256"),
    ("vq_embed_dim", 0), ("num_classes", 0), ("num_classes", None),
    ("embed_dim", 0), ("num_heads", 0), ("num_heads", 1.5),
    ("mlp_ratio", 0), ("mlp_ratio", float("nan")), ("mlp_ratio", "4"),
    ("dropout", 1.0), ("dropout", -0.1), ("attention_dropout", 2), ("drop_path_rate", float("inf")),
    ("label_smoothing", 1.0), ("cond_drop_rate", 1.5), ("norm_eps", 0), ("norm_eps", -1e-6),
    ("shared_aln", 1), ("attn_l2_norm", "yes"),
    ("patch_nums", (1,)), ("patch_nums", (1, 3, 2)), ("patch_nums", (1, 2, 2)), ("patch_nums", (0, 1, 2)),
    ("patch_nums", "123"), ("patch_nums", (1, 2.5, 4)), ("patch_nums", 4),
    ("init_adaln", float("nan")), ("init_std", "auto"),
]

BAD_VQVAE_FIELDS = [
    ("in_channels", 0), ("base_channels", "32"), ("channel_multipliers", ()), ("channel_multipliers", (1, 0)),
    ("channel_multipliers", "12"), ("num_res_blocks", 0), ("dropout", 1.0), ("use_attention", "true"),
    ("vocab_size", 1), ("vq_embed_dim", 0), ("beta", -1.0), ("using_znorm", 0), ("quant_conv_kernel_size", 2),
    ("quant_conv_kernel_size", 0), ("quant_resi", float("nan")), ("share_quant_resi", -1), ("num_quant_resi", -1),
    ("patch_nums", (2, 1)), ("patch_nums", [4]),
]


@pytest.mark.parametrize("field, value", BAD_VAR_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_VAR_FIELDS])
def test_var_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_var_config(**{field: value})


@pytest.mark.parametrize("field, value", BAD_VQVAE_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_VQVAE_FIELDS])
def test_vqvae_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        make_vqvae_config(**{field: value})


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match=r"embed_dim \(30\) must be divisible by num_heads \(4\)"):
        VARTransformerConfig(depth=2, embed_dim=30, num_heads=4)


def test_defaults_and_transformers_internal_paths_still_work(tmp_path):
    # transformers builds configurations with their defaults (to_diff_dict, from_dict) and round-trips them.
    for cls, tiny in ((VARTransformerConfig, make_var_config()), (MultiScaleVQVAEConfig, make_vqvae_config())):
        default = cls()
        assert cls.from_dict(default.to_dict()).to_dict() == default.to_dict()
        assert tiny.to_diff_dict()  # builds a default instance inside
        tiny.save_pretrained(tmp_path / cls.__name__)
        loaded = cls.from_pretrained(tmp_path / cls.__name__)
        assert loaded.to_dict() == tiny.to_dict()
        assert isinstance(loaded.patch_nums, list)


def test_a_saved_config_with_a_wrongly_typed_field_names_the_file_and_field(tmp_path):
    make_var_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["embed_dim"] = "32"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigFieldError, match=r"config\.json: embed_dim must be an integer, got '32' \(str\)"):
        VARTransformerConfig.from_pretrained(tmp_path)


def test_a_field_broken_after_construction_is_refused_at_save(tmp_path):
    config = make_vqvae_config()
    config.vocab_size = 1
    with pytest.raises(ValueError, match="vocab_size"):
        config.save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()


def test_json_lists_are_accepted_where_tuples_are():
    config = make_var_config(patch_nums=[1, 2, 4])
    assert config.patch_nums == [1, 2, 4] and config.seq_len == 21
    assert make_vqvae_config(channel_multipliers=[1, 2]).channel_multipliers == [1, 2]


def test_a_saved_config_without_a_field_warns_and_names_it(tmp_path):
    from transformers.testing_utils import CaptureLogger

    from var_hf import configuration_utils

    make_var_config().save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    assert set(VARTransformerConfig.field_names()) <= set(config), "save_pretrained writes every field"
    del config["mlp_ratio"]
    path.write_text(json.dumps(config))
    with CaptureLogger(configuration_utils.logger) as captured:
        loaded = VARTransformerConfig.from_pretrained(tmp_path)
    assert "does not set mlp_ratio: using the default 4.0" in captured.out and loaded.mlp_ratio == 4.0
