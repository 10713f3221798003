"""Text metrics: BLEU (sacrebleu), ROUGE (rouge_score with a CJK-keeping tokenizer), exact match.

One registry (`TEXT_METRICS`) maps a recipe metric name to a corpus scorer and a per-sample scorer.
Perplexity needs the model and lives in `perplexity.py`. `evaluate:NAME` metrics load through the
`evaluate` package (extra `hub-metrics`), which needs the Hub the first time.
"""

from __future__ import annotations

import re
import string
import unicodedata

from ..errors import EvalError

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]|[^\W_]+", re.UNICODE)


def is_cjk_text(texts: list[str], threshold: float = 0.3) -> bool:
    """True when at least `threshold` of the non-empty texts contain CJK characters."""
    nonempty = [t for t in texts if t.strip()]
    return bool(nonempty) and sum(bool(_CJK.search(t)) for t in nonempty) / len(nonempty) >= threshold


class CJKTokenizer:
    """rouge_score tokenizer: lower-cased words, with every CJK character its own token.

    rouge_score's default tokenizer keeps only [a-z0-9] and so scores any Chinese pair 0."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _bleu_tokenizer(refs: list[str]) -> str:
    # sacrebleu's zh tokenizer splits CJK characters and tokenises other text like 13a, so it is right for
    # mixed corpora too; with 13a an unspaced Chinese answer would be a single token.
    return "zh" if any(_CJK.search(r) for r in refs) else "13a"


def corpus_bleu(predictions: list[str], references: list[str] | list[list[str]]) -> float:
    """Corpus BLEU (0-100). `references` is one stream or a list of streams (one per reference set)."""
    import sacrebleu

    streams = [references] if references and isinstance(references[0], str) else references
    tok = _bleu_tokenizer([r for s in streams for r in s])
    return float(sacrebleu.corpus_bleu(predictions, streams, tokenize=tok).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference], tokenize=_bleu_tokenizer([reference])).score)


_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_scorer = None


def rouge_scorer():
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer as rs

        _scorer = rs.RougeScorer(list(_ROUGE_TYPES), tokenizer=CJKTokenizer())
    return _scorer


def rouge_pair(prediction: str, reference: str) -> dict[str, float]:
    """F1 of rouge1/2/L/Lsum for one pair (target = reference)."""
    scores = rouge_scorer().score(reference, prediction)
    return {k: scores[k].fmeasure for k in _ROUGE_TYPES}


def normalize_answer(text: str) -> str:
    """Light normalisation for exact match: NFKC, lower case, no surrounding punctuation, one space."""
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = text.strip(string.punctuation + "。，！？；：、\"'“”‘’ ")
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def score_texts(predictions: list[str], references: list[str], metrics: list[str]) -> tuple[dict, list[dict]]:
    """Corpus scores (BLEU and ROUGE/EM as 0-100 / 0-1 means) and per-sample scores."""
    if len(predictions) != len(references):
        raise EvalError(f"{len(predictions)} predictions for {len(references)} references")
    per_sample: list[dict] = [{} for _ in predictions]
    corpus: dict[str, float] = {}
    n = max(len(predictions), 1)
    if "rouge" in metrics:
        sums = dict.fromkeys(_ROUGE_TYPES, 0.0)
        for i, (p, r) in enumerate(zip(predictions, references)):
            s = rouge_pair(p, r)
            per_sample[i].update(s)
            for k in sums:
                sums[k] += s[k]
        corpus.update({k: v / n for k, v in sums.items()})
    if "exact_match" in metrics:
        em = [exact_match(p, r) for p, r in zip(predictions, references)]
        for i, v in enumerate(em):
            per_sample[i]["exact_match"] = v
        corpus["exact_match"] = sum(em) / n
    if "bleu" in metrics:
        corpus["bleu"] = corpus_bleu(predictions, references)
        for i, (p, r) in enumerate(zip(predictions, references)):
            per_sample[i]["bleu"] = sentence_bleu(p, r)
    for m in metrics:
        if m.startswith("evaluate:"):
            corpus.update(score_with_evaluate(m.split(":", 1)[1], predictions, references))
    return corpus, per_sample


def score_with_evaluate(name: str, predictions: list[str], references: list[str]) -> dict[str, float]:
    """A metric from the `evaluate` package (extra: hub-metrics). Its script comes from the Hub."""
    try:
        import evaluate
    except ImportError as e:
        raise EvalError(f"metric evaluate:{name} needs the evaluate package", field="eval.metrics",
                        fix="pip install 'sft[hub-metrics]'") from e
    try:
        metric = evaluate.load(name)
        result = metric.compute(predictions=predictions, references=references)
    except Exception as e:
        raise EvalError(f"cannot load metric evaluate:{name} ({type(e).__name__}: {str(e).splitlines()[0][:150]})",
                        field="eval.metrics",
                        fix="evaluate fetches metric scripts from the Hub: go online once, or use the built-in "
                            "bleu / rouge / exact_match") from e
    return {f"{name}_{k}" if k != name else name: float(v) for k, v in result.items()
            if isinstance(v, (int, float))}
