"""`sft` subcommands. Every SftError becomes one line on stderr and exit code 2 (--debug: traceback)."""

from __future__ import annotations

import argparse
import os
import re
import sys

from .errors import SftError

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+=")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.learning_rate=1e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Supervised instruction fine-tuning for GPT-2 and T5.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("recipe", help="inspect recipes")
    rsub = p.add_subparsers(dest="recipe_command", required=True)
    show = rsub.add_parser("show", help="print the resolved recipe")
    _add_recipe_args(show)
    rsub.add_parser("schema", help="print every recipe field with its default and meaning")

    p = sub.add_parser("data", help="load, clean, format and tokenise a recipe's data; print examples and stats")
    _add_recipe_args(p)
    p.add_argument("--show", type=int, default=3, help="rendered examples to print")

    p = sub.add_parser("train", help="fine-tune (evaluates before and after)")
    _add_recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    p.add_argument("--overwrite", action="store_true", help="replace an output_dir holding another recipe's run")

    p = sub.add_parser("eval", help="score a base model, a fine-tune or an adapter")
    p.add_argument("target", help="recipe YAML file or a training output directory")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--split", default="eval", help="eval (default), test or train")
    p.add_argument("--max-samples", type=int, default=None)
    p.add_argument("--out", default=None, help="directory for metrics.json, predictions.jsonl, reports")

    from .commands import score

    score.add_parser(sub)

    p = sub.add_parser("generate", help="generate answers for instructions in a jsonl file")
    p.add_argument("model", help="training output directory or model directory")
    p.add_argument("--input", default="-", help="jsonl with instruction[/input] or messages; - for stdin")
    p.add_argument("--out", default="-", help="output jsonl; - for stdout")
    _add_generation_args(p)

    p = sub.add_parser("chat", help="interactive chat with a trained model")
    p.add_argument("model", help="training output directory or model directory")
    p.add_argument("--compare", default=None, help="a base model/output dir whose answers are shown beside")
    _add_generation_args(p)

    p = sub.add_parser("push", help="upload an output dir (adapter/model, card, metrics) to a model hub")
    p.add_argument("output_dir")
    p.add_argument("--repo-id", required=False, default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--to-dir", default=None, help="write exactly what would be uploaded into this directory")

    p = sub.add_parser("merge", help="merge a LoRA adapter into its base and save a standalone model")
    p.add_argument("output_dir")
    p.add_argument("--out", required=True)

    p = sub.add_parser("bench", help="run a matrix of recipes and write tables and plots")
    p.add_argument("bench", help="bench YAML")
    p.add_argument("--out", default=None)
    p.add_argument("--check", default=None, help="reference table (markdown) to compare against")

    p = sub.add_parser("build-data", help="build an instruction dataset from a spec")
    p.add_argument("spec")
    p.add_argument("--out", required=True)
    return parser


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--num-beams", type=int, default=None)
    p.add_argument("--do-sample", action="store_true", default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)


def _gen_overrides(args) -> dict:
    keys = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_p")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    if args.command == "recipe":
        from .recipe import describe_schema, load_recipe

        if args.recipe_command == "schema":
            print("\n".join(describe_schema()))
            return 0
        print(load_recipe(args.recipe, args.overrides).to_yaml(), end="")
        return 0
    if args.command == "data":
        from .commands import data
        from .recipe import load_recipe

        data.run(load_recipe(args.recipe, args.overrides), show=args.show)
        return 0
    if args.command == "train":
        from .recipe import load_recipe
        from .train.run import train

        train(load_recipe(args.recipe, args.overrides), resume=args.resume, overwrite=args.overwrite)
        return 0
    if args.command == "eval":
        from .evaluation.run import eval_command

        from .evaluation.report import metrics_table

        out, metrics = eval_command(args.target, args.overrides, split=args.split, max_samples=args.max_samples,
                               out=args.out)
        print(metrics_table(metrics))
        print(f"[sft] wrote {out}/metrics.json, predictions.jsonl, eval_report.md, report.html")
        return 0
    if args.command == "score":
        from .commands import score

        return score.run(args)
    if args.command == "generate":
        from .inference import generate_command

        generate_command(args.model, args.input, args.out, _gen_overrides(args), batch_size=args.batch_size)
        return 0
    if args.command == "chat":
        from .inference import chat_command

        chat_command(args.model, compare=args.compare, gen=_gen_overrides(args))
        return 0
    if args.command == "push":
        from .publish import push_command

        push_command(args.output_dir, repo_id=args.repo_id, private=args.private, revision=args.revision,
                     to_dir=args.to_dir)
        return 0
    if args.command == "merge":
        from .publish import merge_adapter

        merge_adapter(args.output_dir, args.out)
        return 0
    if args.command == "bench":
        from .bench import bench_command

        return bench_command(args.bench, out=args.out, check_ref=args.check)
    if args.command == "build-data":
        from .construct.build import build_data_command

        build_data_command(args.spec, args.out)
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    # key=value overrides may sit anywhere (argparse would split them around options such as --resume)
    overrides = [a for a in argv if _OVERRIDE.match(a)]
    argv = [a for a in argv if not _OVERRIDE.match(a)]
    args = build_parser().parse_args(argv)
    args.debug = debug
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides or []) + overrides
    elif overrides:
        print(f"sft: error: {args.command} takes no key=value overrides (got {overrides[0]})", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on CPU that an optional kernels package is missing; its pure-torch path works.
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        return run(args)
    except SftError as e:
        if debug:
            raise
        print(f"sft: error: {e.one_line()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sft: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, permissions, a path that cannot be created: the system's words, one line
        if debug:
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        fix = "free some disk space, then run again (with --resume for sft train)" if e.errno == 28 else \
            "check the path and its permissions"
        print(f"sft: error: {where}{e.strerror or e} (fix: {fix})", file=sys.stderr)
        return 2
    except Exception as e:  # a bug in sft, not the user's input: say so in one line, exit 1
        if debug:
            raise
        print(f"sft: internal error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
              "(run again with --debug for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
