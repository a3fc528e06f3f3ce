"""`var-hf demo`: a Gradio web page that shows next-scale prediction (needs `pip install "var_hf[demo]"`).

    var-hf demo                                 # the bundled Fashion-MNIST model on http://127.0.0.1:7860
    var-hf demo --model ./var-d16 --port 8080   # a converted checkpoint, a trained pipeline or a Hub repo id

Generate: a class by name, a seed, sampling settings; the images and, per image, its scale strip (the image decoded
after each scale, coarse to fine). Edit: upload an image, paint the region to regenerate, choose a class
(inpainting, outpainting, class-conditional editing). Gradio's files go to a temporary folder removed on exit.
"""

import importlib.util
import os
import sys
from typing import List, Optional

from var_hf.commands import CLIArgumentParser, UsageError, add_common_arguments, configure_logging, run_command


def build_parser(prog: str = "var-hf demo") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    parser.add_argument("--model", default=None,
                        help="pipeline folder or Hub repo id; default: the bundled Fashion-MNIST model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on; 0.0.0.0 serves other machines of the network too")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--share", choices=("no", "yes"), nargs="?", const="yes", default="no",
                        help="also ask Gradio for a temporary public link (contacts gradio.live)")
    parser.add_argument("--device", default=None, help="torch device; default: cuda when available, else cpu")
    parser.add_argument("--max-images", type=int, default=16, help="most images one Generate may ask for")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch CPU threads (torch.set_num_threads); 1 is fastest for small models on busy "
                             "machines")
    add_common_arguments(parser)
    return parser


def main(argv: Optional[List[str]] = None, prog: str = "var-hf demo") -> int:
    args = build_parser(prog).parse_args(argv)
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must lie in 1..65535, got {args.port}.")
    if args.max_images < 1:
        raise UsageError(f"--max-images must be >= 1, got {args.max_images}.")
    if args.num_threads is not None and args.num_threads < 1:
        raise UsageError(f"--num-threads must be >= 1, got {args.num_threads}.")
    if args.model is not None and os.path.exists(args.model) and not os.path.isdir(args.model):
        raise UsageError(
            f"--model {args.model} is a file; pass a pipeline folder (with model_index.json) or a Hub repo id."
        )
    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError('var-hf demo needs Gradio, which is not installed: pip install "var_hf[demo]"')

    configure_logging(args.verbose)
    if args.num_threads is not None:
        import torch

        torch.set_num_threads(args.num_threads)
    from var_hf.demo.app import block_until_stopped, launch_demo

    running = launch_demo(
        model=args.model, host=args.host, port=args.port, share=args.share == "yes", device=args.device,
        block=False, max_images=args.max_images, quiet=True,
    )
    try:
        print(f"{prog}: serving {args.model or 'the bundled Fashion-MNIST model'} on {running.url} (Ctrl+C to stop)",
              flush=True)
    finally:
        block_until_stopped(running)  # also on SIGTERM; removes the temporary folder
    return 0


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(run_command("var-hf demo", main, sys.argv[1:]))
