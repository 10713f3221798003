"""Registry of prompt templates: canonical record -> text segments marked trained / not trained.

A template renders a whole conversation into segments `(text, trained)`: every assistant answer is a
trained segment, everything else is context. Causal models train on the concatenation (loss on the
trained segments, EOS appended); seq2seq models read everything before the final answer as the
source and the final answer as the target. Inference renders the same messages with an empty final
answer and drops it, so the prompt is byte-identical to the one seen in training.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import RecipeError

Segment = tuple[str, bool]

ALPACA_PROMPT_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                       "context. Write a response that appropriately completes the request.")
ALPACA_PROMPT_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately " \
                         "completes the request."


@dataclass(frozen=True)
class Template:
    name: str
    render: Callable[..., list[Segment]]  # (messages, system, tools) -> segments
    stop: tuple[str, ...] = ()  # text markers that end an answer at inference (besides EOS)
    doc: str = ""
    appends_eos: bool = True  # training appends the tokenizer's EOS after the final answer
    markers: tuple[str, ...] = ()  # control markers a tokenizer built for this template keeps whole (special)


def _user_text(m: dict) -> str:
    return m["content"] + (f"\n\n{m['input']}" if m.get("input") else "")


# The built-in templates' one tool format (Hermes / Qwen2.5 wording): the tools list closes the system text, a
# call is <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call> after the answer's text, reasoning
# opens the answer as <think>\n...\n</think>\n\n, and tool results are `tool` turns. The saved chat templates
# (BUILTIN_CHAT_TEMPLATES) write the same text.
TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
              "function signatures within <tools></tools> XML tags:\n<tools>")
TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
              "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
              "<args-json-object>}\n</tool_call>")


def tools_text(tools: list[dict] | None) -> str:
    import json

    return TOOLS_HEAD + "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools) + TOOLS_TAIL if tools else ""


def call_text(call: dict) -> str:
    import json

    return "<tool_call>\n" + json.dumps({"name": call["name"], "arguments": call["arguments"]},
                                        ensure_ascii=False) + "\n</tool_call>"


def answer_body(m: dict) -> str:
    """An answer's text with its tool calls, as the built-in templates write it (reasoning not included)."""
    body = m["content"]
    for c in m.get("tool_calls") or ():
        body += ("\n" if body else "") + call_text(c)
    return body


def think_text(m: dict) -> str:
    return f"<think>\n{m['reasoning']}\n</think>\n\n" if m.get("reasoning") else ""


def _answer(m: dict, suffix: str = "") -> list[Segment]:
    """An assistant turn's segments: reasoning (kept out of the loss when the record says so), then the answer."""
    trained = m.get("loss", True)
    think, body = think_text(m), answer_body(m) + suffix
    if think and not m.get("reasoning_loss", True):  # data.reasoning: mask: its text is context, its tags trained
        return [("<think>\n", trained), (m["reasoning"], False), ("\n</think>\n\n" + body, trained)]
    return [(think + body, trained)]


def _with_tools(text: str, tools) -> str:
    return (text + "\n\n" if text else "") + tools_text(tools) if tools else text


def _alpaca(messages: list[dict], system: str | None, tools=None) -> list[Segment]:
    sys_msgs = [m["content"] for m in messages if m["role"] == "system"]
    first_user = next((m for m in messages if m["role"] == "user"), {})
    preamble = sys_msgs[0] if sys_msgs else system or (
        ALPACA_PROMPT_INPUT if first_user.get("input") else ALPACA_PROMPT_NO_INPUT)
    segs: list[Segment] = [(_with_tools(preamble, tools) + "\n\n", False)]
    for m in messages:
        if m["role"] == "user":
            text = f"### Instruction:\n{m['content']}\n\n"
            if m.get("input"):
                text += f"### Input:\n{m['input']}\n\n"
            segs.append((text + "### Response:\n", False))
        elif m["role"] == "tool":
            segs.append((f"### Observation:\n{m['content']}\n\n### Response:\n", False))
        elif m["role"] == "assistant":
            segs += _answer(m)
            segs.append(("\n\n", False))
    return segs


def _chatml(messages: list[dict], system: str | None, tools=None) -> list[Segment]:
    segs: list[Segment] = []
    first_system = next((i for i, m in enumerate(messages) if m["role"] == "system"), None)
    if (system or tools) and first_system is None:
        segs.append((f"<|im_start|>system\n{_with_tools(system or '', tools)}<|im_end|>\n", False))
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            segs.append(("<|im_start|>assistant\n", False))
            segs += _answer(m, "<|im_end|>")
            segs.append(("\n", False))
        else:
            text = _with_tools(m["content"], tools) if i == first_system else _user_text(m)
            segs.append((f"<|im_start|>{m['role']}\n{text}<|im_end|>\n", False))
    return segs


def _plain(messages: list[dict], system: str | None, tools=None) -> list[Segment]:
    sys_msgs = [m["content"] for m in messages if m["role"] == "system"]
    segs: list[Segment] = []
    head = _with_tools(sys_msgs[0] if sys_msgs else system or "", tools)
    if head:
        segs.append((head + "\n\n", False))
    for m in messages:
        if m["role"] == "assistant":
            segs += _answer(m)
            segs.append(("\n\n", False))
        elif m["role"] != "system":
            segs.append((_user_text(m) + "\n\n", False))
    return segs


TEMPLATES: dict[str, Template] = {t.name: t for t in [
    Template("alpaca", _alpaca, ("\n\n### Instruction:",),
             "Stanford Alpaca wording (with and without input); '### Response:' is followed by a newline"),
    Template("chatml", _chatml, ("<|im_end|>",), "<|im_start|>role ... <|im_end|> turns",
             markers=("<|im_start|>", "<|im_end|>")),
    Template("plain", _plain, (), "instruction, blank line, input (T5-style source text)"),
]}


@dataclass
class JinjaTemplate:
    """A user template: renders the prompt from system / instruction / input / messages / history.

    The final assistant message is the answer; earlier answers the template writes verbatim are trained too.
    """

    source: str
    name: str = "custom"
    stop: tuple[str, ...] = field(default=())
    appends_eos = True  # (not a field) training appends EOS after the final answer, as for built-ins

    @property
    def markers(self) -> tuple[str, ...]:
        """<|name|> control markers the source writes (ChatML, Llama 3, Phi): kept whole by a built tokenizer."""
        return tuple(dict.fromkeys(re.findall(r"<\|[A-Za-z0-9_]+\|>", self.source)))

    def __post_init__(self):
        from jinja2 import StrictUndefined, TemplateSyntaxError

        env = _bounded_env()(undefined=StrictUndefined, keep_trailing_newline=True)
        try:
            self._tpl = env.from_string(self.source)
        except TemplateSyntaxError as e:
            raise RecipeError(f"template syntax error at line {e.lineno}: {e.message}", field="data.template",
                              fix="fix the Jinja template") from e

    def _prompt(self, context: list[dict], system: str | None, tools=None) -> str:
        from jinja2.exceptions import SecurityError, UndefinedError

        users = [m for m in context if m["role"] == "user"]
        last = users[-1] if users else {"content": "", "input": ""}
        sys_msgs = [m["content"] for m in context if m["role"] == "system"]
        try:
            return _render_bounded(self._tpl, self.name, dict(
                system=sys_msgs[0] if sys_msgs else (system or ""), instruction=last["content"],
                input=last.get("input", ""), messages=context, history=context[:-1] if users else [],
                tools=tools or []))
        except SecurityError as e:
            raise RecipeError(f"template tried an unsafe operation ({e})", field="data.template",
                              fix="templates may only read the variables system, instruction, input, messages, "
                                  "history, tools") from e
        except UndefinedError as e:
            raise RecipeError(f"template uses an undefined variable ({e.message})", field="data.template",
                              fix="use system, instruction, input, messages, history or tools") from e
        except RecipeError:
            raise
        except Exception as e:  # a runtime error inside the user's template: 1/0, a bad filter argument, ...
            raise RecipeError(f"template {self.name!r} failed while rendering ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120] if str(e) else ''})", field="data.template",
                              fix="fix the template") from e

    def render(self, messages: list[dict], system: str | None, tools=None) -> list[Segment]:
        """The prompt, then the final answer (its tool calls and reasoning in the built-in tool format). Earlier
        answers the template writes into the prompt (through `messages` or `history`) are trained too: each is
        located by rendering the prompt with two different placeholders in its place, and kept as context if the
        template does not write it verbatim."""
        answer_idx = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
        context = messages[:answer_idx]
        prompt = self._prompt(context, system, tools)
        spans = []
        for j, m in enumerate(context):
            if m["role"] != "assistant" or not m["content"] or not m.get("loss", True):
                continue
            a = self._prompt(context[:j] + [{**m, "content": "\x01" * len(m["content"])}] + context[j + 1:], system,
                             tools)
            b = self._prompt(context[:j] + [{**m, "content": "\x02" * len(m["content"])}] + context[j + 1:], system,
                             tools)
            start = _common_prefix(a, b)
            end = start + len(m["content"])
            if a.count("\x01") == len(m["content"]) and prompt[start:end] == m["content"] and \
                    prompt[:start] == a[:start]:
                spans.append((start, end))
        segs: list[Segment] = []
        pos = 0
        for start, end in sorted(spans):
            if start < pos:
                continue
            segs += [(prompt[pos:start], False), (prompt[start:end], True)]
            pos = end
        segs.append((prompt[pos:], False))
        if answer_idx < len(messages):
            segs += _answer(messages[answer_idx])
        return segs


class TemplateRejected(RecipeError):
    """The chat template refused one conversation (e.g. a system turn in a template without one)."""

    def __init__(self, message: str, *, reason: str, **kw):
        super().__init__(message, **kw)
        self.reason = f"rejected by the chat template ({reason[:80]})"  # the drop/skip reason, one per cause


class ChatTemplate:
    """The tokenizer's own chat template (`template: tokenizer`), the Hub convention servers follow.

    Messages go to the template in the Hub's shape (tool calls as `tool_calls`, reasoning as
    `reasoning_content` and `thinking`, tool results as `tool` turns) with the example's `tools`. An assistant
    turn is trained from where the template's generation prompt for it ends (`apply_chat_template(history,
    add_generation_prompt=True)`: the context it is generated in) to the end of the turn in the whole rendering,
    its end-of-turn marker included (the model learns to stop) and trailing whitespace left out. Where the
    generation prompt is not a prefix of the conversation, the start is where two renderings with different
    placeholder answers first differ. Inference prompts are `apply_chat_template(..., add_generation_prompt=True,
    tools=...)`, exactly what a server sends."""

    name = "tokenizer"
    appends_eos = False  # the template writes its own end-of-turn (and EOS, if it wants one)
    whole_text = True  # tokenised as one text, as apply_chat_template(tokenize=True) tokenises it

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.source = tokenizer.chat_template
        self.string_arguments = False  # the template concatenates tool-call arguments as JSON text (DeepSeek-V3)
        # `{% generation %}` blocks (TRL's *_training templates) mark the trained text themselves
        self.generation = bool(re.search(r"\{%-?\s*generation\s*-?%\}", self.source))
        self.end_of_turn, self.markers = "", ()
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Yq7"}]
        try:
            span = next(t for t, trained in self._segments(probe) if trained)
        except TemplateRejected as e:  # the template itself, not one conversation: the run cannot use it
            raise RecipeError(e.message, field="data.template",
                              fix="use a built-in template or a data.chat_template_path that renders a user and an "
                                  "assistant turn") from e
        self.end_of_turn = span.rsplit("Yq7", 1)[-1].strip()  # what the template writes after an answer: <|im_end|>
        self.stop = (self.end_of_turn,) if self.end_of_turn else ()
        # how a turn that is not the last one ends (gpt-oss: <|end|>, or <|call|> after a tool call; Qwen: <|im_end|>)
        try:
            middle = self._apply(probe + [{"role": "user", "content": "Zq8"}])
            first = re.findall(r"<[^<>\s]{1,40}>", middle[middle.rindex("Yq7") + 3:middle.rindex("Zq8")])[:1]
        except (TemplateRejected, ValueError):
            first = []
        known = [m for m in END_MARKERS if m in self.source]
        self.markers = tuple(dict.fromkeys(first + known))

    def _apply(self, messages: list[dict], generation_prompt: bool = False, tools=None, spans: bool = False):
        """The template's text for `messages` (with `spans`: and its `{% generation %}` character spans). A
        conversation the template refuses is a TemplateRejected; a template that concatenates tool-call arguments
        as text (DeepSeek-V3) is given them as JSON text from then on."""
        msgs = [_string_arguments(m) for m in messages] if self.string_arguments else messages
        try:
            if spans:
                from transformers.utils.chat_template_utils import render_jinja_template

                rendered, found = render_jinja_template([msgs], tools=tools or None, chat_template=self.source,
                                                        return_assistant_tokens_mask=True,
                                                        **self.tokenizer.special_tokens_map)
                return rendered[0], [tuple(x) for x in found[0]]
            return self.tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as e:
            if not self.string_arguments and "(not \"dict\") to str" in str(e) and \
                    any(m.get("tool_calls") for m in messages):
                self.string_arguments = True
                return self._apply(messages, generation_prompt, tools, spans)
            cause = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            raise TemplateRejected(f"the tokenizer's chat template failed ({cause})", reason=cause,
                                   field="data.template", fix="check that the conversation fits the template (e.g. "
                                   "alternating roles), or use another template") from e

    @staticmethod
    def _messages(messages: list[dict], system: str | None) -> list[dict]:
        out = [hub_message(m) for m in messages]
        if system and not any(m["role"] == "system" for m in out):
            out.insert(0, {"role": "system", "content": system})
        return out

    def _start(self, messages: list[dict], i: int, full: str, tools) -> int:
        gen = bare = None
        if i > 0:  # a template that writes a generation prompt: the turn starts where that prompt ends
            try:
                gen, bare = self._apply(messages[:i], True, tools), self._apply(messages[:i], False, tools)
            except TemplateRejected:
                gen = bare = None
            if gen != bare and full.startswith(gen):
                return len(gen)
        m = messages[i]
        a = self._apply(messages[:i] + [{**m, "content": "\x01\x02A"}] + messages[i + 1:], tools=tools)
        b = self._apply(messages[:i] + [{**m, "content": "\x03\x04B"}] + messages[i + 1:], tools=tools)
        start = _common_prefix(a, b)
        if full[:start] != a[:start]:
            raise _unlocatable()
        if gen is not None and bare is not None and gen != bare and gen.startswith(bare):
            # the history renders otherwise once this turn follows (gpt-oss drops an earlier call's reasoning): the
            # turn starts after the first generation prompt that follows the previous message's text
            prompt, prev = gen[len(bare):].strip(), str(messages[i - 1].get("content") or "")
            reasoning = str(m.get("reasoning_content") or "").strip()
            bound = full.find(reasoning, 0, start) if reasoning else -1  # the turn's reasoning precedes its text
            after = full.rfind(prev, 0, bound if bound >= 0 else start) if prev else -1
            k = full.find(prompt, after + len(prev) if after >= 0 else 0) if prompt else -1
            if 0 <= k and k + len(prompt) <= start and full[k + len(prompt):start].strip():
                return k + len(prompt)  # (text between the prompt and the answer that is not whitespace)
        return start

    def _end(self, messages: list[dict], i: int, full: str, start: int, tools) -> int:
        cut = self._apply(messages[: i + 1], tools=tools)
        agree = _common_prefix(cut, full)
        end = start + len(full[start:agree].rstrip())
        if cut[agree:].strip() and self.markers:
            # the turn renders otherwise when it is last (Qwen3's empty think, gpt-oss's <|return|>): it ends at the
            # first end-of-turn marker the whole rendering writes after the point where the two stop agreeing
            found = [(k, k + len(mk)) for mk in self.markers for k in [full.find(mk, end)] if k >= 0]
            end = min(found)[1] if found else end
        return end

    def _renders_tools(self, tools) -> bool:
        """Whether the template writes a tools list at all (DeepSeek-V3's and most older ones ignore `tools=`)."""
        if not hasattr(self, "_tools_seen"):
            probe = [{"role": "user", "content": "x"}]
            self._tools_seen = self._apply(probe, tools=tools) != self._apply(probe)
        return self._tools_seen

    def _segments(self, messages: list[dict], trained_flags: list[bool] | None = None, tools=None,
                  records: list[dict] | None = None) -> list[Segment]:
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if self.generation:
            full, spans = self._apply(messages, tools=tools, spans=True)
            if len(spans) != len(turns):  # blocks that do not map one to one onto turns: all of them are trained
                turns, trained_flags, records = list(range(len(spans))), None, None
        else:
            full, spans = self._apply(messages, tools=tools), None
        if tools and not self._renders_tools(tools):
            raise TemplateRejected("the chat template does not render tools", reason="it does not render tools",
                                   field="data.template", fix="use a tool-aware template")
        segs: list[Segment] = []
        pos = 0
        for n, i in enumerate(turns):
            if spans is not None:
                start, end = spans[n]
            else:
                start = self._start(messages, i, full, tools)
                end = self._end(messages, i, full, start, tools)
            if start < pos or end <= start:
                raise _unlocatable()
            text = full[start:end]
            rec = records[i] if records else {}
            if any(c["name"] not in text for c in rec.get("tool_calls") or ()):
                raise TemplateRejected("the chat template does not render tool calls",
                                       reason="it does not render tool calls", field="data.template",
                                       fix="use a tool-aware template")
            trained = True if trained_flags is None else trained_flags[i]
            segs.append((full[pos:start], False))
            reasoning = (rec.get("reasoning") or "").strip()
            k = text.find(reasoning) if reasoning and not rec.get("reasoning_loss", True) else -1
            if k >= 0:  # data.reasoning: mask: the reasoning is context, the rest of the turn is trained
                segs += [(text[:k], trained), (text[k:k + len(reasoning)], False),
                         (text[k + len(reasoning):], trained)]
            else:
                segs.append((text, trained))
            pos = end
        segs.append((full[pos:], False))
        return segs

    def render(self, messages: list[dict], system: str | None, tools=None) -> list[Segment]:
        msgs = self._messages(messages, system)
        flags = [m.get("loss", True) if m["role"] == "assistant" else False for m in messages]
        records = list(messages)
        if len(msgs) > len(messages):
            flags, records = [False] + flags, [{}] + records
        return self._segments(msgs, flags, tools, records)

    def render_prompt(self, messages: list[dict], system: str | None, tools=None) -> str:
        msgs = self._messages([m for m in messages], system)
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return self._apply(msgs, generation_prompt=True, tools=tools)


def _unlocatable() -> "TemplateRejected":
    """One conversation whose assistant turns the rendering does not let sft locate (its text before an answer
    depends on the answer, or consecutive turns merge): dropped and counted, not the run's end."""
    return TemplateRejected("cannot locate this conversation's assistant turns in the tokenizer's chat template",
                            reason="its assistant turns cannot be located in the rendering", field="data.template",
                            fix="use a built-in template or a data.chat_template_path that renders each turn apart")


END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<|call|>", "<|return|>", "<end_of_turn>",
               "<turn|>", "<｜end▁of▁sentence｜>", "<|END_OF_TURN_TOKEN|>", "<|eot|>", "<|endoftext|>", "</s>")


def _string_arguments(m: dict) -> dict:
    import json

    if not m.get("tool_calls"):
        return m
    return {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.dumps(
        c["function"]["arguments"], ensure_ascii=False)}} for c in m["tool_calls"]]}


def hub_message(m: dict) -> dict:
    """An sft message in the shape chat templates read (transformers' convention, as servers send it)."""
    if m["role"] == "user":
        return {"role": "user", "content": _user_text(m)}
    out = {"role": m["role"], "content": m["content"]}
    if m["role"] == "assistant":
        if m.get("tool_calls"):
            out["tool_calls"] = [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]},
                                  **({"id": c["id"]} if c.get("id") else {})} for c in m["tool_calls"]]
        if m.get("reasoning"):
            out["reasoning_content"] = out["thinking"] = m["reasoning"]
    elif m["role"] == "tool":
        out.update({k: m[k] for k in ("name", "tool_call_id") if m.get(k)})
    return out


def _common_prefix(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


MAX_RENDER_SECONDS = 1.0
MAX_RENDER_CHARS = 1_000_000


def _bounded_env():
    """The immutable Jinja sandbox, with string/list repetition and powers capped so a template cannot build
    a gigabyte in one expression (range() is already capped by the sandbox)."""
    import operator

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Bounded(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator_name, left, right):
            if operator_name == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                        raise RecipeError(f"template builds a value over {MAX_RENDER_CHARS:,} characters",
                                          field="data.template", fix="make the template smaller")
                return operator.mul(left, right)
            if isinstance(right, int) and abs(right) > 4096:
                raise RecipeError("template computes a power that is too large", field="data.template")
            return operator.pow(left, right)

    return Bounded


def _render_bounded(tpl, name: str, variables: dict) -> str:
    """Render with a size cap (checked as output streams) and, in the main thread, a time cap."""
    import signal
    import threading
    import time

    def over_time(*_):
        raise RecipeError(f"template {name!r} took longer than {MAX_RENDER_SECONDS:g} s for one example",
                          field="data.template", fix="remove loops that run long")

    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, over_time)
        signal.setitimer(signal.ITIMER_REAL, MAX_RENDER_SECONDS)
    start = time.monotonic()
    try:
        out, size = [], 0
        for chunk in tpl.generate(**variables):
            out.append(chunk)
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise RecipeError(f"template {name!r} rendered over {MAX_RENDER_CHARS:,} characters for one example",
                                  field="data.template", fix="make the template smaller")
            if not use_alarm and time.monotonic() - start > MAX_RENDER_SECONDS:
                over_time()
        return "".join(out)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


# Built-in templates as tokenizer chat templates (saved with every model), rendering exactly the prompts sft
# feeds the model: `apply_chat_template(messages, add_generation_prompt=True)` on the saved tokenizer equals
# sft's prompt for the same messages. {SYSTEM} is the recipe's data.system_prompt (or none).
_SYSTEMS = ("{%- set systems = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list -%}"
            "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}")
_INPUT = "{%- set inp = m['input'] if m['input'] is defined and m['input'] else '' -%}"  # sft records' input field
_TOOLS = (  # TOOLS_HEAD, the tools as JSON, TOOLS_TAIL (tools_text); answer(m): answer_body with think_text
    "{%- set ns_t = namespace(text='') -%}{%- if tools -%}{%- set ns_t.text = TOOLS_HEAD -%}"
    "{%- for t in tools -%}{%- set ns_t.text = ns_t.text + '\n' + (t | tojson) -%}{%- endfor -%}"
    "{%- set ns_t.text = ns_t.text + TOOLS_TAIL -%}{%- endif -%}{%- set TOOLS_TEXT = ns_t.text -%}"
    "{%- macro with_tools(text) -%}{{- (text + '\n\n' if text else '') + TOOLS_TEXT if TOOLS_TEXT else text -}}"
    "{%- endmacro -%}"
    "{%- macro answer(m) -%}{%- set ns_a = namespace(b=(m['content'] or '')) -%}"
    "{%- if m['tool_calls'] is defined and m['tool_calls'] -%}{%- for c in m['tool_calls'] -%}"
    "{%- set f = c['function'] if c['function'] is defined else c -%}"
    "{%- set args = f['arguments'] if f['arguments'] is string else (f['arguments'] | tojson) -%}"
    "{%- set ns_a.b = ns_a.b + ('\n' if ns_a.b else '') + '<tool_call>\n{\"name\": ' + (f['name'] | tojson) + "
    "', \"arguments\": ' + args + '}\n</tool_call>' -%}{%- endfor -%}{%- endif -%}"
    "{%- set r = m['reasoning_content'] if m['reasoning_content'] is defined and m['reasoning_content'] else '' -%}"
    "{{- ('<think>\n' + r + '\n</think>\n\n' if r else '') + ns_a.b -}}{%- endmacro -%}")
BUILTIN_CHAT_TEMPLATES = {
    "alpaca": _SYSTEMS + _TOOLS + (
        "{%- if systems -%}{%- set pre = systems[0] -%}{%- elif SYSTEM -%}{%- set pre = SYSTEM -%}"
        "{%- elif users and users[0]['input'] is defined and users[0]['input'] -%}{%- set pre = WITH_INPUT -%}"
        "{%- else -%}{%- set pre = NO_INPUT -%}{%- endif -%}{{- with_tools(pre) + '\n\n' -}}"
        "{%- for m in messages -%}" + _INPUT +
        "{%- if m['role'] == 'user' -%}{{- '### Instruction:\n' + m['content'] + '\n\n' -}}"
        "{%- if inp -%}{{- '### Input:\n' + inp + '\n\n' -}}{%- endif -%}{{- '### Response:\n' -}}"
        "{%- elif m['role'] == 'tool' -%}{{- '### Observation:\n' + m['content'] + '\n\n### Response:\n' -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- answer(m) + (eos_token if loop.last else '\n\n') -}}"
        "{%- endif -%}{%- endfor -%}"),
    "chatml": _SYSTEMS + _TOOLS + (
        "{%- if (SYSTEM or TOOLS_TEXT) and not systems -%}"
        "{{- '<|im_start|>system\n' + with_tools(SYSTEM) + '<|im_end|>\n' -}}{%- endif -%}"
        "{%- set ns_s = namespace(first=true) -%}"
        "{%- for m in messages -%}" + _INPUT +
        "{%- if m['role'] == 'assistant' -%}{{- '<|im_start|>assistant\n' + answer(m) + '<|im_end|>\n' -}}"
        "{%- elif m['role'] == 'system' and ns_s.first -%}{%- set ns_s.first = false -%}"
        "{{- '<|im_start|>system\n' + with_tools(m['content']) + '<|im_end|>\n' -}}"
        "{%- else -%}{{- '<|im_start|>' + m['role'] + '\n' + m['content'] + ('\n\n' + inp if inp else '') + "
        "'<|im_end|>\n' -}}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"),
    "plain": _SYSTEMS + _TOOLS + (
        "{%- set head = with_tools(systems[0] if systems else SYSTEM) -%}{%- if head -%}{{- head + '\n\n' -}}"
        "{%- endif -%}"
        "{%- for m in messages -%}" + _INPUT + "{%- if m['role'] == 'assistant' -%}"
        "{{- answer(m) + (eos_token if loop.last else '\n\n') -}}"
        "{%- elif m['role'] != 'system' -%}{{- m['content'] + ('\n\n' + inp if inp else '') + '\n\n' -}}"
        "{%- endif -%}{%- endfor -%}"),
}


def _as_transformers_jinja(source: str) -> str:
    """The same output under transformers' chat-template environment (trim_blocks, lstrip_blocks, no trailing
    newline kept) as under sft's: `{%+ ... +%}` turns both off per tag, and a final no-op keeps the newline."""
    import re

    source = re.sub(r"\{%(?![-+])", "{%+", source)
    source = re.sub(r"(?<![-+])%\}", "+%}", source)
    return source + "{{ '' }}"


_JINJA_WRAPPER = (  # sft's Jinja variables, from the chat messages (the prompt is for the last user turn)
    "{%- set _sys = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list -%}"
    "{%- set _users = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- set system = _sys[0] if _sys else SYSTEM -%}"
    "{%- set instruction = _users[-1]['content'] if _users else '' -%}"
    "{%- set input = (_users[-1]['input'] if _users and _users[-1]['input'] is defined else '') or '' -%}"
    "{%- set history = messages[:-1] if _users else [] -%}")


def chat_template_for(spec: str, system: str | None) -> str | None:
    """The chat template to save with a model trained with template `spec` (None: keep the tokenizer's)."""
    if spec == "tokenizer":
        return None
    if spec not in BUILTIN_CHAT_TEMPLATES:
        tpl = get_template(spec)
        if not isinstance(tpl, JinjaTemplate):
            return None
        return "{%- set SYSTEM = " + _jinja_str(system or "") + " -%}" + _JINJA_WRAPPER + _as_transformers_jinja(
            tpl.source)
    head = "{%- set SYSTEM = " + _jinja_str(system or "") + " -%}{%- set TOOLS_HEAD = " + _jinja_str(TOOLS_HEAD) + \
        " -%}{%- set TOOLS_TAIL = " + _jinja_str(TOOLS_TAIL) + " -%}"
    if spec == "alpaca":
        head += ("{%- set NO_INPUT = " + _jinja_str(ALPACA_PROMPT_NO_INPUT) + " -%}{%- set WITH_INPUT = " +
                 _jinja_str(ALPACA_PROMPT_INPUT) + " -%}")
    return head + BUILTIN_CHAT_TEMPLATES[spec]


def _jinja_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


_CHAT: dict = {}


def get_template(spec: str, tokenizer=None) -> Template | JinjaTemplate | ChatTemplate:
    """A registry name, `tokenizer` (the tokenizer's chat template), an inline Jinja template (contains '{{'
    or '{%'), or a .jinja/.j2 file path."""
    if spec == "tokenizer":
        source = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        if not isinstance(source, str) or not source:
            raise RecipeError("template: tokenizer needs a tokenizer with a chat_template" +
                              (" (this one has none)" if tokenizer is not None else ""), field="data.template",
                              fix="use a chat model's tokenizer, set data.chat_template_path to a .jinja file, or "
                                  "choose a built-in template")
        key = (id(tokenizer), source)
        if key not in _CHAT:
            _CHAT.clear()
            _CHAT[key] = ChatTemplate(tokenizer)
        return _CHAT[key]
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{{" in spec or "{%" in spec:
        return JinjaTemplate(spec)
    if spec.endswith((".jinja", ".j2")):
        if not os.path.exists(spec):
            raise RecipeError("template file not found", file=spec, field="data.template")
        if os.path.isdir(spec):
            raise RecipeError("template path is a directory", file=spec, field="data.template",
                              fix="point data.template at a .jinja file")
        try:
            with open(spec, encoding="utf-8-sig") as fh:
                return JinjaTemplate(fh.read(), name=os.path.basename(spec))
        except UnicodeDecodeError as e:
            raise RecipeError(f"template file is not UTF-8 text (byte offset {e.start})", file=spec,
                              field="data.template", fix="save it as UTF-8") from e
    import difflib

    close = difflib.get_close_matches(spec, list(TEMPLATES), n=1)
    raise RecipeError(f"unknown template {spec!r}", field="data.template",
                      fix=f"did you mean {close[0]!r}?" if close else
                      f"use one of {', '.join(TEMPLATES)}, an inline Jinja string or a .jinja file")


def stop_token_ids(tokenizer, stops: tuple[str, ...] = ()) -> list[int]:
    """EOS plus every stop marker that is a single token (a chat template's end of turn, e.g. <|im_end|>,
    <|eot_id|>, <end_of_turn>): generation ends at any of them, not only at EOS."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for s in stops:
        toks = tokenizer.encode(s, add_special_tokens=False) if s else []
        if len(toks) == 1 and toks[0] not in ids:
            ids.append(toks[0])
    return ids


def merge_segments(segs: list[Segment]) -> list[Segment]:
    """Join neighbours with the same flag and drop empty context, so tokenisation sees whole spans."""
    out: list[Segment] = []
    for text, trained in segs:
        if not text and not trained:
            continue
        if out and out[-1][1] == trained and not trained:
            out[-1] = (out[-1][0] + text, trained)
        else:
            out.append((text, trained))
    return out


def render_training(template, messages: list[dict], system: str | None, tools=None) -> list[Segment]:
    """Segments up to and including the final answer (trailing context after it is dropped)."""
    segs = merge_segments(template.render(messages, system, tools))
    last = max((i for i, (_, t) in enumerate(segs) if t), default=-1)
    return segs[: last + 1]


def render_prompt(template, messages: list[dict], system: str | None, tools=None) -> str:
    """The inference prompt for a conversation that ends with a user (or tool) turn."""
    segs = render_prompt_segments(template, messages, system, tools)
    return "".join(t for t, _ in segs)


def render_prompt_segments(template, messages: list[dict], system: str | None, tools=None) -> list[Segment]:
    if hasattr(template, "render_prompt"):  # a chat template renders its own generation prompt
        return [(template.render_prompt(messages, system, tools), False)]
    msgs = list(messages)
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    segs = merge_segments(template.render(msgs + [{"role": "assistant", "content": "\x00"}], system, tools))
    idx = max(i for i, (t, trained) in enumerate(segs) if trained)
    head = segs[idx][0].split("\x00")[0]  # text a template puts before the answer inside the answer span
    out = segs[:idx]
    if head:
        out = out + [(head, False)]
    return merge_segments(out)
