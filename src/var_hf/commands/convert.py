"""`var-hf-convert` (also `var-hf convert`): convert the official VAR checkpoints to a var_hf pipeline folder.

    var-hf-convert --vae vae_ch160v4096z32.pth --var var_d16.pth --output-dir ./var-d16

The conversion itself (key tables, config inference, strict loading, numerical check) is
`var_hf.conversion.convert_var_to_hf`; this module is its command line.
"""

import argparse
import os
import sys
from typing import List, Optional

from var_hf.commands import CLIArgumentParser, UsageError, add_common_arguments, configure_logging, run_parsed_command


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(prog: str = "var-hf-convert") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    parser.add_argument("--vae", required=True,
                        help="official tokenizer checkpoint, e.g. vae_ch160v4096z32.pth (or a trainer ar-ckpt-*.pth)")
    parser.add_argument("--var", default=None,
                        help="official transformer checkpoint, e.g. var_d16.pth, or a trainer ar-ckpt-*.pth "
                             "(omit to convert the VQVAE alone)")
    parser.add_argument("--output-dir", required=True,
                        help="folder to write (model_index.json, vqvae/, transformer/, scheduler/); new or empty")
    parser.add_argument("--patch-nums", default=None,
                        help="override the inferred schedule, e.g. 1,2,3,4,5,6,8,10,13,16 or 256 / 512")
    parser.add_argument("--depth", type=int, default=None, help="override the inferred depth")
    parser.add_argument("--num-heads", type=int, default=None, help="override the inferred number of heads")
    parser.add_argument("--shared-aln", type=_bool, default=None, help="override shared AdaLN (true/false)")
    parser.add_argument("--attn-l2-norm", type=_bool, default=None,
                        help="override L2-normalised attention (true/false)")
    parser.add_argument("--num-classes", type=int, default=None, help="override the number of classes")
    parser.add_argument("--norm-eps", type=float, default=None,
                        help="LayerNorm epsilon of the transformer (not stored in checkpoints; default 1e-6, the "
                             "release and the reference's default)")
    parser.add_argument("--quant-resi", type=float, default=0.5, help="phi mixing ratio (not stored in checkpoints)")
    parser.add_argument("--using-znorm", action="store_true",
                        help="the tokenizer picks codes by cosine similarity (not stored in checkpoints; the released "
                             "tokenizer uses L2, the default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a previous conversion in --output-dir (never other files, never the inputs)")
    add_common_arguments(parser)
    return parser


def run(args) -> int:
    from var_hf.patch_schedules import parse_patch_nums

    try:  # before the converter (and torch) is imported
        patch_nums = parse_patch_nums(args.patch_nums, "--patch-nums") if args.patch_nums else None  # None: infer
    except ValueError as err:
        raise UsageError(str(err)) from err

    from var_hf.conversion.convert_var_to_hf import ConversionError, check_overrides, convert

    overrides = dict(depth=args.depth, num_heads=args.num_heads, shared_aln=args.shared_aln,
                     attn_l2_norm=args.attn_l2_norm, num_classes=args.num_classes, norm_eps=args.norm_eps)
    try:
        check_overrides(patch_nums=patch_nums, quant_resi=args.quant_resi, **overrides)
    except ConversionError as err:
        raise UsageError(str(err)) from err
    configure_logging(args.verbose)
    convert(args.vae, args.var, args.output_dir, patch_nums=patch_nums, overwrite=args.overwrite,
            quant_resi=args.quant_resi, using_znorm=args.using_znorm, **overrides)
    print(f"wrote {os.path.abspath(args.output_dir)}")
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "var-hf-convert") -> int:
    return run_parsed_command(prog, build_parser, run, argv)


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
