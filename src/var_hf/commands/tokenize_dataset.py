"""`var-hf tokenize`: encode an image dataset once into VAR token maps (an Arrow `DatasetDict`), for
`var-hf train-var --tokenized-dataset`.

Several processes: `accelerate launch src/var_hf/training/tokenize_dataset.py ...`.
"""

from typing import List, Optional

from var_hf.commands import UsageError
from var_hf.commands.train_var import parse_training_command

DESCRIPTION = "Encode an image dataset once into VAR token maps with a trained VQVAE."


def main(argv: Optional[List[str]] = None, prog: str = "var-hf tokenize") -> int:
    import os

    from var_hf.training.arguments import TokenizeArguments

    (args,) = parse_training_command((TokenizeArguments,), argv, prog, DESCRIPTION)
    try:
        args.validate()
        if os.path.exists(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite:
            raise ValueError(f"--output-dir {args.output_dir} exists and is not empty; pass --overwrite to replace it.")
    except ValueError as err:
        raise UsageError(str(err)) from err
    from var_hf.training.tokenize_dataset import tokenize_dataset

    return tokenize_dataset(args)


__all__ = ["main"]
