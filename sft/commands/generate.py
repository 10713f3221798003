"""`sft generate MODEL --input FILE --out FILE`: batched answers for a jsonl of instructions or messages."""

from __future__ import annotations

import json
import sys

from ._args import add_generation_args, generation_overrides


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate answers for instructions in a jsonl file")
    p.add_argument("model", help="training output directory or model directory")
    p.add_argument("--input", default="-", help="jsonl with instruction[/input] or messages; - for stdin")
    p.add_argument("--out", default="-", help="output jsonl; - for stdout")
    add_generation_args(p)


def run(args) -> int:
    from ..inference import generate_rows
    from ..io import write_text_atomic

    rows, cut = generate_rows(args.model, args.input, args.out, generation_overrides(args), batch_size=args.batch_size)
    if cut:
        print(f"[sft] note: {cut} prompt(s) left-truncated to fit the model context", file=sys.stderr, flush=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_text_atomic(args.out, text)
    return 0
