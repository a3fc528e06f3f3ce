"""`var-hf push FOLDER REPO_ID`: upload a saved pipeline folder to the Hub, with a model card.

    var-hf push ./var-d16 your-name/var-d16 --base-model FoundationVision/var --dataset ILSVRC/imagenet-1k

Everything is checked first (the repo id, the folder, the card's inputs); nothing is written to the folder before
all of it is valid. The card (`README.md`, `sample_grid.png`) is written when the folder has none, or with
`--write-card`.
"""

import os
import sys
from typing import List, Optional

from var_hf.commands import CLIArgumentParser, UsageError, add_common_arguments, configure_logging, run_parsed_command


def build_parser(prog: str = "var-hf push") -> CLIArgumentParser:
    parser = CLIArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    parser.add_argument("folder", help="a saved pipeline folder (save_pretrained / var-hf-convert output)")
    parser.add_argument("repo_id", help="Hub repo, e.g. your-name/var-d16")
    parser.add_argument("--token", default=None, help="write token (default: the logged-in one or HF_TOKEN)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--commit-message", default="Upload VAR pipeline with var_hf", help="the commit message")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead")
    parser.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or huggingface.co)")
    card = parser.add_argument_group("model card (written when README.md is missing, or always with --write-card)")
    card.add_argument("--write-card", action="store_true", help="(re)write README.md and the sample grid first")
    card.add_argument("--no-card", action="store_true", help="never write a card")
    card.add_argument("--metrics", default=None, help="metrics.json of var-hf evaluate, for model-index results")
    card.add_argument("--license", default="mit", help="license id of the weights")
    card.add_argument("--base-model", default=None, help="the model this was converted from")
    card.add_argument("--dataset", action="append", default=None, help="training dataset id (repeatable)")
    card.add_argument("--eval-dataset-type", default=None, help="Hub id of the evaluation dataset (e.g. imagenet-1k)")
    card.add_argument("--no-sample-grid", action="store_true", help="do not draw sample_grid.png")
    add_common_arguments(parser)
    return parser


def run(args) -> int:
    configure_logging(args.verbose)
    from var_hf import hub

    if args.write_card and args.no_card:
        raise UsageError("--write-card and --no-card contradict each other; pass one.")
    # Validate everything before the first write.
    try:
        hub.check_repo_id(args.repo_id)
        hub.check_pipeline_folder(args.folder)
        has_card = os.path.isfile(os.path.join(args.folder, "README.md"))
        write_card = not args.no_card and (args.write_card or not has_card)
        card_flags = [flag for flag, given in (
            ("--metrics", args.metrics is not None), ("--license", args.license != "mit"),
            ("--base-model", args.base_model is not None), ("--dataset", args.dataset is not None),
            ("--eval-dataset-type", args.eval_dataset_type is not None), ("--no-sample-grid", args.no_sample_grid),
        ) if given]
        if card_flags and not write_card:
            reason = "--no-card is given" if args.no_card else f"{args.folder} already has a README.md"
            raise UsageError(
                f"{', '.join(card_flags)} only apply when a card is written, and {reason}; pass --write-card to "
                f"rewrite the card, or leave them out."
            )
        if write_card:
            card_inputs = hub.check_card_inputs(args.license, datasets=args.dataset)
            if args.metrics is not None:
                hub.publishable_metrics(hub.read_metrics_report(args.metrics))
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    if write_card:
        hub.write_model_card(
            args.folder, repo_id=args.repo_id, license=card_inputs["license"], base_model=args.base_model,
            datasets=card_inputs["datasets"], metrics=args.metrics, eval_dataset_type=args.eval_dataset_type,
            sample_grid=not args.no_sample_grid,
        )
    info = hub.push_pipeline(
        args.folder, args.repo_id, token=args.token, private=args.private, commit_message=args.commit_message,
        revision=args.revision, create_pr=args.create_pr, endpoint=args.endpoint, write_card_if_missing=False,
    )
    print(f"pushed {args.folder} to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "var-hf push") -> int:
    return run_parsed_command(prog, build_parser, run, argv)


__all__ = ["build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
