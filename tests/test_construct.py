"""build-data: near-duplicate filters (English and Chinese), Self-Instruct for real with a tiny local
generator, template tasks with negatives, stratified splits, and a recipe training on the output."""

import json
import os

import pytest

from conftest import ROOT, run_cli, shared, tiny_recipe, write_recipe
from sft.construct.neardup import NearDupIndex, dedupe_near
from sft.construct.self_instruct import (SelfInstructConfig, encode_prompt, filter_reason, parse_instance,
                                         parse_instructions)


def test_near_duplicates_english_and_chinese():
    texts = [
        "Write a short poem about the sea.",
        "Write a short poem about the ocean.",           # near-dup of 0 (ROUGE-L 6/7)
        "Summarise the following article in two sentences.",
        "Translate the sentence into French.",
        "请把这句话翻译成英文。",
        "请将这句话翻译成英文。",                           # near-dup of 4 (one character differs)
        "今天天气怎么样？",
        "write a short poem about the sea",              # near-dup of 0 after normalisation
    ]
    keep, dropped = dedupe_near(texts, threshold=0.7)
    assert keep == [0, 2, 3, 4, 6]
    assert sorted((d, k) for d, k, _ in dropped) == [(1, 0), (5, 4), (7, 0)]
    assert all(s > 0.7 for _, _, s in dropped)


def test_self_instruct_filters_each_reason():
    cfg = SelfInstructConfig(seed_tasks="", generator="")
    idx = NearDupIndex()
    idx.add("Give three tips for staying healthy.")
    assert filter_reason("Hi there", cfg, idx) == "fewer than 3 words"
    assert filter_reason(" ".join(["word"] * 151), cfg, idx) == "more than 150 words"
    assert filter_reason("Draw a picture of a cat in the park.", cfg, idx) == "blacklisted keyword"
    assert filter_reason("- Explain why the sky is blue.", cfg, idx) == "starts with punctuation"
    assert filter_reason("Give three tips for staying healthy!", cfg, idx) == "ROUGE-L > 0.7 to the pool"
    assert filter_reason("Explain why the sky is blue.", cfg, idx) is None
    assert filter_reason("请用三句话解释为什么天空是蓝色的。", cfg, idx) is None  # non-ASCII kept
    idx.add("请用三句话解释为什么天空是蓝色的。")
    assert filter_reason("请用三句话解释为什么天空是蓝色。", cfg, idx) == "ROUGE-L > 0.7 to the pool"


def test_prompt_and_parsing():
    p = encode_prompt(["Do A.", "Do  B."])
    assert p == "Come up with a series of tasks:\n1. Do A.\n2. Do B.\n3."
    assert parse_instructions(" Explain gravity.\n4. List three fruits.\n5. ") == ["Explain gravity.",
                                                                                 "List three fruits."]
    assert parse_instance(" <noinput>\nOutput: 42") == ("", "42") and parse_instance("no output here") is None


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A tiny GPT-2 from config with a byte-level tokenizer: a real local generator model (its text is noise)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from sft.tokenizer import build_tokenizer

    d = tmp_path_factory.mktemp("gen")
    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=1024,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def test_self_instruct_runs_for_real_and_resumes(tiny_generator, tmp_path):
    seeds = shared("data", "self-instruct", "seed_tasks.jsonl")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""name: si
seed: 1
near_dup_threshold: 0.7
splits: {{train: 1.0}}
tasks:
  - name: greet
    instructions: ["Say hello to {{who}}."]
    output: "Hello, {{who}}!"
    rows: [{{who: Ann}}, {{who: Bo}}]
    per_task: 2
self_instruct:
  seed_tasks: {seeds}
  generator: {tiny_generator}
  num_instructions: 3
  max_rounds: 3
  max_new_tokens: 48
  min_words: 1
""")
    res = run_cli("build-data", str(spec), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "out" / "self_instruct"
    state = json.loads((work / "state.json").read_text())
    prompts = [json.loads(l) for l in (work / "prompts.jsonl").read_text().splitlines()]
    assert state["round"] >= 1 and len(prompts) == state["round"]
    first = prompts[0]["prompt"]
    assert first.startswith("Come up with a series of tasks:\n1. ") and first.endswith("\n9.")  # 8 in-context
    pool = (work / "pool.jsonl").read_text().splitlines() if (work / "pool.jsonl").exists() else []
    assert state["proposed"] == len(pool) + sum(state["filtered"].values())  # every proposal accounted for
    card = (tmp_path / "out" / "DATACARD.md").read_text()
    assert "## Self-Instruct" in card and f"rounds: {state['round']}" in card and "instance drops" in card
    # resume: the same command continues from the saved state (no round is redone)
    res = run_cli("build-data", str(spec), "--out", str(tmp_path / "out"))
    assert res.returncode == 0
    state2 = json.loads((work / "state.json").read_text())
    assert state2["round"] >= state["round"]
    assert len((work / "prompts.jsonl").read_text().splitlines()) == state2["round"]


def test_build_demo_spec_then_train_on_it(tmp_path):
    out = tmp_path / "data"
    res = run_cli("build-data", os.path.join(ROOT, "recipes", "data", "demo-spec.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "build_report.json").read_text())
    per_task = report["per_task"]
    assert set(per_task) == {"addition", "reverse_words", "sort_numbers", "uppercase", "antonym", "chinese_numerals",
                             "text_to_sql", "capitals"}
    for task, counts in per_task.items():  # stratified: every task in every split, ~80/10/10
        total = sum(counts.values())
        assert counts["train"] >= 0.7 * total and counts["validation"] >= 1 and counts["test"] >= 1, task
    rows = {n: [json.loads(l) for l in (out / f"{n}.jsonl").read_text().splitlines()] for n in
            ("train", "validation", "test")}
    assert any(r["source"] == "negative:capitals" and "not a real country" in r["output"] for s in rows.values()
               for r in s)
    prompts = {n: {(r["instruction"], r["input"]) for r in s} for n, s in rows.items()}
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert (out / "train.parquet").exists() and "## Drops by reason" in (out / "DATACARD.md").read_text()
    r = tiny_recipe("gpt2", tmp_path / "run", steps=10)
    r["data"]["sources"] = [{"path": str(out)}]
    r["data"]["eval_sources"] = [{"path": str(out), "split": "validation"}]
    res = run_cli("train", write_recipe(tmp_path / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["data"]["per_source"]["data"]["rows"] == len(rows["train"])
