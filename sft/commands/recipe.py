"""`sft recipe show RECIPE [k=v ...]` and `sft recipe schema`."""

from __future__ import annotations

from ._args import add_recipe_args


ORDER = 1  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("recipe", help="inspect recipes")
    rsub = p.add_subparsers(dest="recipe_command", required=True)
    add_recipe_args(rsub.add_parser("show", help="print the resolved recipe"))
    rsub.add_parser("schema", help="print every recipe field with its default and meaning")


def run(args) -> int:
    from ..recipe import describe_schema, load_recipe

    if args.recipe_command == "schema":
        print("\n".join(describe_schema()))
        return 0
    print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
    return 0
