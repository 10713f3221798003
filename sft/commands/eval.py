"""`sft eval TARGET [k=v ...]`: score a base model (recipe) or a finished run (output dir)."""

from __future__ import annotations


ORDER = 4  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a base model, a fine-tune or an adapter")
    p.add_argument("target", help="recipe YAML file or a training output directory")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--split", default="eval", help="eval (default), test or train")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for metrics.json, predictions.jsonl, reports")
    p.add_argument("--harness", default=None, metavar="TASKS",
                   help="also run lm-evaluation-harness tasks on the model (comma-separated names or task YAML "
                   "paths; extra: harness) and merge them into metrics.json")
    p.add_argument("--harness-limit", type=int, default=None, metavar="N", help="first N documents per task")


def run(args) -> int:
    import sys

    from ..evaluation.report import metrics_table
    from ..evaluation.run import evaluate_target, note_lines

    harness = [t.strip() for t in args.harness.split(",") if t.strip()] if args.harness else None
    out, metrics = evaluate_target(args.target, args.overrides, split=args.split, max_samples=args.max_samples,
                                   out=args.out, harness=harness, harness_limit=args.harness_limit)
    for line in note_lines(metrics):
        print(f"[sft] {line}", file=sys.stderr)
    print(metrics_table(metrics))
    for task, values in sorted((metrics.get("harness") or {}).get("tasks", {}).items()):
        print(f"[sft] harness {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(values.items())))
    print(f"[sft] wrote {out}/metrics.json, predictions.jsonl, eval_report.md, report.html")
    return 0
