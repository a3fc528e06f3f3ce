"""The `var-hf` command line: generate, train-vqvae, train-var, tokenize, evaluate, push.

Each subcommand lives in its own module, which provides the argument parser and the runner; this file only wires
them together, importing a module when its subcommand runs.
"""

import argparse
import importlib
import os
import sys
from typing import List, Optional

from transformers.utils import logging

logger = logging.get_logger(__name__)

# subcommand -> (module, function adding arguments, function running it, one-line help)
SUBCOMMANDS = {
    "generate": ("var_hf.cli", "add_generate_arguments", "run_generate_command", "sample images from a pipeline"),
    "train-vqvae": ("var_hf.training.train_vqvae", "add_arguments", "run", "train the multi-scale VQVAE"),
    "train-var": ("var_hf.training.train_var", "add_arguments", "run", "train the VAR transformer"),
    "tokenize": ("var_hf.training.tokenize", "add_arguments", "run", "encode a dataset into token maps (Arrow)"),
    "evaluate": ("var_hf.evaluation", "add_evaluate_arguments", "run_evaluate_command", "FID / IS / precision / recall"),
    "train-domain-classifier": ("var_hf.evaluation", "add_train_domain_classifier_arguments",
                                "run_train_domain_classifier_command", "train the small-dataset feature extractor"),
    "push": ("var_hf.hub", "add_push_arguments", "run_push_command", "upload a pipeline folder to the Hub"),
}


# ----------------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------------


def add_generate_arguments(parser: argparse.ArgumentParser):
    from . import DEFAULT_MODEL

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="pipeline folder or Hub repo id; the default is the bundled Fashion-MNIST model")
    parser.add_argument("--label", action="append", default=None,
                        help="class id or name, repeatable (e.g. --label 207 --label 'golden retriever'); "
                             "'none' for unconditional; default: one image per class of the model, up to 16")
    parser.add_argument("--random-labels", type=int, default=None, metavar="N",
                        help="N class ids drawn at random from the seeded generator before sampling, as the "
                             "reference's label_B=None (instead of --label)")
    parser.add_argument("--num-images-per-label", type=int, default=1, help="images per label")
    parser.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator")
    parser.add_argument("--guidance-scale", type=float, default=4.0,
                        help="classifier-free guidance, the reference's cfg (0 disables)")
    parser.add_argument("--top-k", type=int, default=900, help="top-k sampling, 0 disables")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, 0 disables")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature")
    parser.add_argument("--more-smooth", action="store_true", help="the reference's Gumbel-softmax smoothing")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default=None, help="torch device; None picks cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights dtype; bfloat16/float16 are for GPUs")
    parser.add_argument("--fast-path", choices=("auto", "on", "off"), default="auto",
                        help="per-scale CUDA graphs and sort-free top-k/top-p (same images); auto = on for CUDA")
    parser.add_argument("--channels-last", action="store_true",
                        help="decode channels-last with cuDNN autotuning: faster on GPUs, not the reference's rounding")
    parser.add_argument("--out", default="samples", help="output folder")


def _parse_label(text: str):
    if text.strip().lower() in ("none", "null", "uncond", "unconditional"):
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def run_generate_command(args) -> int:
    import torch

    from .pipelines import VARPipeline
    from .utils_images import make_grid, save_image_atomically

    labels = [_parse_label(t) for t in args.label] if args.label else None
    if args.num_images_per_label < 1 or args.batch_size < 1:
        raise ValueError("--num-images-per-label and --batch-size must be >= 1.")
    if args.random_labels is not None and (labels is not None or args.random_labels < 1):
        raise ValueError("--random-labels needs a count >= 1 and replaces --label; pass one or the other.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    pipe = VARPipeline.from_pretrained(args.model)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    if args.random_labels is not None:
        # Drawn from the generator that then samples, so the run is the reference's label_B=None run for this seed.
        labels = pipe.random_class_labels(args.random_labels, generator=generator)
    elif labels is None:
        labels = list(range(min(pipe.transformer.config.num_classes, 16)))
    ids = pipe.get_label_ids(labels)  # fails on unknown names before any sampling
    pipe.check_inputs(1, args.guidance_scale, args.top_k, args.top_p, args.temperature, None, "pil")
    pipe.to(device, dtype)
    if args.channels_last:
        pipe.vqvae.to(memory_format=torch.channels_last)

    requested = [i for i in ids for _ in range(args.num_images_per_label)]
    os.makedirs(args.out, exist_ok=True)
    images = []
    for start in range(0, len(requested), args.batch_size):
        chunk = requested[start : start + args.batch_size]
        out = pipe(
            class_labels=[None if i == pipe.transformer.config.null_class else i for i in chunk],
            guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
            more_smooth=args.more_smooth, generator=generator, output_type="pil",
            fast_path={"auto": None, "on": True, "off": False}[args.fast_path],
        )
        images.extend(out.images)
    paths = []
    for n, (class_id, image) in enumerate(zip(requested, images)):
        name = "uncond" if class_id == pipe.transformer.config.null_class else pipe.id2label[class_id]
        slug = "".join(c if c.isalnum() else "_" for c in name.split(",")[0]).strip("_").lower() or str(class_id)
        path = os.path.join(args.out, f"{n:04d}_{class_id}_{slug}.png")
        save_image_atomically(image, path)
        paths.append(path)
    grid_path = os.path.join(args.out, "grid.png")
    save_image_atomically(make_grid(images, ncols=max(args.num_images_per_label, min(len(images), 8))), grid_path)
    print(f"wrote {len(paths)} images and {grid_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------------------------------


def build_parser(argv: Optional[List[str]] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="var-hf", description="VAR (next-scale prediction) on Hugging Face.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported (training/evaluation pull in heavier dependencies).
    chosen = next((a for a in (argv or []) if a in SUBCOMMANDS), None)
    for name, (module, add_fn, _, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if name == chosen:
            getattr(importlib.import_module(module), add_fn)(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    module, _, run_fn, _ = SUBCOMMANDS[args.command]
    try:
        return int(getattr(importlib.import_module(module), run_fn)(args) or 0)
    except (ValueError, OSError) as err:
        print(f"var-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "add_generate_arguments", "run_generate_command"]


if __name__ == "__main__":
    sys.exit(main())
