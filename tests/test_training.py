"""Training entry points: schedule and loss math, losses, checkpoints, exact resumption after a SIGKILL, and a real
two-process (gloo) run against a one-process run with the same global batch.

Everything runs on tiny models (8x8 images, patch_nums (1, 2, 4)) and slices of the real Fashion-MNIST.
"""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from var_hf import MultiScaleVQVAE, VARTransformer
from var_hf.data import ImageTransform, load_fashion_mnist
from var_hf.file_utils import cpu_computes_natively
from var_hf.commands import UsageError
from var_hf.commands import tokenize_dataset as tokenize_cmd
from var_hf.commands import train_var as train_var_cmd
from var_hf.commands import train_vqvae as train_vqvae_cmd
from var_hf.commands.train_var import build_parser
from var_hf.training import arguments, checkpointing, losses, optimization, trackers, train_var, train_vqvae

from conftest import make_var_config, make_vqvae_config, needs_fmnist

pytestmark = needs_fmnist

TINY_VAR = ["--depth", "2", "--embed_dim", "32", "--num_heads", "2", "--max_train_samples", "64",
            "--max_val_samples", "16", "--batch_size", "8", "--no_progress_bar", "--no_card_samples"]
TINY_VQVAE = ["--base_channels", "32", "--channel_multipliers", "1,2", "--num_res_blocks", "1", "--no_attention",
              "--vocab_size", "32", "--vq_embed_dim", "8", "--patch_nums", "1,2,4", "--max_train_samples", "64",
              "--max_val_samples", "16", "--batch_size", "8", "--no_progress_bar"]


TRAIN_VAR_SCRIPT = os.path.join(os.path.dirname(train_var.__file__), "train_var.py")

# Run `var-hf train-var ARGS` in a subprocess that SIGKILLs itself at a chosen point of the save of step N: "after"
# the checkpoint is complete, or "during" it (after accelerate's files, before our files, manifest and rename). The
# hook lives only here, in the test.
KILL_HELPER = """
import os, signal, sys
from var_hf.training import checkpointing
from var_hf.commands.train_var import main
step, when = int(sys.argv[1]), sys.argv[2]
save = checkpointing.CheckpointManager.save
def killing_save(self, at, tensors=None, extra=None):
    if at == step and when == "during":
        real = self.accelerator.save_state
        def save_state(path):
            real(path)
            os.kill(os.getpid(), signal.SIGKILL)
        self.accelerator.save_state = save_state
    out = save(self, at, tensors, extra)
    if at == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
checkpointing.CheckpointManager.save = killing_save
sys.exit(main(sys.argv[3:]))
"""


def _subprocess_env():
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(output_dir):
    with open(os.path.join(output_dir, "logs", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _train_losses(output_dir):
    return {r["step"]: r["train/loss"] for r in _metrics(output_dir) if "train/loss" in r}


def _weights(folder):
    return load_file(glob.glob(os.path.join(folder, "*.safetensors"))[0])


# ----------------------------------------------------------------------------------------------------------------------
# Schedule, parameter groups, EMA, loss
# ----------------------------------------------------------------------------------------------------------------------


def test_lr_schedule_follows_the_reference():
    # Reference lr_wd_annealing('lin0', wp_it=10, max_it=110, wp0=0.005, wpe=0.01).
    lr = lambda step: optimization.lr_ratio(step, 10, 110, "lin0", 0.005, 0.01)  # noqa: E731
    assert lr(0) == pytest.approx(0.005)
    assert lr(5) == pytest.approx(0.005 + 0.995 * 0.5)
    assert lr(10) == 1.0 and lr(14) == 1.0  # flat for the first 5% after warm-up
    assert lr(109) == pytest.approx(0.01)  # ends at wpe
    passed = (60 - 10) / (109 - 10)
    assert lr(60) == pytest.approx(0.01 + 0.99 * (1 - passed) / 0.95)
    assert optimization.lr_ratio(109, 10, 110, "cos", 0.005, 0.01) == pytest.approx(0.01)
    assert optimization.lr_ratio(50, 10, 110, "const") == 1.0
    with pytest.raises(ValueError, match="Unknown lr schedule"):
        optimization.lr_ratio(50, 10, 110, "bogus")
    args = arguments.TrainingArguments(output_dir="unused", lr=None, base_lr=1e-4, batch_size=768)
    assert args.peak_lr == pytest.approx(3e-4)  # base_lr * batch / 256


def test_param_groups_exclude_embeddings_norms_and_biases():
    model = VARTransformer(make_var_config())
    groups = optimization.param_groups(model, train_var.VAR_NO_DECAY_KEYS)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["wd_scale"] == 1.0 and groups[1]["wd_scale"] == 0.0
    assert {"pos_start", "pos_embedding", "level_embedding.weight", "blocks.0.attn.log_scale",
            "blocks.0.attn.q_bias", "head.bias"} <= no_decay
    assert {"class_embedding.weight", "blocks.0.attn.qkv.weight", "word_embed.weight", "head.weight"} <= decay
    assert decay.isdisjoint(no_decay) and len(decay | no_decay) == len(names)


def test_ema_tracks_and_restores():
    model = torch.nn.Linear(2, 2)
    ema = optimization.EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], start + 0.9)
    other = optimization.EMA(torch.nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    target = torch.nn.Linear(2, 2)
    other.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"]) and other.num_updates == 1


def test_training_loss_is_the_models_loss_and_progressive_weights():
    torch.manual_seed(0)
    config = make_var_config(label_smoothing=0.1)
    model = VARTransformer(config).eval()
    labels = torch.tensor([0, 3])
    tf_input = torch.randn(2, config.seq_len - 1, config.vq_embed_dim)
    gt = torch.randint(0, config.vocab_size, (2, config.seq_len))
    out = model(labels, tf_input, labels=gt)
    args = arguments.VARModelArguments(vqvae="unused", progressive=0.0, progressive_start=1)
    weights = train_var.token_weights(config, 0, 100, args, 10)
    ce = torch.nn.functional.cross_entropy(out.logits.view(-1, config.vocab_size), gt.view(-1), label_smoothing=0.1,
                                           reduction="none").view(2, -1)
    assert torch.allclose(ce.mul(weights).sum(-1).mean(), out.loss)  # 1/L each: the mean over all L tokens
    metrics = train_var.scale_metrics(out.logits, gt, config)
    assert metrics["Lt"] == pytest.approx(metrics["L_4x4"]) and metrics["Acct"] == pytest.approx(metrics["acc_4x4"])
    per_scale = sum(metrics[f"L_{pn}x{pn}"] * pn * pn for pn in config.patch_nums) / config.seq_len
    assert metrics["Lm"] == pytest.approx(per_scale, rel=1e-5)

    # Progressive: scales 0..1 during warm-up, the last scale ramped in, then everything.
    args = arguments.VARModelArguments(vqvae="unused", progressive=0.5, progressive_start=1, progressive_warmup_steps=4)
    assert train_var.progressive_scale(5, 100, 10, 0.5, 1, 3) == 1
    w = train_var.token_weights(config, 5, 100, args, 10)
    assert torch.all(w[:5] == 1 / 21) and torch.all(w[5:] == 0)
    w = train_var.token_weights(config, 40, 100, args, 10)  # halfway to step 50: scale 2 (the last) is on
    assert train_var.progressive_scale(40, 100, 10, 0.5, 1, 3) == -1 and torch.all(w == 1 / 21)
    w = train_var.token_weights(config, 29, 100, args, 10)
    assert train_var.progressive_scale(29, 100, 10, 0.5, 1, 3) == -1 or torch.all(w[5:] < 1 / 21)

    # Four scales (1, 2, 3, 4: 1 + 4 + 9 + 16 = 30 tokens), so a middle scale is added after the first stage and its
    # weight ramps up: scale 2 enters at step 21 (warm-up 10, end 50) and reaches full weight 4 steps later.
    config4 = make_var_config(patch_nums=(1, 2, 3, 4))
    pg = (100, 10, 0.5, 1, 4)
    assert [train_var.progressive_scale(s, *pg) for s in (10, 20, 21, 39, 40)] == [1, 1, 2, 2, -1]
    weights = [train_var.token_weights(config4, s, 100, args, 10) for s in (20, 21, 22, 23, 24, 30)]
    assert torch.all(weights[0][:5] == 1 / 30) and torch.all(weights[0][5:] == 0)  # scale 2 not yet in
    ramp = [w[5:14].unique().item() * 30 for w in weights[1:]]
    assert ramp == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])  # (step - 21 + 1) / 4, capped at 1
    assert all(torch.all(w[:5] == 1 / 30) and torch.all(w[14:] == 0) for w in weights[1:])


# ----------------------------------------------------------------------------------------------------------------------
# Gradient checkpointing, LPIPS, discriminator, CLI
# ----------------------------------------------------------------------------------------------------------------------


def _grads(model, loss_fn):
    model.zero_grad()
    loss_fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    var = VARTransformer(make_var_config()).train()
    var.config.cond_drop_rate = 0.0
    labels, tf_input = torch.tensor([1, 2]), torch.randn(2, 20, 8)
    gt = torch.randint(0, 32, (2, 21))
    reference = _grads(var, lambda: var(labels, tf_input, labels=gt).loss)
    var.activation_checkpointing_enable()
    checkpointed = _grads(var, lambda: var(labels, tf_input, labels=gt).loss)
    assert reference.keys() == checkpointed.keys()
    assert all(torch.allclose(reference[k], checkpointed[k], atol=1e-6) for k in reference)
    var.activation_checkpointing_disable()
    var.enable_selective_checkpointing()  # recomputes only pointwise work: the very same numbers
    selective = _grads(var, lambda: var(labels, tf_input, labels=gt).loss)
    assert all(torch.equal(reference[k], selective[k]) for k in reference)

    vqvae = MultiScaleVQVAE(make_vqvae_config()).train()
    pixels = torch.rand(2, 3, 8, 8) * 2 - 1
    loss = lambda: (vqvae(pixels).reconstruction - pixels).square().mean()  # noqa: E731
    reference = _grads(vqvae, loss)
    train_vqvae.enable_vqvae_checkpointing(vqvae)
    checkpointed = _grads(vqvae, loss)
    assert all(torch.allclose(reference[k], checkpointed[k], atol=1e-6) for k in reference)
    assert set(vqvae.state_dict()) == set(MultiScaleVQVAE(make_vqvae_config()).state_dict())


def test_lpips_loads_user_files_and_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        losses.LPIPS.from_files([str(tmp_path / "vgg16.pth")])
    torch.manual_seed(0)
    reference = losses.LPIPS()
    state = reference.state_dict()
    # torchvision's VGG16 layout and the lpips package's heads, in two files.
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, tmp_path / "vgg16.pth")
    torch.save({f"lin{k}.model.1.weight": state[f"lins.{k}.weight"].abs() for k in range(5)}, tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="linear heads"):
        losses.LPIPS.from_files([str(tmp_path / "vgg16.pth")])
    lpips = losses.LPIPS.from_files([str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth")])
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    assert (lpips(x, y) > 0).all() and lpips(x, y).shape == (2,)


def test_patch_discriminator_and_adaptive_weight():
    disc = losses.PatchDiscriminator(3, 16, num_layers=1)
    assert disc(torch.randn(2, 3, 8, 8)).shape == (2, 1, 2, 2)
    assert losses.PatchDiscriminator(3, 16, num_layers=3)(torch.randn(1, 3, 32, 32)).shape == (1, 1, 2, 2)
    last = torch.nn.Parameter(torch.randn(4))
    weight = losses.adaptive_gan_weight((last * 2).sum(), (last * 0.5).sum(), last)
    assert weight.item() == pytest.approx(4.0, rel=1e-3)
    assert losses.hinge_d_loss(torch.full((2,), 2.0), torch.full((2,), -2.0)).item() == 0.0


COMMAND_DATACLASSES = {
    "train-vqvae": (arguments.VQVAEModelArguments, arguments.DataArguments, arguments.VQVAETrainingArguments),
    "train-var": (arguments.VARModelArguments, arguments.DataArguments, arguments.TrainingArguments),
    "tokenize": (arguments.TokenizeArguments,),
}


@pytest.mark.parametrize("command", sorted(COMMAND_DATACLASSES))
def test_every_option_is_a_flag_with_help_in_both_spellings(command):
    parser = build_parser(COMMAND_DATACLASSES[command], command, "")
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.option_strings[0].startswith("--") and "_" not in action.option_strings[0], action.dest
        assert "--" + action.dest in action.option_strings, action.dest  # --x_y is accepted
        assert action.help, f"--{action.dest} has no help text"
    required = {"train-vqvae": [], "train-var": ["--vqvae", "v"], "tokenize": ["--vqvae", "v"]}[command]
    for spelling in ("--output_dir", "--output-dir"):
        parsed = parser.parse_args_into_dataclasses(args=required + [spelling, "out"])
        assert [p.output_dir for p in parsed if hasattr(p, "output_dir")] == ["out"]


def test_patch_schedules_and_accumulation_flag_spellings():
    parser = build_parser(COMMAND_DATACLASSES["train-vqvae"], "train-vqvae", "")
    for words in (["1,2,4"], ["1_2_4"], ["1", "2", "4"]):
        model_args, _, training_args = parser.parse_args_into_dataclasses(
            args=["--output_dir", "o", "--patch_nums", *words, "--grad_accum", "3"])
        assert model_args.patch_nums == [1, 2, 4] and training_args.gradient_accumulation_steps == 3
    _, _, training_args = parser.parse_args_into_dataclasses(args=["--output-dir", "o", "--gradient-accumulation-steps",
                                                                   "2"])
    assert training_args.gradient_accumulation_steps == 2
    assert arguments.parse_int_list("1_2_3_4_5_6_8_10_13_16") == [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


def test_global_batch_must_split_evenly():
    assert optimization.per_process_batch_size(64, 2, 4) == 8
    with pytest.raises(ValueError, match="multiple"):
        optimization.per_process_batch_size(10, 4, 1)


# ----------------------------------------------------------------------------------------------------------------------
# End to end, in process
# ----------------------------------------------------------------------------------------------------------------------


def test_vqvae_training_with_gan_dead_codes_ema_and_exact_resume(tmp_path):
    out = str(tmp_path / "vqvae")
    argv = TINY_VQVAE + [
        "--output_dir", out, "--max_steps", "4", "--save_every", "2", "--keep_last", "2", "--grad_accum", "2",
        "--lr", "1e-3", "--l1_weight", "1", "--disc_weight", "0.5", "--disc_start", "1", "--disc_layers", "1",
        "--disc_channels", "16", "--dead_code_steps", "1", "--dead_code_every", "1", "--ema_decay", "0.9",
        "--gradient_checkpointing", "--log_with", "jsonl,tensorboard", "--log_every", "1", "--hflip",
    ]
    assert train_vqvae_cmd.main(argv) == 0
    records = _metrics(out)
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert {"usage/1x1", "usage/2x2", "usage/4x4", "train/vq_loss", "train/d_loss", "train/d_weight"} <= set(train[-1])
    assert sum(r["dead_codes_reset"] for r in train) > 0
    val = [r for r in records if "val/psnr" in r][-1]
    assert 0 < val["val/psnr"] < 60 and "val_ema/psnr" in val
    assert glob.glob(os.path.join(out, "logs", "train_vqvae", "events.out.tfevents.*"))
    config = json.load(open(os.path.join(out, "training_config.json")))
    assert config["args"]["disc_weight"] == 0.5 and config["final"]["exported_weights"] in ("ema", "raw")
    assert sorted(os.listdir(out)) == ["checkpoint-00000002", "checkpoint-00000004", "logs", "training_config.json",
                                       "vqvae"]
    exported = MultiScaleVQVAE.from_pretrained(os.path.join(out, "vqvae"))
    assert exported.config.patch_nums == [1, 2, 4]

    # Resume from step 2 (discriminator, its optimizer, EMA and the dead-code counters come back): same weights.
    final = _weights(os.path.join(out, "checkpoint-00000004"))
    shutil.rmtree(os.path.join(out, "checkpoint-00000004"))
    shutil.rmtree(os.path.join(out, "vqvae"))
    assert train_vqvae_cmd.main(argv + ["--resume", "latest"]) == 0
    resumed = _weights(os.path.join(out, "checkpoint-00000004"))
    assert all(torch.equal(final[k], resumed[k]) for k in final)
    assert [r["step"] for r in _metrics(out) if "train/loss" in r] == [1, 2, 3, 4]  # no duplicated steps


def test_decoder_only_fine_tuning_keeps_every_token_map(tmp_path, vqvae_dir):
    out = str(tmp_path / "decoder")
    argv = TINY_VQVAE + ["--init_from", vqvae_dir, "--decoder_only", "--output_dir", out, "--max_steps", "3",
                         "--lr", "1e-2", "--l1_weight", "1", "--ema_decay", "0.5"]
    assert train_vqvae_cmd.main(argv) == 0
    before = MultiScaleVQVAE.from_pretrained(vqvae_dir).eval()
    after = MultiScaleVQVAE.from_pretrained(os.path.join(out, "vqvae")).eval()
    old, new = dict(before.named_parameters()), dict(after.named_parameters())  # buffers are usage statistics
    decoder_keys = [k for k in old if k.startswith(train_vqvae.DECODER_PREFIXES)]
    assert decoder_keys and any(not torch.equal(old[k], new[k]) for k in decoder_keys)
    assert [k for k in old if k not in decoder_keys and not torch.equal(old[k], new[k])] == []
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        tokens_before, tokens_after = before.encode_tokens(images), after.encode_tokens(images)
        assert not torch.equal(before.reconstruct(images), after.reconstruct(images))
    assert all(torch.equal(a, b) for a, b in zip(tokens_before, tokens_after))


@pytest.mark.parametrize("extra, message", [
    ([], "--decoder-only fine-tunes a trained tokenizer"),
    (["--init_from", "x", "--dead_code_steps", "5"], "--decoder-only freezes the codebook"),
])
def test_decoder_only_needs_a_tokenizer_and_a_fixed_codebook(tmp_path, extra, message):
    with pytest.raises(UsageError, match=message):
        train_vqvae_cmd.main(TINY_VQVAE + ["--decoder_only", "--output_dir", str(tmp_path / "out")] + extra)
    assert not (tmp_path / "out").exists()


def test_full_and_selective_checkpointing_exclude_each_other(tmp_path):
    argv = TINY_VAR + ["--vqvae", str(tmp_path / "unused"), "--output_dir", str(tmp_path / "out"),
                       "--gradient_checkpointing", "--selective_checkpointing"]
    with pytest.raises(UsageError, match="Choose one of --gradient-checkpointing"):
        train_var_cmd.main(argv)
    assert not (tmp_path / "out").exists()


def test_tokenize_then_train_var_writes_a_loadable_pipeline(tmp_path, vqvae_dir):
    tokens = str(tmp_path / "tokens")
    assert tokenize_cmd.main(["--vqvae", vqvae_dir, "--output_dir", tokens, "--splits", "train,test",
                          "--max_samples", "32", "--batch_size", "16"]) == 0
    import datasets

    saved = datasets.load_from_disk(tokens)
    assert set(saved) == {"train", "test"} and len(saved["train"]) == 32
    assert len(saved["train"][0]["tokens"]) == 21 and saved["train"].features["label"].names[7] == "Sneaker"
    vqvae = MultiScaleVQVAE.from_pretrained(vqvae_dir)
    first_image = load_fashion_mnist("train", max_samples=1)[0]["image"]
    expected = torch.cat(vqvae.encode_tokens(ImageTransform(8, random_crop=False)(first_image)[None]), dim=1)
    assert saved["train"][0]["tokens"] == expected[0].tolist()

    out = str(tmp_path / "var")
    argv = [a for a in TINY_VAR if a != "--no_card_samples"] + [
        "--vqvae", vqvae_dir, "--tokenized_dataset", tokens, "--output_dir", out, "--max_steps", "3",
        "--val_split", "validation", "--save_every", "10", "--label_smoothing", "0.1", "--log_every", "1",
        "--gradient_checkpointing", "--ema_decay", "0.9", "--export_weights", "ema",
    ]
    assert train_var_cmd.main(argv) == 0
    record = [r for r in _metrics(out) if "val/Lm" in r][-1]
    assert {"val/Lm", "val/Lt", "val/Accm", "val/Acct", "val/L_4x4", "val_ema/Lm"} <= set(record)
    from var_hf.pipelines import VARPipeline

    pipe = VARPipeline.from_pretrained(os.path.join(out, "pipeline"))
    assert pipe.transformer.config.id2label[7] == "Sneaker" and pipe.transformer.config.num_classes == 10
    images = pipe(class_labels=[0, "Sneaker"], guidance_scale=2.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 8, 8, 3) and images.min() >= 0 and images.max() <= 1
    assert os.path.exists(os.path.join(out, "pipeline", "README.md"))
    ema = load_file(os.path.join(out, "checkpoint-00000003", "ema.safetensors"))
    exported = VARTransformer.from_pretrained(os.path.join(out, "transformer"))
    assert torch.equal(exported.head.weight, ema["head.weight"])  # --export_weights ema

    other = str(tmp_path / "other_vqvae")
    torch.manual_seed(1)
    MultiScaleVQVAE(make_vqvae_config()).save_pretrained(other)
    with pytest.raises(ValueError, match="tokenized by another VQVAE"):
        train_var_cmd.main(argv + ["--vqvae", other, "--output_dir", str(tmp_path / "bad")])


def test_corrupt_or_incompatible_checkpoints_fail_loudly(tmp_path, vqvae_dir):
    out = str(tmp_path / "var")
    argv = TINY_VAR + ["--vqvae", vqvae_dir, "--output_dir", out, "--max_steps", "2", "--save_every", "1",
                       "--validate_every", "-1"]
    assert train_var_cmd.main(argv) == 0
    with pytest.raises(checkpointing.CheckpointError, match="transformer_config"):
        train_var_cmd.main(argv + ["--resume", "latest", "--depth", "3"])
    with pytest.raises(checkpointing.CheckpointError, match="batch_size"):
        train_var_cmd.main(argv + ["--resume", "latest", "--batch_size", "16"])
    with pytest.raises(UsageError, match="no such checkpoint"):
        train_var_cmd.main(argv + ["--resume", str(tmp_path / "nope")])
    latest = os.path.join(out, "checkpoint-00000002")
    with open(os.path.join(latest, "model.safetensors"), "r+b") as f:
        f.truncate(100)
    with pytest.raises(checkpointing.CheckpointError, match="Could not load checkpoint.*model.safetensors"):
        train_var_cmd.main(argv + ["--resume", "latest"])
    os.remove(os.path.join(latest, checkpointing.TRAINER_STATE_NAME))
    with pytest.raises(checkpointing.CheckpointError, match="not a complete checkpoint"):
        train_var_cmd.main(argv + ["--resume", "latest"])
    # A save interrupted before the rename leaves only a .tmp folder: ignored and cleaned up.
    os.makedirs(os.path.join(out, ".tmp-checkpoint-00000009"))
    shutil.rmtree(latest)
    assert train_var_cmd.main(argv + ["--resume", "latest"]) == 0
    assert not glob.glob(os.path.join(out, ".tmp-*"))


@pytest.mark.parametrize("device_type, precision, native, warns", [
    ("cpu", "bf16", False, True), ("cpu", "fp16", False, True), ("cpu", "fp16", True, False),
    ("cpu", "bf16", True, False), ("cpu", "no", False, False), ("cuda", "bf16", False, False),
])
def test_autocast_the_cpu_emulates_is_named_with_its_fix(monkeypatch, device_type, precision, native, warns):
    import var_hf.file_utils

    monkeypatch.setattr(var_hf.file_utils, "cpu_computes_natively", lambda precision: native)  # the hardware probe
    message = trackers.emulated_autocast_warning(device_type, precision)
    if not warns:
        assert message is None
    else:
        assert f"--mixed_precision {precision}" in message and "--mixed_precision no" in message
        assert "benchmarks/cpu_autocast.py" in message


def test_native_bf16_probe_agrees_with_the_cpu_flags():
    flags = {torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()}
    if flags == {False}:  # without either instruction set oneDNN cannot compute bf16 natively
        assert not cpu_computes_natively("bf16")
    assert cpu_computes_natively("bf16") == cpu_computes_natively("bfloat16")
    assert cpu_computes_natively("bf16") == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert cpu_computes_natively("fp16") == cpu_computes_natively("float16") == torch.cpu._is_amx_fp16_supported()
    with pytest.raises(ValueError, match="bf16, bfloat16, fp16 or float16"):
        cpu_computes_natively("float32")


# ----------------------------------------------------------------------------------------------------------------------
# Real processes: SIGKILL + resume, and two processes against one
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after", "during"])
def test_killed_training_resumes_to_identical_weights(tmp_path, vqvae_dir, when):
    """A real training process is SIGKILLed right after step 4's checkpoint is complete, or in the middle of writing
    it; resuming reaches step 6 with the same weights, EMA and losses as a run that was never interrupted (class
    dropout, drop path, random crops and flips included)."""
    common_args = TINY_VAR + [
        "--vqvae", vqvae_dir, "--max_steps", "6", "--save_every", "2", "--log_every", "1", "--grad_accum", "2",
        "--ema_decay", "0.9", "--cond_drop_rate", "0.5", "--drop_path_rate", "0.2", "--hflip",
        "--label_smoothing", "0.1", "--validate_every", "-1", "--lr", "1e-3",
    ]
    killed = str(tmp_path / "killed")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_HELPER, "4", when, *common_args, "--output_dir", killed],
        env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    left = sorted(os.listdir(killed))
    if when == "after":
        assert left[:2] == ["checkpoint-00000002", "checkpoint-00000004"]
    else:  # the interrupted save left only its temporary folder
        assert "checkpoint-00000004" not in left and ".tmp-checkpoint-00000004" in left
    assert not os.path.exists(os.path.join(killed, "transformer"))
    # Starting again without --resume would replace the killed run's checkpoints: refused.
    with pytest.raises(UsageError, match="--resume latest"):
        train_var_cmd.main(common_args + ["--output_dir", killed])

    straight = str(tmp_path / "straight")
    assert train_var_cmd.main(common_args + ["--output_dir", straight]) == 0
    assert train_var_cmd.main(common_args + ["--output_dir", killed, "--resume", "latest"]) == 0

    expected, got = _weights(os.path.join(straight, "transformer")), _weights(os.path.join(killed, "transformer"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    ema = [load_file(os.path.join(d, "checkpoint-00000006", "ema.safetensors")) for d in (straight, killed)]
    assert ema[0].keys() == ema[1].keys() and all(torch.equal(ema[0][k], ema[1][k]) for k in ema[0])
    assert _train_losses(straight) == _train_losses(killed)


def test_training_under_emulated_bf16_warns_before_the_first_step(tmp_path, vqvae_dir):
    """A real `train_var.py --mixed_precision bf16` process on this CPU: the warning is logged before training starts
    exactly when the CPU lacks native bf16; the run still trains and records the CPU it ran on."""
    out = str(tmp_path / "bf16")
    proc = subprocess.run(
        [sys.executable, TRAIN_VAR_SCRIPT, *TINY_VAR, "--vqvae", vqvae_dir, "--max_steps", "1", "--validate_every",
         "-1", "--mixed_precision", "bf16", "--output_dir", out],
        env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    native = cpu_computes_natively("bf16")
    assert ("without native bf16" in log) == (not native), log[-3000:]
    if not native:
        assert log.index("without native bf16") < log.index("steps 0->1")
    environment = json.load(open(os.path.join(out, "training_config.json")))["environment"]
    assert environment["mixed_precision"] == "bf16" and environment["cpu_native_bf16"] == native


def test_two_processes_match_one_process(tmp_path, vqvae_dir):
    """`accelerate launch --multi_gpu --num_processes 2 src/var_hf/training/train_var.py` on CPU (gloo; the launch
    form docs/training.md shows): each process takes half of every global batch (contiguous slices of the same
    permutation), so losses and weights match a one-process run with the same --batch_size. Class dropout and drop
    path are off: their per-process random streams legitimately differ."""
    args = TINY_VAR + ["--vqvae", vqvae_dir, "--max_steps", "3", "--log_every", "1", "--cond_drop_rate", "0",
                       "--drop_path_rate", "0", "--lr", "1e-3", "--save_every", "10"]
    two = str(tmp_path / "two")
    proc = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), TRAIN_VAR_SCRIPT, *args,
         "--output-dir", two],
        env=_subprocess_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "INFO accelerate" not in proc.stdout + proc.stderr  # accelerate's INFO lines are off by default
    run_config = json.load(open(os.path.join(two, "training_config.json")))
    assert run_config["environment"]["num_processes"] == 2 and run_config["micro_batch_per_process"] == 4

    one = str(tmp_path / "one")
    assert train_var_cmd.main(args + ["--output_dir", one]) == 0
    losses_two, losses_one = _train_losses(two), _train_losses(one)
    assert losses_two.keys() == losses_one.keys() == {1, 2, 3}
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-5)
    val_two = [r for r in _metrics(two) if "val/Lm" in r][-1]
    val_one = [r for r in _metrics(one) if "val/Lm" in r][-1]
    assert val_two["val/samples"] == val_one["val/samples"] == 16
    assert val_two["val/Lm"] == pytest.approx(val_one["val/Lm"], rel=1e-5)
    w_two, w_one = _weights(os.path.join(two, "transformer")), _weights(os.path.join(one, "transformer"))
    assert all(torch.allclose(w_two[k], w_one[k], atol=1e-5) for k in w_one)
