"""Encode an image dataset once into VAR token maps (`var-hf tokenize`), so that `train-var --tokenized-dataset`
skips the VQVAE encoder at every step.

The output folder is a `datasets.DatasetDict` written with `save_to_disk`: one split per `--splits` entry, columns
`tokens` (all scales concatenated coarse to fine, `sum(pn^2)` integers) and `label` (the source's `ClassLabel`), plus
`var_tokens.json` with the patch schedule, the image size and a fingerprint of the VQVAE, which `train-var` checks.
Images go through the evaluation transform (resize the shorter side to `mid_ratio * image_size`, centre crop), so a
tokenized dataset has no random-crop augmentation; `--hflip-copies` adds a flipped copy of every training image.

Several processes (`accelerate launch src/var_hf/training/tokenize_dataset.py ...`) each encode a contiguous shard; the
main process concatenates them in order. The new folder is written beside the target and renamed over it at the end.
"""

import os
import shutil
import sys

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from var_hf.data import ImageTransform, build_eval_loader, load_image_dataset, shard_range
from var_hf.file_utils import write_json_atomically
from var_hf.training.arguments import TokenizeArguments
from var_hf.training.export import load_frozen_vqvae, vqvae_fingerprint
from var_hf.training.trackers import setup_logging

logger = get_logger(__name__)

TOKENS_METADATA = "var_tokens.json"


@torch.no_grad()
def encode_split(accelerator: Accelerator, vqvae, dataset, transform, batch_size: int, num_workers: int,
                 flipped: bool = False, progress=None) -> np.ndarray:
    """This process's shard of `dataset` as a (n, L) token array; `progress` (a tqdm bar) advances by images."""
    loader = build_eval_loader(dataset, transform, batch_size, accelerator.num_processes, accelerator.process_index,
                               num_workers)
    chunks = []
    for pixel_values, _ in loader:
        pixel_values = pixel_values.to(accelerator.device)
        if flipped:
            pixel_values = pixel_values.flip(-1)
        chunks.append(torch.cat(vqvae.encode_tokens(pixel_values), dim=1).cpu().numpy())
        if progress is not None:
            progress.update(len(pixel_values) * accelerator.num_processes)
    L = sum(pn * pn for pn in vqvae.config.patch_nums)
    return np.concatenate(chunks) if chunks else np.zeros((0, L), dtype=np.int64)


def tokenize_dataset(args: TokenizeArguments) -> int:
    """Encode `args.splits` of `args.dataset` with the VQVAE `args.vqvae` into `args.output_dir`."""
    import datasets
    from tqdm.auto import tqdm

    if os.path.exists(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite:
        raise FileExistsError(f"{args.output_dir} exists and is not empty; pass --overwrite to replace it.")
    accelerator = Accelerator()
    setup_logging(accelerator, args.verbose)
    vqvae = load_frozen_vqvae(args.vqvae, accelerator.device)
    image_size = args.image_size or vqvae.config.image_size
    transform = ImageTransform(image_size, args.mid_ratio, random_crop=False)
    dtype = "int16" if vqvae.config.vocab_size <= 32767 else "int32"
    output_dir = os.path.abspath(args.output_dir)
    shard_root = output_dir + ".shards"
    if accelerator.is_main_process and os.path.exists(shard_root):  # left by an interrupted run
        shutil.rmtree(shard_root)
    accelerator.wait_for_everyone()
    counts = {}
    for split in args.split_list:
        source = load_image_dataset(args.dataset, split, args.image_column, args.label_column, args.max_samples)
        parts = [(source, False)] + ([(source, True)] if args.hflip_copies and split == "train" else [])
        bar = tqdm(total=len(source) * len(parts), desc=f"tokenize {split}", unit="img", dynamic_ncols=True,
                   disable=args.no_progress_bar or not accelerator.is_local_main_process)
        for copy_index, (dataset, flipped) in enumerate(parts):
            tokens = encode_split(accelerator, vqvae, dataset, transform, args.batch_size, args.num_workers, flipped,
                                  progress=bar)
            shard = shard_range(len(dataset), accelerator.num_processes, accelerator.process_index)
            labels = np.asarray(dataset.select(shard)["label"], dtype=np.int64) if len(shard) else np.zeros(0, int)
            features = datasets.Features({
                "tokens": datasets.Sequence(datasets.Value(dtype), length=tokens.shape[1]),
                "label": dataset.features["label"],
            })
            part = datasets.Dataset.from_dict({"tokens": tokens.astype(dtype), "label": labels}, features=features)
            part.save_to_disk(os.path.join(shard_root, f"{split}-{copy_index}-{accelerator.process_index:05d}"))
        bar.close()
        counts[split] = len(source) * len(parts)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        result = {}
        for split in args.split_list:
            shard_dirs = sorted(d for d in os.listdir(shard_root) if d.startswith(f"{split}-"))
            result[split] = datasets.concatenate_datasets(
                [datasets.load_from_disk(os.path.join(shard_root, d)) for d in shard_dirs]
            )
        staging = output_dir + ".tmp"
        if os.path.exists(staging):
            shutil.rmtree(staging)
        datasets.DatasetDict(result).save_to_disk(staging)
        meta = {
            "patch_nums": list(vqvae.config.patch_nums), "vocab_size": vqvae.config.vocab_size,
            "image_size": image_size, "mid_ratio": args.mid_ratio, "hflip_copies": args.hflip_copies,
            "vqvae": os.path.abspath(args.vqvae), "vqvae_fingerprint": vqvae_fingerprint(vqvae),
            "source": args.dataset, "num_samples": {k: len(v) for k, v in result.items()},
        }
        write_json_atomically(os.path.join(staging, TOKENS_METADATA), meta)
        if os.path.exists(output_dir):  # --overwrite (checked above)
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
        shutil.rmtree(shard_root, ignore_errors=True)
        logger.info(f"Wrote {meta['num_samples']} token maps to {args.output_dir}.")
    accelerator.wait_for_everyone()
    return 0


__all__ = ["TOKENS_METADATA", "encode_split", "tokenize_dataset"]


if __name__ == "__main__":  # `accelerate launch path/to/tokenize_dataset.py` and `python -m ...tokenize_dataset`
    from var_hf.commands import run_command
    from var_hf.commands.tokenize_dataset import main

    sys.exit(run_command("tokenize_dataset", lambda argv: main(argv, prog="tokenize_dataset"), sys.argv[1:]))
