"""`sft build-data SPEC.yaml --out DIR`: define tasks -> generate/collect -> clean -> balance -> split.

Spec (YAML):
    name: my-data
    seed: 0
    splits: {train: 0.8, validation: 0.1, test: 0.1}   # stratified by task
    max_words: 400                  # longer examples are dropped (counted)
    near_dup_threshold: 0.7         # ROUGE-L between prompts: generated/collected records that near-duplicate
                                    # any other record are dropped (template tasks: exact dedupe only)
    tasks:
      - builtin: synthetic          # the built-in suite is itself a template spec
        per_task: 100
      - name: capitals              # a template task: phrasings x rows, balanced to per_task
        instructions: ["What is the capital of {country}?", "Name the capital of {country}."]
        input: ""                   # optional format string
        output: "{capital}"
        rows: [{country: France, capital: Paris}, ...]
        per_task: 50
        negatives: {ratio: 0.2, rows: [{country: Atlantis}], output: "I can't answer that: ..."}
        license: CC0-1.0
      - source: data/seed_tasks.jsonl   # any file sft reads (format auto-detected), used as is
        license: Apache-2.0
    self_instruct: {seed_tasks: ..., generator: MODEL_DIR_OR_ID, num_instructions: 20, ...}

Writes DIR/{train,validation,test}.jsonl and .parquet (alpaca rows with task and source), DATACARD.md
and build_report.json. A recipe reads it with `path: DIR` (split: train | validation | test).
"""

from __future__ import annotations

import itertools
import os
import random
import string
import unicodedata
from collections import Counter, defaultdict


from ..data import synthetic
from ..errors import DataError, RecipeError
from ..io import read_yaml, safe_name, write_json_atomic, write_jsonl_atomic, write_text_atomic
from ..text import word_count
from .neardup import dedupe_near

SPEC_KEYS = {"name", "seed", "splits", "max_words", "near_dup_threshold", "tasks", "self_instruct", "description"}


def load_spec(path: str) -> dict:
    spec = read_yaml(path, "spec file") or {}
    if not isinstance(spec, dict):
        raise RecipeError("top level must be a mapping", file=path)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown)}", file=path, fix=f"use {', '.join(sorted(SPEC_KEYS))}")
    if not spec.get("tasks") and not spec.get("self_instruct"):
        raise RecipeError("nothing to build", file=path, field="tasks", fix="add tasks or self_instruct")
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    spec.setdefault("seed", 0)
    spec.setdefault("splits", {"train": 0.8, "validation": 0.1, "test": 0.1})
    spec.setdefault("max_words", 400)
    spec.setdefault("near_dup_threshold", 0.7)
    if not isinstance(spec["splits"], dict) or not spec["splits"] or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in spec["splits"].values()):
        raise RecipeError("splits must map split names to ratios between 0 and 1", file=path, field="splits",
                          fix="e.g. splits: {train: 0.8, validation: 0.1, test: 0.1}")
    for name in spec["splits"]:
        safe_name(name, file=path, field=f"splits.{name}")
    total = sum(spec["splits"].values())
    if abs(total - 1.0) > 1e-6:
        raise RecipeError(f"split ratios sum to {total}, expected 1", file=path, field="splits")
    spec["_dir"] = os.path.dirname(os.path.abspath(path))
    return spec


def _fields(fmt: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(fmt) if f}


def _check_template(fmt, field: str, file: str) -> None:
    """A phrasing / input / output template is a format string of plain {name} fields: anything else (an
    unclosed brace, a positional {0}, attribute or index access such as {x.y} or {x[0]}) is refused in one line."""
    if not isinstance(fmt, str):
        raise RecipeError(f"a template must be text, got {type(fmt).__name__}", file=file, field=field,
                          fix="quote it as a string")
    try:
        parts = list(string.Formatter().parse(fmt))
    except ValueError as e:
        raise RecipeError(f"template {fmt[:60]!r} does not format ({e})", file=file, field=field,
                          fix="write fields as {name}; a literal brace as {{ or }}") from None
    for _, f, spec, _ in parts:
        if f is None:
            continue
        if not f.isidentifier() or "{" in (spec or ""):
            raise RecipeError(f"template field {{{f}}} is not a plain name", file=file, field=field,
                              fix="use {name} fields that the rows define (no positions, '.', '[' or nested fields)")


def template_task(task: dict, rng: random.Random, file: str) -> list[dict]:
    """Phrasings x rows, sampled to exactly per_task rows (balanced), plus negatives at a ratio."""
    name = task.get("name")
    for key in ("name", "instructions", "output", "rows"):
        if not task.get(key):
            raise RecipeError(f"template task needs '{key}'", file=file, field=f"tasks.{name or '?'}.{key}")
    per_task = task.get("per_task", 100)
    negatives = task.get("negatives") or {}
    try:
        per_task = int(per_task)
        if per_task < 1 or not isinstance(negatives, dict):
            raise ValueError
        ratio = float(negatives.get("ratio", 0.0))
        if not 0 <= ratio <= 1:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RecipeError(f"per_task must be a whole number >= 1 and negatives a mapping with a ratio in [0, 1] "
                          f"(got per_task {task.get('per_task', 100)!r})", file=file, field=f"tasks.{name}") from None
    n_neg = round(per_task * ratio)
    n_pos = per_task - n_neg
    if not isinstance(task["instructions"], list):
        raise RecipeError("instructions must be a list of phrasings", file=file, field=f"tasks.{name}.instructions")
    for i, p in enumerate(task["instructions"]):
        _check_template(p, f"tasks.{name}.instructions.{i}", file)
    _check_template(task.get("input", ""), f"tasks.{name}.input", file)
    _check_template(task["output"], f"tasks.{name}.output", file)
    if not isinstance(task["rows"], list) or not all(isinstance(r, dict) for r in task["rows"]):
        raise RecipeError("rows must be a list of mappings (field: value)", file=file, field=f"tasks.{name}.rows")
    for i, row in enumerate(task["rows"]):
        missing = (set().union(*(_fields(p) for p in task["instructions"])) | _fields(task.get("input", ""))
                   | _fields(task["output"])) - set(row)
        if missing:
            raise RecipeError(f"row {i} lacks {sorted(missing)}", file=file, field=f"tasks.{name}.rows")
    combos = list(itertools.product(task["instructions"], task["rows"]))
    rng.shuffle(combos)
    picks = (combos * (n_pos // max(len(combos), 1) + 1))[:n_pos]
    out = [{"instruction": p.format(**r), "input": task.get("input", "").format(**r), "output": task["output"].format(**r),
            "task": name, "source": f"template:{name}", "_templated": True} for p, r in picks]
    if n_neg:
        rows = negatives.get("rows") or []
        if not rows or not negatives.get("output"):
            raise RecipeError("negatives need 'rows' and 'output'", file=file, field=f"tasks.{name}.negatives")
        _check_template(negatives["output"], f"tasks.{name}.negatives.output", file)
        need = set().union(*(_fields(p) for p in task["instructions"])) | _fields(task.get("input", "")) \
            | _fields(negatives["output"])
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or need - set(row):
                raise RecipeError(f"negative row {i} lacks {sorted(need - set(row)) if isinstance(row, dict) else need}",
                                  file=file, field=f"tasks.{name}.negatives.rows")
        combos = list(itertools.product(task["instructions"], rows))
        rng.shuffle(combos)
        for p, r in (combos * (n_neg // len(combos) + 1))[:n_neg]:
            out.append({"instruction": p.format(**r), "input": task.get("input", "").format(**r),
                        "output": negatives["output"].format(**r), "task": name, "source": f"negative:{name}",
                        "_templated": True})
    return out


def _source_task(task: dict, spec_dir: str) -> list[dict]:
    from ..data.pipeline import load_source
    from ..data.clean import DropReport
    from ..recipe import SourceConfig

    path = task["source"] if os.path.isabs(task["source"]) else os.path.join(spec_dir, task["source"])
    if not os.path.exists(path) and os.path.exists(task["source"]):
        path = task["source"]
    src = SourceConfig(path=path, format=task.get("format", "auto"), columns=task.get("columns", {}),
                       task=task.get("name"))
    recs = load_source(src, 0, field_prefix="tasks", seed=0, report=DropReport(), per_source={})
    out = []
    for r in recs:
        users = [m for m in r["messages"] if m["role"] == "user"]
        answer = [m for m in r["messages"] if m["role"] == "assistant"]
        if len(users) == 1 and answer:
            out.append({"instruction": users[0]["content"], "input": users[0].get("input", ""),
                        "output": answer[-1]["content"], "task": r["task"], "source": r["source"]})
    return out


def generate_records(spec: dict, out_dir: str) -> tuple[list[dict], dict, list[dict]]:
    """All raw records, self-instruct stats, and the licence lines for the card."""
    rng = random.Random(spec["seed"])
    records, licences, si_stats = [], [], {}
    for task in spec.get("tasks") or []:
        if task.get("builtin") == "synthetic":
            names = task.get("tasks") or list(synthetic.DEFAULT_TASKS)
            rows = synthetic.generate(int(task.get("per_task", 100)) * len(names), seed=spec["seed"], tasks=names)
            records += [{**r, "source": "builtin:synthetic", "_templated": True} for r in rows]
            licences.append({"source": "builtin:synthetic", "license": task.get("license", "generated by sft (Apache-2.0)")})
        elif "source" in task:
            records += _source_task(task, spec["_dir"])
            licences.append({"source": task["source"], "license": task.get("license", "see the source")})
        else:
            records += template_task(task, rng, spec.get("_path", "spec"))
            licences.append({"source": f"template:{task['name']}", "license": task.get("license", "spec author's")})
    si = spec.get("self_instruct")
    if si:
        from .self_instruct import SelfInstructConfig, run_self_instruct

        cfg_keys = {f.name for f in __import__("dataclasses").fields(SelfInstructConfig)}
        extra = set(si) - cfg_keys - {"license", "task"}
        if extra:
            raise RecipeError(f"unknown self_instruct key(s) {sorted(extra)}", field="self_instruct",
                              fix=f"use {', '.join(sorted(cfg_keys))}")
        kw = {k: v for k, v in si.items() if k in cfg_keys}
        for key in ("seed_tasks", "generator"):
            if key in kw and not os.path.isabs(kw[key]) and os.path.exists(os.path.join(spec["_dir"], kw[key])):
                kw[key] = os.path.join(spec["_dir"], kw[key])
        result = run_self_instruct(SelfInstructConfig(**{"seed": spec["seed"], **kw}), os.path.join(out_dir, "self_instruct"))
        for rec in result.pop("records"):
            for inst in rec["instances"]:
                records.append({"instruction": rec["instruction"], "input": inst["input"], "output": inst["output"],
                                "task": si.get("task", "self-instruct"), "source": "self-instruct"})
        si_stats = result
        licences.append({"source": f"self-instruct ({si.get('generator')})",
                         "license": si.get("license", "generated; check the generator model's licence")})
    return records, si_stats, licences


def _why_empty(spec: dict, si_stats: dict) -> str:
    """Why nothing came out, counted from what went in (a bare 'no records' helps nobody)."""
    parts = []
    if not spec.get("tasks"):
        parts.append("no tasks")
    if si_stats:
        failed = sum(si_stats.get("instance_drops", {}).values())
        if si_stats.get("pool", 0) == 0:
            parts.append(f"every one of {si_stats.get('proposed', 0)} proposed instructions was filtered "
                         f"({si_stats.get('filtered') or 'none proposed'})")
        elif failed:
            parts.append(f"every one of {failed} generated instances failed to parse (no 'Output:')")
    return "; ".join(parts) or "the tasks yielded no rows"


def _words(text: str) -> int:
    return word_count(text)


def clean(records: list[dict], spec: dict) -> tuple[list[dict], Counter, list]:
    drops: Counter = Counter()
    out, seen = [], set()
    for r in records:
        r = {**r, "_templated": bool(r.get("_templated")), **{k: " ".join(unicodedata.normalize("NFKC", str(r.get(k) or "")).split())
                     if k != "output" else unicodedata.normalize("NFKC", str(r.get(k) or "")).strip()
                     for k in ("instruction", "input", "output")}}
        if not r["instruction"] and not r["input"]:
            drops["empty prompt"] += 1
            continue
        if not r["output"]:
            drops["empty answer"] += 1
            continue
        if _words(r["instruction"] + " " + r["input"] + " " + r["output"]) > spec["max_words"]:
            drops[f"over {spec['max_words']} words"] += 1
            continue
        key = (r["instruction"], r["input"], r["output"])
        if key in seen:
            drops["exact duplicate"] += 1
            continue
        seen.add(key)
        out.append(r)
    # Near-duplicates: generated and collected records (self-instruct, sources) are checked against
    # everything; template tasks differ by the values filled in *by design* ("What is 23 plus 45?" vs
    # "... 46?"), so they get exact dedupe only, and are indexed first so nothing generated can sit
    # next to one of them across splits.
    texts = [f"{r['instruction']} {r['input']}".strip() for r in out]
    keep, pairs = dedupe_near(texts, threshold=spec["near_dup_threshold"], seed=spec["seed"],
                              exempt={i for i, r in enumerate(out) if r["_templated"]})
    if pairs:
        drops[f"near duplicate (ROUGE-L > {spec['near_dup_threshold']})"] += len(pairs)
    examples = [{"dropped": texts[i], "kept": texts[j], "rougeL": round(score, 3)} for i, j, score in pairs[:10]]
    kept = [{k: v for k, v in out[i].items() if k != "_templated"} for i in keep]
    return kept, drops, examples


def stratified_split(records: list[dict], ratios: dict, seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    by_task = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    splits = {name: [] for name in ratios}
    names = list(ratios)
    for task in sorted(by_task):
        rows = by_task[task]
        rng.shuffle(rows)
        n = len(rows)
        bounds, acc = [], 0.0
        for name in names:
            acc += ratios[name]
            bounds.append(round(acc * n))
        start = 0
        for name, end in zip(names, bounds):
            splits[name] += rows[start:end]
            start = end
    for name in names:
        rng.shuffle(splits[name])
    return splits


def _stats(values: list[int]) -> str:
    if not values:
        return "-"
    s = sorted(values)
    return f"p50 {s[len(s) // 2]}, p95 {s[min(len(s) - 1, int(0.95 * len(s)))]}, max {s[-1]}"


def datacard(spec: dict, splits: dict, drops: Counter, licences: list, si_stats: dict, near_examples: list) -> str:
    tasks = sorted({r["task"] for rows in splits.values() for r in rows})
    names = list(splits)
    lines = [f"# Data card: {spec['name']}", "", (spec.get("description") or "").strip(), "",
             "Built by `sft build-data` (define tasks -> generate/collect -> clean -> balance -> split). "
             "Rows are alpaca-style (`instruction`, `input`, `output`) with `task` and `source`.", "",
             "## Counts per task and split", "", "| task | " + " | ".join(names) + " | total |",
             "|---|" + "---|" * (len(names) + 1)]
    for t in tasks:
        c = [sum(r["task"] == t for r in splits[n]) for n in names]
        lines.append(f"| {t} | " + " | ".join(map(str, c)) + f" | {sum(c)} |")
    tot = [len(splits[n]) for n in names]
    lines += ["| **all** | " + " | ".join(map(str, tot)) + f" | {sum(tot)} |", "", "## Drops by reason", ""]
    lines += [f"- {k}: {v}" for k, v in drops.most_common()] or ["- none"]
    if near_examples:
        lines += ["", "Near-duplicate examples (dropped -> kept):", ""]
        lines += [f"- `{e['dropped'][:80]}` -> `{e['kept'][:80]}` (ROUGE-L {e['rougeL']})" for e in near_examples[:5]]
    allrows = [r for rows in splits.values() for r in rows]
    lines += ["", "## Lengths (words; a CJK character counts as a word)", "",
              f"- instruction + input: {_stats([_words(r['instruction'] + ' ' + r['input']) for r in allrows])}",
              f"- output: {_stats([_words(r['output']) for r in allrows])}", "", "## Sources and licences", ""]
    lines += [f"- {l['source']}: {l['license']}" for l in licences]
    if si_stats:
        lines += ["", "## Self-Instruct", "", f"- rounds: {si_stats['rounds']}, instructions proposed: "
                  f"{si_stats['proposed']}, accepted into the pool: {si_stats['pool']}",
                  "- filtered: " + (", ".join(f"{k}: {v}" for k, v in si_stats["filtered"].items()) or "none"),
                  "- instance drops: " + (", ".join(f"{k}: {v}" for k, v in si_stats["instance_drops"].items())
                                          or "none")]
    lines += ["", "No duplicate prompt crosses splits. Generated and collected records (sources, Self-Instruct) "
              "that near-duplicate any record are removed before the stratified split; template tasks, whose "
              "prompts differ only in the filled-in values by design, get exact deduplication only.", ""]
    return "\n".join(lines)


def build_data(spec_path: str, out: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = load_spec(spec_path)
    spec["_path"] = spec_path
    from .. import rundir

    # the one rule for folders sft writes: new, empty or an earlier build-data output (whose files are replaced)
    rundir.claim(out, kind="data", field="--out", error=DataError, fresh=True)
    records, si_stats, licences = generate_records(spec, out)
    if not records:
        raise DataError(f"the spec produced no records: {_why_empty(spec, si_stats)}", file=spec_path,
                        field="self_instruct" if spec.get("self_instruct") else "tasks",
                        fix="check the generator and the spec's tasks (see self_instruct/prompts.jsonl)")
    kept, drops, near_examples = clean(records, spec)
    splits = stratified_split(kept, spec["splits"], spec["seed"])
    for name, rows in splits.items():
        write_jsonl_atomic(os.path.join(out, f"{name}.jsonl"), rows)
        tmp = os.path.join(out, f".{name}.parquet.tmp")
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"instruction": pa.array([], pa.string())}),
                       tmp)
        os.replace(tmp, os.path.join(out, f"{name}.parquet"))
    write_text_atomic(os.path.join(out, "DATACARD.md"), datacard(spec, splits, drops, licences, si_stats, near_examples))
    report = {"name": spec["name"], "generated": len(records), "kept": len(kept),
              "splits": {k: len(v) for k, v in splits.items()}, "drops": dict(drops),
              "per_task": {t: {n: sum(r["task"] == t for r in rows) for n, rows in splits.items()}
                           for t in sorted({r["task"] for r in kept})},
              "self_instruct": si_stats}
    write_json_atomic(os.path.join(out, "build_report.json"), report)
    return report
