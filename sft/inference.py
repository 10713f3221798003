"""`sft generate` and `sft chat`: use a trained model with the run's own template and special tokens.

Prompts go through the same rendering and tokenisation as training (`encode_prompts`), so the text a
model sees at inference is byte-identical to what it was trained on.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from .data import formats
from .data.clean import normalise_text
from .context import RunContext
from .data.encode import PromptFormat
from .errors import DataError, ModelError, RecipeError
from .families import path_of
from .io import parse_jsonl
from .evaluation.generate import generate_batched
from .recipe import GenerationConfig, Recipe, load_recipe
from . import rundir


def run_recipe(model_dir: str, tokenizer=None, raw: bool = False) -> Recipe:
    """How a model folder is prompted: an sft run's own recipe; for any other model its tokenizer's chat template
    (`template: tokenizer`); `raw`: plain text, no template."""
    path = os.path.join(model_dir, rundir.RECIPE)
    if os.path.exists(path):
        return load_recipe(path)
    from .recipe import recipe_from_dict

    data: dict = {"sources": [{"path": "builtin:synthetic"}]}
    if tokenizer is not None and not raw:
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError("this model has no chat template (and is not an sft run)", file=model_dir,
                             fix="pass --raw to continue plain text, or use a chat model")
        data["template"] = "tokenizer"
    return recipe_from_dict({"data": data}, path=path)


@dataclasses.dataclass
class Use:
    """A model loaded for generate, chat, serve and export: the folder its files are in, the run context decided
    once for it (its recipe, training path, context length and precision) and its prompt format."""

    model: object
    tokenizer: object
    run: RunContext
    folder: str
    raw: bool = False

    @classmethod
    def of(cls, folder: str, model, tokenizer, recipe: Recipe, raw: bool = False) -> "Use":
        return cls(model, tokenizer, RunContext.build(recipe, config=model.config, check=False), folder, raw)

    @property
    def arch(self) -> str:
        return self.run.arch

    @property
    def recipe(self) -> Recipe:
        return self.run.recipe

    @property
    def format(self) -> PromptFormat:
        """How this model is prompted and where its answers stop (the run's PromptFormat)."""
        if getattr(self, "_format", None) is None:
            self._format = self.run.prompt_format(self.tokenizer, raw=self.raw)
        return self._format

    def autocast(self):
        """On a GPU, generation computes in the run's mixed precision, as training and evaluation did."""
        from .evaluation.run import autocast

        return autocast(self.model, self.run.precision)

    @property
    def stops(self) -> tuple[str, ...]:
        """Text markers that end an answer (none for a raw continuation, which ends at EOS)."""
        return self.format.stops

    def encode(self, records: list[dict]) -> list[list[int]]:
        return self.format.encode_prompt(records)


def load_use(spec: str, *, raw: bool = False, device: str | None = None) -> Use:
    """An sft run, a local Hugging Face model folder or a Hub id, loaded with the prompt format it was made for."""
    from .modeling import load_for_inference, resolve_model_dir

    folder = resolve_model_dir(spec)
    model, tokenizer, _ = load_for_inference(folder, device=device)
    return Use.of(folder, model, tokenizer, run_recipe(folder, tokenizer, raw), raw)


def generation_settings(recipe: Recipe, overrides: dict) -> GenerationConfig:
    """The run's decoding settings with command-line overrides, range-checked like the recipe. As in the OpenAI API,
    `--temperature 0` alone means greedy, and a temperature, top-k or top-p given without --do-sample samples."""
    from .schema import check_value

    overrides = dict(overrides)
    if "do_sample" not in overrides:
        if overrides.get("temperature") == 0:
            overrides.pop("temperature")
            overrides["do_sample"] = False
        elif any(k in overrides for k in ("temperature", "top_p", "top_k")):
            overrides["do_sample"] = True
    for key, value in overrides.items():
        overrides[key] = check_value(GenerationConfig, key, value, "--" + key.replace("_", "-"), None)
    gen = dataclasses.replace(recipe.eval.generation, **overrides)
    if gen.do_sample and gen.temperature <= 0:
        raise RecipeError("sampling needs a temperature > 0", field="--temperature", fix="e.g. --temperature 0.7")
    return gen


def _fit(ids: list[int], use: "Use", gen: GenerationConfig) -> tuple[list[int], bool]:
    """Left-truncate a prompt so it and max_new_tokens fit the model's context (as evaluation does)."""
    from .evaluation.generate import fit_prompt

    ctx, arch = use.run.context_length, use.arch
    if ctx is None:
        return ids, False
    budget = path_of(arch).prompt_budget(ctx, gen.max_new_tokens)
    if budget < 1:
        raise RecipeError(f"max_new_tokens={gen.max_new_tokens} leaves no room for a prompt in the model's "
                          f"{ctx}-token context", field="--max-new-tokens", fix=f"use fewer than {ctx}")
    out = fit_prompt(ids, budget, arch, use.tokenizer.eos_token_id)
    return out, len(out) < len(ids)


def row_to_text(row: dict, lineno: int, file: str) -> str:
    """A --raw input line: {prompt} or {text}, continued as it is."""
    if not isinstance(row, dict):
        raise DataError(f"line {lineno}: expected a JSON object, got {type(row).__name__}", file=file,
                        fix="write one JSON object per line, e.g. {\"prompt\": \"Once upon a time\"}")
    key = next((k for k in ("prompt", "text") if k in row), None)
    if key is None or not isinstance(row[key], str):
        got = f"{key!r} is {type(row[key]).__name__}" if key else f"fields {sorted(row)}"
        raise DataError(f"line {lineno}: --raw continues a 'prompt' or 'text' string; got {got}", file=file,
                        field="--raw", fix="write {\"prompt\": \"...\"} per line, or drop --raw for instructions")
    return _valid_unicode(row[key], lineno, file)


def row_to_messages(row: dict, lineno: int, file: str, form: str = "nfc") -> list[dict]:
    """An input line: {instruction[, input]}, {prompt}, or {messages: [...]} (ending with a user turn)."""
    if not isinstance(row, dict):
        raise DataError(f"line {lineno}: expected a JSON object, got {type(row).__name__}", file=file,
                        fix="write one JSON object per line, e.g. {\"instruction\": \"...\"}")
    if isinstance(row.get("messages"), list) or isinstance(row.get("conversations"), list):
        fmt = "messages" if "messages" in row else "sharegpt"
        try:
            msgs = formats.FORMATS[fmt].convert(row, {})[0]
        except formats.BadRow as e:
            raise DataError(f"line {lineno}: {e}", file=file,
                            fix="use roles system, user, assistant or tool with string content") from None
    elif "instruction" in row:
        msgs = [{"role": "user", "content": _input_text(row, "instruction", lineno, file),
                 "input": _input_text(row, "input", lineno, file, optional=True)}]
    elif "prompt" in row:
        msgs = [{"role": "user", "content": _input_text(row, "prompt", lineno, file)}]
    else:
        raise DataError(f"line {lineno}: expected 'instruction', 'prompt' or 'messages'; got {sorted(row)}",
                        file=file, fix="write one JSON object per line, e.g. {\"instruction\": \"...\"}")
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise DataError(f"line {lineno}: no user message to answer", file=file)
    for m in msgs:
        _valid_unicode(m["content"], lineno, file)
        m["content"] = normalise_text(m["content"], form)
    return msgs


def _input_text(row: dict, key: str, lineno: int, file: str, *, optional: bool = False) -> str:
    """A text field of an input line: a string (a number is written out); null or any other type is refused."""
    value = row.get(key)
    if value is None and optional:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        got = "null" if value is None else type(value).__name__
        raise DataError(f"line {lineno}: '{key}' is {got}, expected text", file=file, field="--input",
                        fix=f"give every line a string '{key}'")
    return _valid_unicode(value, lineno, file)


def _valid_unicode(text: str, lineno: int, file: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"line {lineno}: text is not valid Unicode (lone surrogate at character {e.start})",
                        file=file, field="--input", fix="remove the \\ud8xx-\\udfxx escape from that line") from None
    return text


def _read_inputs(path: str) -> list[dict]:
    if path == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        if os.path.isdir(path):
            raise DataError("input is a directory", file=path, field="--input", fix="pass a .jsonl file")
        with open(path, "rb") as fh:
            raw = fh.read()
    return parse_jsonl(raw, file=path, field="--input", error=DataError)


def read_tools(path: str | None) -> list[dict] | None:
    """--tools FILE: a JSON list of function specs (OpenAI / JSON-schema form), for every input row."""
    if path is None:
        return None
    if not os.path.isfile(path):
        raise DataError("tools file not found", file=path, field="--tools", fix="pass a .json file with a list of "
                        "function specs")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return formats.tools_of({"tools": fh.read()}, {})
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte offset {e.start})", file=path, field="--tools") from None
    except formats.BadRow as e:
        raise DataError(str(e), file=path, field="--tools",
                        fix='write a JSON list such as [{"type": "function", "function": {"name": ..., '
                            '"parameters": {...}}}]') from None


def row_tools(row: dict, lineno: int, file: str, default: list[dict] | None) -> list[dict] | None:
    """An input line's own `tools` (a list or a JSON string), else --tools."""
    if not isinstance(row, dict) or row.get("tools") in (None, "", []):
        return default
    try:
        return formats.tools_of(row, {})
    except formats.BadRow as e:
        raise DataError(f"line {lineno}: {e}", file=file, field="--input",
                        fix="give 'tools' as a JSON list of function specs") from None


def generate_rows(model_dir: str, input_path: str, out_path: str, gen_overrides: dict,
                  batch_size: int | None = None, *, raw: bool = False, num_return_sequences: int = 1,
                  seed: int | None = None, tools_path: str | None = None) -> tuple[list[dict], int]:
    """Each input row with its `prediction` (and `predictions`, all of them, when num_return_sequences > 1), the
    `reasoning` and `tool_calls` parsed out of it where the model wrote them, and how many prompts were
    left-truncated to fit the context. Tools: each row's `tools`, else those of `tools_path`."""
    if input_path != "-" and not os.path.exists(input_path):
        raise DataError("input file not found", file=input_path, field="--input")
    if out_path != "-" and os.path.isdir(out_path):
        raise DataError("--out is a directory", file=out_path, field="--out", fix="pass a file path, e.g. preds.jsonl")
    if batch_size is not None and batch_size < 1:
        raise RecipeError(f"--batch-size must be at least 1 (got {batch_size})", field="--batch-size")
    rows = _read_inputs(input_path)
    tools = read_tools(tools_path)
    use = load_use(model_dir, raw=raw)
    gen = generation_settings(use.recipe, gen_overrides)
    check_return_sequences(gen, num_return_sequences)
    if raw:
        records = [{"text": row_to_text(r, i + 1, input_path)} for i, r in enumerate(rows)]
    else:
        records = [{"messages": row_to_messages(r, i + 1, input_path, use.recipe.data.clean.normalize), "task": "",
                    "source": "", **({"tools": t} if (t := row_tools(r, i + 1, input_path, tools)) else {})}
                   for i, r in enumerate(rows)]
    fitted = [_fit(p, use, gen) for p in use.encode(records)]
    cut = sum(c for _, c in fitted)
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    with use.autocast():
        preds = generate_batched(use.model, use.tokenizer, [p for p, _ in fitted], arch=use.arch, gen=gen,
                                 batch_size=batch_size or use.recipe.eval.batch_size, stops=use.stops,
                                 num_return_sequences=num_return_sequences, strip=not raw, keep_raw=not raw)
    if raw:
        structured = [{"prediction": p} if num_return_sequences == 1 else {"prediction": p[0], "predictions": p}
                      for p in preds]
    else:
        from .toolcalls import structure_answer

        structured = [structure_answer(p) if num_return_sequences == 1 else
                      {**structure_answer(p[0]), "predictions": [structure_answer(x)["prediction"] for x in p]}
                      for p in preds]
    return [{**row, **st} for row, st in zip(rows, structured)], cut


def check_return_sequences(gen: GenerationConfig, n: int) -> None:
    if n < 1:
        raise RecipeError(f"got {n}, expected at least 1", field="--num-return-sequences")
    if n > 1 and not gen.do_sample and gen.num_beams < n:
        raise RecipeError(f"{n} answers per prompt need sampling or as many beams", field="--num-return-sequences",
                          fix=f"add --do-sample (with --temperature), or --num-beams {n}")


def answer(use: Use, messages: list[dict], gen, streamer=None, tools: list[dict] | None = None,
           keep_raw: bool = False) -> tuple:
    """The model's reply to a conversation in its prompt format (with `use.raw`, the continuation of the last
    message's text), and whether the prompt was left-truncated to fit the context. `streamer`: a transformers
    streamer that shows tokens as they come."""
    import torch

    from .evaluation.generate import cut_at_stop, generation_kwargs

    stops = use.stops
    record = {"text": messages[-1]["content"]} if use.raw else {"messages": messages, "task": "", "source": "",
                                                                **({"tools": tools} if tools else {})}
    ids, cut = _fit(use.encode([record])[0], use, gen)
    device = next(use.model.parameters()).device
    inp = torch.tensor([ids], device=device)
    with torch.no_grad(), use.autocast():
        out = use.model.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                                 pad_token_id=use.tokenizer.pad_token_id, eos_token_id=use.format.stop_ids,
                                 streamer=streamer, **generation_kwargs(gen))
    new = path_of(use.arch).new_tokens(out[0], inp.shape[1])
    text = cut_at_stop(use.tokenizer.decode(new, skip_special_tokens=True), stops, strip=not use.raw)
    if keep_raw:  # (text, text with special tokens): tool calls and reasoning may be written in special tokens
        from .evaluation.generate import decode_raw

        text = (text, decode_raw(use.tokenizer, new.tolist(), use.format.stop_ids, stops))
    return text, bool(cut)
