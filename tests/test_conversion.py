"""Tests of `conversion/convert_var_to_hf.py` and its command line (`var-hf-convert`, `var_hf.commands.convert`).

Tiny var_hf models are written out in the reference (FoundationVision/VAR) key layout by an inverse of the converter's
tables spelled out below, converted back, and compared with the source models. The reference code itself is not needed.
"""

import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from var_hf import PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAE, VARTransformer
from var_hf.commands.convert import main
from var_hf.conversion.convert_var_to_hf import ConversionError, convert, convert_var, convert_vqvae

REPO_ROOT = Path(__file__).resolve().parents[1]

# var_hf name -> reference name. Written independently of the converter's table (which maps the other way).
VAR_TO_REFERENCE = [
    (r"word_embed\.(weight|bias)", r"word_embed.\1"),
    (r"class_embedding\.weight", r"class_emb.weight"),
    (r"pos_start", r"pos_start"),
    (r"pos_embedding", r"pos_1LC"),
    (r"level_embedding\.weight", r"lvl_embed.weight"),
    (r"shared_adaln\.linear\.(weight|bias)", r"shared_ada_lin.1.\1"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"blocks.\1.attn.mat_qkv.weight"),
    (r"blocks\.(\d+)\.attn\.(q_bias|v_bias)", r"blocks.\1.attn.\2"),
    (r"blocks\.(\d+)\.attn\.log_scale", r"blocks.\1.attn.scale_mul_1H11"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.ffn.\2.\3"),
    (r"blocks\.(\d+)\.adaln\.linear\.(weight|bias)", r"blocks.\1.ada_lin.1.\2"),
    (r"blocks\.(\d+)\.adaln_table", r"blocks.\1.ada_gss"),
    (r"head_norm\.adaln\.linear\.(weight|bias)", r"head_nm.ada_lin.1.\1"),
    (r"head\.(weight|bias)", r"head.\1"),
]


def rename(key, table):
    for pattern, template in table:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise KeyError(f"no reference name for {key}")


def vqvae_to_reference(model: MultiScaleVQVAE):
    """State dict of the reference `VQVAE`: encoder/decoder/quant convs unchanged, the quantizer renamed, with the
    reference's three phi containers (`PhiPartiallyShared.qresi_ls`, `PhiShared.qresi`, `PhiNonShared`)."""
    share = model.config.share_quant_resi
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            out[key] = value.clone()
        elif key == "quantizer.codebook.weight":
            out["quantize.embedding.weight"] = value.clone()
        elif key == "quantizer.ema_code_hits":
            out["quantize.ema_vocab_hit_SV"] = value.clone()
        elif key == "quantizer.num_hit_updates":
            continue  # the reference keeps this counter as a Python attribute
        elif m := re.fullmatch(r"quantizer\.phi\.(\d+)\.(weight|bias)", key):
            index, name = m.groups()
            container = {0: f"quant_resi.{index}", 1: "quant_resi.qresi"}.get(share, f"quant_resi.qresi_ls.{index}")
            out[f"quantize.{container}.{name}"] = value.clone()
        else:
            raise KeyError(f"no reference name for {key}")
    return out


def var_to_reference(model: VARTransformer, with_level_buffer: bool = True):
    """State dict of the reference `VAR`, including its persistent buffers."""
    cfg = model.config
    out = {rename(k, VAR_TO_REFERENCE): v.clone() for k, v in model.state_dict().items()}
    for i in range(cfg.depth):
        out[f"blocks.{i}.attn.zero_k_bias"] = torch.zeros(cfg.embed_dim)
    level_L = torch.cat([torch.full((pn * pn,), i) for i, pn in enumerate(cfg.patch_nums)])
    if with_level_buffer:
        out["lvl_1L"] = level_L[None]
        out["attn_bias_for_masking"] = torch.where(level_L[:, None] >= level_L[None, :], 0.0, -torch.inf)[None, None]
    return out


@pytest.fixture(scope="module")
def make_models(vqvae_config_factory, var_config_factory, perturb):
    def make(vqvae_overrides=None, var_overrides=None):
        torch.manual_seed(0)
        vqvae = MultiScaleVQVAE(vqvae_config_factory(**(vqvae_overrides or {})))
        with torch.no_grad():
            vqvae.quantizer.codebook.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
            perturb(vqvae, std=0.02).train()
            side = vqvae.config.image_size
            vqvae(torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(2)))  # non-zero code hits
        vqvae.eval()
        transformer = perturb(VARTransformer(var_config_factory(**(var_overrides or {})))).eval()
        return vqvae, transformer

    return make


def write_checkpoints(make_models, folder):
    vqvae, transformer = make_models()
    vae_path, var_path = folder / "vae_tiny.pth", folder / "var_tiny.pth"
    torch.save(vqvae_to_reference(vqvae), vae_path)
    torch.save(var_to_reference(transformer), var_path)
    return vqvae, transformer, vae_path, var_path


@pytest.fixture
def checkpoints(make_models, tmp_path):
    """Source models plus their reference-layout `.pth` files."""
    return write_checkpoints(make_models, tmp_path)


@pytest.fixture(scope="module")
def cli_runs(make_models, tmp_path_factory):
    """The same conversion by two real processes started together (each spends most of its time importing
    transformers): the script from the repo root and the installed console script."""
    console_script = shutil.which("var-hf-convert")
    if console_script is None:
        pytest.skip("var-hf-convert is not installed (pip install -e .)")
    folder = tmp_path_factory.mktemp("cli")
    vqvae, transformer, vae_path, var_path = write_checkpoints(make_models, folder)
    commands = {
        "script": [sys.executable, "conversion/convert_var_to_hf.py", "--vae", str(vae_path), "--var", str(var_path)],
        "console": [console_script, "--vae", str(vae_path), "--var", str(var_path)],
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen(cmd + ["--output-dir", str(folder / name)], cwd=REPO_ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, cmd in commands.items()
    }
    results = {name: (proc, *proc.communicate(timeout=300)) for name, proc in procs.items()}
    return dict(models=(vqvae, transformer), folder=folder, results=results)


def assert_same_models(vqvae, transformer, out_dir):
    """Both subfolders reload with from_pretrained and behave exactly like the source models."""
    loaded_vq = MultiScaleVQVAE.from_pretrained(out_dir / "vqvae").eval()
    loaded_tr = VARTransformer.from_pretrained(out_dir / "transformer").eval()
    src_state, state = vqvae.state_dict(), loaded_vq.state_dict()
    assert src_state.keys() == state.keys()
    # The reference stores no update counter, so the converter restarts it; the hit statistics themselves carry over.
    assert all(torch.equal(src_state[k], state[k]) for k in src_state if k != "quantizer.num_hit_updates")
    src_state, state = transformer.state_dict(), loaded_tr.state_dict()
    assert src_state.keys() == state.keys() and all(torch.equal(src_state[k], state[k]) for k in src_state)

    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    tokens = vqvae.encode_tokens(pixels)
    assert all(torch.equal(a, b) for a, b in zip(tokens, loaded_vq.encode_tokens(pixels)))
    assert torch.equal(vqvae.decode_tokens(tokens), loaded_vq.decode_tokens(tokens))
    tf_input = loaded_vq.teacher_forcing_input(tokens)
    assert torch.equal(tf_input, vqvae.teacher_forcing_input(tokens))
    labels = torch.tensor([1, 4])
    assert torch.equal(transformer(labels, tf_input).logits, loaded_tr(labels, tf_input).logits)

    if (out_dir / "model_index.json").exists():
        index = json.loads((out_dir / "model_index.json").read_text())
        assert {"vqvae", "transformer", "scheduler"} <= set(index)
        assert (out_dir / "scheduler").is_dir()


def pipeline_available():
    try:
        return hasattr(importlib.import_module("var_hf.pipelines"), "VARPipeline")
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------------------------------


def test_reference_layout_spot_checks(make_models):
    """The inverse tables produce the reference's names (a few taken from FoundationVision/VAR's modules)."""
    vqvae, transformer = make_models(var_overrides=dict(shared_aln=True))
    vae_keys, var_keys = set(vqvae_to_reference(vqvae)), set(var_to_reference(transformer))
    assert {"quantize.embedding.weight", "quantize.ema_vocab_hit_SV", "quantize.quant_resi.qresi_ls.3.weight",
            "encoder.down.1.attn.0.qkv.weight", "decoder.up.0.block.1.conv2.bias"} <= vae_keys
    assert {"class_emb.weight", "pos_1LC", "pos_start", "lvl_embed.weight", "blocks.1.attn.mat_qkv.weight",
            "blocks.1.attn.scale_mul_1H11", "blocks.1.attn.zero_k_bias", "blocks.1.ffn.fc1.weight",
            "blocks.1.ada_gss", "shared_ada_lin.1.weight", "head_nm.ada_lin.1.weight", "lvl_1L",
            "attn_bias_for_masking"} <= var_keys


def test_convert_function_round_trip(checkpoints, tmp_path):
    vqvae, transformer, vae_path, var_path = checkpoints
    out_dir = tmp_path / "converted"
    convert(str(vae_path), str(var_path), str(out_dir))
    assert_same_models(vqvae, transformer, out_dir)
    assert (out_dir / "model_index.json").exists() == pipeline_available()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders must be cleaned up"


@pytest.mark.parametrize("name", ["script", "console"])
def test_command_line_round_trips(cli_runs, name):
    """`python conversion/convert_var_to_hf.py` from the repo root and the installed `var-hf-convert`."""
    proc, stdout, stderr = cli_runs["results"][name]
    assert proc.returncode == 0, stderr
    out_dir = cli_runs["folder"] / name
    assert f"wrote {out_dir}" in stdout
    assert_same_models(*cli_runs["models"], out_dir)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(), dict(share_quant_resi=4, num_quant_resi=0, num_phi=4)),
        (dict(share_quant_resi=1), dict(share_quant_resi=1, num_phi=1)),
        (dict(share_quant_resi=0), dict(share_quant_resi=0, num_quant_resi=3, num_phi=3)),
        (dict(quant_resi=0.0), dict(num_phi=0)),
        (dict(num_res_blocks=2, use_attention=False, channel_multipliers=(1, 1, 2), patch_nums=(1, 2)),
         dict(num_res_blocks=2, use_attention=False, channel_multipliers=[1, 1, 2])),
    ],
    ids=["partially_shared", "shared", "per_scale", "no_phi", "layout"],
)
def test_vqvae_inference(make_models, overrides, expected):
    vqvae, _ = make_models(vqvae_overrides=overrides)
    cfg = vqvae.config
    converted = convert_vqvae(vqvae_to_reference(vqvae), cfg.patch_nums, quant_resi=cfg.quant_resi)
    for name, value in {**dict(base_channels=32, vocab_size=32, vq_embed_dim=8), **expected}.items():
        assert getattr(converted.config, name) == value, name
    pixels = torch.rand(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = vqvae.encode_tokens(pixels)
    assert all(torch.equal(a, b) for a, b in zip(tokens, converted.encode_tokens(pixels)))
    assert torch.equal(vqvae.decode_tokens(tokens), converted.decode_tokens(tokens))


def test_vqvae_flags_not_stored_in_checkpoints(make_models):
    """quant_resi and using_znorm leave no trace in the tensors: they come from the caller (--quant-resi,
    --using-znorm)."""
    vqvae, _ = make_models(vqvae_overrides=dict(quant_resi=0.25, using_znorm=True))
    reference = vqvae_to_reference(vqvae)
    default = convert_vqvae(reference, vqvae.config.patch_nums)
    assert default.config.quant_resi == 0.5 and not default.config.using_znorm
    converted = convert_vqvae(reference, vqvae.config.patch_nums, quant_resi=0.25, using_znorm=True)
    assert converted.config.quant_resi == 0.25 and converted.config.using_znorm
    pixels = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    tokens = vqvae.encode_tokens(pixels)
    assert all(torch.equal(a, b) for a, b in zip(tokens, converted.encode_tokens(pixels)))
    assert torch.equal(vqvae.decode_tokens(tokens), converted.decode_tokens(tokens))


@pytest.mark.parametrize(
    "overrides, kwargs",
    [
        (dict(), dict()),
        (dict(shared_aln=True, depth=3, num_classes=4), dict()),
        (dict(attn_l2_norm=False), dict(num_heads=2)),
        (dict(attn_l2_norm=False, embed_dim=128), dict()),  # 128 // 64 = 2 heads
        (dict(num_heads=4, mlp_ratio=2.0), dict()),
    ],
    ids=["default", "shared_aln", "plain_attention_heads_flag", "plain_attention_64_dim_heads", "heads_mlp"],
)
def test_var_inference(make_models, overrides, kwargs):
    _, transformer = make_models(var_overrides=overrides)
    cfg = transformer.config
    converted = convert_var(var_to_reference(transformer), **kwargs)
    for name in ("depth", "embed_dim", "num_heads", "shared_aln", "attn_l2_norm", "num_classes", "vocab_size",
                 "vq_embed_dim", "mlp_ratio", "patch_nums"):
        assert getattr(converted.config, name) == getattr(cfg, name), name
    class_labels = torch.tensor([0, cfg.num_classes - 1])
    tf_input = torch.randn(2, cfg.seq_len - 1, cfg.vq_embed_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(transformer(class_labels, tf_input).logits, converted(class_labels, tf_input).logits)


def test_assumed_head_count_is_announced(make_models, caplog):
    """Without the l2-norm temperature the head count is a guess (64-dim heads); a wrong guess loads silently and
    computes other logits, so the converter says what it assumed and how to override it."""
    _, transformer = make_models(var_overrides=dict(attn_l2_norm=False, embed_dim=128, num_heads=4))
    with caplog.at_level(logging.WARNING):
        guessed = convert_var(var_to_reference(transformer), path="var_plain.pth")
    assert guessed.config.num_heads == 2 and "var_plain.pth" in caplog.text and "--num-heads" in caplog.text
    class_labels = torch.tensor([0, 1])
    tf_input = torch.randn(2, transformer.config.seq_len - 1, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(transformer(class_labels, tf_input).logits, guessed(class_labels, tf_input).logits)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        given = convert_var(var_to_reference(transformer), num_heads=4)
    assert "assuming" not in caplog.text
    assert torch.equal(transformer(class_labels, tf_input).logits, given(class_labels, tf_input).logits)


def test_heads_cannot_be_read_without_l2_norm(make_models):
    _, transformer = make_models(var_overrides=dict(attn_l2_norm=False))  # embed_dim 32: not 64-dim heads
    with pytest.raises(ConversionError, match="--num-heads"):
        convert_var(var_to_reference(transformer), path="var_tiny.pth")


@pytest.mark.parametrize("patch_nums", [PATCH_NUMS_256, PATCH_NUMS_512], ids=["256", "512"])
def test_schedule_from_sequence_length(var_config_factory, patch_nums):
    transformer = VARTransformer(var_config_factory(patch_nums=patch_nums))
    converted = convert_var(var_to_reference(transformer, with_level_buffer=False))
    assert converted.config.patch_nums == list(patch_nums)


def test_schedule_from_level_buffer(make_models):
    _, transformer = make_models(var_overrides=dict(patch_nums=(1, 3, 5)))
    assert convert_var(var_to_reference(transformer)).config.patch_nums == [1, 3, 5]
    bare = var_to_reference(transformer, with_level_buffer=False)
    with pytest.raises(ConversionError, match="--patch-nums"):
        convert_var(bare, path="var_tiny.pth")
    assert convert_var(bare, patch_nums=[1, 3, 5]).config.patch_nums == [1, 3, 5]


def test_vqvae_alone(checkpoints, tmp_path):
    vqvae, _, vae_path, _ = checkpoints
    out_dir = tmp_path / "vae_only"
    assert main(["--vae", str(vae_path), "--output-dir", str(out_dir), "--patch-nums", "1,2,4"]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["vqvae"]
    loaded = MultiScaleVQVAE.from_pretrained(out_dir / "vqvae")
    pixels = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert all(torch.equal(a, b) for a, b in zip(vqvae.encode_tokens(pixels), loaded.encode_tokens(pixels)))


def test_norm_eps_flag(checkpoints, tmp_path):
    """The LayerNorm epsilon is not in the checkpoint: the default is the release's 1e-6, `--norm-eps` sets another,
    and it changes the logits (so a model trained with another epsilon needs the flag)."""
    _, transformer, vae_path, var_path = checkpoints
    assert transformer.config.norm_eps == 1e-6
    assert main(["--vae", str(vae_path), "--var", str(var_path), "--output-dir", str(tmp_path / "eps"),
                 "--norm-eps", "1e-2"]) == 0
    loaded = VARTransformer.from_pretrained(tmp_path / "eps" / "transformer")
    assert loaded.config.norm_eps == 1e-2
    cfg = transformer.config
    class_labels = torch.tensor([0, 1])
    tf_input = torch.randn(2, cfg.seq_len - 1, cfg.vq_embed_dim, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(transformer(class_labels, tf_input).logits, loaded(class_labels, tf_input).logits)


def test_overwrite_replaces_a_previous_conversion(checkpoints, tmp_path):
    """`--overwrite` replaces what a previous conversion wrote (here a VQVAE-only folder by a full pipeline)."""
    vqvae, transformer, vae_path, var_path = checkpoints
    out_dir = tmp_path / "out"
    assert main(["--vae", str(vae_path), "--output-dir", str(out_dir), "--patch-nums", "1,2,4"]) == 0
    assert main(["--vae", str(vae_path), "--var", str(var_path), "--output-dir", str(out_dir), "--overwrite"]) == 0
    assert_same_models(vqvae, transformer, out_dir)
    assert oct(out_dir.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders must be cleaned up"


def test_overwrite_replaces_a_previous_pipeline_with_its_loader_modules(checkpoints, tmp_path):
    """A full conversion over a full conversion: the root `pipeline.py` and `var_hf_auto.py` that save_pretrained
    writes are a previous conversion's files; the allowed set is exactly what a conversion writes."""
    from var_hf.conversion.convert_var_to_hf import files_a_conversion_writes

    vqvae, transformer, vae_path, var_path = checkpoints
    out_dir = tmp_path / "out"
    argv = ["--vae", str(vae_path), "--var", str(var_path), "--output-dir", str(out_dir)]
    assert main(argv) == 0
    written = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()}
    assert {"pipeline.py", "var_hf_auto.py", "model_index.json"} <= written
    assert written <= files_a_conversion_writes()
    assert main(argv + ["--overwrite"]) == 0
    assert_same_models(vqvae, transformer, out_dir)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------------------------------------------------
# Bad inputs: one line naming the file, exit status 1, output folder untouched
# ----------------------------------------------------------------------------------------------------------------------


def run_failing(capsys, argv, out_dir, *needles, code=1):
    before = sorted(os.listdir(out_dir)) if out_dir.exists() else None
    assert main(argv + ["--output-dir", str(out_dir)]) == code
    err = capsys.readouterr().err
    assert err.startswith("var-hf-convert: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    assert (sorted(os.listdir(out_dir)) if out_dir.exists() else None) == before
    assert not [p for p in out_dir.parent.iterdir() if p.name.startswith(".tmp-convert")]


def test_missing_file(checkpoints, tmp_path, capsys):
    _, _, vae_path, _ = checkpoints
    missing = tmp_path / "nope.pth"
    run_failing(capsys, ["--vae", str(vae_path), "--var", str(missing)], tmp_path / "out", missing, "no such file")
    run_failing(capsys, ["--vae", str(missing)], tmp_path / "out", missing, "no such file")


def test_swapped_checkpoints(checkpoints, tmp_path, capsys):
    _, _, vae_path, var_path = checkpoints
    run_failing(capsys, ["--vae", str(var_path)], tmp_path / "out", var_path, "pass it as --var")
    run_failing(capsys, ["--vae", str(var_path), "--var", str(vae_path)], tmp_path / "out", vae_path,
                "pass it as --vae")


@pytest.mark.parametrize(
    "which, edit, needles",
    [
        ("var", lambda sd: sd.pop("blocks.1.ffn.fc2.bias"), ["missing", "blocks.1.mlp.fc2.bias"]),
        ("var", lambda sd: sd.pop("head.weight"), ["missing key", "head.weight"]),
        ("vae", lambda sd: sd.pop("decoder.conv_out.weight"), ["missing", "decoder.conv_out.weight"]),
        ("vae", lambda sd: sd.pop("encoder.conv_in.weight"), ["missing key", "encoder.conv_in.weight"]),
        ("var", lambda sd: sd.update({"blocks.0.attn.rel_pos": torch.zeros(3)}), ["unexpected", "rel_pos"]),
        ("vae", lambda sd: sd.update({"quantize.extra": torch.zeros(3)}), ["unexpected", "quantize.extra"]),
        ("var", lambda sd: sd.update({"head.bias": torch.zeros(33)}), ["wrong shapes", "head.bias"]),
        ("vae", lambda sd: sd.update({"quant_conv.bias": torch.zeros(9)}), ["wrong shapes", "quant_conv.bias"]),
        ("var", lambda sd: sd.update({"blocks.0.attn.zero_k_bias": torch.ones(32)}), ["zero_k_bias", "not zero"]),
    ],
    ids=["var_missing", "var_missing_inferred", "vae_missing", "vae_missing_inferred", "var_unexpected",
         "vae_unexpected", "var_shape", "vae_shape", "var_nonzero_k_bias"],
)
def test_bad_state_dicts(checkpoints, tmp_path, capsys, which, edit, needles):
    vqvae, transformer, vae_path, var_path = checkpoints
    state = vqvae_to_reference(vqvae) if which == "vae" else var_to_reference(transformer)
    edit(state)
    bad_path = tmp_path / f"bad_{which}.pth"
    torch.save(state, bad_path)
    paths = {"vae": vae_path, "var": var_path, which: bad_path}
    run_failing(capsys, ["--vae", str(paths["vae"]), "--var", str(paths["var"])], tmp_path / "out", bad_path, *needles)


def test_mismatched_pair(checkpoints, var_config_factory, tmp_path, capsys):
    _, _, vae_path, _ = checkpoints
    other_path = tmp_path / "var_64_codes.pth"
    torch.save(var_to_reference(VARTransformer(var_config_factory(vocab_size=64))), other_path)
    run_failing(capsys, ["--vae", str(vae_path), "--var", str(other_path)], tmp_path / "out", vae_path, other_path,
                "do not belong together")


def test_truncated_file(checkpoints, tmp_path, capsys):
    _, _, vae_path, var_path = checkpoints
    truncated = tmp_path / "var_truncated.pth"
    data = var_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    run_failing(capsys, ["--vae", str(vae_path), "--var", str(truncated)], tmp_path / "out", truncated,
                "not a readable torch checkpoint")


class _RunsCode:
    """Unpickling this calls os.system; weights_only=True must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(checkpoints, tmp_path, capsys):
    _, transformer, vae_path, _ = checkpoints
    marker = tmp_path / "pwned"
    evil = tmp_path / "var_evil.pth"
    torch.save({**var_to_reference(transformer), "payload": _RunsCode(marker)}, evil)
    run_failing(capsys, ["--vae", str(vae_path), "--var", str(evil)], tmp_path / "out", evil, "refused")
    assert not marker.exists()


def test_non_empty_output_folder(checkpoints, tmp_path, capsys):
    _, _, vae_path, var_path = checkpoints
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    run_failing(capsys, ["--vae", str(vae_path), "--var", str(var_path)], out_dir, out_dir, "--overwrite")
    assert (out_dir / "keep.txt").read_text() == "mine"
