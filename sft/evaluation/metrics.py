"""The metrics registry: every score sft reports, with its scorer, unit, direction and tolerance.

Text metrics compare generated predictions with one or more references per item:
- `bleu`: sacrebleu corpus BLEU, tokenize 13a, or `zh` when any reference contains CJK; several
  references per item are passed as several reference streams (None where an item has fewer).
- `rouge`: rouge-score F1 of rouge1/2/L/Lsum. Pairs without CJK use rouge-score's own default
  tokenizer; a pair where the prediction or a reference contains CJK uses a tokenizer that keeps
  every CJK character as a token (rouge-score's drops them). Several references: the best-scoring
  one per type (rouge-score's `score_multi`).
- `exact_match`: prediction.strip() == reference.strip() for any reference.
- `exact_match_normalized`: SQuAD-style: lower case, no punctuation (any script), no English
  articles, one space.
Perplexity needs the model and is computed in `perplexity.py`; it is registered here for its unit
and direction. `evaluate:NAME` metrics load through the `evaluate` package (extra `hub-metrics`).
Adding a metric is one `register(Metric(...))`; recipes, reports, cards and bench tables read it here.
"""

from __future__ import annotations

import difflib
import re
import string
import unicodedata
from dataclasses import dataclass, field
from typing import Callable

from ..errors import EvalError
from ..text import CJK, cjk_tokens, has_cjk

References = list[list[str]]  # one list of references per item


@dataclass(frozen=True)
class Metric:
    """One recipe metric name and the score keys it produces."""

    name: str
    kind: str  # "text" (predictions vs references) or "model" (needs the model, e.g. perplexity)
    keys: tuple[str, ...]  # keys written to metrics.json
    corpus: Callable[[list[str], References], dict] | None = None
    per_sample: Callable[[str, list[str]], dict] | None = None
    higher_is_better: bool = True
    unit: str = "0-1"
    display: dict = field(default_factory=dict)  # key -> display / model-card name
    tolerance: float = 0.005  # bench --check tolerance (absolute; relative when relative_tolerance)
    relative_tolerance: bool = False
    table_keys: tuple[str, ...] | None = None  # keys shown in compact tables (bench); None: all keys
    doc: str = ""

    def summary_keys(self) -> tuple[str, ...]:
        return self.keys if self.table_keys is None else self.table_keys


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str, *, field_name: str = "eval.metrics", file: str | None = None) -> Metric:
    if name in METRICS:
        return METRICS[name]
    close = difflib.get_close_matches(name, list(METRICS), n=1)
    raise EvalError(f"unknown metric {name!r}", file=file, field=field_name,
                    fix=f"did you mean {close[0]!r}?" if close else
                    f"use {', '.join(METRICS)} or evaluate:NAME")


def check_metric_names(names: list[str], *, field_name: str = "eval.metrics", file: str | None = None) -> None:
    for n in names:
        if not n.startswith("evaluate:"):
            get_metric(n, field_name=field_name, file=file)


def key_info(key: str) -> tuple[Metric | None, str]:
    """(the metric that produces `key`, its display name)."""
    for m in METRICS.values():
        if key in m.keys:
            return m, m.display.get(key, key)
    return None, key


def table_keys(metric_names: list[str]) -> list[str]:
    """The score keys a compact table shows for these recipe metric names, in registry order."""
    wanted = set(metric_names)
    return [k for m in METRICS.values() if m.name in wanted for k in m.summary_keys()]


def tolerance(key: str) -> tuple[float, bool]:
    """(bench --check tolerance, whether it is relative) for a score key."""
    m, _ = key_info(key)
    return (m.tolerance, m.relative_tolerance) if m else (0.0, False)


def higher_is_better(key: str) -> bool:
    m, _ = key_info(key)
    return True if m is None else m.higher_is_better


def display_name(key: str) -> str:
    return key_info(key)[1]


# ---- BLEU ---------------------------------------------------------------------------------------

def bleu_tokenize_name(refs: list[str]) -> str:
    # sacrebleu's zh tokenizer splits CJK characters and tokenises other text like 13a, so it is right for
    # mixed corpora too; with 13a an unspaced Chinese answer would be a single token.
    return "zh" if any(CJK.search(r) for r in refs) else "13a"


def reference_streams(references: References) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where an item has fewer references."""
    width = max((len(r) for r in references), default=1)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def corpus_bleu(predictions: list[str], references: References | list[str]) -> float:
    """Corpus BLEU (0-100) over items with one or several references each."""
    import sacrebleu

    refs = _as_multi(references)
    tok = bleu_tokenize_name([r for rs in refs for r in rs])
    return float(sacrebleu.corpus_bleu(predictions, reference_streams(refs), tokenize=tok).score)


def sentence_bleu(prediction: str, references: list[str] | str) -> float:
    import sacrebleu

    refs = [references] if isinstance(references, str) else list(references)
    return float(sacrebleu.sentence_bleu(prediction, refs, tokenize=bleu_tokenize_name(refs)).score)


# ---- ROUGE --------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class CJKTokenizer:
    """rouge_score tokenizer for text with CJK: lower-cased words, each CJK character its own token.

    rouge-score's default tokenizer keeps only [a-z0-9] and so scores any Chinese pair 0."""

    def tokenize(self, text: str) -> list[str]:
        return cjk_tokens(text)


_scorers: dict[bool, object] = {}


def rouge_scorer(cjk: bool = False):
    """rouge-score's RougeScorer: its default tokenizer, or the CJK-keeping one (cached)."""
    if cjk not in _scorers:
        from rouge_score import rouge_scorer as rs

        _scorers[cjk] = rs.RougeScorer(list(ROUGE_TYPES), tokenizer=CJKTokenizer() if cjk else None)
    return _scorers[cjk]


def rouge_pair(prediction: str, references: list[str] | str) -> dict[str, float]:
    """F1 of rouge1/2/L/Lsum (best over references, per type)."""
    refs = [references] if isinstance(references, str) else list(references)
    scorer = rouge_scorer(has_cjk(prediction) or any(has_cjk(r) for r in refs))
    scores = scorer.score(refs[0], prediction) if len(refs) == 1 else scorer.score_multi(refs, prediction)
    return {k: scores[k].fmeasure for k in ROUGE_TYPES}


# ---- exact match --------------------------------------------------------------------------------

def exact_match(prediction: str, references: list[str] | str) -> float:
    refs = [references] if isinstance(references, str) else references
    p = prediction.strip()
    return float(any(p == r.strip() for r in refs))


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (lower, remove punctuation, articles, extra whitespace), with punctuation
    taken from every script (Unicode category P) as well as string.punctuation."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation and not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_normalized(prediction: str, references: list[str] | str) -> float:
    refs = [references] if isinstance(references, str) else references
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(r) for r in refs))


# ---- registry entries ---------------------------------------------------------------------------

def _mean_of(per_sample: Callable[[str, list[str]], dict]):
    def corpus(predictions: list[str], references: References) -> dict:
        scores = [per_sample(p, r) for p, r in zip(predictions, references)]
        keys = scores[0].keys() if scores else ()
        return {k: sum(s[k] for s in scores) / len(scores) for k in keys}
    return corpus


def _em(p, r):
    return {"exact_match": exact_match(p, r)}


def _emn(p, r):
    return {"exact_match_normalized": exact_match_normalized(p, r)}


register(Metric("perplexity", "model", ("perplexity",), higher_is_better=False, unit="exp(NLL), >= 1",
                display={"perplexity": "Perplexity"}, tolerance=0.02, relative_tolerance=True,
                doc="exp(mean NLL over answer tokens)"))
register(Metric("bleu", "text", ("bleu",), corpus=lambda p, r: {"bleu": corpus_bleu(p, r)},
                per_sample=lambda p, r: {"bleu": sentence_bleu(p, r)}, unit="0-100", display={"bleu": "BLEU"},
                tolerance=0.5, doc="sacrebleu corpus BLEU (13a; zh when references contain CJK)"))
register(Metric("rouge", "text", ROUGE_TYPES, corpus=_mean_of(rouge_pair), per_sample=rouge_pair,
                display={"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"},
                table_keys=("rougeL",), doc="rouge-score F1, mean over items (best reference per item)"))
register(Metric("exact_match", "text", ("exact_match",), corpus=_mean_of(_em), per_sample=_em,
                display={"exact_match": "Exact match"}, doc="strict match after strip(), any reference"))
register(Metric("exact_match_normalized", "text", ("exact_match_normalized",), corpus=_mean_of(_emn),
                per_sample=_emn, display={"exact_match_normalized": "Exact match (normalised)"},
                doc="SQuAD-style normalised match, any reference"))


def _as_multi(references) -> References:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def score_texts(predictions: list[str], references, metrics: list[str]) -> tuple[dict, list[dict]]:
    """Corpus scores and per-sample scores. `references`: one string or a list of strings per item."""
    refs = _as_multi(references)
    if len(predictions) != len(refs):
        raise EvalError(f"{len(predictions)} predictions for {len(refs)} references")
    per_sample: list[dict] = [{} for _ in predictions]
    corpus: dict[str, float] = {}
    for name in metrics:
        if name.startswith("evaluate:"):
            corpus.update(score_with_evaluate(name.split(":", 1)[1], predictions, refs))
            continue
        m = get_metric(name)
        if m.kind != "text" or not predictions:
            continue
        corpus.update(m.corpus(predictions, refs))
        if m.per_sample is not None:
            for i, (p, r) in enumerate(zip(predictions, refs)):
                per_sample[i].update(m.per_sample(p, r))
    return corpus, per_sample


def score_with_evaluate(name: str, predictions: list[str], references: References) -> dict[str, float]:
    """A metric from the `evaluate` package (extra: hub-metrics). Its script comes from the Hub."""
    try:
        import evaluate
    except ImportError as e:
        raise EvalError(f"metric evaluate:{name} needs the evaluate package", field="eval.metrics",
                        fix="pip install 'sft[hub-metrics]'") from e
    single = all(len(r) == 1 for r in references)
    try:
        metric = evaluate.load(name)
        result = metric.compute(predictions=predictions,
                                references=[r[0] for r in references] if single else references)
    except Exception as e:
        raise EvalError(f"cannot load metric evaluate:{name} ({type(e).__name__}: {str(e).splitlines()[0][:150]})",
                        field="eval.metrics",
                        fix="evaluate fetches metric scripts from the Hub: go online once, or use the built-in "
                            "bleu / rouge / exact_match") from e
    return {f"{name}_{k}" if k != name else name: float(v) for k, v in result.items()
            if isinstance(v, (int, float))}
