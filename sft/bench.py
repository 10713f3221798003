"""`sft bench`: a matrix of recipes x methods, one `sft train` subprocess per run (so peak memory is
per run), then a markdown table, PNG plots and an HTML page. `--check REF.md` compares the metric
columns with a committed table and fails listing the cells outside tolerance.

Bench file:
    name: cpu-suite
    bases: {gpt2-text: recipes/pretrain/gpt2-text.yaml}   # optional: trained first; other runs start from them
    recipes:
      gpt2: {recipe: recipes/pretrain/gpt2-instruct.yaml, base: gpt2-text}   # model.name = that base's output
      t5: recipes/quickstart-t5.yaml                                         # or just a recipe path
      # per-recipe overrides for a method, after the method's own (e.g. each model's tuned learning rate):
      # gpt2: {recipe: ..., methods: {lora: [train.learning_rate=1.0e-2]}}
    methods: {full: [], lora: [lora.enabled=true], qlora: [lora.enabled=true, quantization.load_in_4bit=true]}
    overrides: [train.epochs=2]          # applied to every table run (not to bases)
    threads: [2, 1]            # the table's CPU thread count, then counts whose reruns measure the spread
    bootstrap: 1000            # resamples for each cell's interval over the eval items (0: none)
    paper: {gpt2-lora: {bleu: 70.4}}   # published figures shown beside ours (same units as our keys)
    tolerance: {bleu: 0.5}     # for cells without a measured tolerance; others from the metrics registry

Each metric cell is printed as `value ±tol`: tol is the half-width of the 95 % bootstrap interval over the
eval items plus the largest change seen when the whole bench reruns with the other thread counts. `--check`
accepts a value within the reference cell's ±tol, but never less than the spec / registry tolerance
(which alone applies to a bare number).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


from .errors import RecipeError
from .metrics import METRICS, display_name, key_info, table_keys
from .metrics import tolerance as registry_tolerance
from .io import read_json, read_jsonl, read_yaml, safe_name, write_bytes_atomic, write_json_atomic, write_text_atomic
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
    allowed = ["name", "description", "bases", "recipes", "methods", "overrides", "threads", "bootstrap", "paper",
               "tolerance"]
    unknown = set(spec) - set(allowed)
    if unknown:
        raise RecipeError(f"unknown key(s) {sorted(unknown)}", file=path, fix=f"use {', '.join(allowed)}")
    bases = spec.get("bases") or {}
    if not isinstance(bases, dict) or not all(isinstance(v, str) for v in bases.values()):
        raise RecipeError("bases must map a name to a recipe file path", file=path, field="bases",
                          fix="e.g. bases: {gpt2-text: recipes/pretrain/gpt2-text.yaml}")
    for name in bases:
        safe_name(str(name), file=path, field=f"bases.{name}")
    spec["bases"] = {str(k): v for k, v in bases.items()}
    recipes = {}
    for name, entry in spec["recipes"].items():
        safe_name(str(name), file=path, field=f"recipes.{name}")
        if isinstance(entry, str):
            entry = {"recipe": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str) or \
                set(entry) - {"recipe", "base", "methods"}:
            raise RecipeError("expected a recipe file path, or {recipe: PATH, base: NAME, methods: {METHOD: "
                              "[key=value, ...]}}", file=path, field=f"recipes.{name}")
        if entry.get("base") is not None and entry["base"] not in spec["bases"]:
            raise RecipeError(f"base {entry['base']!r} is not defined", file=path, field=f"recipes.{name}.base",
                              fix=f"add it under bases:, or use one of {sorted(spec['bases']) or 'none defined'}")
        own = entry.get("methods") or {}
        if not isinstance(own, dict):
            raise RecipeError("methods must map a method name to its overrides", file=path,
                              field=f"recipes.{name}.methods", fix="e.g. methods: {lora: [train.learning_rate=1e-2]}")
        recipes[str(name)] = {"recipe": entry["recipe"], "base": entry.get("base"),
                              "methods": {str(k): _str_list(v, path, f"recipes.{name}.methods.{k}")
                                          for k, v in own.items()}}
    spec["recipes"] = recipes
    threads = spec.get("threads") or []
    threads = [threads] if isinstance(threads, int) and not isinstance(threads, bool) else threads
    if not isinstance(threads, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1
                                                for t in threads) or len(set(threads)) != len(threads):
        raise RecipeError(f"got {spec.get('threads')!r}, expected distinct thread counts >= 1", file=path,
                          field="threads", fix="e.g. threads: [2, 1] (the table's count first)")
    spec["threads"] = threads
    boot = spec.get("bootstrap", 1000)
    if isinstance(boot, bool) or not isinstance(boot, int) or not 0 <= boot <= 100_000:
        raise RecipeError(f"got {boot!r}, expected a number of resamples 0..100000", file=path, field="bootstrap")
    spec["bootstrap"] = boot
    paper = spec.get("paper") or {}
    if not isinstance(paper, dict) or not all(isinstance(v, dict) for v in paper.values()):
        raise RecipeError("paper must map a run name to {metric key: number}", file=path, field="paper",
                          fix="e.g. paper: {gpt2-medium-lora: {bleu: 70.4, rougeL: 0.718}}")
    for run, figures in paper.items():
        for k, v in figures.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise RecipeError(f"got {v!r}, expected a number", file=path, field=f"paper.{run}.{k}")
    spec["paper"] = paper
    spec.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    safe_name(str(spec["name"]), file=path, field="name")
    methods = spec.get("methods") or {"full": []}
    if not isinstance(methods, dict):
        raise RecipeError("methods must map a method name to its overrides", file=path, field="methods",
                          fix="e.g. methods: {full: [], lora: [lora.enabled=true]}")
    spec["methods"] = {str(safe_name(str(k), file=path, field=f"methods.{k}")): _str_list(v, path, f"methods.{k}")
                       for k, v in methods.items()}
    spec["overrides"] = _str_list(spec.get("overrides"), path, "overrides")
    for name, entry in spec["recipes"].items():
        for method in entry["methods"]:
            if method not in spec["methods"]:
                raise RecipeError(f"method {method!r} is not defined", file=path, field=f"recipes.{name}.methods",
                                  fix=f"use one of {sorted(spec['methods'])}")
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


def _base_overrides(out: str, base: str | None) -> list[str]:
    if base is None:
        return []
    return [f"model.name={os.path.abspath(os.path.join(out, 'bases', base))}", "model.init=pretrained"]


def validate_runs(spec: dict, path: str, bench_dir: str, reference_text: str | None, extra: list[str] = ()) -> None:
    """Every run's recipe loads with its overrides and evaluates after training, and a --check table has
    this bench's shape, before the first run starts (not after the whole matrix)."""
    from .recipe import load_recipe

    for recipe_path in spec["bases"].values():
        load_recipe(_recipe_path(recipe_path, bench_dir), list(extra))
    keys: set[str] = set()
    for model_name, entry in spec["recipes"].items():
        for method, overrides in spec["methods"].items():
            r = load_recipe(_recipe_path(entry["recipe"], bench_dir),
                            list(spec["overrides"]) + list(overrides) + entry["methods"].get(method, [])
                            + list(extra))
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


def _train(rpath: str, overrides: list[str], threads: int | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if threads:  # a fixed thread count: CPU float reductions then run in one order
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "sft", "train", rpath, "--overwrite", *overrides],
                          capture_output=True, text=True, env=env)


def _failed(proc, name: str, field: str, rpath: str, overrides: list[str]) -> RecipeError:
    lines = (proc.stderr + proc.stdout).replace("\r", "\n").splitlines()
    errs = [ln for ln in lines if ln.startswith("sft: error") or "Error:" in ln] or lines[-1:] or ["?"]
    return RecipeError(f"run {name} failed: {errs[-1].strip()}", field=field,
                       fix=f"run it alone: sft train {rpath} {' '.join(overrides)}")


def _row(name: str, model_name: str, method: str, run_dir: str, start: float, resamples: int) -> dict:
    from .evaluation.intervals import bootstrap_intervals

    metrics = read_json(os.path.join(run_dir, rundir.METRICS))
    t = metrics["train"]
    pred_path = os.path.join(run_dir, rundir.PREDICTIONS)
    preds = read_jsonl(pred_path) if os.path.exists(pred_path) else []
    return {"run": name, "model": model_name, "method": method, "trainable_params": t["trainable_params"],
            "total_params": t["total_params"], "train_time_s": t["train_runtime_s"],
            "tokens_per_second": t["tokens_per_second"], "peak_memory_mb": t["peak_memory_mb"],
            "metrics": metrics["metrics"], "best": t.get("best"), "wall_s": round(time.time() - start, 1),
            "run_dir": run_dir, "eval_items": len(preds),
            "intervals": bootstrap_intervals(preds, list(metrics["metrics"]), resamples=resamples,
                                             tokenize=metrics.get("tokenize"))}


def run_matrix(spec: dict, out: str, *, bench_dir: str, progress=None, extra: list[str] = (),
               threads: int | None = None) -> tuple[list[dict], list[dict]]:
    """Train the bases, then every recipe x method; returns (table rows, base rows)."""
    # one job list, bases first: (rows it joins, name, model, method, recipe, overrides, error field, resamples)
    bases, rows = [], []
    jobs = [(bases, base, base, "base", recipe_path,
             list(extra) + [f"train.output_dir={os.path.join(out, 'bases', base)}"], f"bases.{base}", 0)
            for base, recipe_path in spec["bases"].items()]
    for model_name, entry in spec["recipes"].items():
        for method in spec["methods"]:
            name = f"{model_name}-{method}"
            overrides = (list(spec["overrides"]) + list(spec["methods"][method] or [])
                         + entry["methods"].get(method, []) + list(extra)
                         + _base_overrides(out, entry["base"])
                         + [f"train.output_dir={os.path.join(out, 'runs', name)}"])
            jobs.append((rows, name, model_name, method, entry["recipe"], overrides,
                         f"recipes.{model_name} / methods.{method}", spec["bootstrap"]))
    for i, (target, name, model_name, method, recipe_path, overrides, field, resamples) in enumerate(jobs, 1):
        rpath = _recipe_path(recipe_path, bench_dir)
        if progress:
            progress(f"({i}/{len(jobs)}) {'base ' if target is bases else ''}{name}: sft train {rpath} "
                     f"{' '.join(overrides)}")
        start = time.time()
        proc = _train(rpath, overrides, threads)
        if proc.returncode != 0:
            raise _failed(proc, name, field, rpath, overrides)
        run_dir = overrides[-1].split("=", 1)[1]
        target.append(_row(name, model_name, method, run_dir, start, resamples))
    return rows, bases


def add_tolerances(rows: list[dict], reruns: dict[int, list[dict]]) -> None:
    """Each cell's tolerance: half its bootstrap interval plus its largest change across thread-count reruns."""
    for r in rows:
        spread, r["spread"] = {}, {}
        for t, other in reruns.items():
            o = next(x for x in other if x["run"] == r["run"])["metrics"]
            r["spread"][f"threads={t}"] = {k: o.get(k) for k in r["metrics"]}
            for k, v in r["metrics"].items():
                if v is not None and o.get(k) is not None:
                    spread[k] = max(spread.get(k, 0.0), abs(o[k] - v))
        r["tolerance"] = {k: (hi - lo) / 2 + spread.get(k, 0.0) for k, (lo, hi) in r.get("intervals", {}).items()}


def _fmt(key: str, value: float) -> str:
    return f"{value:.2f}" if key_info(key)[0] is not None and key_info(key)[0].scale != 1 else f"{value:.4f}"


def _metric_cell(key: str, value, tol: float | None = None) -> str:
    if value is None:
        return "nan"
    return _fmt(key, value) + (f" ±{_fmt(key, tol)}" if tol is not None else "")


def _parse_cell(text: str) -> tuple[float, float | None]:
    """'38.21 ±1.52' -> (38.21, 1.52); '38.21' -> (38.21, None)."""
    value, _, tol = text.partition("±")
    return float(value), (float(tol) if tol.strip() else None)


def _cells(r: dict, keys: list[str]) -> list[str]:
    """One run's row as displayed (columns(keys) order); --check compares these rounded cells."""
    m = r["metrics"]
    return [r["run"], r["model"], r["method"], _fmt_params(r["trainable_params"]), f"{r['train_time_s']:.1f}",
            f"{r['tokens_per_second']:.0f}", f"{r['peak_memory_mb']:.0f}",
            *[_metric_cell(k, m.get(k), (r.get("tolerance") or {}).get(k)) for k in keys]]


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
            try:
                a, _ = _parse_cell(got[name][col])
                b, measured = _parse_cell(ref_row[col])
            except ValueError:
                problems.append(f"{name}: {col} {got[name][col]!r} vs reference {ref_row[col]!r} is not a number")
                continue
            tol, relative = registry_tolerance(key)
            tol = tolerance.get(key, tol)
            if measured is not None:  # the reference's measured tolerance (bootstrap + thread spread),
                # never below the registry's resolution (a cell whose items all agree measures ±0)
                tol, relative = max(measured, tol * abs(b) if relative else tol), False
            ok = abs(a - b) <= tol * abs(b) if relative else abs(a - b) <= tol
            if not ok:
                unit = f"±{tol:.0%} relative" if relative else f"±{tol}"
                problems.append(f"{name}: {col} {a} vs reference {b} (tolerance {unit})")
    for name in got:
        if name not in ref:
            problems.append(f"{name}: not in the reference table")
    return problems


def base_table(bases: list[dict]) -> str:
    lines = ["| base | trainable params | train time (s) | tokens/s | Perplexity (its own eval split) |", "|---|---|---|---|---|"]
    lines += [f"| {b['run']} | {_fmt_params(b['trainable_params'])} | {b['train_time_s']:.1f} | "
              f"{b['tokens_per_second']:.0f} | {_metric_cell('perplexity', b['metrics'].get('perplexity'))} |"
              for b in bases]
    return "\n".join(lines)


def paper_table(rows: list[dict], paper: dict) -> str:
    """Our figures beside published ones, per run named in the spec's `paper:`."""
    keys = [k for m in METRICS.values() for k in m.keys if any(k in f for f in paper.values())]
    head = ["run", "trainable params"] + [c for k in keys for c in (f"{display_name(k)} (ours)", f"{display_name(k)} (paper)")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run, figures in paper.items():
        r = next((x for x in rows if x["run"] == run), None)
        ours = [(_metric_cell(k, r["metrics"].get(k), (r.get("tolerance") or {}).get(k))
                 if r is not None and k in r["metrics"] else "not measured") for k in keys]
        cells = [run, _fmt_params(r["trainable_params"]) if r else "-"]
        cells += [c for o, k in zip(ours, keys) for c in (o, _fmt(k, figures[k]) if k in figures else "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(out: str, spec: dict, rows: list[dict], bases: list[dict] = (), threads: list[int] = ()) -> None:
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
    items = sorted({r.get("eval_items", 0) for r in rows})
    tol_note = ""
    if any(r.get("tolerance") for r in rows):
        tol_note = (f" Each metric cell is `value ±tolerance`: half the 95 % bootstrap interval over the eval items "
                    f"({spec['bootstrap']} resamples of {', '.join(map(str, items))} items)"
                    + (f", plus the largest change when the whole bench reran with {', '.join(map(str, threads[1:]))} "
                       f"CPU thread(s) instead of {threads[0]}" if len(threads) > 1 else "")
                    + "; `sft bench --check` accepts values within it.")
    md = [f"# Benchmark: {spec['name']}", "", spec.get("description", "").strip(), "",
          f"Machine: {machine}" + (f", {threads[0]} thread(s)" if threads else "") + ". Metrics on each recipe's "
          f"eval split ({units}; see the README's Metrics section). Train time, tokens/s and peak memory (max RSS on "
          "CPU, max allocated on GPU) vary by machine and are not checked." + tol_note, "", table(rows), ""]
    if bases:
        md += ["Base runs (trained first; the runs above start from them):", "", base_table(bases), ""]
    if spec.get("paper"):
        md += ["Against the published figures:", "", paper_table(rows, spec["paper"]), ""]
    md += ["![training loss](loss_curves.png)", "", "![metrics](metrics.png)", ""]
    md += [f"![{name} training curves](curves-{name}.png)\n" for name in eval_pngs]
    write_text_atomic(os.path.join(out, "results.md"), "\n".join(md))
    write_json_atomic(os.path.join(out, "results.json"), {"name": spec["name"], "machine": machine,
                                                          "threads": list(threads), "runs": rows, "bases": list(bases)})
    page = html_page(f"sft bench: {spec['name']}", [
        _table_html(columns(keys), [_cells(r, keys) for r in rows], "sortable", "bench"),
        "<h2>Training loss</h2>" + img_tag(loss_png, "loss curves"),
        "<h2>Metrics</h2>" + img_tag(metrics_png, "metrics"),
        *[f"<h2>{name}: evaluation during training</h2>" + img_tag(png, f"{name} curves")
          for name, png in eval_pngs.items()]])
    write_text_atomic(os.path.join(out, rundir.REPORT_HTML), page)


def run_bench(path: str, *, out: str | None = None, check_ref: str | None = None, progress=None,
              extra: list[str] = ()) -> tuple[list[dict], str, list[str] | None]:
    """Run the spec's matrix and write its outputs; returns (rows, out, problems against check_ref or None).
    `progress(line)` is told about each run as it starts (a long job shows progress). `extra` overrides
    apply to every run, bases included (e.g. a tiny model for a smoke run of a GPU spec). With --check only
    the table's thread count runs; otherwise each further count in `threads:` reruns the whole bench to
    measure the spread that goes into each cell's tolerance."""
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
    validate_runs(spec, path, bench_dir, reference_text, list(extra))
    out = out or os.path.join("outputs", "bench", spec["name"])
    os.makedirs(out, exist_ok=True)
    threads = spec["threads"] or [None]
    rows, bases = run_matrix(spec, out, bench_dir=bench_dir, progress=progress, extra=extra, threads=threads[0])
    reruns = {}
    for t in ([] if check_ref else threads[1:]):
        sub = os.path.join(out, f"threads-{t}")
        os.makedirs(sub, exist_ok=True)
        tag = (lambda line, t=t: progress(f"[spread, {t} thread(s)] {line}")) if progress else None
        reruns[t] = run_matrix(spec, sub, bench_dir=bench_dir, progress=tag, extra=extra, threads=t)[0]
    add_tolerances(rows, reruns)
    write_outputs(out, spec, rows, bases, spec["threads"])
    return rows, out, check(rows, reference_text, spec["tolerance"]) if check_ref else None
