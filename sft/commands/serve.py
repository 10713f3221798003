"""`sft serve RUN_OR_MODEL`: an OpenAI-compatible server (transformers serve, or vLLM) over a run or any model."""

from __future__ import annotations

import sys


ORDER = 8  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a run or any model through an OpenAI-compatible server",
                       description="Serve an sft run, a Hugging Face model folder or a Hub id with an existing "
                       "OpenAI-compatible server.")
    p.add_argument("model", help="an sft output directory, a Hugging Face model folder, or a Hub id")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--engine", default="transformers", help="transformers (default; CPU or GPU) or vllm")
    p.add_argument("--continuous-batching", action="store_true",
                   help="transformers engine: batch concurrent requests continuously (paged attention)")
    p.add_argument("--engine-arg", action="append", default=[], dest="engine_args", metavar="ARG",
                   help="passed to the engine unchanged, once per argument (e.g. --engine-arg=--dtype=bfloat16)")


def run(args) -> int:
    from ..serve import plan, run as run_server

    launch = plan(args.model, engine=args.engine, host=args.host, port=args.port,
                  continuous_batching=args.continuous_batching, engine_args=tuple(args.engine_args))
    if launch.exported:
        print(f"[sft] {args.model}: {launch.exported}; exported to a scratch folder for the server (removed when "
              "it stops)", file=sys.stderr, flush=True)
    print(f"[sft] serving {args.model} with {args.engine} at {launch.url} (model name: {launch.model!r}); "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    return run_server(launch)
