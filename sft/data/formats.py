"""Registry of dataset formats: raw rows -> the one canonical record.

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str, ...}, ...],
     "tools": [function spec, ...]?, "task": str, "source": str}

A user message may carry `input` (the alpaca input field) so templates that have an input section
can render it; a message may carry `loss: False` to keep that assistant turn out of the loss.
An assistant message may carry `tool_calls` ([{"name": str, "arguments": dict, "id"?: str}]) and
`reasoning` (text); a tool message carries the call's output as `content`, and `name` / `tool_call_id`
where the data gives them. `tools` are JSON-schema function specs as {"type": "function", "function":
{...}}. Every format converts tool calls and reasoning into these fields (the readers below are shared), so
templates render them and nothing is pasted into prompt text. A conversation is split after each assistant turn
with reasoning that another turn follows (`split_at_reasoning`): each turn is trained once, in the context a
template shows when that turn is generated.
A format is one `Format` entry: `detect(row)` and `convert(row, columns)`. Adding a format touches
nothing else.
"""

from __future__ import annotations

import json
import re
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
                   "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool",
                   "ipython": "tool"}
NOTE = "_note"  # a message key convert_rows pops and counts as an edit (something kept, but not as given)


def _json(value, what: str):
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        raise BadRow(f"{what} is not valid JSON") from None


def tools_of(row: dict, columns: dict) -> list[dict] | None:
    """The row's tool specs (a list, or a JSON string of one), each as {"type": "function", "function": spec}."""
    value = lookup(row, columns.get("tools", "tools"))
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        value = _json(value, "'tools'")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise BadRow("'tools' is not a list of function specs")
    out = []
    for t in value:
        spec = t.get("function") if t.get("type", "function") == "function" and isinstance(t.get("function"), dict) \
            else t
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise BadRow("a tool spec has no name")
        out.append({"type": "function", "function": spec})
    return out or None


def _call(value) -> dict:
    """One tool call in any common shape -> {"name", "arguments": dict(, "id")}. OpenAI ({"function": {"name",
    "arguments": JSON text}}), TRL (arguments an object), bare {"name", "arguments" | "parameters"}."""
    if not isinstance(value, dict):
        raise BadRow("a tool call is not an object")
    fn = value.get("function") if isinstance(value.get("function"), dict) else value
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BadRow("a tool call has no function name")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        args = _json(args, "tool call arguments") if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRow("tool call arguments are not a JSON object")
    call = {"name": name, "arguments": args}
    if isinstance(value.get("id"), str) and value["id"]:
        call["id"] = value["id"]
    return call


def _calls(value) -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadRow("tool_calls is not a list")
    return [_call(v) for v in value]


THINK = re.compile(r"\A\s*<think>(.*?)</think>\s*", re.S)


def _reasoning_field(t: dict):
    for key in ("reasoning_content", "reasoning", "thinking"):
        value = t.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise BadRow(f"non-string field '{key}'")
            return value
    return None


def assistant_message(content: str, *, tool_calls: list | None = None, reasoning: str | None = None) -> dict:
    """An assistant turn; a leading <think>...</think> block in the content becomes its reasoning."""
    if reasoning is None:
        m = THINK.match(content)
        if m:
            reasoning, content = m.group(1).strip("\n"), content[m.end():]
    msg = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    if reasoning:
        msg["reasoning"] = reasoning
    return msg


def _sharegpt(row: dict, columns: dict) -> list[list[dict]]:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BadRow("'conversations' is not a non-empty list")
    msgs = []
    system = row.get("system")
    if isinstance(system, str) and system:
        msgs.append({"role": "system", "content": system})
    for t in turns:
        if not isinstance(t, dict):
            raise BadRow("a conversation turn is not an object")
        kind = str(t.get("from", "")).lower()
        role = _SHAREGPT_ROLES.get(kind)
        if role is None:
            raise BadRow(f"unknown ShareGPT role {t.get('from')!r}")
        text = _text(t, "value")
        if kind == "function_call":  # glaive / LLaMA-Factory: a JSON call (or a list of parallel calls)
            try:
                msgs.append(assistant_message("", tool_calls=_calls(json.loads(text))))
            except (ValueError, RecursionError, BadRow):
                msgs.append({"role": "assistant", "content": text, NOTE: "function_call that is not a JSON call, "
                             "kept as text"})
            continue
        if role == "tool":
            msg = {"role": "tool", "content": text}
            prev = msgs[-1] if msgs else {}
            if len(prev.get("tool_calls") or ()) == 1:
                msg["name"] = prev["tool_calls"][0]["name"]
            msgs.append(msg)
            continue
        msgs.append(assistant_message(text) if role == "assistant" else {"role": role, "content": text})
    return [msgs]


def _content_parts(content) -> tuple[str, list[dict], str | None]:
    """Message content -> (text, tool calls, reasoning). Typed parts: text, reasoning, tool_call (LLaMA-Factory:
    {"type", "value"}; OpenAI: {"type": "text", "text"})."""
    if isinstance(content, str):
        return content, [], None
    if content is None:
        return "", [], None
    if not isinstance(content, list):
        raise BadRow("non-string message content")
    text, calls, reasoning = [], [], []
    for p in content:
        if isinstance(p, str):
            text.append(p)
            continue
        if not isinstance(p, dict):
            raise BadRow(f"unsupported content part {p!r:.40}")
        kind = p.get("type", "text")
        if not isinstance(kind, str):
            raise BadRow("a content part's type is not text")
        value = p["value"] if "value" in p else p.get(kind, p.get("text"))
        if kind == "text":
            text.append("" if value is None else str(value))
        elif kind in ("reasoning", "thinking"):
            if not isinstance(value, str):
                raise BadRow("a reasoning part is not text")
            reasoning.append(value)
        elif kind in ("tool_call", "function_call"):
            calls += _calls(_json(value, "a tool_call part") if isinstance(value, str) else value)
        else:
            raise BadRow(f"unsupported content part of type {kind!r}")
    return "".join(text), calls, "".join(reasoning) if reasoning else None


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
        content = t.get("content")
        if role == "tool" and isinstance(content, (dict, list)) and not _typed_parts(content):
            content = json.dumps(content, ensure_ascii=False)  # a structured tool result, as its JSON text
        text, calls, reasoning = _content_parts(content)
        if role == "assistant":
            calls += _calls(t["tool_calls"]) if t.get("tool_calls") else []
            if isinstance(t.get("function_call"), dict):  # OpenAI's older single-call field
                calls.append(_call(t["function_call"]))
            field_reasoning = _reasoning_field(t)
            reasoning = field_reasoning if field_reasoning is not None else reasoning
            if content is None and not calls:
                raise BadRow("null message content")
            m = assistant_message(text, tool_calls=calls, reasoning=reasoning)
        else:
            if content is None:
                raise BadRow("null message content")
            if calls or reasoning:
                raise BadRow(f"a {role} message carries a tool call or reasoning")
            m = {"role": role, "content": text}
            if role == "user" and isinstance(t.get("input"), str) and t["input"]:
                m["input"] = t["input"]
            if role == "tool":
                for k in ("name", "tool_call_id"):
                    if isinstance(t.get(k), str) and t[k]:
                        m[k] = t[k]
        weight = t.get("loss_weight")
        if weight is not None:
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
                raise BadRow(f"loss_weight {weight!r} is not a number")
            if float(weight) == 0.0 and role == "assistant":
                m["loss"] = False
        msgs.append(m)
    return [msgs]


def _typed_parts(content) -> bool:
    return isinstance(content, list) and all(isinstance(p, dict) and "type" in p for p in content)


def split_at_reasoning(msgs: list[dict]) -> list[list[dict]]:
    """Templates rewrite reasoning in history: Qwen3, DeepSeek-R1 and others drop it from turns before the last
    user turn, gpt-oss also from a tool-call turn once a final answer follows. Such a turn is never shown, in the
    whole conversation, as it was generated. So a conversation is cut after every assistant turn that carries
    reasoning and is followed by another assistant turn: each part ends with such a turn (or the conversation's
    end) and trains only the turns since the previous cut; earlier ones are context (loss off). Every turn is
    trained once, in the context it is generated in, whatever the template."""
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    cuts = [i + 1 for i in turns[:-1] if msgs[i].get("reasoning")]
    if not cuts:
        return [msgs]
    out, prev = [], 0
    for cut in cuts + [len(msgs)]:
        part = [({**m, "loss": False} if m["role"] == "assistant" and i < prev else m)
                for i, m in enumerate(msgs[:cut])]
        if any(m["role"] == "assistant" and m.get("loss", True) for m in part[prev:]):
            out.append(part)
        prev = cut
    return out


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
           "messages: [{role, content, tool_calls?, reasoning_content?}] (typed parts text/reasoning/tool_call; "
           "loss_weight 0 masks a turn), optional tools"),
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
        unknown_keys = set(columns) - {"prompt", "completion", "input", "system", "task", "tools"}
        if unknown_keys:
            raise DataError(f"unknown mapping key(s) {sorted(unknown_keys)}", file=file, field=f"{field}.columns",
                            fix="map prompt, completion, input, system, task or tools")
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


def _check_unicode(values) -> None:
    """Text that is not valid Unicode (a lone surrogate such as a JSON "\\ud800" escape) cannot be tokenised or
    written: the row is dropped and counted, not an internal error later. Walks messages, tool calls and tools;
    ASCII text (most of it) costs one isascii() call."""
    for v in values:
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise BadRow("text is not valid Unicode (a lone surrogate)") from None
        elif isinstance(v, dict):
            _check_unicode(v.keys())
            _check_unicode(v.values())
        elif isinstance(v, list):
            _check_unicode(v)


def convert_rows(fmt: str, rows: list[dict], columns: dict) -> tuple[list[tuple[list[dict], dict, list | None]], dict,
                                                                dict]:
    """[(messages, row, tools)], a Counter-like dict of rows dropped by reason, and one of edits by reason
    (turns kept in another form)."""
    conv = FORMATS[fmt].convert
    out, drops, edits = [], {}, {}
    for row in rows:
        try:
            tools = tools_of(row, columns) if fmt != "text" else None
            _check_unicode(tools or ())
            converted, notes = [], []
            for msgs in conv(row, columns):
                _check_unicode(msgs)
                notes += [m.pop(NOTE) for m in msgs if NOTE in m]
                converted.append((msgs, row, tools))
            out += converted  # a row converts whole or is one drop; its notes count only when it converts
            for note in notes:
                edits[note] = edits.get(note, 0) + 1
        except RecursionError:  # tool-call arguments nested beyond what can be walked
            drops["structure nested too deeply"] = drops.get("structure nested too deeply", 0) + 1
        except BadRow as e:
            drops[str(e)] = drops.get(str(e), 0) + 1
    return out, drops, edits
