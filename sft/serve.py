"""`sft serve`: a thin launcher of an existing OpenAI-compatible server over an sft run or any model.

sft writes no HTTP server. It resolves the model (run folder, Hugging Face folder or Hub id), decides which folder
the engine loads, checks the port and the engine, then runs the engine until it stops:
- `transformers serve` (the `serve` extra; CPU or GPU) by default, `vllm serve` with `engine="vllm"`;
- a full run whose generation_config.json already stops at the run's end-of-turn token is served as it is;
- a LoRA run, or a folder without those stop ids, is first exported (sft/export.py: merged weights, the run's chat
  template, its stop ids) into a scratch folder that sft makes for the server and removes when the server stops.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .errors import ServeError
from . import rundir

ENGINES = ("transformers", "vllm")
# What `transformers serve` imports beyond transformers itself (transformers' `serving` extra, sft's `serve`).
_TRANSFORMERS_SERVING = ("fastapi", "uvicorn", "openai", "rich")
_LAUNCH_TRANSFORMERS = "import sys; from transformers.cli.transformers import main; sys.exit(main())"


@dataclass
class Launch:
    """One server to start: its command line, the model name requests send, and the scratch folder it owns."""

    argv: list[str]
    model: str
    url: str
    cwd: str | None = None
    scratch: str | None = None
    exported: str = ""  # why the model was exported first ("" when the folder is served as it is)


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ServeError(f"unknown engine {engine!r}", field="--engine", fix=f"use one of {', '.join(ENGINES)}")
    if engine == "transformers":
        missing = [m for m in _TRANSFORMERS_SERVING if importlib.util.find_spec(m) is None]
        if missing:
            raise ServeError(f"the transformers server needs the serve extra (missing: {', '.join(missing)})",
                             field="--engine", fix="pip install 'sft[serve]' (transformers[serving])")
    elif importlib.util.find_spec("vllm") is None and shutil.which("vllm") is None:
        raise ServeError("vLLM is not installed", field="--engine",
                         fix="pip install vllm on a machine with a supported GPU, or use --engine transformers")


def check_port(host: str, port: int) -> None:
    """The address must be free now: a taken port is one line here, not a traceback from the engine."""
    if not 0 < port < 65536:
        raise ServeError(f"got {port}, expected a port from 1 to 65535", field="--port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"cannot resolve host {host!r} ({e.strerror})", field="--host",
                         fix="use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from e
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror})", field="--port",
                             fix="choose a free port, e.g. --port 8001, or stop the server using it") from e


def _id_set(eos) -> set[int]:
    """generation_config's eos_token_id (one id, a list, or none) as a set."""
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _saved_stop_ids(folder: str) -> set[int]:
    from .io import read_json

    path = os.path.join(folder, rundir.GENERATION_CONFIG)
    return _id_set(read_json(path).get("eos_token_id")) if os.path.exists(path) else set()


def _needed_stop_ids(folder: str) -> set[int]:
    """What training would save for the folder's prompt format (EOS alone for a model without a template)."""
    from .errors import ModelError
    from .inference import run_recipe
    from .data.encode import PromptFormat
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(folder)
    try:
        recipe = run_recipe(folder, tokenizer)
    except ModelError:  # no chat template: a base model served for /v1/completions
        return _id_set(tokenizer.eos_token_id)
    return _id_set(PromptFormat(recipe, tokenizer, "causal").generation_eos)  # (stops do not depend on the path)


def _why_export(folder: str) -> str:
    from .publish import is_adapter

    if is_adapter(folder):
        return "a LoRA adapter, merged into its base"
    missing = _needed_stop_ids(folder) - _saved_stop_ids(folder)
    if missing:
        return f"its generation_config.json does not stop at the end-of-turn token(s) {sorted(missing)}"
    return ""


def plan(spec: str, *, engine: str = "transformers", host: str = "127.0.0.1", port: int = 8000,
         continuous_batching: bool = False, engine_args: tuple[str, ...] = ()) -> Launch:
    """What `sft serve` will start; the scratch folder (if any) is made and filled here."""
    from .export import export
    from .modeling import resolve_model_dir

    check_engine(engine)
    if continuous_batching and engine == "vllm":
        raise ServeError("--continuous-batching is a transformers-engine switch", field="--continuous-batching",
                         fix="drop it: vLLM always batches continuously")
    check_port(host, port)
    folder = resolve_model_dir(spec)
    if not any(os.path.exists(os.path.join(folder, f)) for f in (rundir.MODEL_CONFIG, rundir.ADAPTER_CONFIG)):
        unfinished = any(d.startswith("checkpoint-") for d in os.listdir(folder))
        raise ServeError("not a model folder (no config.json or adapter_config.json)", file=spec,
                         fix="the run did not finish: continue it with sft train RECIPE --resume" if unfinished
                         else "pass a finished sft run, a Hugging Face model folder or a Hub id")
    why = _why_export(folder)
    scratch = cwd = None
    name = target = spec
    if why:
        scratch = tempfile.mkdtemp(prefix="sft-serve-")
        # requests name the model as the user did (`outputs/run`, `owner/name`) where that can be a path inside the
        # scratch folder; an absolute or upward path by its last part
        norm = os.path.normpath(spec)
        inside = not os.path.isabs(norm) and norm != "." and not norm.startswith("..") and "@" not in norm
        name = norm if inside else os.path.basename(os.path.abspath(spec)).replace("@", "-") or "model"
        try:
            export(folder, os.path.join(scratch, name))
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        cwd, target = scratch, name  # the engine runs in the scratch folder, so requests name the model `name`
    if engine == "transformers":
        argv = [sys.executable, "-c", _LAUNCH_TRANSFORMERS, "serve", target, "--host", host, "--port", str(port)]
        if continuous_batching:
            argv.append("--continuous-batching")
    else:
        argv = [shutil.which("vllm") or "vllm", "serve", target, "--host", host, "--port", str(port),
                "--served-model-name", name]
    shown = f"[{host}]" if ":" in host else host
    return Launch(argv + list(engine_args), name, f"http://{shown}:{port}/v1", cwd, scratch, why)


def run(launch: Launch) -> int:
    """Run the engine in the foreground until it exits or sft is stopped (Ctrl-C, SIGTERM); the scratch folder
    sft made for it is removed either way."""
    proc = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        proc = subprocess.Popen(launch.argv, cwd=launch.cwd)
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if launch.scratch:
            shutil.rmtree(launch.scratch, ignore_errors=True)
