"""Bootstrap confidence intervals for a run's scores, resampling its eval items (predictions.jsonl).

Each resample draws the items with replacement and recomputes the corpus score the way the metric does:
perplexity from summed NLL and token counts, BLEU from summed sacrebleu sufficient statistics (what
sacrebleu's own paired bootstrap does), the mean-of-items metrics (ROUGE, exact match) as means. Written
here because sacrebleu bootstraps only BLEU/chrF/TER and only for system pairs.
"""

from __future__ import annotations


import numpy as np

from ..metrics import METRICS, key_info


def _statistic(key: str, rows: list[dict], tokenize: str | None = None):
    """A function of resampled item indices -> the corpus score, or None when rows cannot give it: the metric's own
    statistic when it declares one (`Metric.resample`), else the mean of the items' scores."""
    metric = key_info(key)[0]
    if metric is not None and metric.resample is not None:
        return metric.resample(rows, key, tokenize)
    if not all(key in (r.get("scores") or {}) for r in rows):
        return None
    values = np.array([r["scores"][key] for r in rows], dtype=np.float64)
    return lambda idx: float(values[idx].mean())


def bootstrap_intervals(rows: list[dict], keys: list[str], *, resamples: int = 1000, level: float = 0.95,
                        seed: int = 0, tokenize: str | None = None) -> dict[str, list[float]]:
    """{key: [low, high]}: the percentile interval of each score over `resamples` resamples of the items.
    The same resampled indices serve every key; keys the rows cannot recompute are left out. `tokenize`: the
    set's recorded decision (metrics.json), so BLEU resamples split text as the score did."""
    if not rows or resamples <= 0:
        return {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(rows), size=(resamples, len(rows)))
    known = {k for m in METRICS.values() for k in m.keys}
    out = {}
    for key in keys:
        stat = _statistic(key, rows, tokenize) if key in known else None
        if stat is None:
            continue
        values = np.array([stat(idx) for idx in draws])
        lo, hi = np.quantile(values, [(1 - level) / 2, 1 - (1 - level) / 2])
        out[key] = [float(lo), float(hi)]
    return out
