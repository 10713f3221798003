"""Every text score equals the library it names, called directly (1e-6), on real English and Chinese
pairs; multi-reference scoring; strict and normalised exact match; the metrics registry."""

import json
import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from conftest import shared
from sft.evaluation.metrics import CJKTokenizer, corpus_bleu, exact_match, exact_match_normalized, rouge_pair, score_texts

TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]


def _pairs(path, n, seed=0):
    """(prediction, reference) pairs of real text: an answer scored against a sibling answer or itself edited."""
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)
    outs = [r["output"] for r in rows if r["output"].strip()][: n + 1]
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        ref = outs[i]
        words = ref.split()
        pred = " ".join(w for w in words if rng.random() > 0.3) if i % 3 else outs[i + 1]
        pairs.append((pred, ref))
    return pairs


def test_sacrebleu_reference_value_multi_reference():
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    streams = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
               ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]
    per_item = [list(r) for r in zip(*streams)]
    assert corpus_bleu(hyps, per_item) == pytest.approx(48.530827, abs=1e-6)
    # a variable number of references per item equals sacrebleu with None where a stream has no reference
    ragged = [per_item[0], per_item[1][:1], per_item[2]]
    direct = sacrebleu.corpus_bleu(hyps, [[r[0] for r in ragged], [r[1] if len(r) > 1 else None for r in ragged]])
    assert corpus_bleu(hyps, ragged) == pytest.approx(direct.score, abs=1e-9)


def test_english_rouge_equals_rouge_score_default_tokenizer():
    pairs = _pairs(shared("data", "llamafactory", "alpaca_en_demo.json"), 300)
    pairs += [("½ cup of café au lait", "1/2 cup of cafe au lait"), ("naïve résumé", "naive resume"),
              ("CO₂ levels rose 3½%", "CO2 levels rose 3.5%")]
    direct = rouge_scorer.RougeScorer(TYPES)
    means = dict.fromkeys(TYPES, 0.0)
    for pred, ref in pairs:
        ours = rouge_pair(pred, ref)
        theirs = direct.score(ref, pred)
        for k in TYPES:
            assert ours[k] == pytest.approx(theirs[k].fmeasure, abs=1e-9), (pred, ref, k)
            means[k] += theirs[k].fmeasure / len(pairs)
    corpus, _ = score_texts([p for p, _ in pairs], [r for _, r in pairs], ["rouge"])
    for k in TYPES:
        assert corpus[k] == pytest.approx(means[k], abs=1e-6)


def test_english_bleu_equals_sacrebleu():
    pairs = _pairs(shared("data", "llamafactory", "alpaca_en_demo.json"), 300, seed=1)
    direct = sacrebleu.corpus_bleu([p for p, _ in pairs], [[r for _, r in pairs]], tokenize="13a").score
    assert corpus_bleu([p for p, _ in pairs], [r for _, r in pairs]) == pytest.approx(direct, abs=1e-6)


def test_chinese_scores_equal_the_libraries_with_a_per_character_tokenizer():
    pairs = _pairs(shared("data", "llamafactory", "alpaca_zh_demo.json"), 200)
    pairs = [(p.replace(" ", ""), r) if i % 2 else (p, r) for i, (p, r) in enumerate(pairs)]
    direct = rouge_scorer.RougeScorer(TYPES, tokenizer=CJKTokenizer())
    for pred, ref in pairs:
        ours, theirs = rouge_pair(pred, ref), direct.score(ref, pred)
        assert all(ours[k] == pytest.approx(theirs[k].fmeasure, abs=1e-9) for k in TYPES)
    bleu = sacrebleu.corpus_bleu([p for p, _ in pairs], [[r for _, r in pairs]], tokenize="zh").score
    assert corpus_bleu([p for p, _ in pairs], [r for _, r in pairs]) == pytest.approx(bleu, abs=1e-6)
    assert corpus_bleu(["今天天气不好"], ["今天天气很好"]) == pytest.approx(53.73, abs=0.01)
    r = rouge_pair("今天天气不好", "今天天气很好")
    assert r["rouge1"] == pytest.approx(0.8333, abs=1e-4) and r["rouge2"] == pytest.approx(0.6)
    # full-width punctuation is kept as it is (no NFKC folding inside the metric)
    assert CJKTokenizer().tokenize("GPT-2 说你好，½") == ["gpt", "2", "说", "你", "好", "½"]


def test_multi_reference_rouge_and_exact_match():
    refs = ["the cat sat on the mat", "a cat was sitting on a mat"]
    direct = rouge_scorer.RougeScorer(TYPES).score_multi(refs, "a cat sat on a mat")
    ours = rouge_pair("a cat sat on a mat", refs)
    assert all(ours[k] == pytest.approx(direct[k].fmeasure) for k in TYPES)
    assert exact_match(" a cat was sitting on a mat\n", refs) == 1.0 and exact_match("cat", refs) == 0.0
    corpus, per = score_texts(["x", "the cat sat on the mat"], [["y", "x"], refs], ["exact_match", "bleu"])
    assert corpus["exact_match"] == 1.0 and per[0]["exact_match"] == 1.0


def test_exact_match_is_strict_and_normalised_is_separate():
    assert exact_match("  Paris \n", "Paris") == 1.0
    for pred, ref in [("paris", "Paris"), ("Paris.", "Paris"), ("hElLo", "HeLlO"), ("四百。", "四百")]:
        assert exact_match(pred, ref) == 0.0 and exact_match_normalized(pred, ref) == 1.0
    assert exact_match_normalized("The  answer!", "answer") == 1.0  # SQuAD: articles and punctuation go
    corpus, per = score_texts(["a b", "x"], ["a b", "y"], ["exact_match", "rouge", "bleu"])
    assert corpus["exact_match"] == 0.5 and per[0]["exact_match"] == 1.0 and per[1]["rouge1"] == 0.0


def test_rouge_reference_values():
    assert rouge_pair("testing", "testing one two")["rouge1"] == pytest.approx(0.5)
    assert rouge_pair("testing one", "testing one two")["rougeL"] == pytest.approx(0.8)


def test_a_registered_metric_is_scored_by_name(char_f1_metric):
    corpus, per = score_texts(["abc", "xy"], ["abd", "xy"], ["char_f1"])
    assert corpus["char_f1"] == pytest.approx((2 / 3 + 1) / 2) and per[1]["char_f1"] == 1.0
