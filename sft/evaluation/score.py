"""`sft score`: the same scorers as `sft eval`, on predictions made anywhere (another system, an API)."""

from __future__ import annotations

import os
from collections import defaultdict

from ..errors import EvalError
from ..io import parse_jsonl, write_json_atomic, write_text_atomic
from ..metrics import METRICS, check_metric_names, decide_tokenize, score_texts
from .. import rundir

SCHEMA = "sft.metrics/v1"


def _read_jsonl(path: str, flag: str) -> list[dict]:
    if not os.path.isfile(path):
        raise EvalError("file not found" if not os.path.exists(path) else "not a file", file=path, field=flag)
    with open(path, "rb") as fh:
        rows = parse_jsonl(fh.read(), file=path, field=flag, error=EvalError, objects=True)
    if not rows:
        raise EvalError("no rows", file=path, field=flag)
    return rows


def _refs(value, lineno: int, path: str, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise EvalError(f"line {lineno}: '{field}' is {type(value).__name__ if value is not None else 'missing'}, "
                    "expected a string or a non-empty list of strings", file=path, field="--ref-field")


def load_pairs(predictions: str, *, references: str | None = None, pred_field: str = "prediction",
               ref_field: str | None = None) -> tuple[list[str], list[list[str]], list[str]]:
    """(predictions, references per item, task per item) from a predictions jsonl (and a references file)."""
    rows = _read_jsonl(predictions, "PREDICTIONS")
    ref_rows = _read_jsonl(references, "--references") if references else rows
    if len(ref_rows) != len(rows):
        raise EvalError(f"{len(rows)} predictions but {len(ref_rows)} references", file=references,
                        field="--references", fix="give one reference row per prediction row, in the same order")
    preds, refs, tasks = [], [], []
    for i, (row, rrow) in enumerate(zip(rows, ref_rows), 1):
        if not isinstance(row.get(pred_field), str):
            raise EvalError(f"line {i}: no string field '{pred_field}' (fields: {sorted(row)})", file=predictions,
                            field="--pred-field", fix="name the prediction field with --pred-field")
        field = ref_field or ("references" if "references" in rrow else "reference")
        refs.append(_refs(rrow.get(field), i, references or predictions, field))
        preds.append(_with_calls(row[pred_field], row.get("tool_calls"), i, predictions))
        for text, path, flag in [(preds[-1], predictions, "--pred-field")] + [(r, references or predictions,
                                                                               "--ref-field") for r in refs[-1]]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise EvalError(f"line {i}: text is not valid Unicode (a lone surrogate)", file=path, field=flag,
                                fix="remove the \\ud8xx-\\udfxx escape from that line") from None
        tasks.append(str(row.get("task") or rrow.get("task") or "all"))
    return preds, refs, tasks


def _with_calls(text: str, calls, lineno: int, path: str) -> str:
    """A prediction whose row also holds structured `tool_calls` (OpenAI or {name, arguments} form, as an API
    returns them) that its text does not write: the calls are appended in the built-in tool format, so the
    tool-call metrics read them."""
    if not calls:
        return text
    from ..data.formats import BadRow, _calls
    from ..data.templates import answer_text
    from ..toolcalls import parse

    try:
        parsed = _calls(calls)
    except BadRow as e:
        raise EvalError(f"line {lineno}: {e}", file=path, field="tool_calls",
                        fix='give tool_calls as [{"name": ..., "arguments": {...}}]') from None
    if parse(text).calls:
        return text
    return "\n".join([text] * bool(text) + [answer_text({"tool_calls": [c]}) for c in parsed])


def database_path(spec: str | None, *, field: str = "eval.sql_database", file: str | None = None) -> str:
    """The SQLite file execution_accuracy runs on: a checked path, or the synthetic SQL families' own database
    (builtin:synthetic), built once in the sft cache."""
    from ..sql import BUILTIN, check_database

    spec = check_database(spec, field=field, file=file)
    if spec != BUILTIN:
        return spec
    from ..data.synthetic import sql_database
    from ..tokenizer import cache_root

    return sql_database(os.path.join(cache_root(), "sql"))


def metric_options(names: list[str], sql_database: str | None, *, field: str = "eval.sql_database",
                   file: str | None = None) -> dict:
    """The run's inputs that the named metrics declare (`Metric.options`), resolved once."""
    wanted = {o for n in names if n in METRICS for o in METRICS[n].options}
    return {"sql_database": database_path(sql_database, field=field, file=file)} if "sql_database" in wanted else {}


def score_file(predictions: str, *, references: str | None = None, pred_field: str = "prediction",
               ref_field: str | None = None, metrics: list[str] | None = None, tokenize: str = "auto",
               sql_database: str | None = None) -> dict:
    """metrics.json content for a predictions file (text metrics only: there is no model to score)."""
    names = metrics or ["bleu", "rouge", "exact_match"]
    check_metric_names(names, field_name="--metrics")
    model_metrics = [m for m in names if m in METRICS and METRICS[m].kind != "text"]
    if model_metrics:
        raise EvalError(f"{model_metrics[0]} needs the model, not only its predictions", field="--metrics",
                        fix="use sft eval for perplexity")
    preds, refs, tasks = load_pairs(predictions, references=references, pred_field=pred_field, ref_field=ref_field)
    tok = decide_tokenize(refs, tokenize)  # once for the whole file, from its references
    options = metric_options(names, sql_database, field="--sql-database")
    overall, _ = score_texts(preds, refs, names, tok, options)
    by_task = defaultdict(list)
    for i, t in enumerate(tasks):
        by_task[t].append(i)
    per_task = {}
    if len(by_task) > 1:
        for t, idx in sorted(by_task.items()):
            scores, _ = score_texts([preds[i] for i in idx], [refs[i] for i in idx],
                                    [n for n in names if not n.startswith("evaluate:")], tok, options)
            per_task[t] = {"num_samples": len(idx), **scores}
    return {"schema": SCHEMA, "model": {"name": os.path.basename(predictions), "arch": "external", "adapter": False,
                                        "path": predictions},
            "recipe_hash": None, "split": "scored", "num_samples": len(preds),
            "num_examples": sum(len(r) for r in refs), "metrics": overall, "per_task": per_task, "tokenize": tok}


def write_score_outputs(out: str, metrics: dict) -> None:
    from .report import render_eval_report

    rundir.claim(out, kind="eval", field="--out", error=EvalError)  # the one rule for folders sft writes
    write_json_atomic(os.path.join(out, rundir.METRICS), metrics)
    write_text_atomic(os.path.join(out, rundir.EVAL_REPORT), render_eval_report(metrics))
