"""Evaluation you can trust: several references per prompt, every row accounted for, context limits,
real segment labels, normalisation that keeps Chinese, `sft score`, and one CJK-aware text module."""

import json
import re

import pytest
import sacrebleu

from conftest import run_cli, tiny_recipe, write_recipe
from sft.cli import main
from test_errors import one_line_error


def _e2e_csv(path, n_mr=12, refs=3):
    lines = ["mr,ref"]
    for i in range(n_mr):
        for j in range(refs):
            lines.append(f'"name[Place {i}], food[Thai]","Place {i} serves Thai food, version {j}."')
    path.write_text("\n".join(lines) + "\n")


def _tiny_model(n_positions=256, vocab=None):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2))


def _setup(tmp_path, sources, **data):
    from sft.data.pipeline import load_splits
    from sft.tokenizer import build_tokenizer
    from sft.recipe import recipe_from_dict

    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", data__sources=sources, **data))
    splits = load_splits(r.data)
    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    return r, splits, tok


def test_e2e_style_references_are_grouped_per_prompt(tmp_path):
    from sft.evaluation.run import evaluate_model

    csv = tmp_path / "e2e.csv"
    _e2e_csv(csv)
    r, splits, tok = _setup(tmp_path, [{"path": str(csv), "columns": {"prompt": "mr", "completion": "ref"}}],
                            data__eval_ratio=0.5, data__max_eval_samples=None)
    assert len(splits.eval) % 3 == 0 and splits.eval  # whole groups: every reference of a prompt together
    model = _tiny_model(vocab=len(tok))
    r.eval.metrics = ["perplexity", "bleu", "rouge", "exact_match"]
    r.eval.generation.max_new_tokens = 8
    res = evaluate_model(model, tok, "causal", splits.eval, r, progress=False)
    rows = res["predictions"]
    assert res["metrics"]["num_samples"] == len(splits.eval) // 3 == len(rows)
    assert res["metrics"]["num_examples"] == len(splits.eval)
    assert all(len(row["references"]) == 3 and row["messages"][-1]["role"] == "user" for row in rows)
    preds = [row["prediction"] for row in rows]
    streams = [[row["references"][k] for row in rows] for k in range(3)]
    assert res["metrics"]["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score, abs=1e-9)
    # the same predictions scored one reference at a time (the old behaviour) is a different, lower number
    single = sacrebleu.corpus_bleu([p for p in preds for _ in range(3)],
                                   [[ref for row in rows for ref in row["references"]]]).score
    assert single <= res["metrics"]["metrics"]["bleu"] + 1e-9
    r.eval.group_references = False
    ungrouped = evaluate_model(model, tok, "causal", splits.eval, r, progress=False)
    assert ungrouped["metrics"]["num_samples"] == len(splits.eval)


def test_max_eval_samples_is_stratified_and_nothing_is_lost(tmp_path):
    from sft.data.pipeline import accounting

    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"alpha {i}", "output": "x"}) + "\n" for i in range(400)))
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"instruction": f"beta {i}", "output": "y"}) + "\n" for i in range(20)))
    r, splits, _ = _setup(tmp_path, [{"path": str(a)}, {"path": str(b)}], data__eval_ratio=0.2,
                          data__max_eval_samples=10)
    assert len(splits.eval) == 10 and {x["source"] for x in splits.eval} == {"a", "b"}
    acc = accounting(splits, splits.train)
    assert all(v["balanced"] for v in acc.values())
    assert acc["a"]["train"] + acc["a"]["eval"] == 400 and acc["b"]["train"] + acc["b"]["eval"] == 20


def test_split_does_not_depend_on_row_order(tmp_path):
    rows = [{"instruction": f"q {i}", "output": f"{i}"} for i in range(100)]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in rows))
    _, s1, _ = _setup(tmp_path, [{"path": str(p)}], data__eval_ratio=0.2, data__max_eval_samples=None)
    p.write_text("".join(json.dumps(x) + "\n" for x in reversed(rows)))
    _, s2, _ = _setup(tmp_path, [{"path": str(p)}], data__eval_ratio=0.2, data__max_eval_samples=None)
    key = lambda recs: sorted(x["messages"][0]["content"] for x in recs)  # noqa: E731
    assert key(s1.eval) == key(s2.eval) and len(s1.eval) == 20


def test_sft_data_and_sft_train_print_the_same_accounting(tmp_path, capsys):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"instruction": f"alpha {i % 90}", "output": "x" * (i % 200)}) + "\n"
                         for i in range(120)))
    rec = tiny_recipe("gpt2", tmp_path / "out", steps=2, data__max_eval_samples=6,
                      data__sources=[{"path": "builtin:synthetic", "num_examples": 200}, {"path": str(a)}])
    path = write_recipe(tmp_path / "r.yaml", rec)
    assert main(["data", path, "--show", "0"]) == 0
    data_lines = [ln for ln in capsys.readouterr().out.splitlines() if re.match(r"source \S+: \d+ rows", ln)]
    assert main(["train", path]) == 0
    train_lines = [ln[len("[sft] "):] for ln in capsys.readouterr().out.splitlines()
                   if re.match(r"\[sft\] source \S+: \d+ rows", ln)]
    assert len(data_lines) == 2 and data_lines == train_lines
    assert "dropped" in data_lines[1] and "does not add up" not in " ".join(data_lines)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert all(v["balanced"] for v in summary["data"]["accounting"].values())


def test_over_long_prompts_are_fitted_not_crashed(tmp_path, capsys, trained_full):
    from sft.evaluation.run import evaluate_model

    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"instruction": "word " * 400, "output": "ok"}) + "\n" +
                    json.dumps({"instruction": "short", "output": "fine"}) + "\n")
    r, _, tok = _setup(tmp_path, [{"path": str(long)}], data__eval_ratio=0.0, data__template="plain")
    from sft.data.pipeline import load_splits

    records = load_splits(r.data).train
    model = _tiny_model(n_positions=64, vocab=len(tok))
    r.eval.generation.max_new_tokens = 8
    res = evaluate_model(model, tok, "causal", records, r, progress=False)
    assert res["metrics"]["truncated"] == {"prompt left-truncated to fit the model context": 1}
    assert res["metrics"]["num_samples"] == 2 and all("prediction" in x and x["nll"] > 0 for x in res["predictions"])
    # generate and chat on a model with a 256-token context
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"prompt": "word " * 600}) + "\n")
    res = run_cli("generate", str(trained_full), "--input", str(p), "--max-new-tokens", "4")
    assert res.returncode == 0 and "left-truncated" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("chat", str(trained_full), "--max-new-tokens", "4", input="word " * 600 + "\n/exit\n")
    assert res.returncode == 0 and "left-truncated" in res.stdout and "Traceback" not in res.stderr


def test_data_show_labels_every_segment_from_the_labels(tmp_path, capsys):
    p = tmp_path / "tools.jsonl"
    row = {"conversations": [{"from": "human", "value": "weather in Paris?"},
                             {"from": "function_call", "value": "get_weather(Paris)"},
                             {"from": "observation", "value": "sunny, 21C"},
                             {"from": "gpt", "value": "It is sunny."},
                             {"from": "human", "value": "thanks"}, {"from": "gpt", "value": "You are welcome."}]}
    p.write_text(json.dumps(row) + "\n")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__sources=[{"path": str(p)}],
                                                         data__eval_ratio=0.0, data__template="chatml"))
    assert main(["data", path, "--show", "1"]) == 0
    out = capsys.readouterr().out.split("=== example 1")[1]
    blocks = re.findall(r"--- (trained|masked) ---\n(.*?)(?=\n--- |\Z)", out, re.S)
    kinds = [k for k, _ in blocks]
    assert kinds == ["masked", "trained", "masked", "trained", "masked", "trained"]
    masked = " ".join(t for k, t in blocks if k == "masked")
    trained = " ".join(t for k, t in blocks if k == "trained")
    assert "sunny, 21C" in masked and "thanks" in masked and "weather in Paris" in masked
    assert "get_weather(Paris)" in trained and "You are welcome." in trained and "thanks" not in trained


def test_default_normalisation_keeps_chinese_and_counts_edits(tmp_path):
    p = tmp_path / "zh.jsonl"
    p.write_text(json.dumps({"instruction": "你好，世界？", "output": "答：好！", "task": "greet\u00a0 zh"},
                            ensure_ascii=False) + "\n")
    _, s, _ = _setup(tmp_path, [{"path": str(p)}], data__eval_ratio=0.0)
    rec = s.train[0]
    assert rec["messages"][0]["content"] == "你好，世界？" and rec["messages"][-1]["content"] == "答：好！"
    assert rec["task"] == "greet zh" and not s.report.edited
    _, s, _ = _setup(tmp_path, [{"path": str(p)}], data__eval_ratio=0.0, data__clean={"normalize": "nfkc"})
    assert s.train[0]["messages"][-1]["content"] == "答:好!"
    assert s.report.edited["unicode NFKC changed characters"] == 1


def test_sft_score(tmp_path, capsys):
    preds = ["the cat sat", "hello world", "四百"]
    refs = [["the cat sat", "a cat sat"], ["hello there world"], ["四百"]]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"prediction": x, "references": r, "task": f"t{i % 2}"}, ensure_ascii=False)
                         + "\n" for i, (x, r) in enumerate(zip(preds, refs))))
    assert main(["score", str(p), "--out", str(tmp_path / "o"), "--metrics", "bleu,rouge,exact_match"]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert m["metrics"]["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, streams, tokenize="zh").score)
    assert m["metrics"]["exact_match"] == pytest.approx(2 / 3) and set(m["per_task"]) == {"t0", "t1"}
    assert (tmp_path / "o" / "eval_report.md").exists()
    # references from a second file, under another field name
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"out": x}) + "\n" for x in preds))
    rf = tmp_path / "r.jsonl"
    rf.write_text("".join(json.dumps({"gold": r[0]}, ensure_ascii=False) + "\n" for r in refs))
    assert main(["score", str(q), "--references", str(rf), "--pred-field", "out", "--ref-field", "gold"]) == 0
    capsys.readouterr()
    assert "no string field 'prediction'" in one_line_error(capsys, "score", str(q))
    assert "perplexity needs the model" in one_line_error(capsys, "score", str(p), "--metrics", "perplexity")
    rf.write_text(json.dumps({"gold": "x"}) + "\n")
    assert "3 predictions but 1 references" in one_line_error(capsys, "score", str(q), "--references", str(rf),
                                                              "--pred-field", "out")


def test_text_helpers_and_chinese_construction_filters():
    from sft.construct.build import _why_empty
    from sft.construct.neardup import NearDupIndex
    from sft.construct.self_instruct import SelfInstructConfig, filter_reason
    from sft.text import has_cjk, mostly_punctuation, only_punctuation, word_count

    assert word_count("hello world") == 2 and word_count("你好世界") == 4 and word_count("GPT-2 说你好") == 4
    assert only_punctuation("。，，！") and not only_punctuation("。，的，。") and mostly_punctuation("。，的，。")
    assert has_cjk("abc 中") and not has_cjk("abc")
    cfg = SelfInstructConfig(seed_tasks="", generator="", min_words=1)
    assert filter_reason("。，的，。", cfg, NearDupIndex()) == "only punctuation"
    assert filter_reason("……", cfg, NearDupIndex()) == "only punctuation"
    assert filter_reason("请把这句话翻译成英文。", cfg, NearDupIndex()) is None
    why = _why_empty({"self_instruct": {}}, {"pool": 3, "proposed": 3, "instance_drops": {"no Output": 6}})
    assert why == "no tasks; every one of 6 generated instances failed to parse (no 'Output:')"
