"""Every text score equals the library it names, called directly (1e-6), on real English and Chinese
pairs; multi-reference scoring; strict and normalised exact match; the metrics registry."""

import json
import random

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from conftest import shared
from sft.metrics import CJKTokenizer, corpus_bleu, exact_match, exact_match_normalized, rouge_pair, score_texts

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


# ---- one tokenisation per scored set -------------------------------------------------------------------

def test_a_prediction_never_changes_how_an_english_set_is_scored(tmp_path):
    """252 English pairs, one prediction quoting a Chinese character: every ROUGE figure equals rouge-score's
    default tokenizer and BLEU equals sacrebleu 13a; metrics.json says which tokenisation was used."""
    from sft.evaluation.score import score_file

    pairs = _pairs(shared("data", "llamafactory", "alpaca_en_demo.json"), 252, seed=2)
    pairs[17] = ("The character 水 means water, as in the reference.", pairs[17][1])
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    direct = rouge_scorer.RougeScorer(TYPES)
    want = {k: sum(direct.score(r, p)[k].fmeasure for p, r in pairs) / len(pairs) for k in TYPES}
    corpus, per = score_texts(preds, refs, ["rouge", "bleu"])
    for k in TYPES:
        assert corpus[k] == pytest.approx(want[k], abs=1e-12), k
    assert per[17]["rouge1"] == pytest.approx(direct.score(refs[17], preds[17])["rouge1"].fmeasure, abs=1e-12)
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize="13a").score, abs=1e-9)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prediction": p, "reference": r}) + "\n" for p, r in pairs))
    m = score_file(str(path), metrics=["rouge", "bleu"])
    assert m["tokenize"] == "13a" and m["metrics"]["rougeL"] == pytest.approx(want["rougeL"], abs=1e-12)


def test_one_cjk_reference_makes_the_whole_set_zh_for_bleu_and_rouge():
    preds, refs = ["the cat sat", "今天天气不好"], ["the cat sat down", "今天天气很好"]
    corpus, per = score_texts(preds, refs, ["rouge", "bleu"])
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score, abs=1e-9)
    zh = rouge_scorer.RougeScorer(TYPES, tokenizer=CJKTokenizer())
    for i in range(2):
        assert per[i]["rougeL"] == pytest.approx(zh.score(refs[i], preds[i])["rougeL"].fmeasure, abs=1e-12)


@pytest.mark.parametrize("tokenize", ["13a", "zh", "char"])
def test_the_tokenisation_can_be_set(tokenize):
    from sft.metrics import CharTokenizer

    preds, refs = ["The cats sat.", "今天 天气"], ["the cat sat", "今天天气很好"]
    corpus, per = score_texts(preds, refs, ["rouge", "bleu"], tokenize)
    assert corpus["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize=tokenize).score, abs=1e-9)
    tok = {"13a": None, "zh": CJKTokenizer(), "char": CharTokenizer()}[tokenize]
    direct = rouge_scorer.RougeScorer(TYPES, tokenizer=tok)
    for i in range(2):
        assert per[i]["rouge1"] == pytest.approx(direct.score(refs[i], preds[i])["rouge1"].fmeasure, abs=1e-12)
    assert CharTokenizer().tokenize("Ab c") == ["a", "b", "c"]


# ---- SQuAD F1, distinct-n, label accuracy against reference implementations -----------------------------

def _official_squad_f1(prediction, ground_truths):
    """The SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim logic."""
    import re
    import string
    from collections import Counter

    def normalize_answer(s):
        def remove_articles(text):
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text):
            return " ".join(text.split())

        def remove_punc(text):
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def f1_score(prediction, ground_truth):
        prediction_tokens = normalize_answer(prediction).split()
        ground_truth_tokens = normalize_answer(ground_truth).split()
        common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    return max(f1_score(prediction, gt) for gt in ground_truths)


def test_f1_equals_the_official_squad_script():
    pairs = _pairs(shared("data", "llamafactory", "alpaca_en_demo.json"), 200, seed=3)
    pairs += [("The Eiffel Tower!", "eiffel tower"), ("", "x"), ("a an the", "the"), ("Paris, France", "paris")]
    refs = [[r, r.upper()[:20]] for _, r in pairs]
    corpus, per = score_texts([p for p, _ in pairs], refs, ["f1"])
    want = [_official_squad_f1(p, rs) for (p, _), rs in zip(pairs, refs)]
    assert [s["f1"] for s in per] == pytest.approx(want, abs=1e-12)
    assert corpus["f1"] == pytest.approx(sum(want) / len(want), abs=1e-12)


def test_distinct_n_equals_an_nltk_count():
    from nltk.util import ngrams
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    preds = [p for p, _ in _pairs(shared("data", "llamafactory", "alpaca_en_demo.json"), 120, seed=4)]
    preds += ["the the the", ""]
    corpus, per = score_texts(preds, preds, ["distinct"])
    for n in (1, 2):
        grams = [g for p in preds for g in ngrams(Tokenizer13a()(p).split(), n)]
        assert corpus[f"distinct_{n}"] == pytest.approx(len(set(grams)) / len(grams), abs=1e-12)
    assert "distinct_1" not in per[0]  # a corpus statistic: no per-item value to average or bootstrap
    zh, _ = score_texts(["今天天气", "今天很好"], ["今天", "很好"], ["distinct"])
    assert zh["distinct_1"] == pytest.approx(5 / 8) and zh["distinct_2"] == pytest.approx(5 / 6)


def test_accuracy_normalises_labels():
    preds = ["Positive.", " negative", "ＰＯＳＩＴＩＶＥ", "neutral!", "pos", "Negative。", "positive"]
    refs = ["positive", "Negative", "positive", "negative", "positive", "negative", ["negative", "positive"]]
    want = [1, 1, 1, 0, 0, 1, 1]
    corpus, per = score_texts(preds, refs, ["accuracy"])
    assert [s["accuracy"] for s in per] == want and corpus["accuracy"] == pytest.approx(sum(want) / len(want))


@pytest.mark.parametrize("name,fix", [("accuracy", "use sft's accuracy"), ("squad", "use sft's f1"),
                                      ("pearsonr", "score it outside sft")])
def test_evaluate_metrics_that_do_not_take_text_are_refused_with_the_reason(name, fix):
    from sft.errors import EvalError
    from sft.metrics import check_metric_names

    with pytest.raises(EvalError, match="sft hands every metric generated text") as e:
        check_metric_names([f"evaluate:{name}"])
    assert fix in str(e.value)
    check_metric_names(["evaluate:bleu", "evaluate:meteor", "f1", "distinct", "accuracy"])  # text metrics pass
