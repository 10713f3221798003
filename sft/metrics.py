"""The metrics registry: every score sft reports, with its scorer, unit, direction and tolerance.

Text metrics compare generated predictions with one or more references per item. The tokenisation is
decided once per scored set, from its references alone (`decide_tokenize`; `eval.tokenize` / `sft score
--tokenize` override it): `zh` when any reference contains CJK, else `13a`; `char` on request. A prediction
never changes how a set is scored, and BLEU and ROUGE use the same decision:
- `bleu`: sacrebleu corpus BLEU with that tokenize; several references per item are passed as several
  reference streams (None where an item has fewer).
- `rouge`: rouge-score F1 of rouge1/2/L/Lsum, with rouge-score's own default tokenizer for `13a`, a
  tokenizer that keeps every CJK character as a token for `zh` (rouge-score's drops them), one token per
  character for `char`. Several references: the best-scoring one per type (rouge-score's `score_multi`).
- `exact_match`: prediction.strip() == reference.strip() for any reference.
- `exact_match_normalized`: SQuAD-style: lower case, no punctuation (any script), no English
  articles, one space.
- `f1`: SQuAD token F1, the official evaluation script's logic (its normalisation, bag-of-tokens overlap,
  best over references), mean over items.
- `distinct_1` / `distinct_2`: distinct n-grams / all n-grams over every prediction of the set (Li et al.,
  2016), with the set's tokenisation; a corpus statistic (no per-item value, so no bootstrap interval).
- `accuracy`: a predicted label equals a reference label after normalisation (Unicode NFKC, case-folded,
  outer whitespace and trailing punctuation removed: "Positive." == "positive"), any reference.
- `execution_accuracy`: predicted and reference SQL run on a SQLite database (`sql.py`: read-only, SELECT
  only, a time limit per query) and their results compare as multisets (ordered when the reference has
  ORDER BY); `execution_invalid` is the share of predictions that do not run. Items whose references are not
  SQL that runs are left out of both (a mixed eval set scores its SQL task).
- `tool_call_exact`: the prediction's tool calls (parsed by `toolcalls.parse`, whichever template family
  wrote them) equal the reference's: the same function names with JSON-equal arguments, parallel calls in any
  order. `tool_name_accuracy`: the same function names. Both over the items whose reference calls a tool.
  `tool_call_parse_rate`: of the predictions that write a tool-call marker, the share that parse into calls.
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

from .errors import EvalError
from .text import CJK, cjk_tokens

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
    tokenized: bool = False  # corpus / per_sample take the set's tokenize= decision
    options: tuple[str, ...] = ()  # other keyword inputs it needs from the run (e.g. sql_database)
    lower_is_better_keys: tuple[str, ...] = ()  # keys that run the other way (a rate of failures)
    # the corpus statistic over resampled items, for bootstrap intervals: (scored rows, key, tokenize) -> a function
    # of resampled item indices -> the score, or None when the rows cannot give it; None: the mean of the items'
    # own scores (right for item means, wrong for corpus statistics such as BLEU and perplexity)
    resample: Callable | None = None

    def summary_keys(self) -> tuple[str, ...]:
        return self.keys if self.table_keys is None else self.table_keys

    @property
    def scale(self) -> float:
        """What a score is divided by to read 0-1 (100 for 0-100 metrics)."""
        return 100.0 if self.unit == "0-100" else 1.0


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
            continue
        name = n.split(":", 1)[1]
        if name in EVALUATE_NOT_TEXT:
            ours = EVALUATE_NOT_TEXT[name]
            raise EvalError(f"evaluate:{name} scores class ids, numbers or structured answers, and sft hands every "
                            "metric generated text", file=file, field=field_name,
                            fix=f"use sft's {ours}" if ours else "score it outside sft on converted predictions")


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
    return True if m is None else m.higher_is_better and key not in m.lower_is_better_keys


def display_name(key: str) -> str:
    return key_info(key)[1]


# ---- tokenisation, decided once per scored set ----------------------------------------------------

TOKENIZE = ("auto", "13a", "zh", "char")


def decide_tokenize(references, requested: str = "auto") -> str:
    """The tokenisation of a whole scored set: `requested` unless auto; else `zh` when any reference contains
    CJK (sacrebleu's zh splits CJK characters and tokenises other text like 13a, so mixed sets are right too;
    with 13a an unspaced Chinese answer would be one token), else `13a`. Predictions are not looked at."""
    if requested != "auto":
        if requested not in TOKENIZE:
            raise EvalError(f"unknown tokenize {requested!r}", field="eval.tokenize",
                            fix=f"use one of {', '.join(TOKENIZE)}")
        return requested
    return "zh" if any(CJK.search(r) for rs in _as_multi(references) for r in rs) else "13a"


# ---- BLEU ---------------------------------------------------------------------------------------


def reference_streams(references: References) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where an item has fewer references."""
    width = max((len(r) for r in references), default=1)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def corpus_bleu(predictions: list[str], references: References | list[str], tokenize: str | None = None) -> float:
    """Corpus BLEU (0-100) over items with one or several references each."""
    import sacrebleu

    refs = _as_multi(references)
    tok = tokenize or decide_tokenize(refs)
    return float(sacrebleu.corpus_bleu(predictions, reference_streams(refs), tokenize=tok).score)


def sentence_bleu(prediction: str, references: list[str] | str, tokenize: str | None = None) -> float:
    import sacrebleu

    refs = [references] if isinstance(references, str) else list(references)
    return float(sacrebleu.sentence_bleu(prediction, refs, tokenize=tokenize or decide_tokenize([refs])).score)


# ---- ROUGE --------------------------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class CJKTokenizer:
    """rouge_score tokenizer for text with CJK: lower-cased words, each CJK character its own token.

    rouge-score's default tokenizer keeps only [a-z0-9] and so scores any Chinese pair 0."""

    def tokenize(self, text: str) -> list[str]:
        return cjk_tokens(text)


class CharTokenizer:
    """rouge_score tokenizer for `tokenize: char`: every non-space character (lower-cased) is a token."""

    def tokenize(self, text: str) -> list[str]:
        return [c for c in text.lower() if not c.isspace()]


_scorers: dict[str, object] = {}


def rouge_scorer(tokenize: str = "13a"):
    """rouge-score's RougeScorer for a tokenize decision (cached): its own default tokenizer for 13a, the
    CJK-keeping one for zh, one token per character for char."""
    if tokenize not in _scorers:
        from rouge_score import rouge_scorer as rs

        tokenizer = {"13a": None, "zh": CJKTokenizer(), "char": CharTokenizer()}[tokenize]
        _scorers[tokenize] = rs.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    return _scorers[tokenize]


def rouge_pair(prediction: str, references: list[str] | str, tokenize: str | None = None) -> dict[str, float]:
    """F1 of rouge1/2/L/Lsum (best over references, per type). Without `tokenize`, this pair's references
    decide it (a set is scored with the set's decision: `score_texts`)."""
    refs = [references] if isinstance(references, str) else list(references)
    scorer = rouge_scorer(tokenize or decide_tokenize([refs]))
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


# ---- SQuAD F1, distinct-n, label accuracy ---------------------------------------------------------

_PUNCT = set(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _squad_normalize(text: str) -> str:
    """The official SQuAD v1.1 script's normalize_answer: lower, drop string.punctuation and English articles,
    one space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_SQUAD_ARTICLES.sub(" ", text).split())


def squad_f1(prediction: str, references: list[str] | str) -> float:
    """The official SQuAD script's f1_score, maximised over the references (metric_max_over_ground_truths)."""
    from collections import Counter

    refs = [references] if isinstance(references, str) else references
    pred = _squad_normalize(prediction).split()
    best = 0.0
    for ref in refs:
        truth = _squad_normalize(ref).split()
        same = sum((Counter(pred) & Counter(truth)).values())
        if same:
            precision, recall = same / len(pred), same / len(truth)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


_TOKENIZER_13A = None


def _words(text: str, tokenize: str) -> list[str]:
    """The set's tokenisation as a word list: sacrebleu's 13a, CJK characters as tokens, or characters."""
    if tokenize == "zh":
        return cjk_tokens(text)
    if tokenize == "char":
        return [c for c in text if not c.isspace()]
    global _TOKENIZER_13A
    if _TOKENIZER_13A is None:
        from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

        _TOKENIZER_13A = Tokenizer13a()
    return _TOKENIZER_13A(text).split()


def distinct_n(predictions: list[str], n: int, tokenize: str = "13a") -> float:
    """Distinct n-grams / total n-grams over all predictions (0 when they hold no n-gram)."""
    grams = [tuple(w[i:i + n]) for p in predictions for w in [_words(p, tokenize)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def normalize_label(text: str) -> str:
    """A class label as written by a model or a dataset: NFKC, case-folded, outer whitespace and trailing
    punctuation (any script) removed."""
    text = unicodedata.normalize("NFKC", text).casefold().strip()
    while text and unicodedata.category(text[-1]).startswith("P"):
        text = text[:-1].rstrip()
    return text


def label_accuracy(prediction: str, references: list[str] | str) -> float:
    refs = [references] if isinstance(references, str) else references
    return float(any(normalize_label(prediction) == normalize_label(r) for r in refs))


# ---- registry entries ---------------------------------------------------------------------------

def _mean_of(per_sample: Callable[..., dict]):
    """The corpus score of a per-item metric: each key's mean over the items that have it (a metric returns {} for
    an item it does not apply to, e.g. a reference that is not SQL or calls no tool); a key no item has is absent."""
    def corpus(predictions: list[str], references: References, **opts) -> dict:
        sums: dict[str, list] = {}
        for p, r in zip(predictions, references):
            for k, v in per_sample(p, r, **opts).items():
                total = sums.setdefault(k, [0, 0])
                total[0] += v
                total[1] += 1
        return {k: t / n for k, (t, n) in sums.items()}
    return corpus


def _em(p, r):
    return {"exact_match": exact_match(p, r)}


def _emn(p, r):
    return {"exact_match_normalized": exact_match_normalized(p, r)}


def _perplexity_resample(rows: list[dict], key: str, tokenize: str | None = None):
    """exp(summed NLL / summed answer tokens) over the resampled items (not a mean of item perplexities)."""
    import math

    import numpy as np

    if not all("nll" in r and r.get("answer_tokens") for r in rows):
        return None
    nll = np.array([r["nll"] for r in rows], dtype=np.float64)
    cnt = np.array([r["answer_tokens"] for r in rows], dtype=np.float64)
    return lambda idx: math.exp(nll[idx].sum() / cnt[idx].sum())


def _bleu_resample(rows: list[dict], key: str, tokenize: str | None = None):
    """Corpus BLEU from the resampled items' summed sacrebleu sufficient statistics (not a mean of sentence BLEU)."""
    import numpy as np
    from sacrebleu.metrics import BLEU

    if not all("prediction" in r and r.get("references") for r in rows):
        return None
    refs = [list(r["references"]) for r in rows]
    bleu = BLEU(tokenize=tokenize or decide_tokenize(refs))
    stats = np.array(bleu._extract_corpus_statistics([r["prediction"] for r in rows], reference_streams(refs)),
                     dtype=np.int64)
    return lambda idx: float(bleu._compute_score_from_stats(list(stats[idx].sum(0))).score)


register(Metric("perplexity", "model", ("perplexity",), higher_is_better=False, unit="exp(NLL), >= 1",
                display={"perplexity": "Perplexity"}, tolerance=0.02, relative_tolerance=True,
                resample=_perplexity_resample, doc="exp(mean NLL over answer tokens)"))
register(Metric("bleu", "text", ("bleu",), corpus=lambda p, r, tokenize=None: {"bleu": corpus_bleu(p, r, tokenize)},
                per_sample=lambda p, r, tokenize=None: {"bleu": sentence_bleu(p, r, tokenize)}, unit="0-100",
                display={"bleu": "BLEU"}, tolerance=0.5, tokenized=True, resample=_bleu_resample,
                doc="sacrebleu corpus BLEU (13a; zh when references contain CJK)"))
register(Metric("rouge", "text", ROUGE_TYPES, corpus=_mean_of(rouge_pair), per_sample=rouge_pair,
                display={"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"},
                table_keys=("rougeL",), tokenized=True,
                doc="rouge-score F1, mean over items (best reference per item)"))
register(Metric("exact_match", "text", ("exact_match",), corpus=_mean_of(_em), per_sample=_em,
                display={"exact_match": "Exact match"}, doc="strict match after strip(), any reference"))
register(Metric("exact_match_normalized", "text", ("exact_match_normalized",), corpus=_mean_of(_emn),
                per_sample=_emn, display={"exact_match_normalized": "Exact match (normalised)"},
                doc="SQuAD-style normalised match, any reference"))


def _f1(p, r):
    return {"f1": squad_f1(p, r)}


def _acc(p, r):
    return {"accuracy": label_accuracy(p, r)}


register(Metric("f1", "text", ("f1",), corpus=_mean_of(_f1), per_sample=_f1, display={"f1": "Token F1 (SQuAD)"},
                doc="SQuAD token F1 (official script's normalisation), best reference per item"))
register(Metric("distinct", "text", ("distinct_1", "distinct_2"), tokenized=True,
                corpus=lambda p, r, tokenize="13a": {"distinct_1": distinct_n(p, 1, tokenize),
                                                     "distinct_2": distinct_n(p, 2, tokenize)},
                display={"distinct_1": "Distinct-1", "distinct_2": "Distinct-2"},
                doc="distinct n-grams / all n-grams over the predictions (diversity; references unused)"))
register(Metric("accuracy", "text", ("accuracy",), corpus=_mean_of(_acc), per_sample=_acc, display={"accuracy": "Accuracy"},
                doc="label match after normalisation (case, width, trailing punctuation), any reference"))

_databases: dict[str, object] = {}


def _sql_item(p: str, r: list[str], sql_database: str | None = None) -> dict:
    from .sql import Database, execution_scores

    if sql_database not in _databases:
        _databases[sql_database] = Database(sql_database)
    return execution_scores(_databases[sql_database], p, r)


register(Metric("execution_accuracy", "text", ("execution_accuracy", "execution_invalid"), corpus=_mean_of(_sql_item),
                per_sample=_sql_item, options=("sql_database",), table_keys=("execution_accuracy",),
                lower_is_better_keys=("execution_invalid",),
                display={"execution_accuracy": "Execution accuracy", "execution_invalid": "SQL that does not run"},
                doc="predicted and reference SQL give the same result on eval.sql_database"))

def _reference_calls(references: list[str]):
    from .toolcalls import parse

    return next((c for c in (parse(r).calls for r in references) if c), None)


def _tool_exact(p: str, r: list[str]) -> dict:
    from .toolcalls import parse, same_calls

    ref = _reference_calls(r)
    return {} if ref is None else {"tool_call_exact": float(same_calls(parse(p).calls, ref))}


def _tool_names(p: str, r: list[str]) -> dict:
    from .toolcalls import parse, same_names

    ref = _reference_calls(r)
    return {} if ref is None else {"tool_name_accuracy": float(same_names(parse(p).calls, ref))}


def _tool_parse(p: str, r: list[str]) -> dict:
    from .toolcalls import parse

    got = parse(p)
    return {"tool_call_parse_rate": float(got.valid and bool(got.calls))} if got.attempted else {}


for _name, _fn, _display, _doc in (
        ("tool_call_exact", _tool_exact, "Tool calls exact",
         "same tool names and JSON-equal arguments as the reference (parallel calls in any order)"),
        ("tool_name_accuracy", _tool_names, "Tool names", "same tool names as the reference"),
        ("tool_call_parse_rate", _tool_parse, "Tool calls that parse",
         "of the predictions that write a tool-call marker, the share that parse")):
    register(Metric(_name, "text", (_name,), corpus=_mean_of(_fn), per_sample=_fn,
                    display={_name: _display}, doc=_doc))

# `evaluate` metrics that take class ids, numbers or SQuAD dicts, not generated text: refused up front
EVALUATE_NOT_TEXT = {
    "accuracy": "accuracy", "f1": "f1", "precision": "accuracy", "recall": "accuracy", "matthews_correlation":
    "accuracy", "roc_auc": None, "squad": "f1 and exact_match_normalized", "squad_v2": "f1 and "
    "exact_match_normalized", "glue": None, "super_glue": None, "xnli": "accuracy", "pearsonr": None,
    "spearmanr": None, "mse": None, "mae": None, "r_squared": None, "code_eval": None, "seqeval": None,
    "competition_math": "exact_match_normalized"}


def _as_multi(references) -> References:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def score_texts(predictions: list[str], references, metrics: list[str], tokenize: str = "auto",
                options: dict | None = None) -> tuple[dict, list[dict]]:
    """Corpus scores and per-sample scores. `references`: one string or a list of strings per item.
    `tokenize`: a decision already made for the whole set (`decide_tokenize`), or auto to make it here.
    `options`: the run's inputs metrics declare (`Metric.options`, e.g. sql_database: a resolved path)."""
    refs = _as_multi(references)
    if len(predictions) != len(refs):
        raise EvalError(f"{len(predictions)} predictions for {len(refs)} references")
    tok = decide_tokenize(refs, tokenize)
    per_sample: list[dict] = [{} for _ in predictions]
    corpus: dict[str, float] = {}
    for name in metrics:
        if name.startswith("evaluate:"):
            corpus.update(score_with_evaluate(name.split(":", 1)[1], predictions, refs))
            continue
        m = get_metric(name)
        if m.kind != "text" or not predictions:
            continue
        opts = {"tokenize": tok} if m.tokenized else {}
        opts.update({k: (options or {}).get(k) for k in m.options})
        corpus.update(m.corpus(predictions, refs, **opts))
        if m.per_sample is not None:
            for i, (p, r) in enumerate(zip(predictions, refs)):
                per_sample[i].update(m.per_sample(p, r, **opts))
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
