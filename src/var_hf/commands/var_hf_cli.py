"""`var-hf COMMAND ...`: looks the command up in a static table and imports only that command's module."""

import importlib
import sys
from typing import List, Optional

from var_hf.commands import run_command

# command -> (module exposing `main(argv) -> int`, one-line help). Nothing is imported to print this table.
COMMANDS = {
    "generate": ("var_hf.commands.generate", "sample images from a pipeline"),
    "train-vqvae": ("var_hf.commands.train_vqvae", "train the multi-scale VQVAE (stage 1)"),
    "train-var": ("var_hf.commands.train_var", "train the VAR transformer (stage 2)"),
    "tokenize": ("var_hf.commands.tokenize_dataset", "encode a dataset into token maps (Arrow)"),
    "evaluate": ("var_hf.commands.evaluate", "FID / IS / precision / recall / class accuracy of a pipeline"),
    "train-domain-classifier": ("var_hf.commands.train_domain_classifier",
                                "train the small-dataset feature extractor used by evaluate"),
    "push": ("var_hf.commands.push", "upload a pipeline folder to the Hub with a model card"),
    "convert": ("var_hf.commands.convert", "convert the official VAR checkpoints (same as var-hf-convert)"),
    "demo": ("var_hf.commands.demo", "a Gradio web demo of next-scale prediction (pip install var_hf[demo])"),
}


def print_usage(stream) -> None:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: var-hf COMMAND [options]   (var-hf COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Options accept --x-y and --x_y. --debug (or VAR_HF_DEBUG=1) shows tracebacks."]
    print("\n".join(lines), file=stream)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print_usage(sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from var_hf import __version__

        print(f"var-hf {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"var-hf: error: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    prog = f"var-hf {name}"
    module = importlib.import_module(COMMANDS[name][0])
    return run_command(prog, lambda rest: module.main(rest, prog=prog), argv[1:])


__all__ = ["COMMANDS", "main"]


if __name__ == "__main__":
    sys.exit(main())
