"""Standard benchmarks through EleutherAI's lm-evaluation-harness (extra `harness`), on the model sft already
loaded (a full run, a base model, or an adapter on its base), as Axolotl and torchtune run it after training.

Tasks are harness task names (`hellaswag`, `arc_easy`, ...; their data come from the Hub) or paths to a task
YAML of one's own (its folder is added to the harness's task search path), so a local file works offline.
Written here only as the glue: lm_eval's own `simple_evaluate` does the work.
"""

from __future__ import annotations

import difflib
import os

from ..errors import EvalError
from ..families import path_of


def _task_names(specs: list[str]) -> tuple[list[str], list[str]]:
    """(task names, folders to include) for harness names and task YAML paths."""
    import yaml

    names, include = [], []
    for spec in specs:
        if spec.endswith((".yaml", ".yml")):
            if not os.path.isfile(spec):
                raise EvalError(f"no such task file {spec!r}", field="--harness",
                                fix="give a harness task name or the path of a task YAML")
            try:
                with open(spec, encoding="utf-8") as fh:
                    task = (yaml.safe_load(fh) or {}).get("task")
            except (yaml.YAMLError, AttributeError) as e:
                raise EvalError(f"cannot read the task YAML ({type(e).__name__})", file=spec, field="--harness") from e
            if not isinstance(task, str) or not task:
                raise EvalError("the task YAML has no `task:` name", file=spec, field="--harness",
                                fix="add task: NAME (see lm-evaluation-harness's task guide)")
            names.append(task)
            include.append(os.path.dirname(os.path.abspath(spec)))
        else:
            names.append(spec)
    return names, list(dict.fromkeys(include))


def plan(tasks: list[str]) -> tuple[list[str], object]:
    """(task names, the harness's TaskManager), checked before any model is scored: the package is installed,
    every task file reads and every name is known."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise EvalError("--harness needs lm-evaluation-harness, which is not installed", field="--harness",
                        fix="pip install 'sft[harness]'") from e
    names, include = _task_names(tasks)
    manager = TaskManager(include_path=include or None)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise EvalError(f"unknown harness task {name!r}", field="--harness",
                            fix=f"did you mean {close[0]!r}?" if close else "see `lm_eval ls tasks`")
    return names, manager


def run_harness(model, tokenizer, arch: str, planned: tuple[list[str], object], *, batch_size: int = 8,
                limit: int | None = None) -> dict:
    """{"tasks": {task: {metric: value}}, "version": lm_eval's version, "limit": limit} for planned tasks."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    names, manager = planned
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend=path_of(arch).name,
              batch_size=batch_size)
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                          log_samples=False)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        raise EvalError(f"the harness could not load a task's data ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:150] if str(e) else ''})", field="--harness",
                        fix="harness tasks read their data from the Hub: go online, or use a task YAML over local "
                            "files") from e
    finally:
        if was_training:
            model.train()
    out = {}
    for task, values in (results or {}).get("results", {}).items():
        out[task] = {k.replace(",none", ""): float(v) for k, v in values.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "alias"}
    return {"tasks": out, "version": getattr(lm_eval, "__version__", "unknown"), "limit": limit}
