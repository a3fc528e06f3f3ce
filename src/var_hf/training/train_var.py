"""Train the VAR transformer (stage 2, next-scale prediction) on a frozen VQVAE, with Accelerate.

Each step follows the reference trainer (FoundationVision/VAR `trainer.py`): the frozen VQVAE turns the images into
token maps (or they come pre-tokenized from `var-hf tokenize`), the teacher-forcing input is the VQVAE's
reconstruction after each scale, area-downsampled to the next one, and the loss is the label-smoothed cross-entropy
averaged over all L tokens (weight 1/L each). Class dropout happens inside `VARTransformer.forward` in training mode.
AdamW (0.9, 0.95) without weight decay on biases, vectors and position/level embeddings; lr = base_lr * batch / 256
with the reference's warm-up and `lin0` decay; gradient clipping at 2.

Progressive training (`--progressive P`, a simplified version of the reference's `--pg`): during the first fraction
P of the run only scales up to k contribute to the loss, k growing linearly from `--progressive_start` to the last
scale; the newest scale's weight ramps up over `--progressive_warmup_steps`. Tokens past scale k get weight 0 (the
block-causal mask makes this equal to the reference's truncated forward, at the cost of computing them).

    accelerate launch -m var_hf.training.train_var --vqvae runs/vqvae --dataset fashion-mnist --output_dir runs/var
    var-hf train-var --vqvae runs/vqvae --tokenized_dataset runs/tokens --output_dir runs/var
"""

import argparse
import contextlib
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from ..configuration_var import VARTransformerConfig
from ..data import (
    ImageTransform, TokenDataset, build_eval_loader, build_train_loader, class_names, load_image_dataset, pick_split,
)
from ..modeling_var import VARTransformer
from . import common
from .tokenize import TOKENS_METADATA

logger = get_logger(__name__)

# The reference's no-weight-decay keys mapped to var_hf names: pos_start -> pos_start, pos_1LC -> pos_embedding,
# lvl_embed -> level_embedding, ada_gss -> adaln_table, scale_mul -> log_scale (cls_token, start_token, task_token,
# cfg_uncond, gamma, beta and moe_bias have no counterpart). Vectors and biases are excluded by shape/name anyway.
VAR_NO_DECAY_KEYS = ("pos_start", "pos_embedding", "level_embedding", "adaln_table", "log_scale")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    common.add_data_arguments(parser)
    parser.add_argument(
        "--tokenized_dataset", default=None,
        help="Folder written by `var-hf tokenize`; replaces --dataset and skips the VQVAE encoder.",
    )
    parser.add_argument(
        "--vqvae", required=True, help="The frozen VQVAE: a MultiScaleVQVAE folder, a train_vqvae output or a pipeline."
    )
    common.add_training_arguments(parser)
    model = parser.add_argument_group("model (ignored with --init_from)")
    model.add_argument("--init_from", default=None, help="Continue from this VARTransformer (folder or pipeline).")
    model.add_argument("--depth", type=int, default=16, help="Transformer blocks.")
    model.add_argument("--embed_dim", type=int, default=None, help="Width (default 64 * depth).")
    model.add_argument("--num_heads", type=int, default=None, help="Attention heads (default depth).")
    model.add_argument("--mlp_ratio", type=float, default=4.0, help="MLP width over embed_dim.")
    model.add_argument("--dropout", type=float, default=0.0, help="Dropout after attention and MLP.")
    model.add_argument("--attention_dropout", type=float, default=0.0, help="Dropout on attention probabilities.")
    model.add_argument("--drop_path_rate", type=float, default=None, help="Stochastic depth (default 0.1 * depth / 24).")
    model.add_argument("--cond_drop_rate", type=float, default=0.1, help="Class dropout for classifier-free guidance.")
    model.add_argument("--label_smoothing", type=float, default=0.0, help="Label smoothing of the cross-entropy.")
    model.add_argument("--shared_aln", action="store_true", help="Shared AdaLN projection (the d36 model).")
    model.add_argument("--no_attn_l2_norm", action="store_true", help="Plain attention instead of L2-normalised q/k.")
    model.add_argument("--init_adaln", type=float, default=0.5, help="AdaLN scale/shift init gain (reference aln).")
    model.add_argument("--init_adaln_gamma", type=float, default=1e-5, help="AdaLN gate init gain (reference alng).")
    model.add_argument("--init_head", type=float, default=0.02, help="Head init gain (reference hd).")
    model.add_argument("--init_std", type=float, default=-1.0, help="Init std (<0: sqrt(1 / 3 / embed_dim)).")

    parser.add_argument("--no_card_samples", action="store_true",
                        help="Do not draw the sample grid of the exported pipeline's model card.")
    parser.add_argument(
        "--selective_checkpointing", action="store_true",
        help="Recompute only the blocks' pointwise work in the backward pass (keeps matmul and attention outputs): "
        "most of --gradient_checkpointing's memory saving for a fraction of its compute; same gradients.",
    )
    prog = parser.add_argument_group("progressive training")
    prog.add_argument("--progressive", type=float, default=0.0,
                      help="Fraction of the run with progressive scales (0: off; reference --pg).")
    prog.add_argument("--progressive_start", type=int, default=4,
                      help="Index of the last scale trained at the start (reference --pg0).")
    prog.add_argument("--progressive_warmup_steps", type=int, default=None,
                      help="Steps over which a newly added scale's loss weight ramps up (default max_steps / 300).")
    parser.set_defaults(weight_decay=0.05, base_lr=1e-4, adam_beta1=0.9, adam_beta2=0.95, grad_clip=2.0)
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# Progressive training and the loss
# ----------------------------------------------------------------------------------------------------------------------


def progressive_scale(step: int, max_steps: int, warmup_steps: int, fraction: float, start: int,
                      num_scales: int) -> int:
    """Last scale in the loss at `step` (the reference's `prog_si`), or -1 for all scales."""
    if fraction <= 0:
        return -1
    end = max_steps * fraction
    if step <= warmup_steps:
        si = start
    elif step >= end:
        si = num_scales - 1
    else:
        progress = min(max((step - warmup_steps) / max(end - warmup_steps, 1e-9), 0.0), 1.0)
        si = start + round(progress * (num_scales - 1 - start))
    return -1 if si >= num_scales - 1 else si


def token_weights(config: VARTransformerConfig, step: int, max_steps: int, args, warmup_steps: int) -> torch.Tensor:
    """Per-token loss weights (L,): 1/L everywhere (the reference's `loss_weight`), with progressive training zero past
    the current scale and the newest scale ramped in."""
    L = config.seq_len
    weights = torch.full((L,), 1.0 / L)
    pg_args = (max_steps, warmup_steps, args.progressive, args.progressive_start, config.num_scales)
    si = progressive_scale(step, *pg_args)
    if si < 0:
        return weights
    begin, end = config.scale_boundaries[si]
    weights[end:] = 0
    if si > args.progressive_start:  # no ramp in the first stage (it is covered by the lr warm-up), as the reference
        stage_start = next(s for s in range(step + 1) if progressive_scale(s, *pg_args) >= si)
        ramp_steps = args.progressive_warmup_steps or max(round(max_steps / 300), 1)
        weights[begin:end] *= min(max((step - stage_start + 1) / ramp_steps, 0.01), 1.0)
    return weights


def scale_metrics(logits_BLV: torch.Tensor, gt_BL: torch.Tensor, config: VARTransformerConfig) -> Dict[str, float]:
    """The reference's Lm / Lt / Accm / Acct (no label smoothing) plus loss and accuracy per scale."""
    V = logits_BLV.shape[-1]
    ce_BL = F.cross_entropy(logits_BLV.float().reshape(-1, V), gt_BL.reshape(-1), reduction="none").view_as(gt_BL)
    hit_BL = (logits_BLV.argmax(-1) == gt_BL).float()
    last = config.patch_nums[-1] ** 2
    out = {
        "Lm": ce_BL.mean().item(), "Lt": ce_BL[:, -last:].mean().item(),
        "Accm": hit_BL.mean().item() * 100, "Acct": hit_BL[:, -last:].mean().item() * 100,
    }
    for pn, (begin, end) in zip(config.patch_nums, config.scale_boundaries):
        out[f"L_{pn}x{pn}"] = ce_BL[:, begin:end].mean().item()
        out[f"acc_{pn}x{pn}"] = hit_BL[:, begin:end].mean().item() * 100
    return out


def metric_names(config: VARTransformerConfig) -> List[str]:
    names = ["Lm", "Lt", "Accm", "Acct"]
    for pn in config.patch_nums:
        names += [f"L_{pn}x{pn}", f"acc_{pn}x{pn}"]
    return names


def split_scales(gt_BL: torch.Tensor, config: VARTransformerConfig) -> List[torch.Tensor]:
    return [gt_BL[:, begin:end] for begin, end in config.scale_boundaries]


@torch.no_grad()
def tokens_and_inputs(vqvae, batch: torch.Tensor, tokenized: bool, config: VARTransformerConfig):
    """(ground truth (B, L), teacher-forcing input (B, L - first_len, vq_embed_dim)) from images or tokens."""
    if tokenized:
        token_maps = split_scales(batch, config)
    else:
        token_maps = vqvae.encode_tokens(batch)
    return torch.cat(token_maps, dim=1), vqvae.teacher_forcing_input(token_maps)


@torch.no_grad()
def validate(accelerator, model, vqvae, loader, tokenized: bool, config: VARTransformerConfig) -> Dict[str, float]:
    """The reference's `eval_ep`: mean and finest-scale loss and accuracy (no label smoothing), plus per-scale figures,
    weighted by samples and summed over processes."""
    was_training = model.training
    model.eval()
    keys, sums = None, None
    for batch, labels in loader:
        batch, labels = batch.to(accelerator.device), labels.to(accelerator.device)
        gt_BL, tf_input = tokens_and_inputs(vqvae, batch, tokenized, config)
        logits = model(labels, tf_input).logits
        metrics = scale_metrics(logits, gt_BL, config)
        if keys is None:
            keys = sorted(metrics)
            sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=accelerator.device)
        sums[:-1] += torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=accelerator.device) * len(labels)
        sums[-1] += len(labels)
    model.train(was_training)
    if sums is None:  # an empty shard still has to join the reduction
        keys = sorted(metric_names(config))
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=accelerator.device)
    sums = common.reduce_sum(accelerator, sums)
    n = max(sums[-1].item(), 1)
    out = {k: v / n for k, v in zip(keys, sums[:-1].tolist())}
    out["samples"] = n
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def load_token_split(folder: str, split: str, vqvae, max_samples: Optional[int]):
    """One split of a `var-hf tokenize` folder, checked against the VQVAE that is about to decode it."""
    import datasets

    meta_path = os.path.join(folder, TOKENS_METADATA)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{folder} has no {TOKENS_METADATA}; make it with `var-hf tokenize`.")
    with open(meta_path) as f:
        meta = json.load(f)
    fingerprint = common.vqvae_fingerprint(vqvae)
    if meta.get("vqvae_fingerprint") != fingerprint:
        raise ValueError(
            f"{folder} was tokenized by another VQVAE (fingerprint {meta.get('vqvae_fingerprint')}, --vqvae has "
            f"{fingerprint}); tokenize again with this VQVAE."
        )
    loaded = datasets.load_from_disk(folder)
    dataset = loaded[pick_split(list(loaded.keys()), split, folder)]
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset, meta


def build_config(args, vqvae, names: Sequence[str]) -> VARTransformerConfig:
    id2label = {i: name for i, name in enumerate(names)}
    if args.init_from:
        folder = args.init_from
        if os.path.exists(os.path.join(folder, "transformer", "config.json")):
            folder = os.path.join(folder, "transformer")
        config = VARTransformerConfig.from_pretrained(folder)
        if config.num_classes != len(names):
            raise ValueError(f"{args.init_from} has {config.num_classes} classes, the data has {len(names)}.")
        return config
    return VARTransformerConfig(
        vocab_size=vqvae.config.vocab_size, vq_embed_dim=vqvae.config.vq_embed_dim, num_classes=len(names),
        depth=args.depth, embed_dim=args.embed_dim, num_heads=args.num_heads, mlp_ratio=args.mlp_ratio,
        dropout=args.dropout, attention_dropout=args.attention_dropout, drop_path_rate=args.drop_path_rate,
        shared_aln=args.shared_aln, attn_l2_norm=not args.no_attn_l2_norm, cond_drop_rate=args.cond_drop_rate,
        label_smoothing=args.label_smoothing, patch_nums=vqvae.config.patch_nums, init_adaln=args.init_adaln,
        init_adaln_gamma=args.init_adaln_gamma, init_head=args.init_head, init_std=args.init_std,
        id2label=id2label, label2id={name: i for i, name in id2label.items()},
    )


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.gradient_checkpointing and args.selective_checkpointing:
        raise ValueError("Choose one of --gradient_checkpointing (full) and --selective_checkpointing.")
    accelerator = common.build_accelerator(args)
    common.setup_logging(accelerator)
    if common.is_fsdp(accelerator) and args.ema_decay > 0:
        raise ValueError("--ema_decay is not supported with FSDP (the EMA would only see parameter shards); use DDP.")
    micro_batch = common.per_process_batch_size(args.batch_size, accelerator.num_processes, args.grad_accum)
    vqvae = common.load_frozen_vqvae(args.vqvae, accelerator.device)

    # Data: images through the frozen encoder, or tokens from `var-hf tokenize`
    tokenized = args.tokenized_dataset is not None
    if tokenized:
        train_set, meta = load_token_split(args.tokenized_dataset, args.train_split, vqvae, args.max_train_samples)
        names = class_names(train_set)
        val_set = None
        if args.validate_every >= 0:
            val_set, _ = load_token_split(args.tokenized_dataset, args.val_split, vqvae, args.max_val_samples)
        train_data, val_data, transform, val_transform = TokenDataset(train_set), None, None, None
        val_data = TokenDataset(val_set) if val_set is not None else None
        data_source = {"tokenized_dataset": os.path.abspath(args.tokenized_dataset), **meta}
    else:
        image_size = args.image_size or vqvae.config.image_size
        train_data = load_image_dataset(args.dataset, args.train_split, args.image_column, args.label_column,
                                        args.max_train_samples)
        names = class_names(train_data)
        val_data = None
        if args.validate_every >= 0:
            val_data = load_image_dataset(args.dataset, args.val_split, args.image_column, args.label_column,
                                          args.max_val_samples)
        transform = ImageTransform(image_size, args.mid_ratio, random_crop=True, hflip=args.hflip)
        val_transform = ImageTransform(image_size, args.mid_ratio, random_crop=False)
        data_source = {"dataset": args.dataset, "image_size": image_size}
    max_steps = common.total_steps(args, len(train_data))
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_steps)

    # Model (same init on every process)
    common.seed_everything(args.seed)
    config = build_config(args, vqvae, names)
    if config.patch_nums != list(vqvae.config.patch_nums) or config.vocab_size != vqvae.config.vocab_size:
        raise ValueError("The transformer's patch_nums / vocab_size do not match the VQVAE's.")
    if args.init_from:
        folder = args.init_from
        folder = os.path.join(folder, "transformer") if os.path.isdir(os.path.join(folder, "transformer")) else folder
        transformer = VARTransformer.from_pretrained(folder)
    else:
        transformer = VARTransformer(config)
    if args.gradient_checkpointing:
        transformer.activation_checkpointing_enable()
    elif args.selective_checkpointing:
        transformer.enable_selective_checkpointing()
    transformer.train()
    optimizer = common.build_adamw(common.param_groups(transformer, VAR_NO_DECAY_KEYS), args)
    model, optimizer = accelerator.prepare(transformer, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    ema = common.EMA(unwrapped, args.ema_decay) if args.ema_decay > 0 else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # Checkpoints and resumption
    fingerprint = common.vqvae_fingerprint(vqvae)
    run_config = {
        "stage": "var", "args": common.args_to_config(args), "transformer_config": config.to_dict(),
        "vqvae": os.path.abspath(args.vqvae), "vqvae_fingerprint": fingerprint, "data": data_source,
        "max_steps": max_steps, "warmup_steps": warmup_steps, "micro_batch_per_process": micro_batch,
        "peak_lr": common.peak_learning_rate(args), "num_train_samples": len(train_data), "class_names": names,
        "environment": common.environment_info(accelerator),
    }
    compat = {
        "transformer_config": {k: v for k, v in config.to_dict().items() if k != "transformers_version"},
        "vqvae_fingerprint": fingerprint, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "seed": args.seed, "num_train_samples": len(train_data), "tokenized": tokenized,
    }
    ckpt, start_step, _ = common.start_or_resume(accelerator, args, "var", compat, run_config)

    loader = build_train_loader(
        train_data, transform, micro_batch, accelerator.num_processes, accelerator.process_index, args.seed,
        start_batch=start_step * args.grad_accum, num_workers=args.num_workers,
    )
    val_loader = None
    if val_data is not None:
        val_loader = build_eval_loader(val_data, val_transform, micro_batch * 2, accelerator.num_processes,
                                       accelerator.process_index, args.num_workers)
    logger.info(
        f"VAR {sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M params (depth {config.depth}, width "
        f"{config.embed_dim}), {config.seq_len} tokens over {config.patch_nums}, {len(names)} classes, "
        f"{len(train_data)} training samples{' (tokenized)' if tokenized else ''}; steps {start_step}->{max_steps}, "
        f"global batch {args.batch_size} = {accelerator.num_processes} proc x {micro_batch} x {args.grad_accum} "
        f"accum, peak lr {common.peak_learning_rate(args):.3g}",
        main_process_only=True,
    )

    progress = common.Progress(accelerator, start_step, max_steps, args.batch_size, args.no_progress_bar)
    data_iter = iter(loader)
    final_val: Dict[str, float] = {}
    V = config.vocab_size
    step = start_step
    while step < max_steps:
        lr = common.apply_schedule(optimizer, args, step, max_steps)
        weights_L = token_weights(config, step, max_steps, args, warmup_steps).to(accelerator.device)
        log_now = common.should(step + 1, args.log_every, max_steps)
        loss_sum, metric_sums = 0.0, {}
        for micro in range(args.grad_accum):
            batch, labels = next(data_iter)
            batch, labels = batch.to(accelerator.device), labels.to(accelerator.device)
            gt_BL, tf_input = tokens_and_inputs(vqvae, batch, tokenized, config)
            sync = micro == args.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                logits_BLV = model(labels, tf_input).logits
                ce_BL = F.cross_entropy(
                    logits_BLV.view(-1, V), gt_BL.view(-1), label_smoothing=config.label_smoothing, reduction="none"
                ).view_as(gt_BL)
                loss = ce_BL.mul(weights_L).sum(dim=-1).mean()
                accelerator.backward(loss / args.grad_accum)
            loss_sum += loss.item()
            if log_now:
                for k, v in scale_metrics(logits_BLV.detach(), gt_BL, config).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v / args.grad_accum
        grad_norm = None
        if args.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(unwrapped)
        step += 1

        rate = progress.update(loss=loss_sum / args.grad_accum, lr=lr)
        if log_now:
            metrics = {"train/loss": loss_sum / args.grad_accum, **{f"train/{k}": v for k, v in metric_sums.items()}}
            if grad_norm is not None:
                metrics["train/grad_norm"] = float(grad_norm)
            metrics = common.reduce_mean(accelerator, metrics)
            metrics.update({"lr": lr, "samples_per_s": rate,
                            "progressive_scale": progressive_scale(step - 1, max_steps, warmup_steps, args.progressive,
                                                                   args.progressive_start, config.num_scales)})
            accelerator.log(metrics, step=step)
        validate_now = (common.should(step, args.validate_every, max_steps) if args.validate_every > 0
                        else step == max_steps)
        if val_loader is not None and validate_now:
            final_val = {f"val/{k}": v for k, v in validate(accelerator, model, vqvae, val_loader, tokenized,
                                                           config).items()}
            if ema is not None:
                with common.ema_weights(unwrapped, ema):
                    ema_val = validate(accelerator, model, vqvae, val_loader, tokenized, config)
                final_val.update({f"val_ema/{k}": v for k, v in ema_val.items()})
            accelerator.log(final_val, step=step)
            logger.info(
                f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in final_val.items() if "_" not in k[-6:]),
                main_process_only=True,
            )
        if common.should(step, args.save_every, max_steps):
            ckpt.save(step)
    progress.close()

    # Export: the transformer (EMA, raw or the better of the two) and a complete pipeline
    use_ema = common.use_ema_for_export(args, ema, final_val, key="Lm", higher_is_better=False)
    exported = common.exported_copy(accelerator, model, ema if use_ema else None)
    if accelerator.is_main_process:
        exported.save_pretrained(os.path.join(args.output_dir, "transformer"))
        vqvae_cpu = common.load_frozen_vqvae(args.vqvae, "cpu")
        summary = {"step": max_steps, "exported_weights": "ema" if use_ema else "raw", **final_val}
        val_text = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in final_val.items()
                             if k.split("/")[-1] in ("Lm", "Lt", "Accm", "Acct") and k.startswith("val/"))
        source = args.tokenized_dataset if tokenized else args.dataset
        card = {
            "title": f"VAR d{config.depth} ({len(names)} classes, {vqvae_cpu.config.image_size}px)",
            "description": (
                f"Class-conditional VAR (next-scale prediction, arXiv 2404.02905) trained with `var_hf.training` for "
                f"{max_steps} steps on `{source}` (global batch {args.batch_size}, peak lr "
                f"{common.peak_learning_rate(args):.3g}, {summary['exported_weights']} weights)."
                + (f" Validation ({args.val_split}, no label smoothing): {val_text}." if val_text else "")
                + " Classes: " + ", ".join(f"`{n}`" for n in names) + "."
            ),
            "datasets": _hub_dataset_ids(args.dataset) if not tokenized else None,
            "sample_grid": not args.no_card_samples,
        }
        written = common.save_pipeline(os.path.join(args.output_dir, "pipeline"), vqvae_cpu, exported, card)
        common.write_run_config(args.output_dir, {**run_config, "final": summary, "pipeline_written": written})
        logger.info(f"Saved the pipeline ({summary['exported_weights']} weights) to {args.output_dir}/pipeline.")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def _hub_dataset_ids(source: str) -> Optional[List[str]]:
    """The training set as Hub ids for the model card (None for local folders)."""
    if source.lower() in ("fashion-mnist", "fashion_mnist"):
        return ["zalando-datasets/fashion_mnist"]
    return None if os.path.exists(source) else [source]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="train_var", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_arguments", "main", "progressive_scale", "run", "scale_metrics", "token_weights"]
