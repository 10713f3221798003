"""`sft score PREDICTIONS.jsonl`: score predictions made anywhere with sft's scorers."""

from __future__ import annotations

from ..evaluation.report import metrics_table
from ..evaluation.score import score_file, write_score_outputs


ORDER = 5  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a predictions jsonl (made by any system) with sft's metrics")
    p.add_argument("predictions", help="jsonl with a prediction field and references (or --references)")
    p.add_argument("--references", default=None, help="jsonl with the references, one row per prediction")
    p.add_argument("--pred-field", default="prediction")
    p.add_argument("--ref-field", default=None, help="a string or a list of strings (default: references, "
                                                    "else reference)")
    p.add_argument("--metrics", default="bleu,rouge,exact_match", help="comma-separated metric names")
    p.add_argument("--tokenize", default="auto", choices=["auto", "13a", "zh", "char"],
                   help="how BLEU and ROUGE split text (default auto: zh when any reference contains CJK, else 13a)")
    p.add_argument("--sql-database", default=None, help="SQLite file for execution_accuracy (read-only), or "
                   "builtin:synthetic")
    p.add_argument("--out", default=None, help="folder for metrics.json and eval_report.md")


def run(args) -> int:
    if args.out:  # refused before any scoring if sft may not write there
        from .. import rundir
        from ..errors import EvalError

        rundir.claim(args.out, kind="eval", field="--out", error=EvalError)
    metrics = score_file(args.predictions, references=args.references, pred_field=args.pred_field,
                         ref_field=args.ref_field, metrics=[m.strip() for m in args.metrics.split(",") if m.strip()],
                         tokenize=args.tokenize, sql_database=args.sql_database)
    if args.out:
        write_score_outputs(args.out, metrics)
    print(metrics_table(metrics))
    if args.out:
        print(f"[sft] wrote {args.out}/metrics.json, eval_report.md")
    return 0
