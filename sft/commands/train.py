"""`sft train RECIPE [k=v ...] [--resume | --overwrite]`."""

from __future__ import annotations

from ._args import add_recipe_args


ORDER = 3  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune (evaluates before and after)")
    add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an output_dir holding another recipe's run")


def run(args) -> int:
    from ..recipe import load_recipe
    from ..train.run import train

    train(load_recipe(args.recipe, args.overrides), resume=args.resume, overwrite=args.overwrite)
    return 0
