"""`var-hf train-var`: train the VAR transformer (stage 2) on a frozen VQVAE.

The same command runs under Accelerate: `accelerate launch src/var_hf/training/train_var.py ...` (or
`accelerate launch -m var_hf.training.train_var ...`). Options are the dataclasses of `var_hf.training.arguments`,
parsed by transformers' `HfArgumentParser` (both `--x-y` and `--x_y` are accepted); `parse_training_command` does that
for `train-vqvae` and `tokenize` too.
"""

from typing import List, Optional, Sequence, Tuple

from var_hf.commands import UsageError, raise_usage_errors

# List fields that also take the reference's one-word spellings `1,2,3` and `1_2_3` (parsed in the dataclass).
INT_LIST_OPTIONS = ("patch_nums", "channel_multipliers")


def build_parser(dataclass_types: Sequence[type], prog: str, description: str):
    import argparse

    from transformers import HfArgumentParser

    # allow_abbrev=False: no abbreviated options, as in every command (`var_hf.commands.CLIArgumentParser`).
    parser = HfArgumentParser(list(dataclass_types), prog=prog, description=description, allow_abbrev=False,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for action in parser._actions:
        action.option_strings.sort(key=lambda option: "_" in option)  # help shows --x-y; --x_y is accepted too
        if action.dest in INT_LIST_OPTIONS:
            action.type = str
    return raise_usage_errors(parser)  # one-line errors through run_command, like every other command


def parse_training_command(dataclass_types: Sequence[type], argv: Optional[List[str]], prog: str,
                           description: str) -> Tuple:
    """Parse `argv` into one instance per dataclass; unknown options are a `UsageError`."""
    import sys

    parser = build_parser(dataclass_types, prog, description)
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv))
    except ValueError as err:  # unknown options, or a dataclass's __post_init__
        raise UsageError(str(err)) from err


DESCRIPTION = "Train the VAR transformer (stage 2, next-scale prediction) on a frozen VQVAE, with Accelerate."


def main(argv: Optional[List[str]] = None, prog: str = "var-hf train-var") -> int:
    from var_hf.training.arguments import DataArguments, TrainingArguments, VARModelArguments
    from var_hf.training.checkpointing import check_output_dir

    model_args, data_args, training_args = parse_training_command(
        (VARModelArguments, DataArguments, TrainingArguments), argv, prog, DESCRIPTION)
    try:
        model_args.validate()
        data_args.validate()
        training_args.validate()
        if training_args.gradient_checkpointing and model_args.selective_checkpointing:
            raise ValueError("Choose one of --gradient-checkpointing (full) and --selective-checkpointing.")
        if model_args.tokenized_dataset is not None and data_args.hflip:
            raise ValueError("--hflip has no effect on a --tokenized-dataset (tokenize with --hflip-copies instead).")
        check_output_dir(training_args.output_dir, training_args.resume, training_args.overwrite_output_dir)
    except ValueError as err:
        raise UsageError(str(err)) from err
    from var_hf.training.train_var import train_var

    return train_var(model_args, data_args, training_args)


__all__ = ["INT_LIST_OPTIONS", "build_parser", "main", "parse_training_command"]
