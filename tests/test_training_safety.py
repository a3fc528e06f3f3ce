"""Training against bad input and hostile or damaged checkpoints: every argument is checked before any work, a run is
never started over an earlier run's checkpoints by accident, nothing in a checkpoint is unpickled unsafely, and a
damaged checkpoint is refused naming the file. Also: the scripts run by path under `accelerate launch` (no module of
ours shadows the standard library), and stage 1 trains on a folder of unlabeled images.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import MultiScaleVQVAE
from var_hf.commands import UsageError
from var_hf.commands import tokenize_dataset as tokenize_cmd
from var_hf.commands import train_var as train_var_cmd
from var_hf.commands import train_vqvae as train_vqvae_cmd
from var_hf.training import checkpointing, optimization

from conftest import needs_fmnist


TINY_VAR = ["--depth", "2", "--embed_dim", "32", "--num_heads", "2", "--max_train_samples", "32",
            "--max_val_samples", "16", "--batch_size", "8", "--no_progress_bar", "--no_card_samples"]
TINY_VQVAE = ["--base_channels", "32", "--channel_multipliers", "1,2", "--num_res_blocks", "1", "--no_attention",
              "--no_mid_attention", "--vocab_size", "16", "--vq_embed_dim", "4", "--patch_nums", "1,2,4",
              "--batch_size", "8", "--no_progress_bar"]
TRAINING_DIR = os.path.dirname(checkpointing.__file__)


# ----------------------------------------------------------------------------------------------------------------------
# Arguments: checked before the Accelerator starts, errors name the option
# ----------------------------------------------------------------------------------------------------------------------

BAD_VAR = [
    (["--depth", "0"], "--depth"),
    (["--max_steps", "-5"], "--max-steps"),
    (["--max_steps", "0"], "--max-steps"),
    (["--batch_size", "0"], "--batch-size"),
    (["--batch_size", "-4"], "--batch-size"),
    (["--embed_dim", "30", "--num_heads", "4"], "divisible by --num-heads"),
    (["--num_heads", "0"], "--num-heads"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--grad_accum", "0"], "--gradient-accumulation-steps"),
    (["--save_every", "0"], "--save-every"),
    (["--keep_last", "0"], "--keep-last"),
    (["--ema_decay", "1.5"], "--ema-decay"),
    (["--cond_drop_rate", "1"], "--cond-drop-rate"),
    (["--label_smoothing", "-0.1"], "--label-smoothing"),
    (["--lr_schedule", "bogus"], "--lr-schedule"),
    (["--log_with", "wandb"], "--log-with"),
    (["--mid_ratio", "0.5"], "--mid-ratio"),
    (["--image_size", "0"], "--image-size"),
    (["--progressive", "1.5"], "--progressive"),
    (["--validate_every", "-2"], "--validate-every"),
    (["--resume", "latest", "--overwrite_output_dir"], "--overwrite-output-dir"),
    (["--no_such_option", "1"], "no_such_option"),
]
BAD_VQVAE = [
    (["--vocab_size", "0"], "--vocab-size"),
    (["--vocab_size", "1"], "--vocab-size"),
    (["--patch_nums", "1,1,2"], "--patch-nums"),
    (["--patch_nums", "4"], "--patch-nums"),
    (["--channel_multipliers", "0,1"], "--channel-multipliers"),
    (["--base_channels", "0"], "--base-channels"),
    (["--l2_weight", "0"], "reconstruction loss"),
    (["--lpips_weight", "1"], "--lpips-weights"),
    (["--image_size", "12"], "--image-size 12"),
    (["--max_steps", "-5"], "--max-steps"),
    (["--quant_resi", "2"], "--quant-resi"),
]


@pytest.mark.parametrize("extra, message", BAD_VAR, ids=[" ".join(a) for a, _ in BAD_VAR])
def test_train_var_refuses_bad_arguments_before_any_work(tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        train_var_cmd.main(TINY_VAR + ["--vqvae", str(tmp_path / "vqvae"), "--output_dir", str(out)] + extra)
    assert not out.exists()


@pytest.mark.parametrize("extra, message", BAD_VQVAE, ids=[" ".join(a) for a, _ in BAD_VQVAE])
def test_train_vqvae_refuses_bad_arguments_before_any_work(tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        train_vqvae_cmd.main(TINY_VQVAE + ["--output_dir", str(out)] + extra)
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [(["--batch_size", "0"], "--batch-size"), (["--splits", ","], "--splits"),
                                            (["--max_samples", "0"], "--max-samples")])
def test_tokenize_refuses_bad_arguments(tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        tokenize_cmd.main(["--vqvae", str(tmp_path), "--output_dir", str(tmp_path / "out")] + extra)
    assert not (tmp_path / "out").exists()


def test_tokenize_refuses_a_non_empty_output_folder_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="--overwrite"):
        tokenize_cmd.main(["--vqvae", str(tmp_path), "--output_dir", str(out)])
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints: no accidental restart, no unsafe unpickling, damaged files refused by name
# ----------------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code (it creates `marker`): what an attacker would plant in a checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _rewrite_manifest(folder):
    """What an attacker who edits a checkpoint can also do: make the manifest match the edited files."""
    checkpointing.write_manifest(folder)


@needs_fmnist
def test_checkpoints_refuse_restart_hostile_pickles_and_damage(tmp_path, vqvae_dir):
    out = str(tmp_path / "var")
    argv = TINY_VAR + ["--vqvae", vqvae_dir, "--output_dir", out, "--max_steps", "2", "--save_every", "1",
                       "--validate_every", "-1", "--ema_decay", "0.9"]
    assert train_var_cmd.main(argv) == 0
    first = os.path.join(out, "checkpoint-00000001")
    assert os.path.isfile(os.path.join(first, checkpointing.MANIFEST_NAME))
    assert os.path.isfile(os.path.join(first, "ema.safetensors")) and not glob.glob(os.path.join(first, "*custom*"))

    # Starting again without --resume is refused before any work; the checkpoints are untouched.
    before = sorted(os.listdir(out))
    with pytest.raises(UsageError, match="--resume latest.*--overwrite-output-dir"):
        train_var_cmd.main(argv)
    assert sorted(os.listdir(out)) == before

    # Hostile pickles, with the manifest rewritten to match: never executed.
    marker = str(tmp_path / "pwned")
    latest = os.path.join(out, "checkpoint-00000002")
    for name in ("random_states_0.pkl", "optimizer.bin", "custom_checkpoint_0.pkl"):
        target = os.path.join(latest, name)
        original = open(target, "rb").read() if os.path.exists(target) else None
        torch.save({"shadow": _Payload(marker), "step": 0}, target)
        _rewrite_manifest(latest)
        try:
            train_var_cmd.main(argv + ["--resume", latest, "--max_steps", "3"])
        except checkpointing.CheckpointError:
            pass  # refused is fine; running the payload is not
        assert not os.path.exists(marker), f"a pickle planted as {name} was executed"
        if original is None:
            os.remove(target)
        else:
            open(target, "wb").write(original)
        for extra in glob.glob(os.path.join(out, "checkpoint-0000000[3-9]")):
            import shutil

            shutil.rmtree(extra)
        _rewrite_manifest(latest)

    # A truncated random-state file fails loudly, naming the file, with or without a matching manifest.
    rng = os.path.join(first, "random_states_0.pkl")
    with open(rng, "r+b") as f:
        f.truncate(os.path.getsize(rng) // 2)
    with pytest.raises(checkpointing.CheckpointError, match="random_states_0.pkl"):
        train_var_cmd.main(argv + ["--resume", first])
    _rewrite_manifest(first)
    with pytest.raises(checkpointing.CheckpointError, match="random_states_0.pkl"):
        train_var_cmd.main(argv + ["--resume", first])

    # A file that is not part of the checkpoint is refused, naming it.
    open(os.path.join(latest, "extra.bin"), "wb").write(b"x")
    with pytest.raises(checkpointing.CheckpointError, match="extra.bin"):
        train_var_cmd.main(argv + ["--resume", "latest"])

    # --overwrite_output_dir starts over: the old checkpoints are deleted, the new run writes its own.
    assert train_var_cmd.main(argv + ["--overwrite_output_dir", "--max_steps", "1"]) == 0
    assert [os.path.basename(p) for p in checkpointing.list_checkpoints(out)] == ["checkpoint-00000001"]
    state = json.load(open(os.path.join(out, "checkpoint-00000001", checkpointing.TRAINER_STATE_NAME)))
    assert state["step"] == 1 and state["ema"]["num_updates"] == 1


# ----------------------------------------------------------------------------------------------------------------------
# Entry points and data
# ----------------------------------------------------------------------------------------------------------------------


def test_no_module_of_ours_shadows_the_standard_library():
    import var_hf

    root = os.path.dirname(var_hf.__file__)
    names = {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(root, "**", "*.py"),
                                                                           recursive=True)}
    names |= {os.path.basename(d) for d in glob.glob(os.path.join(root, "**", ""), recursive=True)}
    assert not (names - {"__init__", "__main__"}) & set(sys.stdlib_module_names)


@pytest.mark.parametrize("launch", [
    [sys.executable, os.path.join(TRAINING_DIR, "train_vqvae.py")],
    [sys.executable, "-m", "var_hf.training.tokenize_dataset"],
], ids=["train_vqvae.py", "-m-tokenize_dataset"])
def test_scripts_run_by_path_and_as_modules(launch):
    """`accelerate launch path/to/script.py` runs the script as `python path` does, with its folder first on sys.path:
    a module there named like a standard-library module would replace it. (`accelerate launch .../train_var.py` itself
    runs in tests/test_training.py::test_two_processes_match_one_process.)"""
    proc = subprocess.run([*launch, "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--output-dir" in proc.stdout


def test_vqvae_trains_on_a_folder_of_unlabeled_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        PIL.Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(images / f"{i:02d}.png")
    out = tmp_path / "vqvae"
    argv = TINY_VQVAE + ["--dataset", f"imagefolder:{images}", "--output-dir", str(out), "--max_steps", "2",
                         "--validate_every", "-1", "--log_with", "none"]
    assert train_vqvae_cmd.main(argv) == 0
    assert MultiScaleVQVAE.from_pretrained(str(out / "vqvae")).config.patch_nums == [1, 2, 4]
    with pytest.raises(ValueError, match="validate-every -1"):  # a flat folder has no validation split
        train_vqvae_cmd.main(TINY_VQVAE + ["--dataset", str(images), "--output-dir", str(tmp_path / "v2"),
                                           "--max_steps", "1", "--log_with", "none"])


@needs_fmnist
def test_an_fsdp_config_without_gpus_is_refused(tmp_path, vqvae_dir, monkeypatch):
    """accelerate 1.15 shards with FSDP only on GPU-like devices; on CPU an FSDP config would silently train
    unsharded, so it is refused with the command that does work."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP only on GPUs.*--multi_gpu"):
        train_var_cmd.main(TINY_VAR + ["--vqvae", vqvae_dir, "--output_dir", str(tmp_path / "out"), "--max_steps", "1"])
    assert not glob.glob(str(tmp_path / "out" / "checkpoint-*"))


def test_ema_differs_from_diffusers_ema_model():
    """Why `optimization.EMA` is kept: diffusers' `EMAModel` uses decay 0 at its first update (it copies the weights)
    where the existing recipe uses min(decay, 1/10), so every EMA weight of a run would change."""
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    ours, theirs = optimization.EMA(model, decay=0.99), EMAModel(model.parameters(), decay=0.99)
    with torch.no_grad():
        model.weight.add_(1.0)
    ours.update(model)
    theirs.step(model.parameters())
    assert torch.equal(theirs.shadow_params[0], model.weight)  # decay 0: a copy
    assert not torch.equal(ours.shadow["weight"], model.weight)  # decay 0.1
    assert torch.allclose(ours.shadow["weight"], model.weight - 0.1)
