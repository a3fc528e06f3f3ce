"""Training arguments as dataclasses (parsed by transformers' `HfArgumentParser` in `var_hf.commands.train_*`).

Every dataclass checks its values in `validate()`, which raises `ValueError` naming the option and the fix; the commands
call it before the Accelerator starts, so a bad argument never costs a model load.

Batch sizes. `--batch-size` is the *global* batch of one optimizer step, as the reference's `--bs`. Each process
takes `batch_size / (num_processes * gradient_accumulation_steps)` samples per micro-batch, so the same command gives the
same optimisation on one or several processes (see [`var_hf.data.TrainBatchSampler`]).
"""

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from var_hf.commands import option_flag  # light: argparse only
from var_hf.patch_schedules import parse_int_list, parse_patch_nums

LR_SCHEDULES = ("lin0", "lin", "lin00", "cos", "exp", "const")
TRACKERS = ("jsonl", "tensorboard", "none")


def _help(text: str, **extra) -> Dict[str, Any]:
    return {"help": text, **extra}


def _check(problems: List[str], ok: bool, message: str):
    if not ok:
        problems.append(message)


def _raise(problems: Sequence[str]):
    if problems:
        raise ValueError("; ".join(problems) + ".")


def _int_list_field(default: Sequence[int], text: str):
    return field(default_factory=lambda: list(default), metadata=_help(text))


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class DataArguments:
    dataset: str = field(default="fashion-mnist", metadata=_help(
        "'fashion-mnist' (Debian's idx files), an image folder (ImageNet's train/<class>/ layout, or plain images for "
        "stage 1; 'imagefolder:/path' works too), a save_to_disk folder or a Hub dataset id."))
    image_column: str = field(default="image", metadata=_help("Name of the image column."))
    label_column: str = field(default="label", metadata=_help("Name of the class-label column."))
    train_split: str = field(default="train", metadata=_help("Split used for training."))
    val_split: str = field(default="validation", metadata=_help(
        "Split used for validation ('validation', 'val' and 'test' stand in for one another)."))
    image_size: Optional[int] = field(default=None, metadata=_help(
        "Training resolution; defaults to the VQVAE's (finest patch side x downsample factor)."))
    mid_ratio: float = field(default=1.125, metadata=_help(
        "Resize the shorter side to round(mid_ratio * image_size) (Lanczos) before cropping, as the reference."))
    hflip: bool = field(default=False, metadata=_help("Random horizontal flips during training."))
    max_train_samples: Optional[int] = field(default=None, metadata=_help("Use only the first N training samples."))
    max_val_samples: Optional[int] = field(default=None, metadata=_help("Use only the first N validation samples."))
    num_workers: int = field(default=0, metadata=_help("DataLoader worker processes per training process."))

    def validate(self):
        problems: List[str] = []
        _check(problems, bool(self.dataset.strip()), "--dataset must not be empty")
        _check(problems, self.image_size is None or self.image_size > 0, f"--image-size must be > 0, got {self.image_size}")
        _check(problems, self.mid_ratio >= 1, f"--mid-ratio must be >= 1 (resize, then crop), got {self.mid_ratio}")
        for name in ("max_train_samples", "max_val_samples"):
            value = getattr(self, name)
            _check(problems, value is None or value > 0, f"{option_flag(name)} must be > 0, got {value}")
        _check(problems, self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}")
        _raise(problems)


# ----------------------------------------------------------------------------------------------------------------------
# Run, optimisation, performance (both stages)
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingArguments:
    output_dir: str = field(metadata=_help("Folder for checkpoints, logs and the exported model."))
    overwrite_output_dir: bool = field(default=False, metadata=_help(
        "Start over in an --output-dir that holds checkpoints of an earlier run (they are deleted)."))
    resume: Optional[str] = field(default=None, metadata=_help(
        "'latest' (the newest checkpoint in --output-dir; a fresh start if there is none) or a checkpoint folder."))
    seed: int = field(default=0, metadata=_help("Seed of the model init, data order and augmentation."))
    max_steps: Optional[int] = field(default=None, metadata=_help("Optimizer steps to train (overrides --epochs)."))
    epochs: float = field(default=1.0, metadata=_help("Epochs to train when --max-steps is not given."))
    save_every: int = field(default=1000, metadata=_help("Write a checkpoint every N steps (and at the end)."))
    keep_last: int = field(default=3, metadata=_help("How many checkpoints to keep (older ones are deleted)."))
    log_every: int = field(default=10, metadata=_help("Log metrics every N steps."))
    log_with: str = field(default="jsonl", metadata=_help(
        "Comma-separated trackers: 'jsonl' (logs/metrics.jsonl), 'tensorboard', or 'none'."))
    validate_every: int = field(default=0, metadata=_help("Validate every N steps (0: only at the end; -1: never)."))
    no_progress_bar: bool = field(default=False, metadata=_help("Disable the tqdm progress bar."))
    verbose: bool = field(default=False, metadata=_help(
        "Show accelerate's INFO lines and transformers' loading bars (off by default)."))

    batch_size: int = field(default=256, metadata=_help(
        "Global batch per optimizer step (all processes and accumulation steps together)."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help(
        "Gradient accumulation steps (--grad-accum is accepted too).", aliases=["--grad_accum", "--grad-accum"]))
    lr: Optional[float] = field(default=None, metadata=_help("Peak learning rate; defaults to base_lr * batch_size / 256."))
    base_lr: float = field(default=1e-4, metadata=_help("Learning rate per 256 samples (reference's tblr)."))
    lr_schedule: str = field(default="lin0", metadata=_help(
        "Decay after warm-up: lin0 (reference default), lin, linT (e.g. lin0.8), lin00, cos, exp or const."))
    warmup_ratio: float = field(default=0.02, metadata=_help("Warm-up length as a fraction of the run (reference: ep/50)."))
    warmup_steps: Optional[int] = field(default=None, metadata=_help("Warm-up length in steps (overrides the ratio)."))
    warmup_start: float = field(default=0.005, metadata=_help("Initial lr ratio of the warm-up (wp0)."))
    final_lr_ratio: float = field(default=0.01, metadata=_help("Final lr ratio at the end of training (wpe)."))
    weight_decay: float = field(default=0.05, metadata=_help("AdamW weight decay (matrices only)."))
    weight_decay_end: Optional[float] = field(default=None, metadata=_help(
        "Weight decay at the end (cosine from --weight-decay); defaults to constant."))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1."))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW beta2."))
    grad_clip: float = field(default=2.0, metadata=_help("Clip the global gradient norm (<= 0: off)."))

    mixed_precision: Optional[str] = field(default=None, metadata=_help(
        "Autocast precision (defaults to the accelerate config, else 'no').", choices=["no", "fp16", "bf16"]))
    gradient_checkpointing: bool = field(default=False, metadata=_help("Recompute activations in the backward pass."))
    compile: bool = field(default=False, metadata=_help("torch.compile the trained model (inductor)."))
    ema_decay: float = field(default=0.0, metadata=_help("Keep an exponential moving average of the weights (0: off)."))
    export_weights: str = field(default="best", metadata=_help(
        "Weights of the exported model: 'ema', 'raw', or 'best' (EMA or raw, whichever validates better; raw without "
        "EMA).", choices=["best", "ema", "raw"]))

    @property
    def peak_lr(self) -> float:
        """The reference's rule `lr = base_lr * global_batch / 256` unless `--lr` is given."""
        return self.lr if self.lr is not None else self.base_lr * self.batch_size / 256

    @property
    def trackers(self) -> List[str]:
        return [t.strip().lower() for t in self.log_with.split(",") if t.strip()]

    def validate(self):
        problems: List[str] = []
        _check(problems, bool(self.output_dir.strip()), "--output-dir must not be empty")
        _check(problems, self.max_steps is None or self.max_steps > 0,
               f"--max-steps must be > 0, got {self.max_steps}")
        _check(problems, self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        for name in ("save_every", "keep_last", "log_every", "batch_size", "gradient_accumulation_steps"):
            _check(problems, getattr(self, name) >= 1, f"{option_flag(name)} must be >= 1, got {getattr(self, name)}")
        _check(problems, self.validate_every >= -1, f"--validate-every must be >= -1, got {self.validate_every}")
        _check(problems, self.lr is None or self.lr > 0, f"--lr must be > 0, got {self.lr}")
        _check(problems, self.base_lr > 0, f"--base-lr must be > 0, got {self.base_lr}")
        _check(problems, self.lr_schedule in LR_SCHEDULES or re.fullmatch(r"lin(0?\.\d+)", self.lr_schedule) is not None,
               f"--lr-schedule {self.lr_schedule!r} is unknown; use one of {', '.join(LR_SCHEDULES)} or linT (e.g. lin0.8)")
        _check(problems, 0 <= self.warmup_ratio < 1, f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(problems, self.warmup_steps is None or self.warmup_steps >= 0,
               f"--warmup-steps must be >= 0, got {self.warmup_steps}")
        _check(problems, 0 < self.warmup_start <= 1, f"--warmup-start must be in (0, 1], got {self.warmup_start}")
        _check(problems, 0 < self.final_lr_ratio <= 1, f"--final-lr-ratio must be in (0, 1], got {self.final_lr_ratio}")
        _check(problems, self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        _check(problems, self.weight_decay_end is None or self.weight_decay_end >= 0,
               f"--weight-decay-end must be >= 0, got {self.weight_decay_end}")
        for name in ("adam_beta1", "adam_beta2"):
            _check(problems, 0 <= getattr(self, name) < 1, f"{option_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        _check(problems, 0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        _check(problems, not unknown, f"--log-with: unknown tracker(s) {unknown}; use jsonl, tensorboard or none")
        _check(problems, self.resume is None or bool(self.resume.strip()), "--resume must be 'latest' or a folder")
        _check(problems, not (self.resume and self.overwrite_output_dir),
               "--resume and --overwrite-output-dir exclude each other (continue a run, or start over)")
        _raise(problems)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class VQVAETrainingArguments(TrainingArguments):
    """Stage 1's defaults: no weight decay."""

    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay (matrices only)."))


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: the VQVAE and its losses
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VQVAEModelArguments:
    init_from: Optional[str] = field(default=None, metadata=_help(
        "Fine-tune this saved MultiScaleVQVAE (folder or pipeline); the model options below are then ignored."))
    base_channels: int = field(default=160, metadata=_help("Width of the first encoder level."))
    channel_multipliers: List[int] = _int_list_field(
        (1, 1, 2, 2, 4), "Width multiplier per level, e.g. 1,2,2 (downsampling 2^(levels-1)).")
    num_res_blocks: int = field(default=2, metadata=_help("Residual blocks per encoder level."))
    no_attention: bool = field(default=False, metadata=_help("No self-attention at the lowest level."))
    no_mid_attention: bool = field(default=False, metadata=_help("No self-attention in the middle block."))
    vocab_size: int = field(default=4096, metadata=_help("Codebook size."))
    vq_embed_dim: int = field(default=32, metadata=_help("Code dimension."))
    patch_nums: List[int] = _int_list_field(
        (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), "Token-map sides, coarse to fine, e.g. 1,2,3,4,6,8 (or 1_2_3_4_6_8).")
    beta: float = field(default=0.25, metadata=_help("Commitment weight inside the VQ loss."))
    quant_resi: float = field(default=0.5, metadata=_help("Phi mixing ratio (0 disables phi)."))
    share_quant_resi: int = field(default=4, metadata=_help("Number of shared phi convolutions."))
    using_znorm: bool = field(default=False, metadata=_help("Cosine-similarity code lookup."))

    l1_weight: float = field(default=0.0, metadata=_help("Weight of the L1 reconstruction loss."))
    l2_weight: float = field(default=1.0, metadata=_help("Weight of the L2 reconstruction loss."))
    vq_weight: float = field(default=1.0, metadata=_help("Weight of the VQ + commitment loss."))
    lpips_weight: float = field(default=0.0, metadata=_help("Weight of LPIPS (needs --lpips-weights)."))
    lpips_weights: Optional[List[str]] = field(default=None, metadata=_help(
        "LPIPS weight files: VGG16 (torchvision layout) and the LPIPS v0.1 heads, or one file with both. Nothing is "
        "downloaded."))
    disc_weight: float = field(default=0.0, metadata=_help("Weight of the PatchGAN loss (0: no GAN)."))
    disc_start: int = field(default=0, metadata=_help("Step from which the discriminator is used."))
    disc_layers: int = field(default=3, metadata=_help("Strided layers of the PatchGAN."))
    disc_channels: int = field(default=64, metadata=_help("Width of the PatchGAN's first layer."))
    disc_lr: Optional[float] = field(default=None, metadata=_help("Discriminator peak lr (defaults to the VQVAE's)."))
    no_adaptive_disc_weight: bool = field(default=False, metadata=_help(
        "Use --disc-weight as is, without VQGAN's adaptive gradient balancing."))
    dead_code_steps: int = field(default=0, metadata=_help(
        "Re-initialise codes unused for this many steps to random encoder outputs (0: off)."))
    dead_code_every: int = field(default=50, metadata=_help("Check for dead codes every N steps."))
    decoder_only: bool = field(default=False, metadata=_help(
        "Fine-tune only the decoder (and post_quant_conv) of --init-from: the encoder, codebook and phi stay frozen, "
        "so every image keeps its token maps and a transformer trained on them stays valid."))

    def __post_init__(self):
        self.channel_multipliers = parse_int_list(self.channel_multipliers, "--channel-multipliers")
        self.patch_nums = parse_patch_nums(self.patch_nums, "--patch-nums")

    def validate(self):
        problems: List[str] = []
        for name in ("base_channels", "num_res_blocks", "vq_embed_dim", "disc_layers", "disc_channels",
                     "dead_code_every"):
            _check(problems, getattr(self, name) >= 1, f"{option_flag(name)} must be >= 1, got {getattr(self, name)}")
        _check(problems, self.vocab_size >= 2, f"--vocab-size must be >= 2, got {self.vocab_size}")
        _check(problems, bool(self.channel_multipliers) and min(self.channel_multipliers) >= 1,
               f"--channel-multipliers must be positive integers, got {self.channel_multipliers}")
        _check(problems, len(self.patch_nums) >= 2 and min(self.patch_nums) >= 1
               and all(a < b for a, b in zip(self.patch_nums, self.patch_nums[1:])),
               f"--patch-nums must be at least two strictly increasing sides >= 1, got {self.patch_nums}")
        _check(problems, self.beta >= 0, f"--beta must be >= 0, got {self.beta}")
        _check(problems, 0 <= self.quant_resi <= 1, f"--quant-resi must be in [0, 1], got {self.quant_resi}")
        _check(problems, self.share_quant_resi >= 0, f"--share-quant-resi must be >= 0, got {self.share_quant_resi}")
        for name in ("l1_weight", "l2_weight", "vq_weight", "lpips_weight", "disc_weight"):
            _check(problems, getattr(self, name) >= 0, f"{option_flag(name)} must be >= 0, got {getattr(self, name)}")
        _check(problems, self.l1_weight + self.l2_weight + self.lpips_weight > 0,
               "at least one of --l1-weight, --l2-weight, --lpips-weight must be > 0 (a reconstruction loss)")
        _check(problems, self.lpips_weight == 0 or bool(self.lpips_weights),
               "--lpips-weight > 0 needs --lpips-weights FILE... (nothing is downloaded)")
        _check(problems, self.disc_start >= 0, f"--disc-start must be >= 0, got {self.disc_start}")
        _check(problems, self.disc_lr is None or self.disc_lr > 0, f"--disc-lr must be > 0, got {self.disc_lr}")
        _check(problems, self.dead_code_steps >= 0, f"--dead-code-steps must be >= 0, got {self.dead_code_steps}")
        _check(problems, not self.decoder_only or bool(self.init_from),
               "--decoder-only fine-tunes a trained tokenizer: give it with --init-from")
        _check(problems, not (self.decoder_only and self.dead_code_steps > 0),
               "--decoder-only freezes the codebook: set --dead-code-steps 0")
        _raise(problems)


# ----------------------------------------------------------------------------------------------------------------------
# Stage 2: the transformer
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VARModelArguments:
    vqvae: str = field(metadata=_help(
        "The frozen VQVAE: a MultiScaleVQVAE folder, a train-vqvae output folder or a pipeline."))
    tokenized_dataset: Optional[str] = field(default=None, metadata=_help(
        "Folder written by `var-hf tokenize`; replaces --dataset and skips the VQVAE encoder."))
    init_from: Optional[str] = field(default=None, metadata=_help(
        "Continue from this VARTransformer (folder or pipeline); the model options below are then ignored."))
    depth: int = field(default=16, metadata=_help("Transformer blocks."))
    embed_dim: Optional[int] = field(default=None, metadata=_help("Width (default 64 * depth)."))
    num_heads: Optional[int] = field(default=None, metadata=_help("Attention heads (default depth)."))
    mlp_ratio: float = field(default=4.0, metadata=_help("MLP width over embed_dim."))
    dropout: float = field(default=0.0, metadata=_help("Dropout after attention and MLP."))
    attention_dropout: float = field(default=0.0, metadata=_help("Dropout on attention probabilities."))
    drop_path_rate: Optional[float] = field(default=None, metadata=_help("Stochastic depth (default 0.1 * depth / 24)."))
    cond_drop_rate: float = field(default=0.1, metadata=_help("Class dropout for classifier-free guidance."))
    label_smoothing: float = field(default=0.0, metadata=_help("Label smoothing of the cross-entropy."))
    shared_aln: bool = field(default=False, metadata=_help("Shared AdaLN projection (the d36 model)."))
    no_attn_l2_norm: bool = field(default=False, metadata=_help("Plain attention instead of L2-normalised q/k."))
    init_adaln: float = field(default=0.5, metadata=_help("AdaLN scale/shift init gain (reference aln)."))
    init_adaln_gamma: float = field(default=1e-5, metadata=_help("AdaLN gate init gain (reference alng)."))
    init_head: float = field(default=0.02, metadata=_help("Head init gain (reference hd)."))
    init_std: float = field(default=-1.0, metadata=_help("Init std (<0: sqrt(1 / 3 / embed_dim))."))
    selective_checkpointing: bool = field(default=False, metadata=_help(
        "Recompute only the blocks' pointwise work in the backward pass (keeps matmul and attention outputs): most "
        "of --gradient-checkpointing's memory saving for a fraction of its compute; same gradients."))
    no_card_samples: bool = field(default=False, metadata=_help(
        "Do not draw the sample grid of the exported pipeline's model card."))
    progressive: float = field(default=0.0, metadata=_help(
        "Fraction of the run with progressive scales (0: off; reference --pg)."))
    progressive_start: int = field(default=4, metadata=_help(
        "Index of the last scale trained at the start (reference --pg0)."))
    progressive_warmup_steps: Optional[int] = field(default=None, metadata=_help(
        "Steps over which a newly added scale's loss weight ramps up (default max_steps / 300)."))

    def validate(self):
        problems: List[str] = []
        _check(problems, bool(self.vqvae.strip()), "--vqvae must name a VQVAE folder")
        _check(problems, self.depth >= 1, f"--depth must be >= 1, got {self.depth}")
        _check(problems, self.embed_dim is None or self.embed_dim >= 1, f"--embed-dim must be >= 1, got {self.embed_dim}")
        _check(problems, self.num_heads is None or self.num_heads >= 1, f"--num-heads must be >= 1, got {self.num_heads}")
        if self.depth >= 1 and (self.embed_dim is None or self.embed_dim >= 1) and (
                self.num_heads is None or self.num_heads >= 1):
            width = self.embed_dim if self.embed_dim is not None else 64 * self.depth
            heads = self.num_heads if self.num_heads is not None else self.depth
            _check(problems, width % heads == 0,
                   f"--embed-dim {width} must be divisible by --num-heads {heads}")
        _check(problems, self.mlp_ratio > 0, f"--mlp-ratio must be > 0, got {self.mlp_ratio}")
        for name in ("dropout", "attention_dropout", "cond_drop_rate", "label_smoothing"):
            _check(problems, 0 <= getattr(self, name) < 1, f"{option_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        _check(problems, self.drop_path_rate is None or 0 <= self.drop_path_rate < 1,
               f"--drop-path-rate must be in [0, 1), got {self.drop_path_rate}")
        _check(problems, 0 <= self.progressive < 1, f"--progressive must be in [0, 1), got {self.progressive}")
        _check(problems, self.progressive_start >= 0, f"--progressive-start must be >= 0, got {self.progressive_start}")
        _check(problems, self.progressive_warmup_steps is None or self.progressive_warmup_steps >= 1,
               f"--progressive-warmup-steps must be >= 1, got {self.progressive_warmup_steps}")
        _raise(problems)


@dataclass
class TokenizeArguments:
    vqvae: str = field(metadata=_help("MultiScaleVQVAE folder, train-vqvae output folder or pipeline."))
    output_dir: str = field(metadata=_help("Where to write the tokenized DatasetDict."))
    dataset: str = field(default="fashion-mnist", metadata=_help(
        "'fashion-mnist', an ImageNet-layout image folder ('imagefolder:/path' works too), a save_to_disk folder or a "
        "Hub id."))
    image_column: str = field(default="image", metadata=_help("Name of the image column."))
    label_column: str = field(default="label", metadata=_help("Name of the class-label column."))
    splits: str = field(default="train,validation", metadata=_help("Comma-separated splits to encode."))
    image_size: Optional[int] = field(default=None, metadata=_help("Resolution (default: the VQVAE's)."))
    mid_ratio: float = field(default=1.125, metadata=_help("Resize ratio before the centre crop."))
    hflip_copies: bool = field(default=False, metadata=_help("Also encode a flipped copy of the train split."))
    batch_size: int = field(default=256, metadata=_help("Images per encoder batch and process."))
    max_samples: Optional[int] = field(default=None, metadata=_help("Encode only the first N images of each split."))
    num_workers: int = field(default=0, metadata=_help("DataLoader workers."))
    overwrite: bool = field(default=False, metadata=_help("Replace an existing --output-dir."))
    no_progress_bar: bool = field(default=False, metadata=_help("Disable the tqdm progress bar."))
    verbose: bool = field(default=False, metadata=_help(
        "Show accelerate's INFO lines and transformers' loading bars (off by default)."))

    @property
    def split_list(self) -> List[str]:
        return [s.strip() for s in self.splits.split(",") if s.strip()]

    def validate(self):
        problems: List[str] = []
        _check(problems, bool(self.output_dir.strip()), "--output-dir must not be empty")
        _check(problems, bool(self.split_list), "--splits must name at least one split")
        _check(problems, self.image_size is None or self.image_size > 0, f"--image-size must be > 0, got {self.image_size}")
        _check(problems, self.mid_ratio >= 1, f"--mid-ratio must be >= 1, got {self.mid_ratio}")
        _check(problems, self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        _check(problems, self.max_samples is None or self.max_samples >= 1,
               f"--max-samples must be >= 1, got {self.max_samples}")
        _check(problems, self.num_workers >= 0, f"--num-workers must be >= 0, got {self.num_workers}")
        _raise(problems)


__all__ = [
    "DataArguments",
    "TokenizeArguments",
    "TrainingArguments",
    "VARModelArguments",
    "VQVAEModelArguments",
    "VQVAETrainingArguments",
    "parse_int_list",
]
