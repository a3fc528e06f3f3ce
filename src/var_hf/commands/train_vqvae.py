"""`var-hf train-vqvae`: train VAR's multi-scale VQVAE (stage 1).

The same command runs under Accelerate: `accelerate launch src/var_hf/training/train_vqvae.py ...` (or
`accelerate launch -m var_hf.training.train_vqvae ...`). Options are the dataclasses of `var_hf.training.arguments`,
parsed by transformers' `HfArgumentParser` (both `--x-y` and `--x_y` are accepted).
"""

from typing import List, Optional

from var_hf.commands import UsageError
from var_hf.commands.train_var import parse_training_command

DESCRIPTION = "Train VAR's multi-scale VQVAE (stage 1, the tokenizer) with Accelerate; labels are not needed."


def main(argv: Optional[List[str]] = None, prog: str = "var-hf train-vqvae") -> int:
    from var_hf.training.arguments import DataArguments, VQVAEModelArguments, VQVAETrainingArguments
    from var_hf.training.checkpointing import check_output_dir

    model_args, data_args, training_args = parse_training_command(
        (VQVAEModelArguments, DataArguments, VQVAETrainingArguments), argv, prog, DESCRIPTION)
    try:
        model_args.validate()
        data_args.validate()
        training_args.validate()
        check_output_dir(training_args.output_dir, training_args.resume, training_args.overwrite_output_dir)
        from var_hf.training.train_vqvae import VQVAEStage, train  # builds the config: its errors are usage errors

        stage = VQVAEStage(model_args, data_args, training_args)
    except ValueError as err:
        raise UsageError(str(err)) from err
    return train(stage)


__all__ = ["main"]
