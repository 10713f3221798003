"""Human-readable results: markdown tables (eval_report.md) and one self-contained report.html
(no network: plots are embedded PNGs, the sort script is inline)."""

from __future__ import annotations

import base64
import html
import io
import os

from ..io import read_jsonl, write_bytes_atomic, write_text_atomic
from ..metrics import METRICS, display_name, higher_is_better, key_info
from .. import rundir


def _metric_order() -> list[str]:
    """Score keys in registry order (a metric registered later appears after the built-in ones)."""
    return [k for m in METRICS.values() for k in m.keys]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def _ordered(keys) -> list[str]:
    keys, order = list(keys), _metric_order()
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def metrics_table(metrics: dict) -> str:
    m = metrics["metrics"]
    keys = _ordered(m)
    lines = ["| task | n | " + " | ".join(display_name(k) for k in keys) + " |", "|---|---|" + "---|" * len(keys)]
    lines.append(f"| **all** | {metrics['num_samples']} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    for task, t in metrics.get("per_task", {}).items():
        lines.append(f"| {task} | {t['num_samples']} | " + " | ".join(_fmt(t.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def before_after_table(before: dict | None, after: dict) -> str:
    a = after["metrics"]
    b = before["metrics"] if before else {}
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    for k in _ordered(a):
        change = "-" if k not in b else f"{a[k] - b[k]:+.4f}"
        arrow = "" if k not in b or a[k] == b[k] else (" ✓" if (a[k] > b[k]) == higher_is_better(k) else " ✗")
        lines.append(f"| {display_name(k)} | {_fmt(b.get(k))} | {_fmt(a[k])} | {change}{arrow} |")
    return "\n".join(lines)


def render_eval_report(metrics: dict) -> str:
    parts = ["# Evaluation report\n",
             (f"- predictions: `{metrics['model']['path']}`" if metrics["model"]["arch"] == "external" else
              f"- model: `{metrics['model']['name']}` ({metrics['model']['arch']}, "
              f"{'LoRA adapter' if metrics['model']['adapter'] else 'full weights'}) at `{metrics['model']['path']}`"),
             f"- split: {metrics['split']}, {metrics['num_samples']} items"
             + (f" ({metrics['num_examples']} references: items with the same prompt are scored against all of them)"
                if metrics.get("num_examples", metrics["num_samples"]) != metrics["num_samples"] else "")
             + (f"; recipe hash `{metrics['recipe_hash']}`" if metrics.get("recipe_hash") else ""),
             "- BLEU 0-100 (sacrebleu; zh tokenizer for Chinese references); ROUGE F1 and exact match 0-1; "
             "perplexity over answer tokens" + (f"; tokenisation `{metrics['tokenize']}`" if metrics.get("tokenize")
                                                 else "") + "\n"]
    if "before" in metrics:
        parts += ["## Before and after training\n", before_after_table(metrics["before"], metrics), ""]
    parts += ["## Per task (after)\n" if "before" in metrics else "## Per task\n", metrics_table(metrics), ""]
    if "before" in metrics:
        parts += ["## Per task (before)\n", metrics_table(metrics["before"]), ""]
    if "train" in metrics and metrics["train"].get("best"):
        best = metrics["train"]["best"]
        parts += [f"Evaluated every {metrics['train']['eval_steps']} steps ({metrics['train']['evaluations']} times); "
                  f"best {best['metric']} {_fmt(best['value'])} at step {best['step']}"
                  f"{' (this is the saved model)' if best.get('loaded_at_end') else ''}; "
                  f"stopped: {metrics['train']['stopped']}.\n"]
    if metrics.get("harness"):
        h = metrics["harness"]
        parts += [f"## Benchmarks (lm-evaluation-harness {h['version']}"
                  + (f", first {h['limit']} documents per task" if h.get("limit") else "") + ")\n",
                  "| task | metric | value |", "|---|---|---|"]
        parts += [f"| {task} | {k} | {_fmt(v)} |" for task, values in sorted(h["tasks"].items())
                  for k, v in sorted(values.items())] + [""]
    if "train" in metrics:
        t = metrics["train"]
        parts += ["## Training\n", "| train loss | steps | runtime (s) | tokens/s | trainable params | peak memory (MB) |",
                  "|---|---|---|---|---|---|",
                  f"| {_fmt(t.get('train_loss'))} | {t.get('global_step')} | {t.get('train_runtime_s')} | "
                  f"{t.get('tokens_per_second')} | {t.get('trainable_params'):,} of {t.get('total_params'):,} | "
                  f"{t.get('peak_memory_mb')} |", ""]
    return "\n".join(parts)


# ---- plots ------------------------------------------------------------------------------------

def png_bytes(fig, dpi: int = 100) -> bytes:
    """Render and close a figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def img_tag(png: bytes, alt: str) -> str:
    """An <img> with the PNG embedded, so the page needs no network and no side files."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def read_training_log(path: str | None) -> dict:
    """{'loss': [(step, loss)], 'eval': [{step, eval_*...}]} from train_log.jsonl."""
    out: dict = {"loss": [], "eval": []}
    if not path or not os.path.exists(path):
        return out
    for rec in read_jsonl(path):
        if "loss" in rec:
            out["loss"].append((rec["step"], rec["loss"]))
        if "eval_loss" in rec:
            out["eval"].append(rec)
    return out


def training_curves_figure(log: dict, best_step: int | None = None, title: str = "Training curves"):
    """Left: training and eval loss over steps. Right: what was measured at each evaluation (generation
    metrics, else eval perplexity). The best evaluation is marked on both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    if log["loss"]:
        ax.plot([p[0] for p in log["loss"]], [p[1] for p in log["loss"]], label="training loss", linewidth=1.2)
    ev = log["eval"]
    steps = [e["step"] for e in ev]
    if ev:
        ax.plot(steps, [e["eval_loss"] for e in ev], "o-", label="eval loss (answer tokens)", linewidth=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss (nats per answer token)")
    ax.set_title("Loss")
    gen_keys = [k for k in _ordered({k[5:] for e in ev for k in e if k.startswith("eval_")} -
                                    {"loss", "perplexity", "runtime"})
                if key_info(k)[0] is None or k in key_info(k)[0].summary_keys()]
    if gen_keys:
        for k in gen_keys:
            scale = key_info(k)[0].scale if key_info(k)[0] else 1.0
            bx.plot(steps, [e.get(f"eval_{k}", float("nan")) / scale for e in ev], "o-",
                    label=display_name(k) + (" / 100" if scale != 1 else ""))
        bx.set_ylabel("score (0-1, higher is better)")
        bx.set_title("Generation metrics during training")
    elif ev:
        bx.plot(steps, [e["eval_perplexity"] for e in ev], "o-", color="C1", label="eval perplexity")
        bx.set_yscale("log")
        bx.set_ylabel("perplexity (lower is better, log scale)")
        bx.set_title("Eval perplexity during training")
    else:
        bx.text(0.5, 0.5, "no evaluation during training\n(set train.eval_steps)", ha="center", va="center",
                transform=bx.transAxes)
    bx.set_xlabel("optimiser step")
    for a in (ax, bx):
        if best_step is not None:
            a.axvline(best_step, color="green", linestyle="--", linewidth=1, label=f"best (step {best_step})")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curve_figure(curves: dict[str, list[tuple[int, float]]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, linewidth=1.5)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (nats per answer token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def metric_bars_figure(rows: dict[str, dict], keys: list[str], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        vals = [rows[n].get(k, float("nan")) for n in names]
        ax.bar(np.arange(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        metric, name = key_info(k)
        unit = metric.unit if metric else "0-1"
        ax.set_ylabel(f"{name} ({unit}, {'higher' if higher_is_better(k) else 'lower'} is better)")
        if metric is not None and not metric.higher_is_better:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- HTML -------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}th{background:#f3f3f3;cursor:pointer}
th.sorted-asc:after{content:" \\25B2"}th.sorted-desc:after{content:" \\25BC"}pre{white-space:pre-wrap;margin:0;
max-width:420px}img{max-width:100%;border:1px solid #eee}"""

_JS = """function sortTable(th){const table=th.closest('table');const idx=[...th.parentNode.children].indexOf(th);
const body=table.tBodies[0];const rows=[...body.rows];const asc=!th.classList.contains('sorted-asc');
[...th.parentNode.children].forEach(h=>h.classList.remove('sorted-asc','sorted-desc'));
th.classList.add(asc?'sorted-asc':'sorted-desc');rows.sort((a,b)=>{const x=a.cells[idx].dataset.v??a.cells[idx].innerText;
const y=b.cells[idx].dataset.v??b.cells[idx].innerText;const nx=parseFloat(x),ny=parseFloat(y);
const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?c:-c;});rows.forEach(r=>body.appendChild(r));}
document.querySelectorAll('table.sortable th').forEach(th=>th.addEventListener('click',()=>sortTable(th)));"""


def _table_html(header: list[str], rows: list[list], cls: str = "", ids: str = "") -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = []
    for r in rows:
        cells = []
        for c in r:
            if isinstance(c, float):
                cells.append(f'<td data-v="{c!r}">{_fmt(c)}</td>')
            elif isinstance(c, str) and "\n" in c:
                cells.append(f"<td><pre>{html.escape(c)}</pre></td>")
            else:
                cells.append(f"<td>{html.escape(str(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{cls}" id="{ids}"><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _sample_score(row: dict) -> float:
    s = row.get("scores") or {}
    for k in ("rougeL", "exact_match", "bleu"):
        if k in s:
            return float(s[k])
    if row.get("answer_tokens"):
        return -row["nll"] / row["answer_tokens"]
    return 0.0


def html_page(title: str, sections: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(sections)}"
            f"<script>{_JS}</script></body></html>")


def write_html_report(path: str, metrics: dict, predictions: list[dict], *, train_log: str | None = None) -> None:
    m = metrics["metrics"]
    keys = _ordered(m)
    sections = [f"<p>model <code>{html.escape(str(metrics['model']['name']))}</code> "
                f"({metrics['model']['arch']}), split {metrics['split']}, {metrics['num_samples']} examples</p>"]
    if "before" in metrics:
        b = metrics["before"]["metrics"]
        rows = [[k, b.get(k, float("nan")), m[k], m[k] - b.get(k, float("nan"))] for k in keys]
        sections.append("<h2>Before and after training</h2>" +
                        _table_html(["metric", "before", "after", "change"], rows, "sortable", "before-after"))
    task_rows = [["all", metrics["num_samples"], *[m.get(k, float("nan")) for k in keys]]]
    task_rows += [[t, v["num_samples"], *[v.get(k, float("nan")) for k in keys]]
                  for t, v in metrics.get("per_task", {}).items()]
    sections.append("<h2>Metrics per task</h2>" + _table_html(["task", "n", *[display_name(k) for k in keys]],
                                                              task_rows, "sortable", "per-task"))
    log = read_training_log(train_log)
    if log["loss"] or log["eval"]:
        best = (metrics.get("train") or {}).get("best") or {}
        png = png_bytes(training_curves_figure(log, best.get("step")), dpi=110)
        write_bytes_atomic(os.path.join(os.path.dirname(os.path.abspath(path)), rundir.CURVES), png)
        sections.append("<h2>Training curves</h2>" + img_tag(png, "training and eval loss over steps"))
    bar_keys = [k for k in ("bleu", "rougeL", "exact_match") if k in keys] or \
        [k for k in keys if k != "perplexity"][:3]
    if bar_keys:
        rows = {"after": m} if "before" in metrics else {"model": m}
        if "before" in metrics:
            rows = {"before": metrics["before"]["metrics"], **rows}
        sections.append("<h2>Metrics</h2>" + img_tag(png_bytes(metric_bars_figure(rows, bar_keys, "Generation metrics")),
                                                     "metric bars"))
    score_keys = _ordered({k for p in predictions for k in (p.get("scores") or {})})
    worst_first = sorted(predictions, key=_sample_score)
    rows = [[p["task"], p["prompt"], "\n---\n".join(p.get("references") or [p.get("reference", "")]),
             p.get("prediction", ""),
             *[float((p.get("scores") or {}).get(k, float("nan"))) for k in score_keys]] for p in worst_first]
    sections.append("<h2>Predictions (worst first; click a header to sort)</h2>" +
                    _table_html(["task", "prompt", "reference", "prediction", *score_keys], rows, "sortable",
                                "predictions"))
    write_text_atomic(path, html_page("sft evaluation report", sections))
