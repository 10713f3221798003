"""`sft bench SPEC [--out DIR] [--check TABLE] [key=value ...]`: a matrix of runs, tables and plots, compared to a reference."""

from __future__ import annotations

import sys


ORDER = 12  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a matrix of recipes and write tables and plots")
    p.add_argument("bench", help="bench YAML")
    p.add_argument("--out", default=None)
    p.add_argument("--check", default=None, help="reference table (markdown) to compare against")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides applied to every run, bases included")


def run(args) -> int:
    from ..bench import run_bench, table

    rows, out, problems = run_bench(args.bench, out=args.out, check_ref=args.check, extra=args.overrides,
                                    progress=lambda line: print(f"[sft bench] {line}", flush=True))
    print(table(rows))
    print(f"[sft bench] wrote {out}/results.md, results.json, loss_curves.png, metrics.png, report.html")
    if problems:
        print(f"[sft bench] CHECK FAILED against {args.check}:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    if args.check:
        print(f"[sft bench] check passed against {args.check}")
    return 0
