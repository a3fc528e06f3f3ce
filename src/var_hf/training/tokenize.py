"""Encode an image dataset once into VAR token maps (`var-hf tokenize`), so that `train_var --tokenized_dataset`
skips the VQVAE encoder at every step.

The output folder is a `datasets.DatasetDict` written with `save_to_disk`: one split per `--splits` entry, columns
`tokens` (all scales concatenated coarse to fine, `sum(pn^2)` integers) and `label` (the source's `ClassLabel`), plus
`var_tokens.json` with the patch schedule, the image size and a fingerprint of the VQVAE, which `train_var` checks.
Images go through the evaluation transform (resize the shorter side to `mid_ratio * image_size`, centre crop), so a
tokenized dataset has no random-crop augmentation; `--hflip_copies` adds a flipped copy of every training image.

Several processes (`accelerate launch -m var_hf.training.tokenize`) each encode a contiguous shard; the main process
concatenates them in order.
"""

import argparse
import json
import os
import shutil
import sys
from typing import List, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from ..data import ImageTransform, build_eval_loader, load_image_dataset, shard_range
from . import common

logger = get_logger(__name__)

TOKENS_METADATA = "var_tokens.json"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--vqvae", required=True, help="MultiScaleVQVAE folder, train_vqvae output or pipeline.")
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="'fashion-mnist', an ImageNet-layout folder, a save_to_disk folder or a Hub id.")
    parser.add_argument("--image_column", default="image", help="Name of the image column.")
    parser.add_argument("--label_column", default="label", help="Name of the class-label column.")
    parser.add_argument("--splits", default="train,validation", help="Comma-separated splits to encode.")
    parser.add_argument("--output_dir", required=True, help="Where to write the tokenized DatasetDict.")
    parser.add_argument("--image_size", type=int, default=None, help="Resolution (default: the VQVAE's).")
    parser.add_argument("--mid_ratio", type=float, default=1.125, help="Resize ratio before the centre crop.")
    parser.add_argument("--hflip_copies", action="store_true", help="Also encode a flipped copy of the train split.")
    parser.add_argument("--batch_size", type=int, default=256, help="Images per encoder batch and process.")
    parser.add_argument("--max_samples", type=int, default=None, help="Encode only the first N images of each split.")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing --output_dir.")
    return parser


@torch.no_grad()
def encode_split(accelerator: Accelerator, vqvae, dataset, transform, batch_size: int, num_workers: int,
                 flipped: bool = False) -> np.ndarray:
    """This process's shard of `dataset` as a (n, L) token array."""
    loader = build_eval_loader(dataset, transform, batch_size, accelerator.num_processes, accelerator.process_index,
                               num_workers)
    chunks = []
    for pixel_values, _ in loader:
        pixel_values = pixel_values.to(accelerator.device)
        if flipped:
            pixel_values = pixel_values.flip(-1)
        chunks.append(torch.cat(vqvae.encode_tokens(pixel_values), dim=1).cpu().numpy())
    L = sum(pn * pn for pn in vqvae.config.patch_nums)
    return np.concatenate(chunks) if chunks else np.zeros((0, L), dtype=np.int64)


def run(args: argparse.Namespace) -> int:
    import datasets

    accelerator = Accelerator()
    common.setup_logging(accelerator)
    if os.path.exists(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite:
        raise FileExistsError(f"{args.output_dir} exists and is not empty; pass --overwrite to replace it.")
    vqvae = common.load_frozen_vqvae(args.vqvae, accelerator.device)
    image_size = args.image_size or vqvae.config.image_size
    transform = ImageTransform(image_size, args.mid_ratio, random_crop=False)
    dtype = "int16" if vqvae.config.vocab_size <= 32767 else "int32"
    shard_root = os.path.join(args.output_dir + ".shards")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    counts = {}
    for split in splits:
        source = load_image_dataset(args.dataset, split, args.image_column, args.label_column, args.max_samples)
        parts = [(source, False)] + ([(source, True)] if args.hflip_copies and split == "train" else [])
        for copy_index, (dataset, flipped) in enumerate(parts):
            tokens = encode_split(accelerator, vqvae, dataset, transform, args.batch_size, args.num_workers, flipped)
            shard = shard_range(len(dataset), accelerator.num_processes, accelerator.process_index)
            labels = np.asarray(dataset.select(shard)["label"], dtype=np.int64) if len(shard) else np.zeros(0, int)
            features = datasets.Features({
                "tokens": datasets.Sequence(datasets.Value(dtype), length=tokens.shape[1]),
                "label": dataset.features["label"],
            })
            part = datasets.Dataset.from_dict({"tokens": tokens.astype(dtype), "label": labels}, features=features)
            part.save_to_disk(os.path.join(shard_root, f"{split}-{copy_index}-{accelerator.process_index:05d}"))
            logger.info(f"{split}{' (flipped)' if flipped else ''}: encoded {len(part)} images on process "
                        f"{accelerator.process_index}.", main_process_only=False)
        counts[split] = len(source) * len(parts)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result = {}
        for split in splits:
            shard_dirs = sorted(d for d in os.listdir(shard_root) if d.startswith(f"{split}-"))
            result[split] = datasets.concatenate_datasets(
                [datasets.load_from_disk(os.path.join(shard_root, d)) for d in shard_dirs]
            )
        if os.path.exists(args.output_dir):
            shutil.rmtree(args.output_dir)
        datasets.DatasetDict(result).save_to_disk(args.output_dir)
        meta = {
            "patch_nums": list(vqvae.config.patch_nums), "vocab_size": vqvae.config.vocab_size,
            "image_size": image_size, "mid_ratio": args.mid_ratio, "hflip_copies": args.hflip_copies,
            "vqvae": os.path.abspath(args.vqvae), "vqvae_fingerprint": common.vqvae_fingerprint(vqvae),
            "source": args.dataset, "num_samples": {k: len(v) for k, v in result.items()},
        }
        with open(os.path.join(args.output_dir, TOKENS_METADATA), "w") as f:
            json.dump(meta, f, indent=2)
        shutil.rmtree(shard_root, ignore_errors=True)
        logger.info(f"Wrote {meta['num_samples']} token maps to {args.output_dir}.")
    accelerator.wait_for_everyone()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenize", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["TOKENS_METADATA", "add_arguments", "encode_split", "main", "run"]
