"""Train VAR's multi-scale VQVAE (stage 1) with Accelerate.

The official VQVAE training code was never released; this is a VQGAN-style recipe around the multi-scale quantizer:

    loss = l1_weight * |x - x_rec| + l2_weight * (x - x_rec)^2          (reconstruction)
         + vq_weight * vq_loss                                             (VQ + beta * commitment, mean over scales)
         + lpips_weight * LPIPS(x, x_rec)                                  (optional, weights from a user file)
         + disc_weight * lambda_adaptive * (-D(x_rec))                     (optional PatchGAN, after --disc_start)

with lambda_adaptive = |grad_last(rec + lpips)| / (|grad_last(gan)| + 1e-4), clamped to [0, 1e4] (VQGAN, Esser et al.
2021, Eq. 7), and a hinge loss for the discriminator. Codes unused for `--dead_code_steps` steps can be re-initialised
to random encoder outputs. Per-scale codebook usage is logged.

    accelerate launch -m var_hf.training.train_vqvae --dataset fashion-mnist --output_dir runs/vqvae ...
    var-hf train-vqvae --dataset fashion-mnist --output_dir runs/vqvae ...
"""

import argparse
import contextlib
import functools
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs

from ..configuration_vqvae import MultiScaleVQVAEConfig
from ..data import ImageTransform, build_eval_loader, build_train_loader, class_names, load_image_dataset
from ..modeling_vqvae import MultiScaleVQVAE, phi_index_for_scale
from . import common

logger = get_logger(__name__)

VQVAE_NO_DECAY_KEYS = ("codebook",)


# ----------------------------------------------------------------------------------------------------------------------
# LPIPS (VGG16 features + learned linear heads), weights from user files only
# ----------------------------------------------------------------------------------------------------------------------

# torchvision's vgg16().features up to relu5_3: (in, out) convs and "M" max-pools, each conv followed by a ReLU.
_VGG16_LAYOUT = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
                 (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
_LPIPS_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features` indexing
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    r"""
    LPIPS v0.1 (Zhang et al. 2018) with a VGG16 backbone: unit-normalised features at five depths, squared
    differences weighted by learned non-negative 1x1 convolutions, averaged over space and summed. Inputs in [-1, 1].

    Nothing is downloaded: [`LPIPS.from_files`] reads the weights from files the user provides — torchvision's VGG16
    (`features.<i>.weight`, e.g. `vgg16-397923af.pth`) and the LPIPS heads (`lin<k>.model.1.weight`, the `lpips`
    package's `weights/v0.1/vgg.pth`), or one file with both (e.g. an `lpips.LPIPS` state dict, `net.slice<n>.<i>`).
    """

    def __init__(self):
        super().__init__()
        layers: List[nn.Module] = []
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(item[0], item[1], kernel_size=3, padding=1), nn.ReLU(inplace=False)]
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, paths: Sequence[str]) -> "LPIPS":
        import re

        if not paths:
            raise ValueError("LPIPS needs weight files (--lpips_weights); nothing is downloaded.")
        state: Dict[str, torch.Tensor] = {}
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"LPIPS weight file {path} not found. Provide torchvision's VGG16 weights (vgg16-397923af.pth) "
                    "and the LPIPS v0.1 heads (lpips/weights/v0.1/vgg.pth); nothing is downloaded."
                )
            if path.endswith(".safetensors"):
                from safetensors.torch import load_file

                loaded = load_file(path)
            else:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
                loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
            for key, value in loaded.items():
                key = key.removeprefix("module.")
                m = re.fullmatch(r"(?:net\.slice\d+|features|net\.features)\.(\d+)\.(weight|bias)", key)
                if m:
                    state[f"features.{m.group(1)}.{m.group(2)}"] = value
                    continue
                m = re.fullmatch(r"lins?\.?(\d)\.(?:model\.1\.)?weight", key)
                if m:
                    state[f"lins.{m.group(1)}.weight"] = value
        model = cls()
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise ValueError(
                f"The LPIPS files {list(paths)} lack {len(missing)} tensors (e.g. {missing[:3]}): pass both the VGG16 "
                "weights and the LPIPS linear heads."
            )
        model.load_state_dict({k: state[k] for k in expected})
        return model

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image distance, (B,)."""
        x = (torch.cat((input, target)) - self.shift) / self.scale
        total = 0.0
        tap_index = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == _LPIPS_TAPS[tap_index]:
                f_in, f_tgt = x.float().chunk(2)
                f_in = f_in / (f_in.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                f_tgt = f_tgt / (f_tgt.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
                diff = self.lins[tap_index].float()((f_in - f_tgt).square())
                total = total + diff.mean(dim=(2, 3)).squeeze(1)
                tap_index += 1
                if tap_index == len(_LPIPS_TAPS):
                    break
        return total


# ----------------------------------------------------------------------------------------------------------------------
# PatchGAN discriminator
# ----------------------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / VQGAN's `NLayerDiscriminator`): 4x4 convolutions, stride 2 for `num_layers` levels, one
    logit per patch. Each extra layer halves the side, so small images need fewer layers (8x8 works with 1)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: List[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(channels * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for module in self.modules():  # VQGAN's weights_init
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.main(pixel_values)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """VQGAN's balance between the reconstruction and adversarial gradients at the decoder's last layer."""
    nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (nll_grads.norm() / (g_grads.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# ----------------------------------------------------------------------------------------------------------------------
# Dead codes, gradient checkpointing
# ----------------------------------------------------------------------------------------------------------------------


class DeadCodeTracker:
    """Steps since each code was last chosen (at any scale, on any process); checkpointed with the run."""

    def __init__(self, vocab_size: int):
        self.steps_unused = torch.zeros(vocab_size, dtype=torch.long)

    def update(self, hits_V: torch.Tensor):
        used = hits_V.cpu() > 0
        self.steps_unused = torch.where(used, torch.zeros_like(self.steps_unused), self.steps_unused + 1)

    def dead(self, patience: int) -> torch.Tensor:
        return torch.nonzero(self.steps_unused >= patience).flatten()

    def state_dict(self):
        return {"steps_unused": self.steps_unused}

    def load_state_dict(self, state):
        self.steps_unused = state["steps_unused"].clone()


@torch.no_grad()
def reset_dead_codes(accelerator, vqvae: MultiScaleVQVAE, optimizer, ema, dead: torch.Tensor,
                     pixel_values: torch.Tensor, seed: int, step: int) -> int:
    """Set dead codes to random encoder outputs of the current batch (gathered over processes, chosen with a seeded
    generator, so every process writes the same values) and clear their AdamW moments."""
    if dead.numel() == 0:
        return 0
    f_BChw = vqvae.encode(pixel_values).float()
    rows_NC = f_BChw.permute(0, 2, 3, 1).reshape(-1, f_BChw.shape[1]).contiguous()
    rows_NC = accelerator.gather(rows_NC) if accelerator.num_processes > 1 else rows_NC
    from ..data import seeded_generator

    pick = torch.randint(0, rows_NC.shape[0], (dead.numel(),), generator=seeded_generator(seed, step, 7))
    codebook = vqvae.quantizer.codebook.weight
    dead_dev = dead.to(codebook.device)
    codebook[dead_dev] = rows_NC[pick.to(rows_NC.device)].to(codebook.device, codebook.dtype)
    state = optimizer.optimizer.state.get(codebook, {}) if hasattr(optimizer, "optimizer") else {}
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][dead_dev] = 0
    if ema is not None:
        for name, shadow in ema.shadow.items():
            if name.endswith("quantizer.codebook.weight"):
                shadow[dead.to(shadow.device)] = codebook[dead_dev].float().to(shadow.device)
    return int(dead.numel())


def enable_vqvae_checkpointing(vqvae: MultiScaleVQVAE):
    """Recompute each encoder/decoder level in the backward pass. The VQVAE does not implement transformers'
    gradient checkpointing (`supports_gradient_checkpointing = False`), so the levels' bound `forward`s are wrapped on
    this instance only; the state dict is unchanged."""
    from torch.utils.checkpoint import checkpoint

    modules = [*vqvae.encoder.down, vqvae.encoder.mid, vqvae.decoder.mid, *vqvae.decoder.up]
    for module in modules:
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    common.add_data_arguments(parser)
    common.add_training_arguments(parser)
    model = parser.add_argument_group("model (ignored with --init_from)")
    model.add_argument("--init_from", default=None, help="Fine-tune this saved MultiScaleVQVAE (folder or pipeline).")
    model.add_argument("--base_channels", type=int, default=160, help="Width of the first encoder level.")
    model.add_argument("--channel_multipliers", type=common.int_list, default=[1, 1, 2, 2, 4],
                       help="Width multiplier per level, e.g. 1,2,2 (downsampling 2^(levels-1)).")
    model.add_argument("--num_res_blocks", type=int, default=2, help="Residual blocks per encoder level.")
    model.add_argument("--no_attention", action="store_true", help="No self-attention at the lowest level.")
    model.add_argument("--no_mid_attention", action="store_true", help="No self-attention in the middle block.")
    model.add_argument("--vocab_size", type=int, default=4096, help="Codebook size.")
    model.add_argument("--vq_embed_dim", type=int, default=32, help="Code dimension.")
    model.add_argument("--patch_nums", type=common.int_list, default=[1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
                       help="Token-map sides, coarse to fine, e.g. 1_2_3_4_6_8.")
    model.add_argument("--beta", type=float, default=0.25, help="Commitment weight inside the VQ loss.")
    model.add_argument("--quant_resi", type=float, default=0.5, help="Phi mixing ratio (0 disables phi).")
    model.add_argument("--share_quant_resi", type=int, default=4, help="Number of shared phi convolutions.")
    model.add_argument("--using_znorm", action="store_true", help="Cosine-similarity code lookup.")

    loss = parser.add_argument_group("losses")
    loss.add_argument("--l1_weight", type=float, default=0.0, help="Weight of the L1 reconstruction loss.")
    loss.add_argument("--l2_weight", type=float, default=1.0, help="Weight of the L2 reconstruction loss.")
    loss.add_argument("--vq_weight", type=float, default=1.0, help="Weight of the VQ + commitment loss.")
    loss.add_argument("--lpips_weight", type=float, default=0.0, help="Weight of LPIPS (needs --lpips_weights).")
    loss.add_argument("--lpips_weights", nargs="*", default=None,
                      help="LPIPS weight files: VGG16 (torchvision layout) and the LPIPS v0.1 heads, or one file "
                      "with both. Nothing is downloaded.")
    loss.add_argument("--disc_weight", type=float, default=0.0, help="Weight of the PatchGAN loss (0: no GAN).")
    loss.add_argument("--disc_start", type=int, default=0, help="Step from which the discriminator is used.")
    loss.add_argument("--disc_layers", type=int, default=3, help="Strided layers of the PatchGAN.")
    loss.add_argument("--disc_channels", type=int, default=64, help="Width of the PatchGAN's first layer.")
    loss.add_argument("--disc_lr", type=float, default=None, help="Discriminator peak lr (defaults to the VQVAE's).")
    loss.add_argument("--no_adaptive_disc_weight", action="store_true",
                      help="Use --disc_weight as is, without VQGAN's adaptive gradient balancing.")
    loss.add_argument("--dead_code_steps", type=int, default=0,
                      help="Re-initialise codes unused for this many steps to random encoder outputs (0: off).")
    loss.add_argument("--dead_code_every", type=int, default=50, help="Check for dead codes every N steps.")
    parser.set_defaults(weight_decay=0.0, base_lr=1e-4)
    return parser


def build_config(args) -> MultiScaleVQVAEConfig:
    if args.init_from:
        return MultiScaleVQVAE.config_class.from_pretrained(common.vqvae_folder(args.init_from))
    return MultiScaleVQVAEConfig(
        base_channels=args.base_channels, channel_multipliers=args.channel_multipliers,
        num_res_blocks=args.num_res_blocks, use_attention=not args.no_attention,
        use_mid_attention=not args.no_mid_attention, vocab_size=args.vocab_size, vq_embed_dim=args.vq_embed_dim,
        patch_nums=args.patch_nums, beta=args.beta, quant_resi=args.quant_resi,
        share_quant_resi=args.share_quant_resi, using_znorm=args.using_znorm,
    )


def unused_phi(config: MultiScaleVQVAEConfig) -> bool:
    used = {phi_index_for_scale(k, len(config.patch_nums), config.num_phi) for k in range(len(config.patch_nums))}
    return config.num_phi > 0 and len(used) < config.num_phi


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def validate(accelerator, model, loader, vocab_size: int) -> Dict[str, float]:
    """PSNR (images mapped to [0, 1], averaged per image), L1, L2 and the share of codes used over the split."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=accelerator.device, dtype=torch.float64)  # psnr, l1, l2, count
    hits = torch.zeros(vocab_size, device=accelerator.device)
    for pixel_values, _ in loader:
        pixel_values = pixel_values.to(accelerator.device)
        out = model(pixel_values)
        rec = out.reconstruction.float().clamp(-1, 1)
        mse_B = ((rec - pixel_values) / 2).square().flatten(1).mean(1)
        sums[0] += (10 * torch.log10(1.0 / mse_B.clamp_min(1e-10))).sum()
        sums[1] += (rec - pixel_values).abs().flatten(1).mean(1).sum()
        sums[2] += (rec - pixel_values).square().flatten(1).mean(1).sum()
        sums[3] += pixel_values.shape[0]
        hits += out.code_hits.sum(0)
    sums = common.reduce_sum(accelerator, sums)
    hits = common.reduce_sum(accelerator, hits)
    model.train(was_training)
    n = max(sums[3].item(), 1)
    return {"psnr": sums[0].item() / n, "l1": sums[1].item() / n, "l2": sums[2].item() / n,
            "codebook_usage": (hits > 0).float().mean().item() * 100, "samples": n}


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    config = build_config(args)
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_phi(config) else []
    accelerator = common.build_accelerator(args, kwargs_handlers=handlers)
    common.setup_logging(accelerator)
    fsdp = common.is_fsdp(accelerator)
    if fsdp and (args.ema_decay > 0 or args.dead_code_steps > 0 or args.disc_weight > 0):
        raise ValueError("--ema_decay, --dead_code_steps and --disc_weight are not supported with FSDP; use DDP.")
    micro_batch = common.per_process_batch_size(args.batch_size, accelerator.num_processes, args.grad_accum)
    image_size = args.image_size or config.image_size
    if image_size != config.image_size:
        raise ValueError(
            f"--image_size {image_size} does not match the VQVAE (finest patch {config.patch_nums[-1]} x downsample "
            f"{config.downsample_factor} = {config.image_size})."
        )

    # Data
    train_set = load_image_dataset(args.dataset, args.train_split, args.image_column, args.label_column,
                                   args.max_train_samples)
    val_set = None
    if args.validate_every >= 0:
        val_set = load_image_dataset(args.dataset, args.val_split, args.image_column, args.label_column,
                                     args.max_val_samples)
    max_steps = common.total_steps(args, len(train_set))

    # Model (same init on every process), losses
    common.seed_everything(args.seed)
    if args.init_from:
        vqvae = MultiScaleVQVAE.from_pretrained(common.vqvae_folder(args.init_from))
    else:
        vqvae = MultiScaleVQVAE(config)
    if args.gradient_checkpointing:
        enable_vqvae_checkpointing(vqvae)
    vqvae.train()
    lpips = None
    if args.lpips_weight > 0:
        lpips = LPIPS.from_files(args.lpips_weights or []).to(accelerator.device)
    elif args.lpips_weights:
        logger.warning("--lpips_weights given but --lpips_weight is 0: LPIPS is not used.", main_process_only=True)
    use_gan = args.disc_weight > 0
    optimizer = common.build_adamw(common.param_groups(vqvae, VQVAE_NO_DECAY_KEYS), args)
    prepared = [vqvae, optimizer]
    if use_gan:
        disc = PatchDiscriminator(config.in_channels, args.disc_channels, args.disc_layers)
        disc_optimizer = torch.optim.AdamW(
            disc.parameters(), lr=args.disc_lr or common.peak_learning_rate(args), betas=(0.5, 0.9), weight_decay=0.0
        )
        prepared += [disc, disc_optimizer]
    prepared = accelerator.prepare(*prepared)
    model, optimizer = prepared[:2]
    disc, disc_optimizer = (prepared[2], prepared[3]) if use_gan else (None, None)
    unwrapped = accelerator.unwrap_model(model)
    ema = common.EMA(unwrapped, args.ema_decay) if args.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    tracker = DeadCodeTracker(config.vocab_size)
    accelerator.register_for_checkpointing(tracker)

    # Checkpoints and resumption
    run_config = {
        "stage": "vqvae", "args": common.args_to_config(args), "vqvae_config": config.to_dict(),
        "max_steps": max_steps, "micro_batch_per_process": micro_batch, "image_size": image_size,
        "peak_lr": common.peak_learning_rate(args), "num_train_samples": len(train_set),
        "environment": common.environment_info(accelerator),
    }
    compat = {
        "vqvae_config": {k: v for k, v in config.to_dict().items() if k not in ("transformers_version",)},
        "batch_size": args.batch_size, "grad_accum": args.grad_accum, "seed": args.seed,
        "num_train_samples": len(train_set), "gan": use_gan,
    }
    ckpt, start_step, _ = common.start_or_resume(accelerator, args, "vqvae", compat, run_config)

    transform = ImageTransform(image_size, args.mid_ratio, random_crop=True, hflip=args.hflip)
    loader = build_train_loader(
        train_set, transform, micro_batch, accelerator.num_processes, accelerator.process_index, args.seed,
        start_batch=start_step * args.grad_accum, num_workers=args.num_workers,
    )
    val_loader = None
    if val_set is not None:
        val_loader = build_eval_loader(
            val_set, ImageTransform(image_size, args.mid_ratio, random_crop=False), micro_batch * 2,
            accelerator.num_processes, accelerator.process_index, args.num_workers,
        )
    logger.info(
        f"VQVAE {sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M params, {len(train_set)} training images "
        f"({class_names(train_set)[:4]}...), steps {start_step}->{max_steps}, global batch {args.batch_size} = "
        f"{accelerator.num_processes} proc x {micro_batch} x {args.grad_accum} accum, lr {common.peak_learning_rate(args):.3g}",
        main_process_only=True,
    )

    last_layer = unwrapped.decoder.conv_out.weight
    progress = common.Progress(accelerator, start_step, max_steps, args.batch_size, args.no_progress_bar)
    data_iter = iter(loader)
    final_val: Dict[str, float] = {}
    step = start_step
    while step < max_steps:
        lr = common.apply_schedule(optimizer, args, step, max_steps)
        gan_active = use_gan and step >= args.disc_start
        if use_gan:
            for group in disc_optimizer.param_groups:
                group["lr"] = (args.disc_lr or common.peak_learning_rate(args)) * lr / common.peak_learning_rate(args)
        stats: Dict[str, float] = {}
        hits_V = torch.zeros(config.vocab_size, device=accelerator.device)
        pairs = []
        for micro in range(args.grad_accum):
            pixel_values, _ = next(data_iter)
            pixel_values = pixel_values.to(accelerator.device)
            sync = micro == args.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = model(pixel_values)
                rec = out.reconstruction.float()
                rec_loss = pixel_values.new_zeros(())
                if args.l1_weight:
                    rec_loss = rec_loss + args.l1_weight * (rec - pixel_values).abs().mean()
                if args.l2_weight:
                    rec_loss = rec_loss + args.l2_weight * (rec - pixel_values).square().mean()
                nll = rec_loss
                if lpips is not None:
                    p_loss = lpips(rec, pixel_values).mean()
                    nll = nll + args.lpips_weight * p_loss
                    _add(stats, "lpips", p_loss)
                loss = nll + args.vq_weight * out.vq_loss
                if gan_active:
                    g_loss = -accelerator.unwrap_model(disc)(rec).float().mean()
                    if args.no_adaptive_disc_weight:
                        d_weight = torch.tensor(1.0, device=rec.device)
                    else:
                        d_weight = adaptive_gan_weight(nll, g_loss, last_layer)
                    loss = loss + args.disc_weight * d_weight * g_loss
                    _add(stats, "g_loss", g_loss)
                    _add(stats, "d_weight", d_weight)
                accelerator.backward(loss / args.grad_accum)
            _add(stats, "loss", loss)
            _add(stats, "rec_loss", rec_loss)
            _add(stats, "vq_loss", out.vq_loss)
            hits_V += out.code_hits.detach().sum(0)
            if gan_active:
                pairs.append((pixel_values, rec.detach()))
        grad_norm = None
        if args.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if gan_active:
            disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator's pass left on D
            for micro, (real, fake) in enumerate(pairs):
                sync = micro == len(pairs) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(disc):
                    logits_real, logits_fake = disc(torch.cat((real, fake))).float().chunk(2)
                    d_loss = hinge_d_loss(logits_real, logits_fake)
                    accelerator.backward(d_loss / len(pairs))
                _add(stats, "d_loss", d_loss)
                _add(stats, "logits_real", logits_real.mean())
                _add(stats, "logits_fake", logits_fake.mean())
            disc_optimizer.step()
            disc_optimizer.zero_grad(set_to_none=True)

        if ema is not None:
            ema.update(unwrapped)
        hits_V = common.reduce_sum(accelerator, hits_V)
        tracker.update(hits_V)
        step += 1
        num_reset = 0
        if args.dead_code_steps > 0 and step % args.dead_code_every == 0:
            num_reset = reset_dead_codes(
                accelerator, unwrapped, optimizer, ema, tracker.dead(args.dead_code_steps), pixel_values, args.seed, step
            )
            tracker.steps_unused[tracker.dead(args.dead_code_steps)] = 0

        rate = progress.update(loss=stats["loss"] / args.grad_accum, lr=lr)
        if common.should(step, args.log_every, max_steps):
            metrics = {f"train/{k}": v / (len(pairs) if k in ("d_loss", "logits_real", "logits_fake") else
                                          args.grad_accum) for k, v in stats.items()}
            metrics = common.reduce_mean(accelerator, metrics)
            usage = out.codebook_usage.tolist()
            metrics.update({f"usage/{pn}x{pn}": u for pn, u in zip(config.patch_nums, usage)})
            metrics["usage/step_any_scale"] = (hits_V > 0).float().mean().item() * 100
            metrics.update({"lr": lr, "samples_per_s": rate, "dead_codes_reset": num_reset})
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            accelerator.log(metrics, step=step)
        if val_loader is not None and (common.should(step, args.validate_every, max_steps) if args.validate_every > 0
                                       else step == max_steps):
            final_val = {f"val/{k}": v for k, v in validate(accelerator, model, val_loader, config.vocab_size).items()}
            if ema is not None:
                with common.ema_weights(unwrapped, ema):
                    ema_val = validate(accelerator, model, val_loader, config.vocab_size)
                final_val.update({f"val_ema/{k}": v for k, v in ema_val.items()})
            accelerator.log(final_val, step=step)
            logger.info(
                f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in final_val.items()), main_process_only=True
            )
        if common.should(step, args.save_every, max_steps):
            ckpt.save(step)
    progress.close()

    # Export
    use_ema = common.use_ema_for_export(args, ema, final_val, key="psnr", higher_is_better=True)
    exported = common.exported_copy(accelerator, model, ema if use_ema else None)
    if accelerator.is_main_process:
        folder = os.path.join(args.output_dir, "vqvae")
        exported.save_pretrained(folder)
        summary = {"step": max_steps, "exported_weights": "ema" if use_ema else "raw", **final_val}
        common.write_run_config(args.output_dir, {**run_config, "final": summary})
        logger.info(f"Saved the VQVAE ({summary['exported_weights']} weights) to {folder}.")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def _add(stats: Dict[str, float], key: str, value):
    stats[key] = stats.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="train_vqvae", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["LPIPS", "PatchDiscriminator", "add_arguments", "main", "run"]
