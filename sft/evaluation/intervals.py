"""Bootstrap confidence intervals for a run's scores, resampling its eval items (predictions.jsonl).

Each resample draws the items with replacement and recomputes the corpus score the way the metric does:
perplexity from summed NLL and token counts, BLEU from summed sacrebleu sufficient statistics (what
sacrebleu's own paired bootstrap does), the mean-of-items metrics (ROUGE, exact match) as means. Written
here because sacrebleu bootstraps only BLEU/chrF/TER and only for system pairs.
"""

from __future__ import annotations

import math

import numpy as np

from ..metrics import METRICS, decide_tokenize, reference_streams


def _bleu_stats(rows: list[dict], tokenize: str | None):
    from sacrebleu.metrics import BLEU

    refs = [list(r["references"]) for r in rows]
    bleu = BLEU(tokenize=tokenize or decide_tokenize(refs))
    stats = np.array(bleu._extract_corpus_statistics([r["prediction"] for r in rows], reference_streams(refs)),
                     dtype=np.int64)
    return lambda idx: float(bleu._compute_score_from_stats(list(stats[idx].sum(0))).score)


def _statistic(key: str, rows: list[dict], tokenize: str | None = None):
    """A function of resampled item indices -> the corpus score, or None when rows cannot give it."""
    if key == "perplexity":
        if not all("nll" in r and r.get("answer_tokens") for r in rows):
            return None
        nll = np.array([r["nll"] for r in rows], dtype=np.float64)
        cnt = np.array([r["answer_tokens"] for r in rows], dtype=np.float64)
        return lambda idx: math.exp(nll[idx].sum() / cnt[idx].sum())
    if key == "bleu":
        return _bleu_stats(rows, tokenize) if all("prediction" in r and r.get("references") for r in rows) else None
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
