"""`sft` subcommands. Every SftError becomes one line on stderr and exit code 2 (--debug: traceback)."""

from __future__ import annotations

import argparse
import os
import re
import sys

from .errors import SftError

_OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[\w]+)+=")


def _module(name: str):
    import importlib

    return importlib.import_module(f".commands.{name.replace('-', '_')}", __package__)


def _commands() -> tuple[str, ...]:
    """The subcommands: every module in sft/commands/ (it parses its arguments, calls the library and prints), in
    the order each declares (ORDER). Adding a command is one module."""
    import pkgutil

    from . import commands

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    return tuple(n.replace("_", "-") for n in sorted(names, key=lambda n: (getattr(_module(n), "ORDER", 99), n)))


COMMANDS = _commands()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sft", description="Supervised instruction fine-tuning on the Hugging Face "
                                     "stack: GPT-2, T5 and other causal or seq2seq models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def run(args: argparse.Namespace) -> int:
    return _module(args.command).run(args)


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
