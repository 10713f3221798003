"""`sft generate MODEL --input FILE --out FILE`: batched answers for a jsonl of instructions or messages."""

from __future__ import annotations

import json
import sys

from ._args import add_generation_args, generation_overrides


ORDER = 6  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate answers for instructions in a jsonl file")
    p.add_argument("model", help="an sft output directory, a Hugging Face model folder, or a Hub id")
    p.add_argument("--input", default="-", help="jsonl with instruction[/input] or messages; - for stdin")
    p.add_argument("--out", default="-", help="output jsonl; - for stdout")
    p.add_argument("--raw", action="store_true",
                   help="no template: continue each row's 'prompt' (or 'text') as plain text (base models)")
    p.add_argument("--num-return-sequences", type=int, default=1,
                   help="answers per row (needs --do-sample or as many beams); all go to 'predictions'")
    p.add_argument("--tools", default=None, metavar="FILE",
                   help="a JSON list of function specs given to every row without its own 'tools'")
    add_generation_args(p)


def run(args) -> int:
    from ..inference import generate_rows
    from ..io import write_text_atomic

    rows, cut = generate_rows(args.model, args.input, args.out, generation_overrides(args), batch_size=args.batch_size,
                              raw=args.raw, num_return_sequences=args.num_return_sequences, seed=args.seed,
                              tools_path=args.tools)
    if cut:
        print(f"[sft] note: {cut} prompt(s) left-truncated to fit the model context", file=sys.stderr, flush=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        write_text_atomic(args.out, text)
    return 0
