"""`var-hf-convert` against bad input: every case ends in one line `var-hf-convert: error: ...` (exit 2 for a bad flag,
1 for a bad file or folder) before any file is written, and no input or user file is ever touched.

Tiny real models are written in the reference's key layout by the inverse tables of `test_conversion.py`.
"""

import os
import struct

import pytest
import torch

from test_conversion import make_models, var_to_reference, vqvae_to_reference  # noqa: F401  (fixture)
from var_hf import MultiScaleVQVAE, VARTransformer
from var_hf.commands import var_hf_cli
from var_hf.commands.convert import main


@pytest.fixture
def case(make_models, tmp_path):  # noqa: F811
    """Checkpoints in `tmp_path/inputs`, their bytes (to check they survive), and the source models."""
    vqvae, transformer = make_models()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    vae_path, var_path = inputs / "vae.pth", inputs / "var.pth"
    torch.save(vqvae_to_reference(vqvae), vae_path)
    torch.save(var_to_reference(transformer), var_path)
    return dict(tmp=tmp_path, vae=vae_path, var=var_path, models=(vqvae, transformer),
                snapshot={p: p.read_bytes() for p in (vae_path, var_path)})


def tree(folder):
    if not folder.exists():
        return None
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def expect_error(capsys, case, argv, code, *needles, watch=()):
    """Run; check the exit code, the single line and its needles, and that nothing was created or changed."""
    watched = {folder: tree(folder) for folder in (case["tmp"], *watch)}
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err
    assert err.startswith("var-hf-convert: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle).lower() in err.lower(), f"{needle!r} not in {err!r}"
    for folder, before in watched.items():
        assert tree(folder) == before, f"{folder} changed"
    for path, data in case["snapshot"].items():
        assert path.read_bytes() == data
    return err


# ----------------------------------------------------------------------------------------------------------------------
# Files that are not checkpoints of the expected kind
# ----------------------------------------------------------------------------------------------------------------------


def _write_random(path):
    path.write_bytes(os.urandom(4096))


def _write_text(path):
    path.write_text("not a checkpoint\n" * 20)


def _write_empty(path):
    path.write_bytes(b"")


def _write_safetensors(path):
    header = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")


def _write_list(path):
    torch.save([torch.zeros(2)], path)


def _write_non_tensor_dict(path):
    torch.save({"epoch": 3, "weights": [1.0, 2.0]}, path)


@pytest.mark.parametrize(
    "write, needles",
    [
        (_write_random, ["not a PyTorch checkpoint"]),
        (_write_text, ["not a PyTorch checkpoint", "text"]),
        (_write_empty, ["not a PyTorch checkpoint"]),
        (_write_safetensors, ["safetensors", "not a PyTorch checkpoint"]),
        (_write_list, ["expected a state dict", "list"]),
        (_write_non_tensor_dict, ["expected a state dict", "epoch"]),
    ],
    ids=["random_bytes", "text", "empty", "safetensors", "list", "dict_of_non_tensors"],
)
@pytest.mark.parametrize("role", ["vae", "var"])
def test_not_a_checkpoint(case, capsys, write, needles, role):
    bad = case["tmp"] / f"bad_{role}.pth"
    write(bad)
    paths = {"vae": case["vae"], "var": case["var"], role: bad}
    expect_error(capsys, case, ["--vae", paths["vae"], "--var", paths["var"], "--output-dir", case["tmp"] / "out"],
                 1, bad, *needles)


def test_folder_given_as_checkpoint(case, capsys):
    expect_error(capsys, case, ["--vae", case["tmp"], "--output-dir", case["tmp"] / "out"], 1, "folder")


@pytest.mark.parametrize("which", ["vae", "var"])
def test_non_finite_weights_are_refused(case, capsys, which):
    """A NaN decoder (or transformer) weight would give NaN images: refused, nothing written."""
    vqvae, transformer = case["models"]
    state = vqvae_to_reference(vqvae) if which == "vae" else var_to_reference(transformer)
    key = "decoder.conv_out.weight" if which == "vae" else "blocks.1.ffn.fc2.weight"
    state[key] = torch.full_like(state[key], float("nan"))
    bad = case["tmp"] / f"nan_{which}.pth"
    torch.save(state, bad)
    paths = {"vae": case["vae"], "var": case["var"], which: bad}
    argv = ["--vae", paths["vae"], "--var", paths["var"], "--output-dir", case["tmp"] / "out"]
    expect_error(capsys, case, argv, 1, bad, "nan")
    if which == "vae":  # the tokenizer alone is checked too
        expect_error(capsys, case, ["--vae", bad, "--patch-nums", "1,2,4", "--output-dir", case["tmp"] / "out"],
                     1, bad, "nan")


# ----------------------------------------------------------------------------------------------------------------------
# Wrapped state dicts: accepted, or a message saying what the file is
# ----------------------------------------------------------------------------------------------------------------------


def _assert_converted(out_dir, vqvae, transformer):
    loaded_vq = MultiScaleVQVAE.from_pretrained(out_dir / "vqvae")
    loaded_tr = VARTransformer.from_pretrained(out_dir / "transformer")
    for source, loaded in ((vqvae, loaded_vq), (transformer, loaded_tr)):
        expected = {k: v for k, v in source.state_dict().items() if k != "quantizer.num_hit_updates"}
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in expected.items())


def test_state_dict_nested_under_model(case):
    vqvae, transformer = case["models"]
    vae, var = case["tmp"] / "vae_wrapped.pth", case["tmp"] / "var_wrapped.pth"
    torch.save({"model": vqvae_to_reference(vqvae), "epoch": 3}, vae)
    torch.save({"model": var_to_reference(transformer), "epoch": 3}, var)
    assert main(["--vae", str(vae), "--var", str(var), "--output-dir", str(case["tmp"] / "out")]) == 0
    _assert_converted(case["tmp"] / "out", vqvae, transformer)


def _trainer_checkpoint(vqvae, transformer, with_vae=True):
    """The layout of the official trainer's `ar-ckpt-last.pth`: epoch/iter, the trainer's state (both models and the
    optimizer) and the arguments, all plain values and tensors."""
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    transformer(torch.tensor([0]), torch.zeros(1, transformer.config.seq_len - 1, 8)).logits.sum().backward()
    optimizer.step()
    trainer = {"config": {"patch_nums": list(transformer.config.patch_nums)},
               "var_wo_ddp": var_to_reference(transformer), "var_opt": {"optim": optimizer.state_dict()}}
    if with_vae:
        trainer["vae_local"] = vqvae_to_reference(vqvae)
    return {"epoch": 1, "iter": 10, "trainer": trainer, "args": {"depth": 2, "tblr": 1e-4, "data_path": "/data"}}


def test_trainer_checkpoint_as_both_inputs(case):
    vqvae, transformer = case["models"]
    ckpt = case["tmp"] / "ar-ckpt-last.pth"
    torch.save(_trainer_checkpoint(vqvae, transformer), ckpt)
    assert main(["--vae", str(ckpt), "--var", str(ckpt), "--output-dir", str(case["tmp"] / "out")]) == 0
    _assert_converted(case["tmp"] / "out", vqvae, transformer)


def test_trainer_checkpoint_without_the_tokenizer(case, capsys):
    vqvae, transformer = case["models"]
    ckpt = case["tmp"] / "ar-ckpt-last.pth"
    torch.save(_trainer_checkpoint(vqvae, transformer, with_vae=False), ckpt)
    expect_error(capsys, case, ["--vae", ckpt, "--var", ckpt, "--output-dir", case["tmp"] / "out"], 1,
                 ckpt, "trainer checkpoint", "--var")


# ----------------------------------------------------------------------------------------------------------------------
# Output folders: never an input's folder, never foreign files, a clear error for impossible paths
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("where", ["inputs_folder", "parent_of_inputs"])
def test_output_folder_holding_the_inputs_is_refused(case, capsys, where, overwrite):
    out_dir = case["vae"].parent if where == "inputs_folder" else case["tmp"]
    argv = ["--vae", case["vae"], "--var", case["var"], "--output-dir", out_dir]
    argv += ["--overwrite"] if overwrite else []
    expect_error(capsys, case, argv, 1, "holds the input")


def test_overwrite_refuses_files_a_conversion_did_not_write(case, capsys):
    out_dir = case["tmp"] / "out"
    out_dir.mkdir()
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / "vqvae").mkdir()
    (out_dir / "vqvae" / "training_log.csv").write_text("step,loss\n")
    err = expect_error(capsys, case, ["--vae", case["vae"], "--var", case["var"], "--output-dir", out_dir,
                                      "--overwrite"], 1, "notes.txt", "vqvae/training_log.csv", watch=[out_dir])
    assert "--overwrite" in err


def test_overwrite_refuses_code_files_a_conversion_did_not_write(case, capsys):
    # A conversion writes pipeline.py and var_hf_auto.py at the root; any other .py there is the user's.
    out_dir = case["tmp"] / "out_code"
    (out_dir / "transformer").mkdir(parents=True)
    (out_dir / "train.py").write_text("print('mine')\n")
    (out_dir / "transformer" / "helpers.py").write_text("x = 1\n")
    expect_error(capsys, case, ["--vae", case["vae"], "--var", case["var"], "--output-dir", out_dir, "--overwrite"],
                 1, "train.py", "transformer/helpers.py", watch=[out_dir])


def test_output_under_a_regular_file(case, capsys):
    blocker = case["tmp"] / "a_file"
    blocker.write_text("x")
    expect_error(capsys, case, ["--vae", case["vae"], "--output-dir", blocker / "sub" / "out"], 1, blocker, "is a file")
    expect_error(capsys, case, ["--vae", case["vae"], "--output-dir", blocker], 1, blocker, "not a folder")


# ----------------------------------------------------------------------------------------------------------------------
# Flags: exit 2, the flag named
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--num-heads", "0"], "--num-heads"),
        (["--num-heads", "-2"], "--num-heads"),
        (["--depth", "0"], "--depth"),
        (["--num-classes", "0"], "--num-classes"),
        (["--norm-eps", "nan"], "--norm-eps"),
        (["--norm-eps", "0"], "--norm-eps"),
        (["--quant-resi", "inf"], "--quant-resi"),
        (["--patch-nums", "4,2,1"], "--patch-nums"),
        (["--patch-nums", "1"], "--patch-nums"),
        (["--patch-nums", "a,b"], "--patch-nums"),
        (["--num-heads", "two"], "--num-heads"),
        (["--shared-aln", "maybe"], "--shared-aln"),
        (["--bogus-flag"], "--bogus-flag"),
    ],
)
def test_bad_flags(case, capsys, flags, needle):
    expect_error(capsys, case, ["--vae", case["vae"], "--var", case["var"], "--output-dir", case["tmp"] / "out",
                                *flags], 2, needle)


def test_missing_required_flag(case, capsys):
    assert main(["--output-dir", str(case["tmp"] / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("var-hf-convert: error: ") and "--vae" in err and err.count("\n") == 1


def test_heads_that_do_not_divide_the_width(case, capsys):
    expect_error(capsys, case, ["--vae", case["vae"], "--var", case["var"], "--output-dir", case["tmp"] / "out",
                                "--num-heads", "3"], 1, "--num-heads")


# ----------------------------------------------------------------------------------------------------------------------
# The same conventions through `var-hf convert`; tracebacks only on request
# ----------------------------------------------------------------------------------------------------------------------


def test_var_hf_convert_subcommand_and_debug(case, capsys, monkeypatch):
    bad = case["tmp"] / "text.pth"
    bad.write_text("hello")
    argv = ["convert", "--vae", str(bad), "--output-dir", str(case["tmp"] / "out")]
    assert var_hf_cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("var-hf convert: error: ") and err.count("\n") == 1
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        var_hf_cli.main(argv + ["--debug"])
    monkeypatch.setenv("VAR_HF_DEBUG", "1")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        main(argv[1:])
