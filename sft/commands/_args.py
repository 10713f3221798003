"""Argument groups shared by several subcommands."""

from __future__ import annotations


def add_recipe_args(p) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.learning_rate=1e-4")


def add_generation_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--do-sample", action="store_true", default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None, help="keep the k likeliest tokens when sampling (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=None, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed: the same seed gives the same text")
    p.add_argument("--batch-size", type=int, default=None)


def generation_overrides(args) -> dict:
    keys = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
