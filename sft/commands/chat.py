"""`sft chat MODEL [--compare BASE] [--tools FILE]`: interactive chat in the model's own template, answers streamed
as they are generated (stopping at the template's end of turn). Tool calls the model writes are shown parsed;
`/tool TEXT` answers them with a tool result. /reset clears the history, /exit quits."""

from __future__ import annotations

import os
import sys

from .. import rundir
from ._args import add_generation_args, generation_overrides


ORDER = 7  # its place in `sft --help`


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat with a trained model")
    p.add_argument("model", help="an sft output directory, a Hugging Face model folder, or a Hub id")
    p.add_argument("--compare", default=None, help="a base model/output dir whose answers are shown beside")
    p.add_argument("--raw", action="store_true", help="no chat template: each line is plain text to continue")
    p.add_argument("--tools", default=None, metavar="FILE", help="a JSON list of function specs the model may call")
    add_generation_args(p)


def run(args) -> int:
    chat(args.model, compare=args.compare, gen=generation_overrides(args), raw=args.raw, seed=args.seed,
         tools_path=args.tools)
    return 0


def _reply(answer, use, messages, gen, prefix: str, tools=None) -> dict:
    """The model's turn as a history message: its text, and the tool calls and reasoning parsed out of it."""
    import json

    from ..data.formats import assistant_message
    from ..toolcalls import structure_answer

    streamer = _StopStreamer(use.tokenizer, use.stops, prefix)
    text, cut = answer(use, messages, gen, streamer=streamer.streamer, tools=tools, keep_raw=not use.raw)
    if cut:
        print("(note: the conversation was left-truncated to fit the model context)", flush=True)
    if use.raw:
        return {"role": "assistant", "content": text}
    got = structure_answer(text)
    calls = got.get("tool_calls", [])
    for c in calls:
        print(f"(tool call: {c['name']} {json.dumps(c['arguments'], ensure_ascii=False)})", flush=True)
    content = got["prediction"].split("<tool_call>")[0].strip() if calls else got["prediction"]
    return assistant_message(content, tool_calls=calls, reasoning=got.get("reasoning"))


class _StopStreamer:
    """TextStreamer that stops printing at the template's stop marker."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prefix: str):
        from transformers import TextStreamer

        outer = self

        class _S(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False):
                outer.feed(text, stream_end)

        self.streamer = _S(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stops, self.prefix, self.text, self.printed, self.done = stops, prefix, "", 0, False
        self.started = False

    def feed(self, text: str, end: bool) -> None:
        if not self.started:
            print(self.prefix, end="", flush=True)
            self.started = True
        self.text += text
        shown = self.text
        for s in self.stops:
            if s in shown:
                shown = shown[: shown.index(s)]
                self.done = True
        # hold back a possible partial stop marker
        hold = 0 if (end or self.done) else max((len(s) - 1 for s in self.stops), default=0)
        upto = max(self.printed, len(shown) - hold)
        print(shown[self.printed: upto], end="", flush=True)
        self.printed = upto
        if end:
            print(flush=True)



def chat(model_dir: str, *, compare: str | None = None, gen: dict | None = None, stdin=None, out=None,
         raw: bool = False, seed: int | None = None, tools_path: str | None = None) -> None:
    """Interactive chat. Commands: /reset clears the history, /exit quits. Reads stdin line by line. With `raw`,
    each line is continued as plain text (no template, no history)."""
    from ..inference import Use, answer, generation_settings, load_use, read_tools, run_recipe
    from ..modeling import load_for_inference, resolve_model_dir
    from ..data.clean import normalise_text

    stdin = stdin or getattr(sys.stdin, "buffer", sys.stdin)  # bytes: a bad line is skipped, not fatal
    tools = read_tools(tools_path)
    use = load_use(model_dir, raw=raw)
    recipe = use.recipe
    g = generation_settings(recipe, gen or {})
    base = None
    if compare:  # an sft run by its own recipe; any other base (e.g. the run's base model) the run's way
        folder = resolve_model_dir(compare)
        own = os.path.exists(os.path.join(folder, rundir.RECIPE))
        model, tokenizer, _ = load_for_inference(folder)
        base = Use.of(folder, model, tokenizer, run_recipe(folder) if own else recipe, raw)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    how = "raw text, no template" if raw else f"template {recipe.data.template}"
    print(f"sft chat: {model_dir} ({how}); /reset clears history, /exit quits", flush=True)
    history: list[dict] = []
    base_history: list[dict] = []
    interactive = stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        try:
            line = stdin.readline()
        except UnicodeDecodeError as e:  # text-mode stdin that is not UTF-8: say so and go on with the next line
            print(f"sft chat: skipped a line of stdin that is not UTF-8 text ({e.reason})", file=sys.stderr,
                  flush=True)
            continue
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                print(f"sft chat: skipped a line of stdin that is not UTF-8 text (byte {line[e.start]:#04x} at "
                      f"offset {e.start})", file=sys.stderr, flush=True)
                continue
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history, base_history = [], []
            print("(history cleared)", flush=True)
            continue
        if not interactive:
            print(f"you> {text}", flush=True)
        if raw:
            history, base_history = [], []
        role = "user"
        if text.startswith("/tool ") and not raw:  # a tool result for the model's last call
            role, text = "tool", text[len("/tool "):].strip()
        history.append({"role": role, "content": normalise_text(text, recipe.data.clean.normalize)})
        history.append(_reply(answer, use, history, g, "model> ", tools))
        if base is not None:
            base_history.append({"role": role, "content": text})
            base_history.append(_reply(answer, base, base_history, g, "base> ", tools))
    print("bye", flush=True)
