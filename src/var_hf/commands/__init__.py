"""The `var-hf` command line (transformers' `commands/` layout): one module a subcommand, each with `main(argv)`.

Conventions every command follows, so that they behave alike:

- Options are spelled `--x-y` in help and docs; `--x_y` is accepted too (`CLIArgumentParser` folds underscores in
  option names to hyphens before parsing). Commands built on transformers' `HfArgumentParser` accept both natively.
- Bad arguments raise `UsageError` (exit code 2); any other failure exits 1. `run_command` turns either into one
  line, `var-hf <command>: error: <message>`, on stderr; `--debug` (or `VAR_HF_DEBUG=1`) shows the traceback.
- Nothing heavy (torch, transformers, diffusers) is imported before a command runs, so `--help` answers at once.
- Each module exposes `build_parser(prog) -> argparse.ArgumentParser` (tests parse every documented command with it)
  and `main(argv=None, prog=...) -> int`.
- Libraries' chatter (transformers' "Loading weights" bars, accelerate's INFO lines) is off unless `--verbose`
  (`configure_logging`).
"""

import argparse
import math
import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = "VAR_HF_DEBUG"
_debug_active = False  # set while a command runs under --debug


class UsageError(ValueError):
    """A command-line argument is wrong: the message names the option and the fix. Exit code 2."""


def option_flag(name: str) -> str:
    """An option's name as help and docs spell it: `max_steps` (a dataclass field or argparse dest) -> `--max-steps`."""
    return "--" + name.replace("_", "-")


def normalize_option_spelling(argv: Sequence[str]) -> List[str]:
    """`--output_dir=x` -> `--output-dir=x`: the option name's underscores become hyphens; values are untouched."""
    out = []
    for arg in argv:
        if arg == "--":
            out.extend(argv[len(out):])
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only for defaults that say something (not None, False or an empty list)."""

    def _get_help_string(self, action):
        if action.default in (None, False, []) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class CLIArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` that accepts `--x_y` for every `--x-y` option, and whose errors are one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        # No abbreviations: `--guidance` is not `--guidance-scale`, so docs and scripts spell every flag out.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(normalize_option_spelling(args), namespace)

    def error(self, message):
        """One line through `run_command` (argparse would print the usage block first); `--help` shows the usage."""
        raise UsageError(f"{message} (see {self.prog} --help)")


def temperature_argument(text: str):
    """`--temperature`: one number > 0, or comma-separated numbers, one per scale, coarse to fine."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0, or comma-separated numbers (one per scale, coarse to fine), got {text!r}"
        ) from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"every temperature must be a finite number > 0, got {text!r}")
    return values[0] if len(values) == 1 else values


def raise_usage_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make any argparse parser (e.g. transformers' `HfArgumentParser`) raise `UsageError` instead of printing its
    usage block and exiting, so `run_command` reports the problem in one line like every other command."""

    def error(message):
        raise UsageError(f"{message} (see {parser.prog} --help)")

    parser.error = error
    return parser


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--verbose` and `--debug`, shared by every command (`run_command` acts on `--debug` before parsing)."""
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' INFO logs and loading progress bars")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (or set {DEBUG_ENV}=1)")
    return parser


def configure_logging(verbose: bool = False):
    """Quiet by default: transformers/diffusers at WARNING without their loading bars, accelerate at WARNING.
    `verbose=True` restores INFO logs and the bars."""
    import logging

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for lib in (transformers_logging, diffusers_logging):
        if verbose:
            lib.set_verbosity_info()
            lib.enable_progress_bar()
        else:
            lib.set_verbosity_warning()
            lib.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.INFO if verbose else logging.WARNING)


def emulated_dtype_warning(device: str, dtype: str) -> Optional[str]:
    """The warning for `--dtype bfloat16/float16` on a CPU that emulates that type (None where there is nothing to
    say): the run is correct but slow, so it is said, not refused."""
    import torch

    from var_hf.file_utils import cpu_emulates

    if not cpu_emulates(device, dtype):
        return None
    return (
        f"warning: --dtype {dtype} on a CPU without native {dtype} (capability "
        f"{torch.backends.cpu.get_cpu_capability()}): emulated, measured 5-6x slower sampling than float32 on a 2-core "
        "AVX2 CPU. Leave out --dtype (float32 is the default) to sample at full speed."
    )


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def run_command(prog: str, main_fn: Callable[[List[str]], Optional[int]], argv: Sequence[str]) -> int:
    """Run `main_fn(argv)` and turn any exception into one line on stderr (2 for usage errors, 1 otherwise)."""
    global _debug_active
    debug = debug_requested(argv) or _debug_active  # a command run from `var-hf` inherits its --debug
    argv = [a for a in argv if a != "--debug"]
    outer, _debug_active = _debug_active, debug
    try:
        return int(main_fn(argv) or 0)
    except SystemExit as exit_:  # argparse's own usage errors and --help; sys.exit("message")
        if isinstance(exit_.code, str):
            print(f"{prog}: error: {exit_.code}", file=sys.stderr)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's contract is one line, the traceback on request
        if debug:
            raise
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        ours = type(err).__module__.startswith("var_hf")  # CheckpointError, HubPushError, ConversionError ...
        if not ours and not isinstance(err, (ValueError, OSError, RuntimeError)):
            message = f"{type(err).__name__}: {message}"  # a raw library error: its type helps
        hint = "" if isinstance(err, UsageError) else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    finally:
        _debug_active = outer


def run_parsed_command(
    prog: str,
    build_parser: Callable[[str], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], Optional[int]],
    argv: Optional[Sequence[str]] = None,
) -> int:
    """The `main` of a command that parses with `build_parser(prog)` and works in `run(args)`, under `run_command`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_command(prog, lambda rest: run(build_parser(prog).parse_args(rest)), argv)


__all__ = [
    "CLIArgumentParser",
    "DEBUG_ENV",
    "HelpFormatter",
    "UsageError",
    "add_common_arguments",
    "configure_logging",
    "debug_requested",
    "emulated_dtype_warning",
    "normalize_option_spelling",
    "raise_usage_errors",
    "run_command",
    "run_parsed_command",
]
