"""Evaluation: the before/after scoring inside `sft train`, `sft eval` and `sft score`.

metrics.json schema (version "sft.metrics/v1"):
    schema, model {name, arch, adapter, path}, recipe_hash, split,
    num_samples (items scored: distinct prompts when references are grouped), num_examples (eval rows),
    not_scored {reason: count}, truncated {reason: count},
    metrics {perplexity, bleu, rouge1, rouge2, rougeL, rougeLsum, exact_match, ...}  (only those asked for),
    per_task {TASK: {num_samples, <same metrics>}},
    before {metrics, per_task, num_samples}  (when the base model was scored),
    train {train_loss, global_step, train_runtime_s, tokens_per_second, trainable_params, ...}  (after sft train)
BLEU is 0-100 (sacrebleu); ROUGE F1 and exact match are 0-1 means; perplexity is over final-answer tokens.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from .. import rundir
from ..data import fingerprint
from ..data.encode import PromptFormat, encode, encode_prompts, final_answer, prompt_text
from ..data.pipeline import split_corpus
from ..data.split import record_id
from ..distributed import gather, rank_world, shard
from ..errors import EvalError
from ..families import path_of
from ..io import read_json, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..recipe import Recipe, load_recipe
from ..toolcalls import structure_answer
from .generate import fit_prompt, generate_batched
from ..metrics import METRICS, decide_tokenize, score_texts
from .perplexity import perplexity, token_nll
from .score import metric_options

SCHEMA = "sft.metrics/v1"


def group_items(records: list[dict], template: str, system: str | None, group: bool, tokenizer=None,
                rejected: Counter | None = None) -> list[dict]:
    """Eval items: records whose rendered prompt is identical become one item with all their references (not
    documents: they have no prompt, each is an item of its own). A conversation the chat template refuses is left
    out (counted in `rejected`)."""
    from ..data.templates import TemplateRejected

    items: dict[str, dict] = {}
    out = []
    for r in records:
        try:
            prompt = prompt_text(r, template, system, tokenizer)
        except TemplateRejected as e:
            if rejected is not None:
                rejected[e.reason] += 1
            continue
        key = prompt if group and not r.get("document") else f"{len(out)}\x00{prompt}"  # a document is its own item
        if key not in items:
            items[key] = {"task": r["task"], "prompt": prompt, "records": [], "references": []}
            out.append(items[key])
        items[key]["records"].append(r)
        items[key]["references"].append(final_answer(r))
    return out


def _prompt_messages(record: dict) -> list[dict]:
    msgs = record["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return [{k: v for k, v in m.items() if k in ("role", "content", "input")} for m in msgs[:last]]


def _fit_feature(feat: dict, keep_prompt: int, ctx: int | None, arch: str, eos: int, counts: Counter) -> dict:
    """Left-truncate the prompt part of a perplexity feature exactly like the generation prompt; an answer
    that alone exceeds the context is cut at its end (counted)."""
    if path_of(arch).encoder_decoder:
        ids, labels = feat["input_ids"], feat["labels"]
        if ctx and len(ids) > ctx:
            ids = ids[-ctx:]
        if ctx and len(labels) > ctx:
            labels = labels[: ctx - 1] + [eos]
            counts["answer cut to fit the model context"] += 1
        return {**feat, "input_ids": ids, "labels": labels}
    ids, labels = feat["input_ids"], feat["labels"]
    start = next((i for i, x in enumerate(labels) if x != -100), len(labels))
    prompt, answer, answer_labels = ids[:start], ids[start:], labels[start:]
    if ctx and len(answer) > ctx - 1:
        answer, answer_labels = answer[: ctx - 1], answer_labels[: ctx - 1]
        counts["answer cut to fit the model context"] += 1
    keep = min(len(prompt), keep_prompt, (ctx - len(answer)) if ctx else len(prompt))
    prompt = prompt[len(prompt) - keep:]
    return {**feat, "input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer_labels}


@dataclass
class EvalSet:
    """Eval items ready to score: generation prompts and perplexity features fitted to the model context."""

    items: list[dict]  # task, prompt, records, references
    prompts: list[list[int]]  # one generation prompt per item
    features: list[dict]  # perplexity features, one per scored record
    feature_item: list[int]  # the item of each feature
    not_scored: Counter = field(default_factory=Counter)
    truncated: Counter = field(default_factory=Counter)


def build_eval_set(model_config, tokenizer, arch: str, records: list[dict], recipe: Recipe, *,
                   max_items: int | None = None, features: bool = True) -> EvalSet:
    """Group references, fit prompts and features to the context (left-truncating prompts, counted)."""
    from ..modeling import context_length

    e, d = recipe.eval, recipe.data
    rejected: Counter = Counter()
    items = group_items(records, d.template, d.system_prompt, e.group_references, tokenizer, rejected)
    if not items:
        raise EvalError(f"no eval example can be prompted ({dict(rejected) or 'none left'})", field="data.template",
                        fix="use a template that accepts these conversations")
    if max_items is not None:
        items = items[:max_items]
    ctx = context_length(model_config)
    budget = None
    if ctx is not None:
        budget = path_of(arch).prompt_budget(ctx, e.generation.max_new_tokens)
        if budget < 1:
            raise EvalError(f"max_new_tokens={e.generation.max_new_tokens} leaves no room for a prompt in the "
                            f"model's {ctx}-token context", field="eval.generation.max_new_tokens",
                            fix=f"use fewer than {ctx} new tokens")
    es = EvalSet(items, [], [], [])
    es.not_scored.update(rejected)
    prompts = encode_prompts([it["records"][0] for it in items], tokenizer, d.template, arch=arch,
                             system=d.system_prompt)
    for p in prompts:
        q = fit_prompt(p, budget, arch, tokenizer.eos_token_id)
        if len(q) < len(p):
            es.truncated["prompt left-truncated to fit the model context"] += 1
        es.prompts.append(q)
    if features:
        recs = [r for it in items for r in it["records"]]
        item_of = {id(r): k for k, it in enumerate(items) for r in it["records"]}
        # documents are scored in the windows they train in (no longer than the model context)
        enc = encode(recs, tokenizer, d.template, arch=arch, max_length=10 ** 9, overlong="trim",
                     system=d.system_prompt, final_only=True, text_stride=d.text_stride, seed=d.seed,
                     window=min(d.max_length, ctx) if ctx else d.max_length)
        es.not_scored.update(enc.report.dropped)
        for f, r in zip(enc.features, enc.records):
            k = item_of[id(r)]
            es.features.append(f if r.get("document") else _fit_feature(
                f, path_of(arch).answer_start(len(es.prompts[k])), ctx, arch, tokenizer.eos_token_id,
                es.truncated))
            es.feature_item.append(k)
    return es


def sharded_nll(model, es: EvalSet, *, arch: str, pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """(NLL, token count) per feature; every rank scores its shard and all get the whole list."""
    idx = shard(len(es.features))
    local = token_nll(model, [es.features[i] for i in idx], arch=arch, pad_id=pad_id, batch_size=batch_size)
    return gather(idx, local, len(es.features))


def sharded_generate(model, tokenizer, es: EvalSet, *, arch: str, gen, batch_size: int, stops: tuple,
                     progress: bool = False, keep_raw: bool = False) -> list:
    """Generated answers per item; every rank generates its shard (kept in step under several ranks)."""
    idx = shard(len(es.prompts))
    synced = rank_world()[1] > 1
    local = generate_batched(model, tokenizer, [es.prompts[i] for i in idx], arch=arch, gen=gen,
                             batch_size=batch_size, stops=stops, progress=progress and not synced,
                             synced_gpus=synced, keep_raw=keep_raw)
    return gather(idx, local, len(es.prompts))


def evaluate_model(model, tokenizer, arch: str, records: list[dict], recipe: Recipe, *, label: str = "",
                   progress: bool = True, precision=None) -> dict:
    """Score `records` with the recipe's metrics. Every rank of a distributed run must call it (each scores a
    shard); every rank gets the result. `precision`: the run's decision (RunContext.precision), which a GPU
    evaluation computes in; None computes in the weights' dtype. Returns {"metrics": {...}, "predictions": [...]}."""
    if not records:
        raise EvalError("the eval split is empty", field="data.eval_ratio",
                        fix="set data.eval_ratio > 0 or add data.eval_sources")
    e = recipe.eval
    metrics_wanted = list(e.metrics)
    was_training = model.training
    model.eval()
    es = build_eval_set(model.config, tokenizer, arch, records, recipe, max_items=e.max_samples,
                        features="perplexity" in metrics_wanted)
    items = es.items
    rows = [{"task": it["task"], "prompt": it["prompt"], "messages": _prompt_messages(it["records"][0]),
             "references": it["references"]} for it in items]
    with autocast(model, precision):
        return _evaluate(model, tokenizer, arch, recipe, es, rows, metrics_wanted, was_training, label, progress)


def note_lines(metrics: dict) -> list[str]:
    """One line per eval example not scored or truncated, for the caller to show."""
    return [f"note: {n} eval example(s): {reason}"
            for reason, n in {**metrics.get("not_scored", {}), **metrics.get("truncated", {})}.items()]


def autocast(model, p):
    """On a GPU, evaluation computes in the run's mixed precision (sft/precision.py), as training did, instead
    of in the fp32 master weights; on CPU (and with precision no) nothing changes."""
    import contextlib

    import torch

    device = next(model.parameters()).device
    if device.type != "cuda" or p is None:
        return contextlib.nullcontext()
    if p.mode == "no":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=p.compute_dtype)


def _evaluate(model, tokenizer, arch, recipe, es, rows, metrics_wanted, was_training, label, progress) -> dict:
    e = recipe.eval
    items = es.items
    overall: dict = {}
    if "perplexity" in metrics_wanted:
        nlls = sharded_nll(model, es, arch=arch, pad_id=tokenizer.pad_token_id, batch_size=e.batch_size)
        overall["perplexity"] = perplexity(nlls)
        sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0])
        for k, (nll, cnt) in zip(es.feature_item, nlls):
            sums[k][0] += nll
            sums[k][1] += cnt
        for k, row in enumerate(rows):
            row["nll"], row["answer_tokens"] = sums[k][0], sums[k][1]
    text_metrics = [m for m in metrics_wanted if m.startswith("evaluate:") or METRICS[m].kind == "text"]
    if text_metrics:
        generated = sharded_generate(model, tokenizer, es, arch=arch, gen=e.generation, batch_size=e.batch_size,
                                     stops=PromptFormat(recipe, tokenizer, arch).stops, progress=progress,
                                     keep_raw=True)
        structured = [structure_answer(t) for t in generated]  # reasoning is not scored: the answer after it is
        preds = [s["prediction"] for s in structured]
        tokenize = decide_tokenize([it["references"] for it in items], e.tokenize)  # once for the whole set
        options = metric_options(text_metrics, recipe.eval.sql_database, file=recipe.path)
        corpus, per_sample = score_texts(preds, [it["references"] for it in items], text_metrics, tokenize, options)
        overall.update(corpus)
        for row, st, s in zip(rows, structured, per_sample):
            row.update(st)
            row["scores"] = s
    per_task = {}
    by_task = defaultdict(list)
    for i, r in enumerate(rows):
        by_task[r["task"]].append(i)
    for task, idx in sorted(by_task.items()):
        trows = [rows[i] for i in idx]
        t: dict = {"num_samples": len(idx)}
        if "perplexity" in overall:
            t["perplexity"] = perplexity([(r["nll"], r["answer_tokens"]) for r in trows])
        if text_metrics:
            corpus_t, _ = score_texts([r["prediction"] for r in trows], [r["references"] for r in trows],
                                      [m for m in text_metrics if not m.startswith("evaluate:")], tokenize, options)
            t.update(corpus_t)
        per_task[task] = t
    if was_training:
        model.train()
    return {"label": label, "arch": arch,
            "metrics": {"num_samples": len(items), "num_examples": sum(len(it["records"]) for it in items),
                        "not_scored": dict(es.not_scored), "truncated": dict(es.truncated), "metrics": overall,
                        **({"tokenize": tokenize} if text_metrics else {}),
                        "per_task": per_task},
            "predictions": rows}


def _model_info(recipe: Recipe, arch: str, path: str | None, adapter: bool) -> dict:
    return {"name": recipe.model.name, "init": recipe.model.init, "arch": arch, "adapter": adapter, "path": path}


def write_eval_outputs(out: str, recipe: Recipe, result: dict, *, before: dict | None = None,
                       train_summary: dict | None = None, split: str = "eval", model_path: str | None = None) -> dict:
    """metrics.json, predictions.jsonl, eval_report.md and report.html, each written atomically."""
    from .report import render_eval_report, write_html_report

    metrics = {
        "schema": SCHEMA,
        "model": _model_info(recipe, result["arch"], model_path or out, recipe.lora.enabled),
        "recipe_hash": recipe.fingerprint(),
        "split": split,
        **result["metrics"],
    }
    if before is not None:
        metrics["before"] = before["metrics"]
    if train_summary is not None:
        metrics["train"] = {k: v for k, v in train_summary.items() if k != "data"}
    os.makedirs(out, exist_ok=True)
    write_json_atomic(os.path.join(out, rundir.METRICS), metrics)
    preds = result["predictions"]
    if before is not None and before.get("predictions"):
        for row, b in zip(preds, before["predictions"]):
            if "prediction" in b:
                row["before_prediction"] = b["prediction"]
    write_jsonl_atomic(os.path.join(out, rundir.PREDICTIONS), preds)
    write_text_atomic(os.path.join(out, rundir.EVAL_REPORT), render_eval_report(metrics))
    write_html_report(os.path.join(out, rundir.REPORT_HTML), metrics, preds,
                      train_log=os.path.join(out, rundir.TRAIN_LOG))
    return metrics


def recipe_splits(recipe: Recipe, split: str = "eval", *, with_train: bool = True):
    """The recipe's splits as evaluation reads them. A streaming recipe's eval set is chosen from the stream, as
    its training run chose it, without reading the corpus through (its 'train' is then the first training
    records, what a tokenizer built from the data learns from); other splits come from the prepared path."""
    d = recipe.data
    if d.streaming and split in ("eval", "validation"):
        from ..data.stream import open_corpus

        corpus = open_corpus(d, recipe.path)
        return corpus.splits(corpus.tokenizer_sample() if with_train else [])
    return split_corpus(d, recipe_file=recipe.path).splits(with_train=with_train)


def saved_split(target: str, recipe: Recipe, split: str) -> list[dict]:
    """The exact eval/test examples a run held out (by id), from today's data; an error if they are gone."""
    splits = recipe_splits(recipe, split)
    path = os.path.join(target, rundir.FINGERPRINT)
    if split == "train" or not os.path.exists(path):
        return splits.split(split)
    saved = read_json(path)
    ids = saved.get("eval_ids" if split in ("eval", "validation") else "test_ids", [])
    pool = {record_id(r): r for r in splits.train + splits.eval + splits.test}
    missing = [i for i in ids if i not in pool]
    if missing:
        now = fingerprint.sources_fingerprint(recipe.data)
        changes = fingerprint.data_changes({k: saved.get(k, []) for k in now}, now)
        raise EvalError(f"the data changed since training: {len(missing)} of the run's {len(ids)} {split} examples "
                        f"are no longer in the sources" + (f" ({'; '.join(changes)})" if changes else ""),
                        file=target, field="data.sources",
                        fix="restore the training data, or score a recipe (not the output folder) on the new data")
    return [pool[i] for i in ids]


def evaluate_target(target: str, overrides: list[str], *, split: str = "eval", max_samples: int | None = None,
                 out: str | None = None, harness: list[str] | None = None,
                 harness_limit: int | None = None) -> tuple[str, dict]:
    """Score a recipe's base model (target = recipe file) or a training output directory; with `harness`, also
    run those lm-evaluation-harness tasks on the same model and merge them into metrics.json."""
    from ..context import RunContext
    from ..modeling import load_for_inference, load_model
    from ..tokenizer import builds_tokenizer, get_tokenizer

    if max_samples is not None and max_samples < 1:
        raise EvalError(f"--max-samples must be at least 1 (got {max_samples})", field="--max-samples")
    if split not in ("eval", "validation", "test", "train"):
        raise EvalError(f"unknown split {split!r}", field="--split", fix="use eval, test or train")
    if out is not None and os.path.realpath(out) != os.path.realpath(target):
        rundir.claim(out, kind="eval", field="--out", error=EvalError)  # the one rule for folders sft writes
    if os.path.isdir(target):
        recipe_path = os.path.join(target, rundir.RECIPE)
        if not os.path.exists(recipe_path):
            raise EvalError("not a training output directory (no recipe.yaml)", file=target,
                            fix="pass a recipe file or an sft train output_dir")
        recipe = load_recipe(recipe_path, overrides)
        records = saved_split(target, recipe, split)
        model, tokenizer, arch = load_for_inference(target)
        run = RunContext.build(recipe, config=model.config, check=False)
        out = out or target
        model_path = target
    else:
        recipe = load_recipe(target, overrides)
        splits = recipe_splits(recipe, split, with_train=split == "train" or builds_tokenizer(recipe))
        records = splits.split(split)
        run = RunContext.build(recipe, check=False)
        arch = run.arch
        tokenizer = get_tokenizer(recipe, splits.train, arch)
        model = load_model(recipe, tokenizer, arch, precision=run.precision, config=run.config)
        out = out or os.path.join(recipe.train.output_dir, "eval-base")
        model_path = recipe.model.name
    if max_samples is not None:
        recipe.eval.max_samples = max_samples
    if not records:
        raise EvalError(f"the {split} split is empty", file=recipe.path,
                        field="data.test_ratio" if split == "test" else "data.eval_ratio",
                        fix="give that split a ratio > 0 or add data.eval_sources")
    planned = None
    if harness:  # the package, task files and names checked before anything is scored
        from .harness import plan

        planned = plan(harness)
    result = evaluate_model(model, tokenizer, arch, records, recipe, label=split, precision=run.precision)
    if planned:
        from .harness import run_harness

        result["metrics"]["harness"] = run_harness(model, tokenizer, arch, planned, batch_size=recipe.eval.batch_size,
                                                   limit=harness_limit)
    return out, write_eval_outputs(out, recipe, result, split=split, model_path=model_path)
