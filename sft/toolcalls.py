"""Tool calls and reasoning in generated text: one parser per template family, and the comparison the tool-call
metrics use. Standard library only (the metrics registry and inference both read it).

Families, as each model family's chat template writes a call (and so as a model trained on it generates one):
- hermes: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` (Qwen2.5/3, Hermes, sft's built-in
  templates); Qwen3.5's `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>` too;
- llama3: the whole answer is `{"name": ..., "parameters": {...}}` (optionally after `<|python_tag|>`; several
  separated by `;`);
- mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` or `[TOOL_CALLS]NAME[ARGS]{...}`;
- gptoss: ` to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>`;
- deepseek: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>`.
`parse` tries every family, so predictions and references need no family name. transformers' own
`parse_response` needs a response schema per tokenizer, which tokenizers built from config and most Hub ones lack.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field


@dataclass
class Parsed:
    calls: list[dict] = field(default_factory=list)  # [{"name", "arguments": dict}]
    attempted: bool = False  # the text contains a tool-call marker (or is a bare JSON call)
    valid: bool = True  # every attempted call parsed into a name and an argument object


def _call(obj) -> dict | None:
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name, args = fn.get("name"), fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            return None
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        return None
    return {"name": name, "arguments": args}


def _loads(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _xml_call(body: str) -> dict | None:
    m = re.match(r"\s*<function=([^>\s]+)>(.*?)(?:</function>|\Z)", body, re.S)
    if not m:
        return None
    args = {}
    for key, value in re.findall(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", m.group(2), re.S):
        parsed = _loads(value)
        args[key] = value if parsed is None else parsed
    return {"name": m.group(1), "arguments": args}


def _hermes(text: str) -> Parsed | None:
    bodies = re.findall(r"<tool_call>(.*?)(?:</tool_call>|\Z)", text, re.S)
    if not bodies:
        return None
    calls = [_call(_loads(b.strip())) or _xml_call(b) for b in bodies]
    return Parsed([c for c in calls if c], True, all(calls))


def _mistral(text: str) -> Parsed | None:
    if "[TOOL_CALLS]" not in text:
        return None
    body = text.split("[TOOL_CALLS]", 1)[1].strip()
    if "[ARGS]" in body:
        calls = []
        for part in body.split("[TOOL_CALLS]"):
            name, _, args = part.partition("[ARGS]")
            calls.append(_call({"name": name.strip(), "arguments": _loads(args.strip())}))
    else:
        value = _loads(body)
        calls = [_call(v) for v in (value if isinstance(value, list) else [value])]
    return Parsed([c for c in calls if c], True, bool(calls) and all(calls))


def _gptoss(text: str) -> Parsed | None:
    found = re.findall(r"to=functions\.([^\s<]+).*?<\|message\|>(.*?)(?:<\|call\|>|\Z)", text, re.S)
    if not found:
        return None
    calls = [_call({"name": name, "arguments": _loads(body.strip())}) for name, body in found]
    return Parsed([c for c in calls if c], True, all(calls))


def _deepseek(text: str) -> Parsed | None:
    if "<｜tool▁call" not in text:
        return None
    found = re.findall(r"<｜tool▁call▁begin｜>(?:function)?<｜tool▁sep｜>([^\n]+)\n```(?:json)?\n(.*?)\n```", text,
                       re.S)
    calls = [_call({"name": name.strip(), "arguments": _loads(body)}) for name, body in found]
    return Parsed([c for c in calls if c], True, bool(calls) and all(calls))


def _llama3(text: str) -> Parsed | None:
    body = re.sub(r"(?:<\|[a-z_]+\|>\s*)+\Z", "", text.split("<|python_tag|>", 1)[-1].strip()).strip()
    if not body.startswith("{"):
        return None
    values = [_loads(p) for p in re.split(r"(?<=\})\s*;\s*(?=\{)", body)]  # several calls: joined by ;
    if not any(isinstance(v, dict) and "name" in v for v in values) and "<|python_tag|>" not in text:
        return None  # a JSON answer that is not a call (e.g. a JSON task's output)
    calls = [_call(v) for v in values]
    return Parsed([c for c in calls if c], True, all(calls))


FAMILIES = {"hermes": _hermes, "mistral": _mistral, "gptoss": _gptoss, "deepseek": _deepseek, "llama3": _llama3}


def parse(text: str) -> Parsed:
    """The tool calls in one generated answer (or reference), whichever family wrote them."""
    for fn in FAMILIES.values():
        out = fn(text)
        if out is not None:
            return out
    return Parsed()


def _json_equal_form(value):
    """JSON equality: 1 and 1.0 are the same number; key order does not matter (sort_keys below)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _json_equal_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_equal_form(v) for v in value]
    return value


def _canonical(call: dict) -> str:
    return json.dumps([call["name"], _json_equal_form(call["arguments"])], sort_keys=True, ensure_ascii=False)


def same_calls(a: list[dict], b: list[dict]) -> bool:
    """Same function names with JSON-equal arguments; parallel calls in any order."""
    return sorted(map(_canonical, a)) == sorted(map(_canonical, b))


def same_names(a: list[dict], b: list[dict]) -> bool:
    return sorted(c["name"] for c in a) == sorted(c["name"] for c in b)


THINK = re.compile(r"\A\s*(?:<think>)?(.*?)</think>\s*", re.S)
GPTOSS_ANALYSIS = re.compile(r"\A\s*(?:<\|channel\|>)?analysis(?:<\|message\|>)?(.*?)(?:<\|end\|>)"
                             r"(?:<\|start\|>assistant)?", re.S)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer) of a generated text: a leading `<think>...</think>` block (the opening tag may be in
    the prompt, as Qwen3.5 and DeepSeek-R1 write it) or gpt-oss's analysis channel; (None, text) otherwise."""
    m = THINK.match(text)
    if m and ("<think>" in text[:m.end()] or "<think>" not in text):
        return m.group(1).strip("\n"), text[m.end():]
    m = GPTOSS_ANALYSIS.match(text)
    if m:
        rest = re.sub(r"\A\s*(?:<\|channel\|>)?final(?:<\|message\|>)?", "", text[m.end():])
        return m.group(1).strip(), rest
    return None, text


def structure_answer(text, raw: str | None = None) -> dict:
    """A generated answer as predictions.jsonl holds it: `prediction` (the answer, reasoning split off), and
    `reasoning` and `tool_calls` where the model wrote them. `raw`: the same answer with its special tokens (or
    `text` as a (text, raw) pair); it is read instead where only it shows the reasoning or the calls (gpt-oss
    channels, DeepSeek and Mistral markers are special tokens)."""
    if isinstance(text, tuple):
        text, raw = text
    if raw is not None and raw != text:
        r_raw, a_raw = split_reasoning(raw)
        if (r_raw is not None and split_reasoning(text)[0] is None) or \
                (parse(a_raw).calls and not parse(split_reasoning(text)[1]).calls):
            text = raw
    reasoning, answer = split_reasoning(text)
    answer = answer.strip()
    calls = parse(answer).calls
    return {"prediction": answer, **({"reasoning": reasoning} if reasoning is not None else {}),
            **({"tool_calls": calls} if calls else {})}
