"""Train VAR's multi-scale VQVAE (stage 1) with Accelerate.

The official VQVAE training code was never released; this is a VQGAN-style recipe around the multi-scale quantizer:

    loss = l1_weight * |x - x_rec| + l2_weight * (x - x_rec)^2          (reconstruction)
         + vq_weight * vq_loss                                             (VQ + beta * commitment, mean over scales)
         + lpips_weight * LPIPS(x, x_rec)                                  (optional, weights from a user file)
         + disc_weight * lambda_adaptive * (-D(x_rec))                     (optional PatchGAN, after --disc-start)

with lambda_adaptive = |grad_last(rec + lpips)| / (|grad_last(gan)| + 1e-4), clamped to [0, 1e4] (VQGAN, Esser et al.
2021, Eq. 7), and a hinge loss for the discriminator (see `losses.py`). Codes unused for `--dead-code-steps` steps can
be re-initialised to random encoder outputs. Per-scale codebook usage is logged. Labels are not used: an image folder
without classes works.

    var-hf train-vqvae --dataset fashion-mnist --output-dir runs/vqvae ...
    accelerate launch src/var_hf/training/train_vqvae.py --dataset /data/images --output-dir runs/vqvae ...
    accelerate launch -m var_hf.training.train_vqvae ...
"""

import contextlib
import functools
import os
import sys
from dataclasses import asdict
from typing import Any, Dict

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs

from var_hf.configuration_vqvae import MultiScaleVQVAEConfig
from var_hf.data import ImageTransform, load_image_dataset, seeded_generator
from var_hf.modeling_vqvae import MultiScaleVQVAE, phi_index_for_scale
from var_hf.training.arguments import DataArguments, TrainingArguments, VQVAEModelArguments
from var_hf.training.export import vqvae_folder
from var_hf.training.loop import StepOutput, TrainingStage, train
from var_hf.training.losses import LPIPS, PatchDiscriminator, adaptive_gan_weight, hinge_d_loss
from var_hf.training.optimization import build_adamw, param_groups
from var_hf.training.trackers import is_fsdp, reduce_sum

logger = get_logger(__name__)

VQVAE_NO_DECAY_KEYS = ("codebook",)
DEAD_CODES_FILE = "dead_codes.safetensors"
DECODER_PREFIXES = ("post_quant_conv.", "decoder.")


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


def freeze_all_but_decoder(vqvae: MultiScaleVQVAE):
    """Only `post_quant_conv` and `decoder` train: the token maps of every image (encoder, quant_conv, codebook and
    phi decide them) stay exactly as they were."""
    for name, param in vqvae.named_parameters():
        param.requires_grad_(name.startswith(DECODER_PREFIXES))


def build_config(args: VQVAEModelArguments) -> MultiScaleVQVAEConfig:
    if args.init_from:
        return MultiScaleVQVAEConfig.from_pretrained(vqvae_folder(args.init_from))
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
    sums = reduce_sum(accelerator, sums)
    hits = reduce_sum(accelerator, hits)
    model.train(was_training)
    n = max(sums[3].item(), 1)
    return {"psnr": sums[0].item() / n, "l1": sums[1].item() / n, "l2": sums[2].item() / n,
            "codebook_usage": (hits > 0).float().mean().item() * 100, "samples": n}


# ----------------------------------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------------------------------


class VQVAEStage(TrainingStage):
    kind = "vqvae"
    export_key, higher_is_better = "psnr", True

    def __init__(self, model_args: VQVAEModelArguments, data_args: DataArguments, training_args: TrainingArguments):
        super().__init__(data_args, training_args)
        self.model_args = model_args
        self.config = config = build_config(model_args)
        self.image_size = data_args.image_size or config.image_size
        if self.image_size != config.image_size:
            raise ValueError(
                f"--image-size {self.image_size} does not match the VQVAE (finest patch {config.patch_nums[-1]} x "
                f"downsample {config.downsample_factor} = {config.image_size})."
            )
        self.use_gan = model_args.disc_weight > 0

    def model_arguments(self) -> Dict[str, Any]:
        return asdict(self.model_args)

    def kwargs_handlers(self):
        return [DistributedDataParallelKwargs(find_unused_parameters=True)] if unused_phi(self.config) else []

    def check_accelerator(self):
        m = self.model_args
        if is_fsdp(self.accelerator) and (self.args.ema_decay > 0 or m.dead_code_steps > 0 or m.disc_weight > 0):
            raise ValueError("--ema-decay, --dead-code-steps and --disc-weight are not supported with FSDP; use DDP.")

    def load_data(self):
        d = self.data_args
        # Stage 1 needs no labels: a folder of images without classes works.
        self.train_data = load_image_dataset(d.dataset, d.train_split, d.image_column, d.label_column,
                                             d.max_train_samples, require_labels=False)
        if self.args.validate_every >= 0:
            self.val_data = load_image_dataset(d.dataset, d.val_split, d.image_column, d.label_column,
                                               d.max_val_samples, require_labels=False)
        self.train_transform = ImageTransform(self.image_size, d.mid_ratio, random_crop=True, hflip=d.hflip)
        self.val_transform = ImageTransform(self.image_size, d.mid_ratio, random_crop=False)

    def build_models(self):
        m, acc, config = self.model_args, self.accelerator, self.config
        vqvae = MultiScaleVQVAE.from_pretrained(vqvae_folder(m.init_from)) if m.init_from else MultiScaleVQVAE(config)
        if m.decoder_only:
            freeze_all_but_decoder(vqvae)
        if self.args.gradient_checkpointing:
            enable_vqvae_checkpointing(vqvae)
        vqvae.train()
        self.lpips = None
        if m.lpips_weight > 0:
            self.lpips = LPIPS.from_files(m.lpips_weights or []).to(acc.device)
        elif m.lpips_weights:
            logger.warning("--lpips-weights given but --lpips-weight is 0: LPIPS is not used.", main_process_only=True)
        optimizer = build_adamw(param_groups(vqvae, VQVAE_NO_DECAY_KEYS), self.args)
        prepared = [vqvae, optimizer]
        if self.use_gan:
            disc = PatchDiscriminator(config.in_channels, m.disc_channels, m.disc_layers)
            disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=m.disc_lr or self.args.peak_lr, betas=(0.5, 0.9),
                                               weight_decay=0.0)
            prepared += [disc, disc_optimizer]
        prepared = acc.prepare(*prepared)
        self.model, self.optimizer = prepared[:2]
        self.disc, self.disc_optimizer = (prepared[2], prepared[3]) if self.use_gan else (None, None)
        self.unwrapped = acc.unwrap_model(self.model)
        self.last_layer = self.unwrapped.decoder.conv_out.weight
        self.tracker = DeadCodeTracker(config.vocab_size)

    def compatibility(self) -> Dict[str, Any]:
        return {"vqvae_config": {k: v for k, v in self.config.to_dict().items() if k != "transformers_version"},
                "gan": self.use_gan}

    def run_config(self) -> Dict[str, Any]:
        return {"vqvae_config": self.config.to_dict(), "image_size": self.image_size}

    def describe(self) -> str:
        return (f"VQVAE {sum(p.numel() for p in self.unwrapped.parameters()) / 1e6:.2f}M params, "
                f"{len(self.train_data)} training images of {self.image_size}px")

    def checkpoint_tensors(self):
        return {DEAD_CODES_FILE: self.tracker.state_dict()}

    def load_checkpoint_tensors(self, tensors):
        if DEAD_CODES_FILE not in tensors:
            raise ValueError(f"The checkpoint holds no {DEAD_CODES_FILE}.")
        self.tracker.load_state_dict(tensors[DEAD_CODES_FILE])

    def train_step(self, step: int, lr: float, batches, log_now: bool) -> StepOutput:
        acc, m, args, config = self.accelerator, self.model_args, self.args, self.config
        grad_accum, model, disc = args.gradient_accumulation_steps, self.model, self.disc
        gan_active = self.use_gan and step >= m.disc_start
        if self.use_gan:
            for group in self.disc_optimizer.param_groups:
                group["lr"] = (m.disc_lr or args.peak_lr) * lr / args.peak_lr
        stats: Dict[str, float] = {}
        hits_V = torch.zeros(config.vocab_size, device=acc.device)
        pairs = []
        for micro in range(grad_accum):
            pixel_values, _ = next(batches)
            pixel_values = pixel_values.to(acc.device)
            sync = micro == grad_accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                out = model(pixel_values)
                rec = out.reconstruction.float()
                rec_loss = pixel_values.new_zeros(())
                if m.l1_weight:
                    rec_loss = rec_loss + m.l1_weight * (rec - pixel_values).abs().mean()
                if m.l2_weight:
                    rec_loss = rec_loss + m.l2_weight * (rec - pixel_values).square().mean()
                nll = rec_loss
                if self.lpips is not None:
                    p_loss = self.lpips(rec, pixel_values).mean()
                    nll = nll + m.lpips_weight * p_loss
                    _add(stats, "lpips", p_loss)
                loss = nll + m.vq_weight * out.vq_loss
                if gan_active:
                    g_loss = -acc.unwrap_model(disc)(rec).float().mean()
                    if m.no_adaptive_disc_weight:
                        d_weight = torch.tensor(1.0, device=rec.device)
                    else:
                        d_weight = adaptive_gan_weight(nll, g_loss, self.last_layer)
                    loss = loss + m.disc_weight * d_weight * g_loss
                    _add(stats, "g_loss", g_loss)
                    _add(stats, "d_weight", d_weight)
                acc.backward(loss / grad_accum)
            _add(stats, "loss", loss)
            _add(stats, "rec_loss", rec_loss)
            _add(stats, "vq_loss", out.vq_loss)
            hits_V += out.code_hits.detach().sum(0)
            if gan_active:
                pairs.append((pixel_values, rec.detach()))
        grad_norm = None
        if args.grad_clip > 0:
            grad_norm = acc.clip_grad_norm_(model.parameters(), args.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

        if gan_active:
            self.disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator's pass left on D
            for micro, (real, fake) in enumerate(pairs):
                sync = micro == len(pairs) - 1
                with contextlib.nullcontext() if sync else acc.no_sync(disc):
                    logits_real, logits_fake = disc(torch.cat((real, fake))).float().chunk(2)
                    d_loss = hinge_d_loss(logits_real, logits_fake)
                    acc.backward(d_loss / len(pairs))
                _add(stats, "d_loss", d_loss)
                _add(stats, "logits_real", logits_real.mean())
                _add(stats, "logits_fake", logits_fake.mean())
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)

        if self.ema is not None:
            self.ema.update(self.unwrapped)
        hits_V = reduce_sum(acc, hits_V)
        self.tracker.update(hits_V)
        done = step + 1
        num_reset = 0
        if m.dead_code_steps > 0 and done % m.dead_code_every == 0:
            dead = self.tracker.dead(m.dead_code_steps)
            num_reset = reset_dead_codes(acc, self.unwrapped, self.optimizer, self.ema, dead, pixel_values, args.seed,
                                         done)
            self.tracker.steps_unused[self.tracker.dead(m.dead_code_steps)] = 0

        result = StepOutput(loss=stats["loss"] / grad_accum)
        if log_now:
            result.metrics = {f"train/{k}": v / (len(pairs) if k in ("d_loss", "logits_real", "logits_fake") else
                                                 grad_accum) for k, v in stats.items()}
            usage = out.codebook_usage.tolist()
            result.extras = {f"usage/{pn}x{pn}": u for pn, u in zip(config.patch_nums, usage)}
            result.extras["usage/step_any_scale"] = (hits_V > 0).float().mean().item() * 100
            result.extras["dead_codes_reset"] = num_reset
            if grad_norm is not None:
                result.extras["grad_norm"] = float(grad_norm)
        return result

    def validate(self, loader) -> Dict[str, float]:
        return validate(self.accelerator, self.model, loader, self.config.vocab_size)

    def export(self, exported, summary: Dict[str, Any], final_val: Dict[str, float]) -> Dict[str, Any]:
        folder = os.path.join(self.args.output_dir, "vqvae")
        exported.save_pretrained(folder)
        logger.info(f"Saved the VQVAE ({summary['exported_weights']} weights) to {folder}.")
        return {}


def _add(stats: Dict[str, float], key: str, value):
    stats[key] = stats.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)


def train_vqvae(model_args: VQVAEModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> int:
    """Train stage 1 with already validated arguments (see `var_hf.commands.train_vqvae` for the command line)."""
    return train(VQVAEStage(model_args, data_args, training_args))


__all__ = ["DeadCodeTracker", "VQVAEStage", "build_config", "enable_vqvae_checkpointing", "train_vqvae"]


if __name__ == "__main__":  # `accelerate launch path/to/train_vqvae.py` and `python -m var_hf.training.train_vqvae`
    from var_hf.commands import run_command
    from var_hf.commands.train_vqvae import main

    sys.exit(run_command("train_vqvae", lambda argv: main(argv, prog="train_vqvae"), sys.argv[1:]))
