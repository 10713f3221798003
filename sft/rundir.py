"""The output folder of a run: its marker, lock, data fingerprint and the rule that sft deletes only what
sft wrote.

A folder becomes a run directory when sft creates it (or finds it empty) and writes `.sft-run`.
`--overwrite` removes only sft's own files from a marked folder, and refuses a folder that holds
anything else, the current directory or one above it, the recipe's own folder, $HOME and `/`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import time

from .errors import TrainError
from .io import read_json, write_json_atomic

MARKER = ".sft-run"
LOCK = ".sft-lock"
RECIPE = "recipe.yaml"
FINGERPRINT = "data_fingerprint.json"
TRAIN_LOG = "train_log.jsonl"
TRAIN_SUMMARY = "train_summary.json"
EVAL_BEFORE = "eval_before.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
EVAL_REPORT = "eval_report.md"
REPORT_HTML = "report.html"
CURVES = "training_curves.png"
CARD = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"

# Everything sft (or the Trainer, tokenizer and peft under it) writes into a run directory.
OWN_FILES = {
    MARKER, LOCK, RECIPE, FINGERPRINT, TRAIN_LOG, TRAIN_SUMMARY, EVAL_BEFORE, METRICS, PREDICTIONS, EVAL_REPORT,
    REPORT_HTML, CURVES, "trainer_state.json", "training_args.bin", MODEL_CONFIG,
    GENERATION_CONFIG, "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
    ADAPTER_CONFIG, "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "spiece.model", "added_tokens.json", "chat_template.jinja", CARD, "all_results.json",
    "train_results.json", "runs", "base_model", "eval-base",
}
OWN_PATTERNS = (re.compile(r"checkpoint-\d+"), re.compile(r"model-\d+-of-\d+\.safetensors"),
                re.compile(r"\..+\.tmp"), re.compile(r".+\.tmp\d+"))


# What sft writes into a folder of one kind beyond OWN_FILES (`sft build-data --out`: the splits and their card).
KIND_FILES = {"data": {f"{s}.{e}" for s in ("train", "validation", "test") for e in ("jsonl", "parquet")}
              | {"DATACARD.md", "build_report.json", "self_instruct"}}


KIND_KEEP = {"data": ("self_instruct",)}  # kept on a rebuild: Self-Instruct resumes from its own progress there


def is_own(name: str, kind: str | None = None) -> bool:
    return name in OWN_FILES or any(p.fullmatch(name) for p in OWN_PATTERNS) or name in KIND_FILES.get(kind, ())


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def forbidden_reason(out: str, recipe_path: str | None) -> str | None:
    """Why a folder must never be a run directory that sft fills or clears (None: it may)."""
    real = _real(out)
    cwd = _real(os.getcwd())
    if real == os.path.sep:
        return "it is the root folder"
    if real == _real("~"):
        return "it is your home folder"
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        return "it is the current folder or one above it"
    if recipe_path and os.path.exists(recipe_path) and _real(os.path.dirname(os.path.abspath(recipe_path))) == real \
            and not is_saved_recipe(recipe_path, out):
        return "it is the folder of the recipe itself"
    return None


def is_saved_recipe(recipe_path: str, out: str) -> bool:
    """The recipe is the one sft saved in this run folder (`sft train RUN/recipe.yaml --resume` continues it)."""
    return (os.path.basename(recipe_path) == RECIPE and os.path.exists(os.path.join(out, MARKER))
            and _real(os.path.dirname(os.path.abspath(recipe_path))) == _real(out))


def foreign_files(out: str, kind: str | None = None) -> list[str]:
    return sorted(f for f in os.listdir(out) if not is_own(f, kind))


def check_usable(out: str, recipe_path: str | None, *, overwrite: bool) -> None:
    """Refuse, with one line, any output_dir that sft would have to write into unsafely."""
    field = "train.output_dir"
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError("output_dir is a file, not a folder", file=out, field=field,
                         fix="choose a folder path for train.output_dir")
    reason = forbidden_reason(out, recipe_path)
    if reason:
        raise TrainError(f"refusing to use this output_dir: {reason}", file=out, field=field,
                         fix="set train.output_dir to a new folder, e.g. outputs/run")
    if not os.path.isdir(out):
        parent = os.path.dirname(os.path.abspath(out))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise TrainError(f"cannot create output_dir ({parent} is not writable)", file=out, field=field,
                             fix="choose a folder you can write to")
        return
    entries = os.listdir(out)
    if not entries:
        return
    if not os.path.exists(os.path.join(out, MARKER)):
        raise TrainError("output_dir already holds files that sft did not write "
                         f"({', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''})", file=out,
                         field=field, fix="choose a new or empty folder (sft never writes into or clears other folders)")
    foreign = foreign_files(out)
    if foreign and overwrite:
        raise TrainError(f"--overwrite refused: output_dir holds files sft did not write ({', '.join(foreign[:3])})",
                         file=out, field=field, fix="move those files away, or choose another train.output_dir")


def create(out: str) -> None:
    """Make the folder a marked run directory."""
    try:
        os.makedirs(out, exist_ok=True)
        if not os.path.exists(os.path.join(out, MARKER)):
            write_json_atomic(os.path.join(out, MARKER), {"created_by": "sft", "kind": "run", "created": time.time()})
    except OSError as e:
        raise TrainError(f"cannot create output_dir ({e.strerror})", file=out, field="train.output_dir",
                         fix="choose a folder you can write to") from e


def marked_kind(folder: str) -> str | None:
    """What sft made this folder for (run, export, stage, eval), from its marker; None: not sft's."""
    path = os.path.join(folder, MARKER)
    if not os.path.exists(path):
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return "run"
    return data.get("kind", "run") if isinstance(data, dict) else "run"


def claim(folder: str, *, kind: str, field: str, error=TrainError, src: str | None = None,
          fresh: bool = False) -> None:
    """The one rule for every folder sft writes besides a run's output_dir (`--out`, `--to-dir`, export and serve
    scratch): it must be new, empty, or marked as sft's own (`.sft-run`); a folder holding anything sft did not
    write is refused in one line. `fresh` (a re-stage, a re-export) first removes sft's own earlier files from a
    folder sft made for the same `kind`, and nothing else. `src`: the folder read from, which must not contain
    or sit inside `folder`. The folder is created and marked."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise error(f"{field} is a file, not a folder", file=folder, field=field, fix="choose a folder path")
    if src is not None:
        a, b = _real(src), _real(folder)
        if a == b or b.startswith(a.rstrip(os.sep) + os.sep) or a.startswith(b.rstrip(os.sep) + os.sep):
            raise error(f"{field} must be a folder outside the input folder", file=folder, field=field,
                        fix="choose a new folder, e.g. outputs/merged")
    reason = forbidden_reason(folder, None)
    if reason:
        raise error(f"refusing to write into this folder: {reason}", file=folder, field=field,
                    fix="choose a new folder")
    entries = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    if entries:
        have = marked_kind(folder)
        if have is None:
            raise error(f"{field} already holds files that sft did not write ({', '.join(entries[:3])}"
                        f"{', ...' if len(entries) > 3 else ''})", file=folder, field=field,
                        fix="choose a new or empty folder (sft never replaces files it did not write)")
        if fresh:
            if have != kind:
                raise error(f"{field} holds an sft {have} folder, not an earlier {kind}", file=folder, field=field,
                            fix="choose a new or empty folder")
            foreign = foreign_files(folder, kind)
            if foreign:
                raise error(f"{field} holds files sft did not write ({', '.join(foreign[:3])})", file=folder,
                            field=field, fix="move those files away, or choose a new folder")
            clear(folder, field=field, error=error, kind=kind, keep=(MARKER, LOCK) + KIND_KEEP.get(kind, ()))
    try:
        os.makedirs(folder, exist_ok=True)
        if not os.path.exists(os.path.join(folder, MARKER)):
            write_json_atomic(os.path.join(folder, MARKER), {"created_by": "sft", "kind": kind,
                                                              "created": time.time()})
    except OSError as e:
        raise error(f"cannot create {field} ({e.strerror})", file=folder, field=field,
                    fix="choose a folder you can write to") from e


def clear(out: str, *, keep: tuple[str, ...] = (MARKER, LOCK), field: str = "train.output_dir",
          error=TrainError, kind: str | None = None) -> list[str]:
    """Remove sft's own files from a marked run directory (never anything else). Returns what was removed."""
    if not os.path.exists(os.path.join(out, MARKER)):
        raise error("not an sft run directory (no .sft-run marker): nothing removed", file=out, field=field)
    removed = []
    for name in sorted(os.listdir(out)):
        if name in keep or not is_own(name, kind):
            continue
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
        removed.append(name)
    return removed


# ---- lock -------------------------------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """`.sft-lock` (pid, host): a second run on the same folder refuses, naming the holder; a lock whose
    process is gone (same host) is taken over with a message."""

    def __init__(self, out: str):
        self.path = os.path.join(out, LOCK)
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = read_json(self.path)
                except (OSError, ValueError):
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
                    print(f"[sft] taking over a stale lock of process {pid} (it is no longer running)",
                          file=sys.stderr, flush=True)
                    os.remove(self.path)
                    continue
                raise TrainError(f"another sft run is using this output_dir (pid {pid} on {host})",
                                 file=os.path.dirname(self.path), field="train.output_dir",
                                 fix="wait for it to finish, or choose another train.output_dir") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return

    def release(self) -> None:
        if self.held and os.path.exists(self.path):
            os.remove(self.path)
        self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


