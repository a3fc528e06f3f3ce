"""The `var-hf` command line (transformers' `commands/` layout): one module a subcommand, each with `main(argv)`.

Conventions every command follows, so that they behave alike:

- Options are spelled `--x-y` in help and docs; `--x_y` is accepted too (`CLIArgumentParser` folds underscores in
  option names to hyphens before parsing). Commands built on transformers' `HfArgumentParser` accept both natively.
- Bad arguments raise `UsageError` (exit code 2); any other failure exits 1. `run_command` turns either into one
  line, `var-hf <command>: error: <message>`, on stderr; `--debug` (or `VAR_HF_DEBUG=1`) shows the traceback.
- Nothing heavy (torch, transformers, diffusers) is imported before a command runs, so `--help` answers at once.
"""

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence

DEBUG_ENV = "VAR_HF_DEBUG"


class UsageError(ValueError):
    """A command-line argument is wrong: the message names the option and the fix. Exit code 2."""


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


class CLIArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` that accepts `--x_y` for every `--x-y` option, and whose errors are one line."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(normalize_option_spelling(args), namespace)


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def run_command(prog: str, main_fn: Callable[[List[str]], Optional[int]], argv: Sequence[str]) -> int:
    """Run `main_fn(argv)` and turn any exception into one line on stderr (2 for usage errors, 1 otherwise)."""
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return int(main_fn(argv) or 0)
    except SystemExit as exit_:  # argparse's own usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's contract is one line, the traceback on request
        if debug:
            raise
        message = str(err) or type(err).__name__
        if not isinstance(err, (UsageError, ValueError, OSError, RuntimeError)):
            message = f"{type(err).__name__}: {message}"
        hint = "" if debug else f" (run with --debug or {DEBUG_ENV}=1 for the traceback)"
        print(f"{prog}: error: {message}{hint}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1


__all__ = ["CLIArgumentParser", "DEBUG_ENV", "UsageError", "debug_requested", "normalize_option_spelling", "run_command"]
