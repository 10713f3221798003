"""`sft eval` and the before/after evaluation inside `sft train`.

metrics.json schema (version "sft.metrics/v1"):
    schema, model {name, arch, adapter, path}, recipe_hash, split, num_samples,
    not_scored {reason: count}  (eval examples that could not be scored, e.g. prompt fills max_length),
    metrics {perplexity, bleu, rouge1, rouge2, rougeL, rougeLsum, exact_match}  (only those asked for),
    per_task {TASK: {num_samples, <same metrics>}},
    before {metrics, per_task, num_samples}  (when the base model was scored),
    train {train_loss, global_step, train_runtime_s, tokens_per_second, trainable_params, ...}  (after sft train)
BLEU is 0-100 (sacrebleu); ROUGE F1 and exact match are 0-1 means; perplexity is over answer tokens.
"""

from __future__ import annotations

import os
from collections import defaultdict

from ..data.pipeline import encode, encode_prompts, final_answer, load_splits, prompt_text
from ..data.templates import get_template
from ..errors import EvalError
from ..io import write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..recipe import Recipe, load_recipe
from .generate import generate_batched
from .metrics import score_texts
from .perplexity import perplexity, token_nll

SCHEMA = "sft.metrics/v1"


def evaluate_model(model, tokenizer, arch: str, records: list[dict], recipe: Recipe, *, label: str = "",
                   progress: bool = True) -> dict:
    """Score `records` with the recipe's metrics. Returns {"metrics": {...}, "predictions": [...]}."""
    if not records:
        raise EvalError("the eval split is empty", field="data.eval_ratio",
                        fix="set data.eval_ratio > 0 or add data.eval_sources")
    e, d = recipe.eval, recipe.data
    if e.max_samples is not None:
        records = records[: e.max_samples]
    was_training = model.training
    model.eval()
    enc = encode(records, tokenizer, d.template, arch=arch, max_length=d.max_length, overlong="trim",
                 system=d.system_prompt)
    if enc.report.total_dropped:
        print(f"[sft] warning: {enc.report.total_dropped} eval example(s) not scored: "
              f"{dict(enc.report.dropped)}", flush=True)
    records = enc.records
    refs = [final_answer(r) for r in records]
    metrics_wanted = list(e.metrics)
    preds_rows = [{"task": r["task"], "prompt": prompt_text(r, d.template, d.system_prompt), "reference": ref}
                  for r, ref in zip(records, refs)]
    overall: dict = {}
    if "perplexity" in metrics_wanted:
        nlls = token_nll(model, enc.features, arch=arch, pad_id=tokenizer.pad_token_id, batch_size=e.batch_size)
        overall["perplexity"] = perplexity(nlls)
        for row, (nll, cnt) in zip(preds_rows, nlls):
            row["nll"], row["answer_tokens"] = nll, cnt
    text_metrics = [m for m in metrics_wanted if m != "perplexity"]
    if text_metrics:
        prompts = encode_prompts(records, tokenizer, d.template, arch=arch, system=d.system_prompt)
        stops = tuple(get_template(d.template).stop)
        preds = generate_batched(model, tokenizer, prompts, arch=arch, gen=e.generation, batch_size=e.batch_size,
                                 stops=stops, progress=progress)
        corpus, per_sample = score_texts(preds, refs, text_metrics)
        overall.update(corpus)
        for row, p, s in zip(preds_rows, preds, per_sample):
            row["prediction"] = p
            row["scores"] = s
    per_task = {}
    by_task = defaultdict(list)
    for i, r in enumerate(preds_rows):
        by_task[r["task"]].append(i)
    for task, idx in sorted(by_task.items()):
        rows = [preds_rows[i] for i in idx]
        t: dict = {"num_samples": len(idx)}
        if "perplexity" in overall:
            t["perplexity"] = perplexity([(r["nll"], r["answer_tokens"]) for r in rows])
        if text_metrics:
            corpus_t, _ = score_texts([r["prediction"] for r in rows], [r["reference"] for r in rows],
                                      [m for m in text_metrics if not m.startswith("evaluate:")])
            t.update(corpus_t)
        per_task[task] = t
    if was_training:
        model.train()
    return {"label": label, "arch": arch, "metrics": {"num_samples": len(records), "not_scored": dict(enc.report.dropped),
                                                   "metrics": overall, "per_task": per_task},
            "predictions": preds_rows}


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
    write_json_atomic(os.path.join(out, "metrics.json"), metrics)
    preds = result["predictions"]
    if before is not None and before.get("predictions"):
        for row, b in zip(preds, before["predictions"]):
            if "prediction" in b:
                row["before_prediction"] = b["prediction"]
    write_jsonl_atomic(os.path.join(out, "predictions.jsonl"), preds)
    write_text_atomic(os.path.join(out, "eval_report.md"), render_eval_report(metrics))
    write_html_report(os.path.join(out, "report.html"), metrics, preds,
                      train_log=os.path.join(out, "train_log.jsonl"))
    return metrics


def eval_command(target: str, overrides: list[str], *, split: str = "eval", max_samples: int | None = None,
                 out: str | None = None) -> dict:
    """Score a recipe's base model (target = recipe file) or a training output directory."""
    from ..modeling import get_tokenizer, load_for_inference, load_model, resolve_arch

    if os.path.isdir(target):
        recipe_path = os.path.join(target, "recipe.yaml")
        if not os.path.exists(recipe_path):
            raise EvalError("not a training output directory (no recipe.yaml)", file=target,
                            fix="pass a recipe file or an sft train output_dir")
        recipe = load_recipe(recipe_path, overrides)
        splits = load_splits(recipe.data, recipe_file=recipe.path)
        model, tokenizer, arch = load_for_inference(target)
        out = out or target
        model_path = target
    else:
        recipe = load_recipe(target, overrides)
        splits = load_splits(recipe.data, recipe_file=recipe.path)
        arch = resolve_arch(recipe.model)
        tokenizer = get_tokenizer(recipe, splits.train, arch)
        model = load_model(recipe, tokenizer, arch)
        out = out or os.path.join(recipe.train.output_dir, "eval-base")
        model_path = recipe.model.name
    if max_samples is not None:
        recipe.eval.max_samples = max_samples
    records = splits.split(split)
    if not records:
        raise EvalError(f"the {split} split is empty", file=recipe.path,
                        field="data.test_ratio" if split == "test" else "data.eval_ratio",
                        fix="give that split a ratio > 0 or add data.eval_sources")
    result = evaluate_model(model, tokenizer, arch, records, recipe, label=split)
    metrics = write_eval_outputs(out, recipe, result, split=split, model_path=model_path)
    from .report import metrics_table

    print(metrics_table(metrics))
    print(f"[sft] wrote {out}/metrics.json, predictions.jsonl, eval_report.md, report.html")
    return metrics
