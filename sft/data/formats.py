"""Registry of dataset formats: raw rows -> the one canonical record.

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...],
     "task": str, "source": str}

A user message may carry `input` (the alpaca input field) so templates that have an input section
can render it; a message may carry `loss: False` to keep that assistant turn out of the loss.
A format is one `Format` entry: `detect(row)` and `convert(row, columns)`. Adding a format touches
nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from ..errors import DataError


class BadRow(ValueError):
    """A row that cannot be converted; counted as a drop with this message as its reason."""


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict, dict], list[list[dict]]]  # -> one or more message lists
    required: tuple[str, ...] = ()
    doc: str = ""


def lookup(row: dict, key: str):
    """A mapped column's value: the top-level key, else a nested field by dots (`translation.en` reads
    row["translation"]["en"], as datasets nest translation pairs); None when absent."""
    if key in row or "." not in key:
        return row.get(key)
    value = row
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def column_names(row: dict, depth: int = 3, prefix: str = "") -> list[str]:
    """A row's columns, with nested fields by dots (translation, translation.en, translation.fr)."""
    names = []
    for k, v in row.items():
        name = f"{prefix}{k}"
        names.append(name)
        if isinstance(v, dict) and depth > 1:
            names += column_names(v, depth - 1, f"{name}.")
    return names


def _text(row: dict, key: str, *, optional: bool = False) -> str:
    value = lookup(row, key)
    if value is None:
        if optional:
            return ""
        raise BadRow(f"null or missing field '{key}'")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadRow(f"non-string field '{key}'")
    return value


def _alpaca(row: dict, columns: dict) -> list[list[dict]]:
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system.strip():
        msgs.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise BadRow("'history' is not a list of [instruction, answer] pairs")
    for pair in history:  # LLaMA-Factory's alpaca history
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise BadRow("'history' is not a list of [instruction, answer] pairs")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    msgs.append({"role": "user", "content": _text(row, "instruction"), "input": _text(row, "input", optional=True)})
    msgs.append({"role": "assistant", "content": _text(row, "output")})
    return [msgs]


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                   "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool"}


def _sharegpt(row: dict, columns: dict) -> list[list[dict]]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("'conversations' is not a non-empty list")
    msgs = []
    system = row.get("system")
    tools = row.get("tools")
    sys_text = system if isinstance(system, str) else ""
    if tools:
        sys_text = (sys_text + "\n\n" if sys_text else "") + "Available tools:\n" + (
            tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False))
    if sys_text:
        msgs.append({"role": "system", "content": sys_text})
    for t in turns:
        if not isinstance(t, dict):
            raise BadRow("a conversation turn is not an object")
        role = _SHAREGPT_ROLES.get(str(t.get("from", "")).lower())
        if role is None:
            raise BadRow(f"unknown ShareGPT role {t.get('from')!r}")
        msgs.append({"role": role, "content": _text(t, "value")})
    return [msgs]


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # typed parts: [{"type": "text", "value"|"text": ...}]
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type", "text") == "text":
                parts.append(str(p.get("value", p.get("text", ""))))
            elif isinstance(p, str):
                parts.append(p)
            else:
                raise BadRow(f"unsupported content part of type {p.get('type') if isinstance(p, dict) else p!r}")
        return "".join(parts)
    if content is None:
        raise BadRow("null message content")
    raise BadRow("non-string message content")


def _messages(row: dict, columns: dict) -> list[list[dict]]:
    key = columns.get("messages", "messages")
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"'{key}' is not a non-empty list")
    msgs = []
    for t in turns:
        if not isinstance(t, dict) or "role" not in t:
            raise BadRow("a message lacks 'role'")
        role = _SHAREGPT_ROLES.get(str(t["role"]).lower())
        if role is None:
            raise BadRow(f"unknown role {t['role']!r}")
        m = {"role": role, "content": _content_text(t.get("content"))}
        weight = t.get("loss_weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
                raise BadRow(f"loss_weight {weight!r} is not a number")
            if float(weight) == 0.0 and role == "assistant":
                m["loss"] = False
        msgs.append(m)
    return [msgs]


def _prompt_completion(row: dict, columns: dict) -> list[list[dict]]:
    return [[{"role": "user", "content": _text(row, "prompt")},
             {"role": "assistant", "content": _text(row, "completion")}]]


def _text_only(row: dict, columns: dict) -> list[list[dict]]:
    # Plain text: nothing to condition on; the whole text is the answer to an empty prompt.
    # columns: {text: COL} reads another column (e.g. the answers of an instruction set as a corpus).
    return [[{"role": "user", "content": ""}, {"role": "assistant", "content": _text(row, columns.get("text", "text"))}]]


def _self_instruct(row: dict, columns: dict) -> list[list[dict]]:
    instruction = _text(row, "instruction")
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRow("'instances' is not a non-empty list")
    out = []
    for inst in instances:
        if not isinstance(inst, dict):
            raise BadRow("an instance is not an object")
        out.append([{"role": "user", "content": instruction, "input": _text(inst, "input", optional=True)},
                    {"role": "assistant", "content": _text(inst, "output")}])
    return out


def _columns(row: dict, columns: dict) -> list[list[dict]]:
    msgs = []
    if columns.get("system"):
        msgs.append({"role": "system", "content": _text(row, columns["system"])})
    prompt = _text(row, columns["prompt"]) if columns.get("prompt") else ""
    user = {"role": "user", "content": prompt}
    if columns.get("input"):
        user["input"] = _text(row, columns["input"], optional=True)
    msgs.append(user)
    msgs.append({"role": "assistant", "content": _text(row, columns["completion"])})
    return [msgs]


FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("alpaca", lambda r: "instruction" in r and "output" in r, _alpaca, ("instruction", "output"),
           "instruction / input / output (optional system, history)"),
    Format("sharegpt", lambda r: isinstance(r.get("conversations"), list), _sharegpt, ("conversations",),
           "conversations: [{from, value}] (human/gpt/system/function_call/observation), optional tools"),
    Format("messages", lambda r: isinstance(r.get("messages"), list), _messages, ("messages",),
           "messages: [{role, content}] (content may be typed parts; loss_weight 0 masks a turn)"),
    Format("self-instruct", lambda r: "instruction" in r and isinstance(r.get("instances"), list), _self_instruct,
           ("instruction", "instances"), "instruction + instances [{input, output}] -> one example per instance"),
    Format("prompt-completion", lambda r: "prompt" in r and "completion" in r, _prompt_completion,
           ("prompt", "completion"), "prompt / completion"),
    Format("text", lambda r: "text" in r, _text_only, ("text",), "text (language modelling on the whole text)"),
    Format("columns", lambda r: False, _columns, (), "explicit mapping: columns: {prompt, completion, input, system}"),
]}

_DETECT_ORDER = ["self-instruct", "alpaca", "sharegpt", "messages", "prompt-completion", "text"]


def detect_format(rows: list[dict], *, file: str, field: str) -> str:
    """The format most of the first rows match (a few malformed rows are then dropped and counted, not
    allowed to hide the format); an error listing the columns found otherwise."""
    sample = rows[:50]
    best, hits = None, 0
    for name in _DETECT_ORDER:
        n = sum(1 for r in sample if FORMATS[name].detect(r))
        if n > hits:
            best, hits = name, n
    if best is not None and hits * 2 > len(sample):
        return best
    cols = sorted({k for r in sample for k in r})
    for key in ("messages", "conversations"):
        bad = next((i for i, r in enumerate(sample) if isinstance(r.get(key), str)), None)
        if bad is not None:
            raise DataError(f"row {bad + 1}: '{key}' is a string, expected a list of turns", file=file, field=field,
                            fix=f"store '{key}' as a JSON list such as [{{\"role\": \"user\", \"content\": \"...\"}}]")
    raise DataError(f"cannot detect the data format from columns {cols}", file=file, field=field,
                    fix="set format (alpaca, sharegpt, messages, prompt-completion, text, self-instruct) or "
                        "format: columns with columns: {prompt: COL, completion: COL}")


def _check_mapped(rows: list[dict], columns: dict, task_column: str | None, *, file: str, field: str) -> None:
    """Every column a mapping names (columns: values, task_column) is in the data: a misspelt name would
    otherwise label or fill every row with a default. Searched over all `rows` (sparse columns count)."""
    import difflib

    wanted = [(f"{field}.columns.{k}", v) for k, v in columns.items()] + \
        ([(f"{field}.task_column", task_column)] if task_column else [])
    if not wanted:
        return
    have: set = set()
    for r in rows:
        have.update(column_names(r))
    found = sorted(have, key=str)
    for where, col in wanted:
        if col not in have:
            close = difflib.get_close_matches(str(col), [str(c) for c in found], n=1)
            raise DataError(f"mapped column {col!r} is not in the data; columns found: {found}", file=file,
                            field=where, fix=f"did you mean {close[0]!r}?" if close else "map an existing column")


def check_columns(fmt: str, rows: list[dict], columns: dict, *, file: str, field: str,
                  task_column: str | None = None) -> None:
    """Fail early, listing the columns found, when mapped/required columns are absent from the data."""
    if not rows:
        return
    found = sorted({k for r in rows[:50] for k in r})
    _check_mapped(rows, columns, task_column, file=file, field=field)
    if fmt == "columns":
        if not columns.get("completion"):
            raise DataError("format: columns needs columns.completion (and usually columns.prompt)", file=file,
                            field=f"{field}.columns", fix="e.g. columns: {prompt: mr, completion: ref}")
        unknown_keys = set(columns) - {"prompt", "completion", "input", "system", "task"}
        if unknown_keys:
            raise DataError(f"unknown mapping key(s) {sorted(unknown_keys)}", file=file, field=f"{field}.columns",
                            fix="map prompt, completion, input, system or task")
        return
    if fmt == "text" and columns:
        if set(columns) != {"text"}:
            raise DataError(f"format: text maps only the text column, got {sorted(columns)}", file=file,
                            field=f"{field}.columns", fix="e.g. columns: {text: output}")
        return
    missing = [c for c in FORMATS[fmt].required if c not in found]
    if missing:
        raise DataError(f"format {fmt!r} needs column(s) {missing}; columns found: {found}", file=file,
                        field=f"{field}.format", fix="choose the right format or use format: columns")


def _check_unicode(msgs: list[dict]) -> None:
    """Text that is not valid Unicode (a lone surrogate such as a JSON "\\ud800" escape) cannot be tokenised or
    written: the row is dropped and counted, not an internal error later."""
    for m in msgs:
        for v in m.values():
            if isinstance(v, str) and not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRow("text is not valid Unicode (a lone surrogate)") from None


def convert_rows(fmt: str, rows: list[dict], columns: dict) -> tuple[list[tuple[list[dict], dict]], dict]:
    """[(messages, row)] and a Counter-like dict of rows dropped by reason."""
    conv = FORMATS[fmt].convert
    out, drops = [], {}
    for row in rows:
        try:
            for msgs in conv(row, columns):
                _check_unicode(msgs)
                out.append((msgs, row))
        except BadRow as e:
            drops[str(e)] = drops.get(str(e), 0) + 1
    return out, drops
