"""Registry of prompt templates: canonical record -> text segments marked trained / not trained.

Every prompt sft trains or serves is rendered by a chat template through transformers' own Jinja engine (the one
`apply_chat_template` runs): the tokenizer's (`template: tokenizer`), or a built-in, which is a chat template
shipped as `chat_templates/NAME.jinja` (with `tools.jinja`, the tool format they share) and saved with the model as
it is. User templates in sft's variables (`JinjaTemplate`) write the prompt; the answer after it is written by the
built-ins' answer macro. A template renders a whole conversation into segments `(text, trained)`: every assistant
answer is a trained segment (`{% generation %}` blocks mark them in the built-ins), everything else is context.
Causal models train on the concatenation (loss on the trained segments, EOS appended); seq2seq models read everything before the final answer as the
source and the final answer as the target. Inference renders the same messages with an empty final
answer and drops it, so the prompt is byte-identical to the one seen in training.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import RecipeError

Segment = tuple[str, bool]


def _control_markers(source: str) -> tuple[str, ...]:
    """<|name|> control markers a template writes (ChatML, Llama 3, Phi): kept whole by a tokenizer built for it."""
    return tuple(dict.fromkeys(re.findall(r"<\|[A-Za-z0-9_]+\|>", source)))

def _user_text(m: dict) -> str:
    return m["content"] + (f"\n\n{m['input']}" if m.get("input") else "")


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
        return _control_markers(self.source)

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
            segs += answer_segments(messages[answer_idx])
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
    builtin = False  # a built-in writes tools and calls in sft's tool format: nothing to check
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
    def _shape(m: dict) -> dict:
        return hub_message(m)

    def _messages(self, messages: list[dict], system: str | None) -> list[dict]:
        """The messages as the template reads them, with the recipe's system prompt where they have none."""
        out = [self._shape(m) for m in messages]
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
        if tools and not self.builtin and not self._renders_tools(tools):
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
            if start < pos or end < start or (end == start and spans is None):
                raise _unlocatable()
            text = full[start:end]
            rec = records[i] if records else {}
            if not self.builtin and any(c["name"] not in text for c in rec.get("tool_calls") or ()):
                raise TemplateRejected("the chat template does not render tool calls",
                                       reason="it does not render tool calls", field="data.template",
                                       fix="use a tool-aware template")
            trained = True if trained_flags is None else trained_flags[i]
            segs.append((full[pos:start], False))
            k, n = (self._reasoning_at(messages, i, full, start, end, rec["reasoning"], tools)
                    if rec.get("reasoning") and not rec.get("reasoning_loss", True) else (-1, 0))
            if k >= 0:  # data.reasoning: mask: the reasoning is context, the rest of the turn is trained
                segs += [(full[start:k], trained), (full[k:k + n], False), (full[k + n:end], trained)]
            else:
                segs.append((text, trained))
            pos = end
        segs.append((full[pos:], False))
        return segs

    def _reasoning_at(self, messages: list[dict], i: int, full: str, start: int, end: int, reasoning: str,
                      tools) -> tuple[int, int]:
        """Where turn i's reasoning is written inside [start, end): where two renderings with different placeholder
        reasoning first differ (exact, whatever text surrounds it); for a template that reshapes it (strips it),
        the first place its stripped text occurs. (-1, 0) when it is not written there."""
        m, n = messages[i], len(reasoning)
        keys = [k for k in ("reasoning", "reasoning_content", "thinking") if m.get(k)]
        a, b = (self._apply(messages[:i] + [{**m, **{k: ch * n for k in keys}}] + messages[i + 1:], tools=tools)
                for ch in ("\x01", "\x02"))
        k = _common_prefix(a, b)
        if start <= k and k + n <= end and full[k:k + n] == reasoning and a[k:k + n] == "\x01" * n:
            return k, n
        stripped = reasoning.strip()
        k = full.find(stripped, start, end) if stripped else -1
        return (k, len(stripped)) if k >= 0 else (-1, 0)

    def render(self, messages: list[dict], system: str | None, tools=None) -> list[Segment]:
        msgs = self._messages(messages, system)
        flags = [m.get("loss", True) if m["role"] == "assistant" else False for m in messages]
        records = list(messages)
        if len(msgs) > len(messages):
            flags, records = [False] + flags, [{}] + records
        return self._segments(msgs, flags, tools, records)

    def render_prompt(self, messages: list[dict], system: str | None, tools=None) -> str:
        msgs = self._messages(messages, system)
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return self._apply(msgs, generation_prompt=True, tools=tools)


_BUILTIN_DIR = os.path.join(os.path.dirname(__file__), "chat_templates")
_GENERATION_TAG = re.compile(r"\{%-?\s*(?:end)?generation\s*-?%\}")


def _builtin_file(name: str) -> str:
    with open(os.path.join(_BUILTIN_DIR, name + ".jinja"), encoding="utf-8") as fh:
        return fh.read()


class BuiltinTemplate(ChatTemplate):
    """A built-in template: a chat template (`chat_templates/NAME.jinja` after the shared `tools.jinja`) whose
    `{% generation %}` blocks mark the trained text, rendered like any tokenizer's chat template and saved with the
    model as it is (less the generation tags). It reads sft records (a user turn's `input` apart, as Alpaca writes
    it) as well as Hub messages. Unlike a tokenizer's template its text is tokenised span by span and training
    appends the tokenizer's EOS, as sft has always trained its built-ins (the recorded losses pin this)."""

    whole_text = False
    appends_eos = True
    builtin = True

    def __init__(self, name: str, body: str):
        import json

        self.name, self.generation = name, True  # (its own _apply: no tokenizer, no argument-text retry)
        head = re.match(r"\{#-?\s*sft\s+(\{.*?\})\s*-?#\}", body)
        meta = json.loads(head.group(1)) if head else {}
        self.doc, self.stop = meta.get("doc", ""), tuple(meta.get("stop", ()))
        self.source = _builtin_file("tools") + body
        self.markers = _control_markers(body)

    def _apply(self, messages: list[dict], generation_prompt: bool = False, tools=None, spans: bool = False):
        """transformers' compiled template and generation tracking, called without render_jinja_template's copy of
        the inputs into plain data (sft records are plain JSON already): a quarter of the time per example."""
        msgs = [{**m, "reasoning_content": m["reasoning"]} if m.get("reasoning") is not None and
                "reasoning_content" not in m else m for m in messages]  # the name chat templates read
        try:
            from transformers.utils.chat_template_utils import (_compile_jinja_template,
                                                                 _render_with_assistant_indices)
        except ImportError:  # a transformers without these internals: its public path renders the same
            from transformers.utils.chat_template_utils import render_jinja_template

            rendered, found = render_jinja_template([msgs], tools=tools or None, chat_template=self.source,
                                                    return_assistant_tokens_mask=spans,
                                                    add_generation_prompt=generation_prompt, eos_token="")
            return (rendered[0], [tuple(x) for x in found[0]]) if spans else rendered[0]
        compiled = _compile_jinja_template(self.source)
        if spans:
            text, found = _render_with_assistant_indices(compiled, msgs, tools or None, None, generation_prompt,
                                                         eos_token="")
            return text, [tuple(x) for x in found]
        return compiled.render(messages=msgs, tools=tools or None, documents=None,
                               add_generation_prompt=generation_prompt, eos_token="")

    @staticmethod
    def _shape(m: dict) -> dict:
        return m  # sft records as they are (a system turn renders as SYSTEM does in the saved template)

    def chat_template(self, system: str | None) -> str:
        """The template saved with a model trained with it: the recipe's system prompt set, no generation tags."""
        return "{%- set SYSTEM = " + _jinja_str(system or "") + " -%}" + _GENERATION_TAG.sub("", self.source)


TEMPLATES: dict[str, BuiltinTemplate] = {
    f[:-6]: BuiltinTemplate(f[:-6], _builtin_file(f[:-6])) for f in sorted(os.listdir(_BUILTIN_DIR))
    if f.endswith(".jinja") and f != "tools.jinja"}
# an assistant turn alone, as every built-in writes it: the answer after a user Jinja template's prompt, the
# references the metrics score, and structured calls appended to a scored prediction
_ANSWER = BuiltinTemplate("answer", "{%- for m in messages -%}{%- generation -%}{{- answer(m) -}}"
                                    "{%- endgeneration -%}{%- endfor -%}")


def answer_segments(m: dict) -> list[Segment]:
    """An assistant turn's segments in the built-in format (its reasoning kept out of the loss when the record
    says so)."""
    return [seg for seg in _ANSWER.render([{**m, "role": "assistant"}], None) if seg[0] or seg[1]]


def answer_text(m: dict, reasoning: bool = True) -> str:
    """An assistant turn's text in the built-in format: reasoning (unless left out), text, tool calls."""
    msg = {"role": "assistant", "content": m.get("content") or "", "tool_calls": m.get("tool_calls") or []}
    if reasoning and m.get("reasoning"):
        msg["reasoning"] = m["reasoning"]
    return _ANSWER._apply([msg])


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
    if spec in TEMPLATES:
        return TEMPLATES[spec].chat_template(system)
    tpl = get_template(spec)
    if not isinstance(tpl, JinjaTemplate):
        return None
    return "{%- set SYSTEM = " + _jinja_str(system or "") + " -%}" + _JINJA_WRAPPER + _as_transformers_jinja(
        tpl.source)


def _jinja_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string literal is a valid Jinja string literal


_CHAT: dict = {}


def get_template(spec: str, tokenizer=None) -> JinjaTemplate | ChatTemplate:
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
