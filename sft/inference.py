"""`sft generate` and `sft chat`: use a trained model with the run's own template and special tokens.

Prompts go through the same rendering and tokenisation as training (`encode_prompts`), so the text a
model sees at inference is byte-identical to what it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from .data import formats
from .data.clean import normalise_text
from .data.pipeline import encode_prompts
from .data.templates import get_template
from .errors import DataError, RecipeError
from .evaluation.generate import generate_batched
from .recipe import GenerationConfig, Recipe, load_recipe
from . import rundir


def run_recipe(model_dir: str) -> Recipe:
    path = os.path.join(model_dir, rundir.RECIPE)
    if os.path.exists(path):
        return load_recipe(path)
    from .recipe import recipe_from_dict

    return recipe_from_dict({"data": {"sources": [{"path": "builtin:synthetic"}]}}, path=path)


def generation_settings(recipe: Recipe, overrides: dict) -> GenerationConfig:
    """The run's decoding settings with command-line overrides, range-checked like the recipe."""
    from .recipe import _check_range

    fields = {f.name: f for f in dataclasses.fields(GenerationConfig)}
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        try:
            _check_range(value, fields[key].metadata, flag, "command line")
        except RecipeError as e:
            raise RecipeError(e.message, field=flag, fix=e.fix) from None
    gen = dataclasses.replace(recipe.eval.generation, **overrides)
    if gen.do_sample and gen.temperature <= 0:
        raise RecipeError("sampling needs a temperature > 0", field="--temperature", fix="e.g. --temperature 0.7")
    return gen


def _fit(ids: list[int], model, arch: str, gen: GenerationConfig, eos: int | None) -> tuple[list[int], bool]:
    """Left-truncate a prompt so it and max_new_tokens fit the model's context (as evaluation does)."""
    from .evaluation.generate import fit_prompt
    from .modeling import context_length

    ctx = context_length(model.config)
    if ctx is None:
        return ids, False
    budget = ctx - gen.max_new_tokens if arch == "causal" else ctx
    if budget < 1:
        raise RecipeError(f"max_new_tokens={gen.max_new_tokens} leaves no room for a prompt in the model's "
                          f"{ctx}-token context", field="--max-new-tokens", fix=f"use fewer than {ctx}")
    out = fit_prompt(ids, budget, arch, eos)
    return out, len(out) < len(ids)


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
        msgs = [{"role": "user", "content": str(row["instruction"]), "input": str(row.get("input") or "")}]
    elif "prompt" in row:
        msgs = [{"role": "user", "content": str(row["prompt"])}]
    else:
        raise DataError(f"line {lineno}: expected 'instruction', 'prompt' or 'messages'; got {sorted(row)}",
                        file=file, fix="write one JSON object per line, e.g. {\"instruction\": \"...\"}")
    if msgs and msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise DataError(f"line {lineno}: no user message to answer", file=file)
    for m in msgs:
        m["content"] = normalise_text(m["content"], form)
    return msgs


def _read_inputs(path: str) -> list[dict]:
    if path == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    else:
        if os.path.isdir(path):
            raise DataError("input is a directory", file=path, field="--input", fix="pass a .jsonl file")
        with open(path, "rb") as fh:
            raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})", file=path, field="--input",
                        fix="re-encode the file as UTF-8, e.g. iconv -t UTF-8") from e
    rows = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"line {lineno}: invalid JSON ({e.msg})", file=path, field="--input") from e
    return rows


def generate_rows(model_dir: str, input_path: str, out_path: str, gen_overrides: dict,
                  batch_size: int | None = None) -> tuple[list[dict], int]:
    """Each input row with its `prediction`, and how many prompts were left-truncated to fit the context."""
    from .modeling import load_for_inference

    if input_path != "-" and not os.path.exists(input_path):
        raise DataError("input file not found", file=input_path, field="--input")
    if out_path != "-" and os.path.isdir(out_path):
        raise DataError("--out is a directory", file=out_path, field="--out", fix="pass a file path, e.g. preds.jsonl")
    if batch_size is not None and batch_size < 1:
        raise RecipeError(f"--batch-size must be at least 1 (got {batch_size})", field="--batch-size")
    recipe = run_recipe(model_dir)
    gen = generation_settings(recipe, gen_overrides)
    rows = _read_inputs(input_path)
    records = [{"messages": row_to_messages(r, i + 1, input_path, recipe.data.clean.normalize), "task": "",
                "source": ""} for i, r in enumerate(rows)]
    model, tokenizer, arch = load_for_inference(model_dir)
    prompts = encode_prompts(records, tokenizer, recipe.data.template, arch=arch, system=recipe.data.system_prompt)
    fitted = [_fit(p, model, arch, gen, tokenizer.eos_token_id) for p in prompts]
    cut = sum(c for _, c in fitted)
    stops = tuple(get_template(recipe.data.template, tokenizer).stop)
    preds = generate_batched(model, tokenizer, [p for p, _ in fitted], arch=arch, gen=gen,
                             batch_size=batch_size or recipe.eval.batch_size, stops=stops)
    return [{**row, "prediction": p} for row, p in zip(rows, preds)], cut


def answer(model, tokenizer, arch, recipe, messages, gen, streamer=None) -> tuple[str, bool]:
    """The model's reply to a conversation in the run's template, and whether the conversation was
    left-truncated to fit the context. `streamer`: a transformers streamer that shows tokens as they come."""
    import torch

    from .evaluation.generate import cut_at_stop, generation_kwargs, stop_token_ids

    stops = tuple(get_template(recipe.data.template, tokenizer).stop)
    ids = encode_prompts([{"messages": messages, "task": "", "source": ""}], tokenizer, recipe.data.template,
                         arch=arch, system=recipe.data.system_prompt)[0]
    ids, cut = _fit(ids, model, arch, gen, tokenizer.eos_token_id)
    device = next(model.parameters()).device
    inp = torch.tensor([ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=torch.ones_like(inp), pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_token_ids(tokenizer, stops), streamer=streamer,
                             **generation_kwargs(gen))
    new = out[0, inp.shape[1]:] if arch == "causal" else out[0]
    return cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), stops), bool(cut)


def template_stops(recipe, tokenizer) -> tuple[str, ...]:
    return tuple(get_template(recipe.data.template, tokenizer).stop)
