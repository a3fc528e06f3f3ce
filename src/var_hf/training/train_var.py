"""Train the VAR transformer (stage 2, next-scale prediction) on a frozen VQVAE, with Accelerate.

Each step follows the reference trainer (FoundationVision/VAR `trainer.py`): the frozen VQVAE turns the images into
token maps (or they come pre-tokenized from `var-hf tokenize`), the teacher-forcing input is the VQVAE's
reconstruction after each scale, area-downsampled to the next one, and the loss is the label-smoothed cross-entropy
averaged over all L tokens (weight 1/L each). Class dropout happens inside `VARTransformer.forward` in training mode.
AdamW (0.9, 0.95) without weight decay on biases, vectors and position/level embeddings; lr = base_lr * batch / 256
with the reference's warm-up and `lin0` decay; gradient clipping at 2.

Progressive training (`--progressive P`, a simplified version of the reference's `--pg`): during the first fraction
P of the run only scales up to k contribute to the loss, k growing linearly from `--progressive-start` to the last
scale; the newest scale's weight ramps up over `--progressive-warmup-steps`. Tokens past scale k get weight 0 (the
block-causal mask makes this equal to the reference's truncated forward, at the cost of computing them).

    var-hf train-var --vqvae runs/vqvae --dataset fashion-mnist --output-dir runs/var
    accelerate launch src/var_hf/training/train_var.py --vqvae runs/vqvae --tokenized-dataset runs/tokens --output-dir runs/var
    accelerate launch -m var_hf.training.train_var ...
"""

import contextlib
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger

from var_hf.configuration_var import VARTransformerConfig
from var_hf.data import ImageTransform, TokenDataset, class_names, load_image_dataset, pick_split
from var_hf.modeling_var import VARTransformer
from var_hf.training.arguments import DataArguments, TrainingArguments, VARModelArguments
from var_hf.training.export import (
    hub_dataset_ids, load_frozen_vqvae, save_pipeline, transformer_folder, vqvae_fingerprint,
)
from var_hf.training.loop import StepOutput, TrainingStage, train
from var_hf.training.optimization import build_adamw, param_groups
from var_hf.training.tokenize_dataset import TOKENS_METADATA
from var_hf.training.trackers import is_fsdp, reduce_sum

logger = get_logger(__name__)

# The reference's no-weight-decay keys mapped to var_hf names: pos_start -> pos_start, pos_1LC -> pos_embedding,
# lvl_embed -> level_embedding, ada_gss -> adaln_table, scale_mul -> log_scale (cls_token, start_token, task_token,
# cfg_uncond, gamma, beta and moe_bias have no counterpart). Vectors and biases are excluded by shape/name anyway.
VAR_NO_DECAY_KEYS = ("pos_start", "pos_embedding", "level_embedding", "adaln_table", "log_scale")


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


def token_weights(config: VARTransformerConfig, step: int, max_steps: int, args: VARModelArguments,
                  warmup_steps: int) -> torch.Tensor:
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
    sums = reduce_sum(accelerator, sums)
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
    fingerprint = vqvae_fingerprint(vqvae)
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


def build_config(args: VARModelArguments, vqvae, names: Sequence[str]) -> VARTransformerConfig:
    id2label = {i: name for i, name in enumerate(names)}
    if args.init_from:
        config = VARTransformerConfig.from_pretrained(transformer_folder(args.init_from))
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
# The stage
# ----------------------------------------------------------------------------------------------------------------------


class VARStage(TrainingStage):
    kind = "var"
    export_key, higher_is_better = "Lm", False

    def __init__(self, model_args: VARModelArguments, data_args: DataArguments, training_args: TrainingArguments):
        super().__init__(data_args, training_args)
        self.model_args = model_args
        self.tokenized = model_args.tokenized_dataset is not None

    def model_arguments(self) -> Dict[str, Any]:
        from dataclasses import asdict

        return asdict(self.model_args)

    def check_accelerator(self):
        if is_fsdp(self.accelerator) and self.args.ema_decay > 0:
            raise ValueError("--ema-decay is not supported with FSDP (the EMA would only see parameter shards); use DDP.")

    def load_data(self):
        """Images through the frozen encoder, or tokens from `var-hf tokenize`."""
        m, d, validate = self.model_args, self.data_args, self.args.validate_every >= 0
        self.vqvae = load_frozen_vqvae(m.vqvae, self.accelerator.device)
        if self.tokenized:
            train_set, meta = load_token_split(m.tokenized_dataset, d.train_split, self.vqvae, d.max_train_samples)
            self.names = class_names(train_set)
            self.train_data = TokenDataset(train_set)
            if validate:
                self.val_data = TokenDataset(load_token_split(m.tokenized_dataset, d.val_split, self.vqvae,
                                                              d.max_val_samples)[0])
            self.data_source = {"tokenized_dataset": os.path.abspath(m.tokenized_dataset), **meta}
            return
        image_size = d.image_size or self.vqvae.config.image_size
        self.train_data = load_image_dataset(d.dataset, d.train_split, d.image_column, d.label_column,
                                             d.max_train_samples)
        self.names = class_names(self.train_data)
        if validate:
            self.val_data = load_image_dataset(d.dataset, d.val_split, d.image_column, d.label_column,
                                               d.max_val_samples)
        self.train_transform = ImageTransform(image_size, d.mid_ratio, random_crop=True, hflip=d.hflip)
        self.val_transform = ImageTransform(image_size, d.mid_ratio, random_crop=False)
        self.data_source = {"dataset": d.dataset, "image_size": image_size}

    def build_models(self):
        m, vqvae = self.model_args, self.vqvae
        self.config = config = build_config(m, vqvae, self.names)
        if config.patch_nums != list(vqvae.config.patch_nums) or config.vocab_size != vqvae.config.vocab_size:
            raise ValueError("The transformer's patch_nums / vocab_size do not match the VQVAE's.")
        if m.init_from:
            transformer = VARTransformer.from_pretrained(transformer_folder(m.init_from))
        else:
            transformer = VARTransformer(config)
        if self.args.gradient_checkpointing:
            transformer.activation_checkpointing_enable()
        elif m.selective_checkpointing:
            transformer.enable_selective_checkpointing()
        transformer.train()
        optimizer = build_adamw(param_groups(transformer, VAR_NO_DECAY_KEYS), self.args)
        self.model, self.optimizer = self.accelerator.prepare(transformer, optimizer)
        self.unwrapped = self.accelerator.unwrap_model(self.model)
        self.fingerprint = vqvae_fingerprint(vqvae)

    def compatibility(self) -> Dict[str, Any]:
        return {
            "transformer_config": {k: v for k, v in self.config.to_dict().items() if k != "transformers_version"},
            "vqvae_fingerprint": self.fingerprint, "tokenized": self.tokenized,
        }

    def run_config(self) -> Dict[str, Any]:
        return {"transformer_config": self.config.to_dict(), "vqvae": os.path.abspath(self.model_args.vqvae),
                "vqvae_fingerprint": self.fingerprint, "data": self.data_source, "class_names": self.names}

    def describe(self) -> str:
        config = self.config
        return (
            f"VAR {sum(p.numel() for p in self.unwrapped.parameters()) / 1e6:.2f}M params (depth {config.depth}, "
            f"width {config.embed_dim}), {config.seq_len} tokens over {config.patch_nums}, {len(self.names)} classes, "
            f"{len(self.train_data)} training samples{' (tokenized)' if self.tokenized else ''}"
        )

    def train_step(self, step: int, lr: float, batches, log_now: bool) -> StepOutput:
        acc, config, args, m = self.accelerator, self.config, self.args, self.model_args
        grad_accum, V = args.gradient_accumulation_steps, config.vocab_size
        weights_L = token_weights(config, step, self.max_steps, m, self.warmup_steps).to(acc.device)
        loss_sum, metric_sums = 0.0, {}
        for micro in range(grad_accum):
            batch, labels = next(batches)
            batch, labels = batch.to(acc.device), labels.to(acc.device)
            gt_BL, tf_input = tokens_and_inputs(self.vqvae, batch, self.tokenized, config)
            sync = micro == grad_accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(self.model):
                logits_BLV = self.model(labels, tf_input).logits
                ce_BL = F.cross_entropy(
                    logits_BLV.view(-1, V), gt_BL.view(-1), label_smoothing=config.label_smoothing, reduction="none"
                ).view_as(gt_BL)
                loss = ce_BL.mul(weights_L).sum(dim=-1).mean()
                acc.backward(loss / grad_accum)
            loss_sum += loss.item()
            if log_now:
                for k, v in scale_metrics(logits_BLV.detach(), gt_BL, config).items():
                    metric_sums[k] = metric_sums.get(k, 0.0) + v / grad_accum
        grad_norm = None
        if args.grad_clip > 0:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.unwrapped)
        out = StepOutput(loss=loss_sum / grad_accum)
        if log_now:
            out.metrics = {"train/loss": out.loss, **{f"train/{k}": v for k, v in metric_sums.items()}}
            if grad_norm is not None:
                out.metrics["train/grad_norm"] = float(grad_norm)
            out.extras = {"progressive_scale": progressive_scale(step, self.max_steps, self.warmup_steps, m.progressive,
                                                                 m.progressive_start, config.num_scales)}
        return out

    def validate(self, loader) -> Dict[str, float]:
        return validate(self.accelerator, self.model, self.vqvae, loader, self.tokenized, self.config)

    def export(self, exported, summary: Dict[str, Any], final_val: Dict[str, float]) -> Dict[str, Any]:
        """The transformer alone and a complete pipeline with a model card."""
        args, m, d = self.args, self.model_args, self.data_args
        exported.save_pretrained(os.path.join(args.output_dir, "transformer"))
        vqvae_cpu = load_frozen_vqvae(m.vqvae, "cpu")
        val_text = ", ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in final_val.items()
                             if k.split("/")[-1] in ("Lm", "Lt", "Accm", "Acct") and k.startswith("val/"))
        source = m.tokenized_dataset if self.tokenized else d.dataset
        card = {
            "title": f"VAR d{self.config.depth} ({len(self.names)} classes, {vqvae_cpu.config.image_size}px)",
            "description": (
                f"Class-conditional VAR (next-scale prediction, arXiv 2404.02905) trained with `var_hf.training` for "
                f"{self.max_steps} steps on `{source}` (global batch {args.batch_size}, peak lr {args.peak_lr:.3g}, "
                f"{summary['exported_weights']} weights)."
                + (f" Validation ({d.val_split}, no label smoothing): {val_text}." if val_text else "")
                + " Classes: " + ", ".join(f"`{n}`" for n in self.names) + "."
            ),
            "datasets": hub_dataset_ids(d.dataset) if not self.tokenized else None,
            "sample_grid": not m.no_card_samples,
        }
        save_pipeline(os.path.join(args.output_dir, "pipeline"), vqvae_cpu, exported, card)
        logger.info(f"Saved the pipeline ({summary['exported_weights']} weights) to {args.output_dir}/pipeline.")
        return {}


def train_var(model_args: VARModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> int:
    """Train stage 2 with already validated arguments (see `var_hf.commands.train_var` for the command line)."""
    return train(VARStage(model_args, data_args, training_args))


__all__ = ["VARStage", "VAR_NO_DECAY_KEYS", "progressive_scale", "scale_metrics", "token_weights", "train_var"]


if __name__ == "__main__":  # `accelerate launch path/to/train_var.py` and `python -m var_hf.training.train_var`
    from var_hf.commands import run_command
    from var_hf.commands.train_var import main

    sys.exit(run_command("train_var", lambda argv: main(argv, prog="train_var"), sys.argv[1:]))
