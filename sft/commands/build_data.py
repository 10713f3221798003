"""`sft build-data SPEC --out DIR`: construct an instruction dataset (self-instruct, filtering, de-duplication)."""

from __future__ import annotations


ORDER = 13  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("build-data", help="build an instruction dataset from a spec")
    p.add_argument("spec")
    p.add_argument("--out", required=True)


def run(args) -> int:
    from ..construct.build import build_data

    r = build_data(args.spec, args.out)
    splits = r["splits"]
    print(f"[sft build-data] {r['generated']} generated -> {r['kept']} kept "
          f"({', '.join(f'{k} {n}' for k, n in splits.items())}); drops: {r['drops'] or 'none'}")
    print(f"[sft build-data] wrote {args.out}/{{{','.join(splits)}}}.jsonl/.parquet, DATACARD.md, build_report.json")
    return 0
