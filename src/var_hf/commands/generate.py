"""`var-hf generate`: sample images from a saved pipeline (a folder or a Hub repo id) into a folder of PNGs.

    var-hf generate --label 7 --label Sneaker --num-images-per-label 4 --out samples

writes one PNG per image (`0000_7_sneaker.png`, ...) and `grid.png`, one row per label. Sampling settings not given on
the command line are the pipeline's own defaults. `--out` must be new or empty; `--overwrite` replaces the files of a
previous `var-hf generate` run there (and refuses a folder holding anything else), so old and new images never mix.
"""

import os
import re
import sys
import time
from typing import List, Optional

from var_hf.commands import (
    CLIArgumentParser, UsageError, add_common_arguments, configure_logging, emulated_dtype_warning, run_parsed_command,
    temperature_argument,
)

# The files a run writes: `NNNN_<class id>_<slug>.png`, its scale strip, the grid, and the temporary files of
# var_hf.file_utils.atomic_write left by a killed run. Only these are replaced by --overwrite.
OUTPUT_FILE_PATTERN = re.compile(r"(\d{4,}_-?\d+_[a-z0-9_]*?(_scales)?\.png|grid\.png|\.tmp-[^/]*\.png)")
PIPELINE_SUBFOLDER = "pipeline"  # where `var-hf train-var` exports the pipeline inside its output folder


def build_parser(prog: str = "var-hf generate") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    parser.add_argument("--model", default=None,
                        help="pipeline folder, training output folder (its pipeline/ is used) or Hub repo id; "
                             "default: the bundled Fashion-MNIST model")
    parser.add_argument("--label", action="append", default=None,
                        help="class id or name, repeatable (e.g. --label 207 --label 'golden retriever'); "
                             "'none' for unconditional; default: one image per class of the model, up to 16")
    parser.add_argument("--random-labels", type=int, default=None, metavar="N",
                        help="N class ids drawn at random from the seeded generator before sampling, as the "
                             "reference's label_B=None (instead of --label)")
    parser.add_argument("--num-images-per-label", type=int, default=1, help="images per label (one grid row)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator")
    sampling = parser.add_argument_group(
        "sampling (default: the pipeline's sampling_defaults, stored in its model_index.json)")
    sampling.add_argument("--guidance-scale", type=float, default=None,
                          help="classifier-free guidance, the reference's cfg (0 disables)")
    sampling.add_argument("--top-k", type=int, default=None, help="top-k sampling, 0 disables")
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling, 0 disables")
    sampling.add_argument(
        "--temperature", type=temperature_argument, default=None,
        help="softmax temperature (> 0), or one per scale, coarse to fine, comma-separated (e.g. 1.3,1.3,1.3,1.3,1,1)",
    )
    sampling.add_argument("--more-smooth", action="store_true", default=None,
                          help="the reference's Gumbel-softmax smoothing")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="weights dtype; bfloat16/float16 are for GPUs (a CPU without native support emulates "
                        "them, slowly)")
    parser.add_argument("--fast-path", choices=("auto", "on", "off"), default="auto",
                        help="per-scale CUDA graphs and sort-free top-k/top-p (same images); auto = the pipeline's "
                             "default")
    parser.add_argument("--channels-last", action="store_true",
                        help="decode channels-last with cuDNN autotuning: faster on GPUs, not the reference's rounding")
    parser.add_argument("--refiner", default=None, metavar="MODEL",
                        help="collaborative decoding (CoDe): a small VARTransformer (its folder, or a pipeline or "
                             "train-var folder) that samples the last scales; --model drafts the first --draft-steps")
    parser.add_argument("--draft-steps", type=int, default=None,
                        help="with --refiner: scales sampled by --model (default: all but the last two)")
    parser.add_argument("--scale-strip", action="store_true",
                        help="also write, per image, <image>_scales.png: its estimate after each scale, coarse to fine")
    parser.add_argument("--out", default="samples", help="output folder (new or empty)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the images of a previous var-hf generate run in --out")
    add_common_arguments(parser)
    return parser


def parse_label(text: str):
    if text.strip().lower() in ("none", "null", "uncond", "unconditional"):
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def check_output_folder(out: str, overwrite: bool) -> List[str]:
    """Before any work: `out` is new, empty, or (with `overwrite`) holds only a previous run's files, which are
    returned (to be removed once the new images exist)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"--out {out} exists and is not a folder; pass a folder.")
    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--out {out} cannot be created: {parent} is a file.")
    if not os.path.isdir(out) or not os.listdir(out):
        return []
    names = sorted(os.listdir(out))
    if not overwrite:
        raise UsageError(
            f"--out {out} is not empty ({len(names)} entries); pass an empty or new folder, or --overwrite to replace "
            f"a previous var-hf generate run there."
        )
    foreign = [n for n in names if not (OUTPUT_FILE_PATTERN.fullmatch(n) and os.path.isfile(os.path.join(out, n)))]
    if foreign:
        raise UsageError(
            f"--out {out} holds files var-hf generate did not write ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); --overwrite only replaces a previous run's images. "
            f"Pick another --out."
        )
    return [os.path.join(out, n) for n in names]


def resolve_model(model: Optional[str]) -> str:
    """A pipeline folder, a training output folder holding `pipeline/`, or a Hub repo id."""
    if model is None:
        from var_hf import DEFAULT_MODEL

        return DEFAULT_MODEL
    if os.path.isdir(model):
        if os.path.isfile(os.path.join(model, "model_index.json")):
            return model
        exported = os.path.join(model, PIPELINE_SUBFOLDER)
        if os.path.isfile(os.path.join(exported, "model_index.json")):
            print(f"using the pipeline exported by training: {exported}", file=sys.stderr)
            return exported
        found = sorted(
            os.path.dirname(os.path.join(root, "model_index.json"))
            for root, dirs, files in os.walk(model)
            if "model_index.json" in files and root.count(os.sep) - model.rstrip(os.sep).count(os.sep) <= 3
        )
        if found:
            raise UsageError(
                f"--model {model} is not a saved pipeline (no model_index.json); pipelines inside it: "
                f"{', '.join(found[:4])}. Pass one of them as --model."
            )
        raise UsageError(
            f"--model {model} is not a saved pipeline (no model_index.json in it or its subfolders). Pass a "
            f"save_pretrained folder, a var-hf-convert --output-dir, or a var-hf train-var --output-dir after its "
            f"pipeline was exported."
        )
    if os.path.exists(model):
        raise UsageError(f"--model {model} is a file; pass a pipeline folder or a Hub repo id.")
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep in model.replace("/", ""):
        raise UsageError(f"--model {model}: no such folder (and not a Hub repo id of the form user/name).")
    return model  # a Hub repo id


def _slug(name: str, class_id: int) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.split(",")[0]).strip("_").lower() or str(class_id)


def run(args) -> int:
    labels = [parse_label(t) for t in args.label] if args.label else None
    if args.num_images_per_label < 1 or args.batch_size < 1:
        raise UsageError("--num-images-per-label and --batch-size must be >= 1.")
    if args.random_labels is not None and (labels is not None or args.random_labels < 1):
        raise UsageError("--random-labels needs a count >= 1 and replaces --label; pass one or the other.")
    if args.draft_steps is not None and args.refiner is None:
        raise UsageError("--draft-steps needs --refiner (the small model that samples the remaining scales).")
    previous_run = check_output_folder(args.out, args.overwrite)
    model = resolve_model(args.model)
    started = time.perf_counter()
    configure_logging(args.verbose)

    import torch
    from diffusers.utils import make_image_grid

    from var_hf.file_utils import default_device, save_image_atomically
    from var_hf.pipelines import VARPipeline

    imported = time.perf_counter()
    device = default_device(args.device)
    dtype_warning = emulated_dtype_warning(device, args.dtype)
    if dtype_warning is not None:
        print(dtype_warning, file=sys.stderr)
    if args.refiner is not None:
        from var_hf.pipelines import VARCollaborativePipeline

        try:
            pipe = VARCollaborativePipeline.from_pretrained(model, refiner=args.refiner)
        except (ValueError, FileNotFoundError) as err:  # a refiner that does not fit the model is a usage error
            raise UsageError(str(err)) from err
    else:
        pipe = VARPipeline.from_pretrained(model)
    null_class = pipe.transformer.config.null_class
    generator = torch.Generator(device=device).manual_seed(args.seed)
    try:
        if args.random_labels is not None:
            # Drawn from the generator that then samples: the reference's label_B=None run for this seed.
            labels = pipe.random_class_labels(args.random_labels, generator=generator)
        elif labels is None:
            labels = list(range(min(pipe.transformer.config.num_classes, 16)))
        ids = pipe.get_label_ids(labels)  # unknown names fail here, before any sampling
    except ValueError as err:
        raise UsageError(str(err)) from err
    pipe.to(device, getattr(torch, args.dtype))
    if args.channels_last:
        pipe.vqvae.to(memory_format=torch.channels_last)
    # Only the settings given on the command line; the others are the pipeline's defaults.
    settings = {k: getattr(args, k) for k in ("guidance_scale", "top_k", "top_p", "temperature", "more_smooth")
                if getattr(args, k) is not None}
    if args.fast_path != "auto":
        settings["fast_path"] = args.fast_path == "on"
    if args.draft_steps is not None:
        settings["draft_steps"] = args.draft_steps
    loaded = time.perf_counter()

    recorder_cls = None
    if args.scale_strip:
        from var_hf.scale_strip import ScaleStripRecorder, scale_labels

        recorder_cls = ScaleStripRecorder
    requested = [i for i in ids for _ in range(args.num_images_per_label)]
    images, strips = [], []
    for start in range(0, len(requested), args.batch_size):
        chunk = requested[start : start + args.batch_size]
        extra = {}
        if recorder_cls is not None:
            recorder = recorder_cls()
            extra = dict(callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=recorder.tensor_inputs)
        try:
            out = pipe(
                class_labels=[None if i == null_class else i for i in chunk], generator=generator, output_type="pil",
                **settings, **extra,
            )
        except ValueError as err:  # the pipeline checks its arguments before sampling
            raise UsageError(str(err)) from err
        images.extend(out.images)
        if recorder_cls is not None:
            strips.extend(recorder.strips(labels=scale_labels(pipe.scheduler.config.patch_nums)))
    sampled = time.perf_counter()

    for path in previous_run:  # --overwrite: the previous run's files go only now that the new images exist
        os.remove(path)
    paths = []
    for n, (class_id, image) in enumerate(zip(requested, images)):
        name = "uncond" if class_id == null_class else pipe.id2label[class_id]
        stem = os.path.join(args.out, f"{n:04d}_{class_id}_{_slug(name, class_id)}")
        save_image_atomically(image, stem + ".png")
        if strips:
            save_image_atomically(strips[n], stem + "_scales.png")
        paths.append(stem + ".png")
    grid_path = os.path.join(args.out, "grid.png")
    save_image_atomically(make_image_grid(images, rows=len(ids), cols=args.num_images_per_label), grid_path)
    strip_note = f", {len(strips)} scale strips" if strips else ""
    print(
        f"wrote {len(paths)} images{strip_note} and {grid_path} ({len(ids)} rows x {args.num_images_per_label}); "
        f"imports {imported - started:.1f} s, loading {loaded - imported:.1f} s, sampling {sampled - loaded:.1f} s"
    )
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "var-hf generate") -> int:
    return run_parsed_command(prog, build_parser, run, argv)


__all__ = ["build_parser", "check_output_folder", "main", "parse_label", "resolve_model"]


if __name__ == "__main__":
    sys.exit(main())
