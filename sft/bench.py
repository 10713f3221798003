"""`sft bench`: a matrix of recipes x methods, one `sft train` subprocess per run (so peak memory is
per run), then a markdown table, PNG plots and an HTML page. `--check REF.md` compares the metric
columns with a committed table and fails listing the cells outside tolerance.

Bench file:
    name: cpu-suite
    recipes: {gpt2: recipes/quickstart.yaml, t5: recipes/quickstart-t5.yaml}
    methods: {full: [], lora: [lora.enabled=true], qlora: [lora.enabled=true, quantization.load_in_4bit=true]}
    overrides: [train.epochs=2]          # applied to every run
    tolerance: {bleu: 0.5}     # per score key; others from the metrics registry
      # perplexity: relative; the others: absolute (BLEU points, ROUGE/EM fractions)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


from .errors import RecipeError
from .evaluation.metrics import METRICS, display_name, key_info, table_keys
from .evaluation.metrics import tolerance as registry_tolerance
from .io import read_json, read_yaml, safe_name, write_bytes_atomic, write_json_atomic, write_text_atomic
from . import rundir

RUN_COLUMNS = ["run", "model", "method", "trainable params", "train time (s)", "tokens/s", "peak memory (MB)"]


def metric_keys(rows: list[dict]) -> list[str]:
    """Score keys tabulated for these runs: each registered metric's table keys, in registry order."""
    present = {k for r in rows for k in r["metrics"]}
    return [k for m in METRICS.values() for k in m.summary_keys() if k in present]


def columns(keys: list[str]) -> list[str]:
    return RUN_COLUMNS + [display_name(k) for k in keys]


def _str_list(value, path: str, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise RecipeError("expected a list of key=value overrides", file=path, field=field,
                          fix="e.g. [lora.enabled=true, train.epochs=2]")
    return value


def load_bench(path: str) -> dict:
    spec = read_yaml(path, "bench file") or {}
    if not isinstance(spec, dict) or not isinstance(spec.get("recipes"), dict) or not spec["recipes"]:
        raise RecipeError("a bench needs 'recipes: {NAME: recipe.yaml, ...}'", file=path, field="recipes")
    unknown = set(spec) - {"name", "recipes", "methods", "overrides", "tolerance", "description"}
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown)}", file=path,
                          fix="use name, description, recipes, methods, overrides, tolerance")
    for name, recipe in spec["recipes"].items():
        safe_name(str(name), file=path, field=f"recipes.{name}")
        if not isinstance(recipe, str):
            raise RecipeError("expected a recipe file path", file=path, field=f"recipes.{name}")
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    safe_name(str(spec["name"]), file=path, field="name")
    methods = spec.get("methods") or {"full": []}
    if not isinstance(methods, dict):
        raise RecipeError("methods must map a method name to its overrides", file=path, field="methods",
                          fix="e.g. methods: {full: [], lora: [lora.enabled=true]}")
    spec["methods"] = {str(safe_name(str(k), file=path, field=f"methods.{k}")): _str_list(v, path, f"methods.{k}")
                       for k, v in methods.items()}
    spec["overrides"] = _str_list(spec.get("overrides"), path, "overrides")
    tol = spec.get("tolerance") or {}
    if not isinstance(tol, dict):
        raise RecipeError("tolerance must map metric names to numbers", file=path, field="tolerance",
                          fix="e.g. tolerance: {bleu: 0.5, perplexity: 0.02}")
    known = [k for m in METRICS.values() for k in m.keys]
    for k, v in tol.items():
        if k not in known:
            raise RecipeError(f"no metric key {k!r}", file=path, field=f"tolerance.{k}", fix=f"use {', '.join(known)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
            raise RecipeError(f"got {v!r}, expected a finite number >= 0", file=path, field=f"tolerance.{k}")
    spec["tolerance"] = tol  # per key; the registry's tolerance for the others
    return spec


def _recipe_path(recipe_path: str, bench_dir: str) -> str:
    rpath = recipe_path if os.path.isabs(recipe_path) else os.path.join(bench_dir, recipe_path)
    return rpath if os.path.exists(rpath) else recipe_path  # else: relative to the current directory


def validate_runs(spec: dict, path: str, bench_dir: str, reference_text: str | None) -> None:
    """Every run's recipe loads with its overrides and evaluates after training, and a --check table has
    this bench's shape, before the first run starts (not after the whole matrix)."""
    from .recipe import load_recipe

    keys: set[str] = set()
    for model_name, recipe_path in spec["recipes"].items():
        for method, overrides in spec["methods"].items():
            r = load_recipe(_recipe_path(recipe_path, bench_dir), list(spec["overrides"]) + list(overrides))
            keys.update(table_keys(r.eval.metrics))
            if not r.eval.after:
                raise RecipeError(f"run {model_name}-{method} has eval.after: false, so it has no metrics to tabulate",
                                  file=path, field=f"recipes.{model_name} / methods.{method}",
                                  fix="remove the eval.after=false override")
    if reference_text is not None:
        ref = parse_table(reference_text)
        expected = columns([k for m in METRICS.values() for k in m.summary_keys() if k in keys])
        missing_cols = [c for c in expected if c not in next(iter(ref.values()))]
        runs = {f"{m}-{meth}" for m in spec["recipes"] for meth in spec["methods"]}
        if missing_cols:
            raise RecipeError(f"the reference table lacks column(s) {missing_cols}", field="--check",
                              fix="pass a results.md written by sft bench")
        if set(ref) != runs:
            raise RecipeError(f"the reference table has runs {sorted(ref)}, this bench runs {sorted(runs)}",
                              field="--check", fix="check against the results.md of the same bench spec")


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.3f}M" if n >= 1e5 else f"{n:,}"


def run_matrix(spec: dict, out: str, *, bench_dir: str, progress=None) -> list[dict]:
    rows = []
    runs = [(m, r, meth) for m, r in spec["recipes"].items() for meth in spec["methods"]]
    for i, (model_name, recipe_path, method) in enumerate(runs, 1):
        name = f"{model_name}-{method}"
        run_dir = os.path.join(out, "runs", name)
        rpath = _recipe_path(recipe_path, bench_dir)
        overrides = list(spec["overrides"]) + list(spec["methods"][method] or []) + [f"train.output_dir={run_dir}"]
        if progress:
            progress(f"({i}/{len(runs)}) {name}: sft train {rpath} {' '.join(overrides)}")
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "sft", "train", rpath, "--overwrite", *overrides],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr + proc.stdout).replace("\r", "\n").splitlines()
            errs = [ln for ln in lines if ln.startswith("sft: error") or "Error:" in ln] or lines[-1:] or ["?"]
            raise RecipeError(f"run {name} failed: {errs[-1].strip()}", field=f"recipes.{model_name} / "
                              f"methods.{method}", fix=f"run it alone: sft train {rpath} {' '.join(overrides)}")
        metrics = read_json(os.path.join(run_dir, rundir.METRICS))
        t = metrics["train"]
        rows.append({"run": name, "model": model_name, "method": method, "trainable_params": t["trainable_params"],
                     "total_params": t["total_params"], "train_time_s": t["train_runtime_s"],
                     "tokens_per_second": t["tokens_per_second"], "peak_memory_mb": t["peak_memory_mb"],
                     "metrics": metrics["metrics"], "best": t.get("best"), "wall_s": round(time.time() - start, 1),
                     "run_dir": run_dir})
    return rows


def _metric_cell(key: str, value) -> str:
    if value is None:
        return "nan"
    return f"{value:.2f}" if key_info(key)[0] is not None and key_info(key)[0].unit == "0-100" else f"{value:.4f}"


def _cells(r: dict, keys: list[str]) -> list[str]:
    """One run's row as displayed (columns(keys) order); --check compares these rounded cells."""
    m = r["metrics"]
    return [r["run"], r["model"], r["method"], _fmt_params(r["trainable_params"]), f"{r['train_time_s']:.1f}",
            f"{r['tokens_per_second']:.0f}", f"{r['peak_memory_mb']:.0f}", *[_metric_cell(k, m.get(k)) for k in keys]]


def table(rows: list[dict]) -> str:
    keys = metric_keys(rows)
    cols = columns(keys)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cells(r, keys)) + " |" for r in rows]
    return "\n".join(lines)


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Rows of the first markdown table whose header starts with 'run', keyed by run name."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header and rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if cells and cells[0] == "run":
                header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def check(rows: list[dict], reference_text: str, tolerance: dict) -> list[str]:
    """Differences between this bench's metric cells and a reference table, beyond tolerance."""
    ref = parse_table(reference_text)
    problems = []
    keys = metric_keys(rows)
    got = {r["run"]: dict(zip(columns(keys), _cells(r, keys))) for r in rows}
    for name, ref_row in ref.items():
        if name not in got:
            problems.append(f"{name}: in the reference but not run")
            continue
        for key in keys:
            col = display_name(key)
            if col not in ref_row:
                problems.append(f"{name}: column {col} is not in the reference")
                continue
            a, b = float(got[name][col]), float(ref_row[col])
            tol, relative = registry_tolerance(key)
            tol = tolerance.get(key, tol)
            ok = abs(a - b) <= tol * abs(b) if relative else abs(a - b) <= tol
            if not ok:
                unit = f"±{tol:.0%} relative" if relative else f"±{tol}"
                problems.append(f"{name}: {col} {a} vs reference {b} (tolerance {unit})")
    for name in got:
        if name not in ref:
            problems.append(f"{name}: not in the reference table")
    return problems


def write_outputs(out: str, spec: dict, rows: list[dict]) -> None:
    import platform

    import torch

    from .evaluation.report import (_table_html, html_page, img_tag, loss_curve_figure, metric_bars_figure,
                                    png_bytes, read_training_log, training_curves_figure)

    keys = metric_keys(rows)
    logs = {r["run"]: read_training_log(os.path.join(r["run_dir"], rundir.TRAIN_LOG)) for r in rows}
    loss_png = png_bytes(loss_curve_figure({name: log["loss"] for name, log in logs.items()}), dpi=110)
    metrics_png = png_bytes(metric_bars_figure({r["run"]: r["metrics"] for r in rows}, keys,
                                               f"{spec['name']}: metrics per run (eval split)"), dpi=110)
    write_bytes_atomic(os.path.join(out, "loss_curves.png"), loss_png)
    write_bytes_atomic(os.path.join(out, "metrics.png"), metrics_png)
    eval_pngs = {}  # per run, where it evaluated while training
    for r in rows:
        if logs[r["run"]]["eval"]:
            best = (r.get("best") or {}).get("step")
            eval_pngs[r["run"]] = png_bytes(training_curves_figure(logs[r["run"]], best, f"{r['run']}: training "
                                                                   "curves"), dpi=100)
            write_bytes_atomic(os.path.join(out, f"curves-{r['run']}.png"), eval_pngs[r["run"]])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}" + (
        f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
    units = "; ".join(f"{display_name(k)} {key_info(k)[0].unit}" for k in keys if key_info(k)[0])
    md = [f"# Benchmark: {spec['name']}", "", spec.get("description", "").strip(), "",
          f"Machine: {machine}. Metrics on each recipe's eval split ({units}; see the README's Metrics section). "
          "Train time, tokens/s and peak memory (max RSS on CPU, max allocated on GPU) vary by machine and are "
          "not checked.", "", table(rows), "", "![training loss](loss_curves.png)", "", "![metrics](metrics.png)", ""]
    md += [f"![{name} training curves](curves-{name}.png)\n" for name in eval_pngs]
    write_text_atomic(os.path.join(out, "results.md"), "\n".join(md))
    write_json_atomic(os.path.join(out, "results.json"), {"name": spec["name"], "machine": machine, "runs": rows})
    page = html_page(f"sft bench: {spec['name']}", [
        _table_html(columns(keys), [_cells(r, keys) for r in rows], "sortable", "bench"),
        "<h2>Training loss</h2>" + img_tag(loss_png, "loss curves"),
        "<h2>Metrics</h2>" + img_tag(metrics_png, "metrics"),
        *[f"<h2>{name}: evaluation during training</h2>" + img_tag(png, f"{name} curves")
          for name, png in eval_pngs.items()]])
    write_text_atomic(os.path.join(out, rundir.REPORT_HTML), page)


def run_bench(path: str, *, out: str | None = None, check_ref: str | None = None,
              progress=None) -> tuple[list[dict], str, list[str] | None]:
    """Run the spec's matrix and write its outputs; returns (rows, out, problems against check_ref or None).
    `progress(line)` is told about each run as it starts (a long job shows progress)."""
    spec = load_bench(path)
    reference_text = None
    if check_ref:  # read first: --out may be the reference's own folder
        if not os.path.exists(check_ref):
            raise RecipeError("reference table not found", file=check_ref, field="--check")
        with open(check_ref, encoding="utf-8") as fh:
            reference_text = fh.read()
        if not parse_table(reference_text):
            raise RecipeError("no results table (header starting with 'run') in the reference", file=check_ref)
    bench_dir = os.path.dirname(os.path.abspath(path))
    validate_runs(spec, path, bench_dir, reference_text)
    out = out or os.path.join("outputs", "bench", spec["name"])
    os.makedirs(out, exist_ok=True)
    rows = run_matrix(spec, out, bench_dir=bench_dir, progress=progress)
    write_outputs(out, spec, rows)
    return rows, out, check(rows, reference_text, spec["tolerance"]) if check_ref else None
