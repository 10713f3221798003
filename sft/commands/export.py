"""`sft export RUN --out DIR [--dtype bf16|fp16|fp32]`: one standalone model folder for transformers and vLLM."""

from __future__ import annotations


ORDER = 9  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run as one standalone model (merged weights, template, stop ids)")
    p.add_argument("output_dir", help="an sft output directory (full or LoRA) or a model folder")
    p.add_argument("--out", required=True, help="a new or empty folder")
    p.add_argument("--dtype", default="fp32", help="bf16, fp16 or fp32 (default)")


def run(args) -> int:
    from ..export import export

    out = export(args.output_dir, args.out, dtype=args.dtype)
    print(f"[sft] exported {args.output_dir} ({args.dtype}) to {out}; load it with transformers, "
          f"`vllm serve {out}` or `sft serve {out}`")
    return 0
