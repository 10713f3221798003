"""`sft merge OUTPUT_DIR --out DIR`: a LoRA adapter merged into its base, saved standalone."""

from __future__ import annotations


ORDER = 11  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its base and save a standalone model")
    p.add_argument("output_dir")
    p.add_argument("--out", required=True)


def run(args) -> int:
    from ..publish import merge_adapter

    out = merge_adapter(args.output_dir, args.out)
    print(f"[sft] merged adapter into its base: {out}")
    return 0
