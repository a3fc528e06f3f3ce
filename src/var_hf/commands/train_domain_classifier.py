"""`var-hf train-domain-classifier`: train the small CNN whose feature space `var-hf evaluate --feature-extractor
domain` measures in, on a dataset's real training split.

    var-hf train-domain-classifier --dataset fashion-mnist --output-dir fmnist-classifier
"""

import os
import sys
from typing import List, Optional

from var_hf.commands import (
    CLIArgumentParser, UsageError, add_common_arguments, configure_logging, option_flag, run_parsed_command,
)


def add_arguments(parser):
    parser.add_argument("--dataset", required=True,
                        help="fashion-mnist, a Hub dataset id, an image folder or a folder saved with save_to_disk")
    parser.add_argument("--output-dir", required=True, help="where the classifier is saved")
    parser.add_argument("--split", default="train", help="training split")
    parser.add_argument("--image-column", default="image", help="image column of a datasets source")
    parser.add_argument("--label-column", default="label", help="label column of a datasets source")
    parser.add_argument("--resolution", type=int, default=None,
                        help="first bring the training images to this side, as var-hf evaluate brings references "
                             "(use the generator's image size, 32 for the default model)")
    parser.add_argument("--preprocessing", choices=("adm", "full-frame"), default=None,
                        help="how --resolution is reached; default: full-frame for fashion-mnist, adm otherwise")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the network's input side (default: the training images' side)")
    parser.add_argument("--num-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--overwrite", action="store_true", help="replace a classifier already in --output-dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def build_parser(prog: str = "var-hf train-domain-classifier") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    add_common_arguments(parser)
    return parser


def run(args) -> int:
    for name in ("num_epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"{option_flag(name)} must be >= 1, got {getattr(args, name)}.")
    if not args.learning_rate > 0 or args.learning_rate == float("inf"):
        raise UsageError(f"--learning-rate must be a positive finite number, got {args.learning_rate}.")
    for name in ("image_size", "resolution"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"{option_flag(name)} must be >= 1, got {getattr(args, name)}.")
    if os.path.isfile(args.output_dir):
        raise UsageError(f"--output-dir {args.output_dir} is a file; pass a folder.")
    if os.path.isfile(os.path.join(args.output_dir, "model.safetensors")) and not args.overwrite:
        raise UsageError(f"--output-dir {args.output_dir} already holds a classifier; pass --overwrite to replace it.")
    configure_logging(args.verbose)

    from var_hf.data import load_image_dataset
    from var_hf.training.train_domain_classifier import train_domain_classifier

    dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.label_column)
    id2label = None
    if args.resolution is not None:  # the images the evaluator will show it: prepared as references are
        import numpy as np

        from var_hf.evaluation.images import prepare_images
        from var_hf.evaluation.references import default_preprocessing

        preprocessing = args.preprocessing or default_preprocessing(args.dataset)
        id2label = dict(enumerate(dataset.features["label"].names))
        dataset = (prepare_images(dataset["image"], args.resolution, preprocessing), np.asarray(dataset["label"]))
    train_domain_classifier(
        dataset, args.output_dir, id2label=id2label, image_size=args.image_size, num_epochs=args.num_epochs, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, device=args.device, progress=not args.quiet,
    )
    print(f"domain classifier saved to {args.output_dir}")
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "var-hf train-domain-classifier") -> int:
    return run_parsed_command(prog, build_parser, run, argv)


__all__ = ["add_arguments", "build_parser", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
