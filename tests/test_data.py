"""Data half: formats on real files and fixtures, exact template strings, cleaning counts, splits."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, shared
from sft.data import formats, synthetic
from sft.data.clean import DropReport, clean_records
from sft.data.encode import encode, encode_prompts, prompt_text
from sft.data.pipeline import load_splits
from sft.data.templates import get_template, render_prompt, render_training
from sft.errors import DataError, RecipeError
from sft.recipe import recipe_from_dict


def data_cfg(*sources, **kw):
    r = recipe_from_dict({"data": {"sources": list(sources), **kw}})
    return r.data


ALPACA_IN = [{"role": "user", "content": "Add the numbers.", "input": "2 3"}, {"role": "assistant", "content": "5"}]
ALPACA_NO = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "red"}]


def test_alpaca_template_exact_strings():
    t = get_template("alpaca")
    assert render_prompt(t, ALPACA_IN, None) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd the numbers.\n\n"
        "### Input:\n2 3\n\n### Response:\n")
    assert render_prompt(t, ALPACA_NO, None) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")
    segs = render_training(t, ALPACA_NO, None)
    assert segs[-1] == ("red", True) and all(not tr for _, tr in segs[:-1])


def test_chatml_and_plain_exact_strings():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"},
            {"role": "assistant", "content": "Sft."}]
    segs = render_training(get_template("chatml"), msgs, None)
    assert "".join(t for t, _ in segs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|im_start|>user\nName?<|im_end|>\n<|im_start|>assistant\nSft.<|im_end|>")
    assert [t for t, tr in segs if tr] == ["Hello!<|im_end|>", "Sft.<|im_end|>"]  # loss on every assistant turn
    assert render_prompt(get_template("plain"), ALPACA_IN, None) == "Add the numbers.\n\n2 3\n\n"


def test_custom_jinja_template_and_sandbox():
    t = get_template("Q: {{ instruction }}{% if input %} ({{ input }}){% endif %}\nA: ")
    assert render_prompt(t, ALPACA_IN, None) == "Q: Add the numbers. (2 3)\nA: "
    evil = get_template("{{ instruction.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(RecipeError, match="unsafe"):
        render_prompt(evil, ALPACA_IN, None)
    with pytest.raises(RecipeError, match="unknown template 'alpacca'.*did you mean 'alpaca'"):
        get_template("alpacca")


def test_training_prompt_tokens_equal_inference_prompt_tokens(tmp_path):
    from sft.tokenizer import build_tokenizer

    recs = [{"messages": ALPACA_IN, "task": "t", "source": "s"}]
    for arch in ("causal", "seq2seq"):
        tok = build_tokenizer("bpe", ["Add the numbers. 2 3 5 red"] * 5, vocab_size=300, arch=arch)
        feat = encode(recs, tok, "alpaca", arch=arch, max_length=256).features[0]
        prompt = encode_prompts(recs, tok, "alpaca", arch=arch)[0]
        if arch == "causal":
            cut = next(i for i, x in enumerate(feat["labels"]) if x != -100)
            assert feat["input_ids"][:cut] == prompt
            assert feat["input_ids"][-1] == tok.eos_token_id
        else:
            assert feat["input_ids"] == prompt and feat["labels"][-1] == tok.eos_token_id


def test_built_tokenizer_keeps_template_markers_whole(tmp_path, monkeypatch):
    """A BPE built for ChatML (or a Jinja template writing <|name|> markers) has each marker as one special
    token: prompts are shorter, an answer ends with one <|im_end|> token, and generation stops on it."""
    from sft.data.templates import get_template, render_training, stop_token_ids
    from sft.tokenizer import build_tokenizer

    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    chatml = get_template("chatml")
    assert chatml.markers == ("<|im_start|>", "<|im_end|>")
    jinja = get_template("{{ '<|user|>' + instruction + '<|end|>' }}{{ '<|assistant|>' }}")
    assert jinja.markers == ("<|user|>", "<|end|>", "<|assistant|>")
    assert get_template("alpaca").markers == ()
    texts = ["".join(t for t, _ in render_training(chatml, ALPACA_IN, None))] * 5
    plain = build_tokenizer("bpe", texts, vocab_size=300, arch="causal")
    tok = build_tokenizer("bpe", texts, vocab_size=300, arch="causal", markers=chatml.markers)
    for marker in chatml.markers:
        assert len(tok.encode(marker, add_special_tokens=False)) == 1
        assert len(plain.encode(marker, add_special_tokens=False)) > 1
    assert len(tok.encode(texts[0])) < len(plain.encode(texts[0]))
    ids = tok.encode(texts[0], add_special_tokens=False)
    assert tok.decode(ids) == texts[0]  # lossless
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, chatml.stop)
    tok.save_pretrained(tmp_path / "saved")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "saved").encode(texts[0], add_special_tokens=False) == ids


@given(st.lists(st.one_of(st.text("0123456789", min_size=1, max_size=9), st.text("0123456789", min_size=60),
                          st.sampled_from([" ", "a", ", ", "x+", ".", "中"])), max_size=12), st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_digit_groups_follow_place_value(parts, digits):
    """Every run of digits is cut from the right into groups of `digits` (the first may be shorter), and
    nothing else is touched: 12345 at 2 is 1|23|45, never 12|34|5. Past GROUPS + 1 groups (a bounded
    look-ahead, so long runs stay linear), the leading digits are one piece."""
    import re

    from sft.tokenizer import GROUPS, digit_splitter

    text = "".join(parts)
    pieces = [p for p, _ in digit_splitter(digits).pre_tokenize_str(text)]
    assert "".join(pieces) == text
    runs, run = [], []
    for p in pieces:  # adjacent digit pieces make one run
        if p.isdigit():
            run.append(p)
            continue
        if run:
            runs.append(run)
        head = re.search(r"\d+$", p)  # a long run's unsplit head ends the text piece before its groups
        assert not re.search(r"\d", p[:head.start()] if head else p)
        run = [head.group()] if head else []
    runs += [run] if run else []
    reach = digits * (GROUPS + 1) if digits > 1 else None
    for r in runs:
        n = sum(map(len, r))
        if reach and n > reach:
            assert len(r[0]) == n - reach
            r = r[1:]
        assert all(len(p) == digits for p in r[1:]) and 1 <= len(r[0]) <= digits
    assert ["".join(r) for r in runs] == re.findall(r"\d+", text)


def test_built_tokenizer_digit_groups(tmp_path, monkeypatch):
    """tokenizer_digits: 2 makes each number below 100 one token (seen in training), 1 keeps single digits; both
    decode losslessly and cache apart."""
    from sft.tokenizer import build_tokenizer

    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    texts = [f"What is {a} plus {b}? {a + b}" for a in range(100) for b in range(0, 100, 9)]
    one = build_tokenizer("bpe", texts, vocab_size=600, arch="causal")
    two = build_tokenizer("bpe", texts, vocab_size=600, arch="causal", digits=2)
    sample = "Sort 7, 42, 130 and 12345."
    pieces = [two.decode([t]) for t in two.encode(sample, add_special_tokens=False)]
    assert [p.strip() for p in pieces if p.strip().isdigit()] == ["7", "42", "1", "30", "1", "23", "45"]
    assert [p for p in (one.decode([t]) for t in one.encode(sample, add_special_tokens=False)) if p.isdigit()] == \
        list("74213012345")
    for tok in (one, two):
        assert tok.decode(tok.encode(sample, add_special_tokens=False)) == sample
    assert one.name_or_path != two.name_or_path  # separate cache entries
    assert build_tokenizer("bpe", texts, vocab_size=600, arch="causal", digits=2).name_or_path == two.name_or_path


def test_formats_detected_on_shared_files():
    from sft.data.sources import read_rows

    cases = {
        ("llamafactory", "alpaca_en_demo.json"): "alpaca",
        ("llamafactory", "alpaca_zh_demo.json"): "alpaca",
        ("llamafactory", "glaive_toolcall_en_demo.json"): "sharegpt",
        ("llamafactory", "v1_sft_demo.jsonl"): "messages",
        ("self-instruct", "seed_tasks.jsonl"): "self-instruct",
        ("t0", "gigaword_make_a_title.jsonl"): "prompt-completion",
    }
    for parts, expected in cases.items():
        rows = read_rows(shared("data", *parts))
        assert formats.detect_format(rows, file=parts[-1], field="f") == expected, parts
        converted, drops, _ = formats.convert_rows(expected, rows, {})
        assert len(converted) >= len(rows) and not drops, (parts, drops)


def test_self_instruct_expands_instances_and_t0_markers_stripped():
    path = shared("data", "self-instruct", "seed_tasks.jsonl")
    rows = [json.loads(l) for l in open(path)]
    n_instances = sum(len(r["instances"]) for r in rows)
    splits = load_splits(data_cfg({"path": path}, eval_ratio=0.0, clean={"dedupe": False}))
    dropped = splits.report.total_dropped
    assert len(splits.train) + dropped == n_instances
    t0 = shared("data", "t0", "gigaword_make_a_title.jsonl")
    s = load_splits(data_cfg({"path": t0}, eval_ratio=0.0))
    assert all("<|endoftext|>" not in r["messages"][-1]["content"] for r in s.train)
    assert sum(v for k, v in s.report.edited.items() if "endoftext" in k) == 200


def test_typed_content_parts_and_loss_weights():
    path = shared("data", "llamafactory", "v1_sft_demo.jsonl")
    s = load_splits(data_cfg({"path": path}, eval_ratio=0.0))
    assert s.per_source["v1_sft_demo"]["format"] == "messages"
    assert all(isinstance(m["content"], str) for r in s.train for m in r["messages"])


def test_e2e_column_mapping_and_missing_columns():
    path = shared("data", "e2e", "devset.csv")
    s = load_splits(data_cfg({"path": path, "columns": {"prompt": "mr", "completion": "ref"}}, eval_ratio=0.1))
    assert s.per_source["devset"]["format"] == "columns" and s.per_source["devset"]["rows"] == 4672
    rec = s.train[0]["messages"]
    assert rec[0]["content"].startswith("name[") and rec[-1]["role"] == "assistant"
    with pytest.raises(DataError, match=r"mapped column 'meaning' is not in the data; columns found: \['mr', 'ref'\]"):
        load_splits(data_cfg({"path": path, "columns": {"prompt": "meaning", "completion": "ref"}}))


@pytest.mark.parametrize("streaming", [False, True])
def test_nested_columns_read_translation_pairs(streaming):
    """Datasets nest translation pairs ({"translation": {"en": ..., "fr": ...}}): columns name the nested fields by
    dots, in prepared and streamed reading; a misspelt one is an error that lists the nested names."""
    path = f"{FIXTURES}/translation_en_fr_sample.jsonl"
    cols = {"prompt": "translation.en", "completion": "translation.fr"}
    if streaming:
        from sft.data.stream import open_corpus

        d = recipe_from_dict({"data": {"sources": [{"path": path, "columns": cols}], "eval_ratio": 0.0,
                                       "streaming": True}, "train": {"max_steps": 1}}).data
        recs = list(open_corpus(d, "r.yaml").tokenizer_sample())
    else:
        recs = load_splits(data_cfg({"path": path, "columns": cols}, eval_ratio=0.0)).train
    pairs = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in recs}
    assert len(pairs) == 40 and pairs["The cat is on the table."] == "Le chat est sur la table."
    t5 = get_template("translate English to French: {{ instruction }}")
    assert render_prompt(t5, recs[0]["messages"], None).startswith("translate English to French: ")
    with pytest.raises(DataError, match=r"columns.completion: mapped column 'translation.fe' is not in the data.*"
                                        r"did you mean 'translation.fr'"):
        load_splits(data_cfg({"path": path, "columns": {**cols, "completion": "translation.fe"}}))


def test_dirty_fixture_drop_counts():
    s = load_splits(data_cfg({"path": f"{FIXTURES}/dirty_alpaca.jsonl"}, eval_ratio=0.0))
    d = s.report.to_dict()["dropped"]
    assert d == {"exact duplicate": 1, "empty prompt": 1, "empty answer": 1,
                 "dirty_alpaca: null or missing field 'output'": 1, "dirty_alpaca: non-string field 'output'": 1}
    texts = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in s.train}
    assert texts["Say bye"] == "bye"  # stripped, end-of-text marker removed
    assert texts["Ｆｕｌｌｗｉｄｔｈ"] == "ｙｅｓ"  # default NFC keeps every visible character
    assert len(s.train) == 4
    s = load_splits(data_cfg({"path": f"{FIXTURES}/dirty_alpaca.jsonl"}, eval_ratio=0.0,
                             clean={"normalize": "nfkc"}))
    texts = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in s.train}
    assert texts["Fullwidth"] == "yes" and s.report.edited["unicode NFKC changed characters"] == 1


def test_overlong_drop_and_trim_are_counted():
    from sft.tokenizer import build_tokenizer

    recs = [{"messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}],
             "task": "t", "source": "s"},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes " * 40}],
             "task": "t", "source": "s"}]
    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    rep = DropReport()
    enc = encode(recs, tok, "plain", arch="causal", max_length=40, overlong="drop", report=rep)
    assert not enc.features and rep.dropped["longer than max_length=40 tokens"] == 2
    rep = DropReport()
    enc = encode(recs, tok, "plain", arch="causal", max_length=40, overlong="trim", report=rep)
    assert len(enc.features) == 1 and len(enc.features[0]["input_ids"]) == 40
    assert rep.dropped["prompt fills max_length=40 (answer fully truncated)"] == 1


def test_split_deterministic_and_no_prompt_leakage():
    cfg = data_cfg({"path": "builtin:synthetic", "num_examples": 600}, eval_ratio=0.2, test_ratio=0.1,
                   max_eval_samples=None)
    a, b = load_splits(cfg), load_splits(cfg)
    assert [prompt_text(r, "plain") for r in a.eval] == [prompt_text(r, "plain") for r in b.eval]
    train_prompts = {prompt_text(r, "plain") for r in a.train}
    assert not train_prompts & {prompt_text(r, "plain") for r in a.eval + a.test}
    assert abs(len(a.eval) - 0.2 * (len(a.train) + len(a.eval) + len(a.test))) < 30
    c = load_splits(data_cfg({"path": "builtin:synthetic", "num_examples": 600}, eval_ratio=0.2, seed=7))
    assert [prompt_text(r, "plain") for r in c.eval] != [prompt_text(r, "plain") for r in a.eval]


def test_mixing_weights_caps_and_task_labels():
    cfg = data_cfg({"path": "builtin:synthetic", "num_examples": 100, "tasks": ["addition"], "weight": 2.0},
                   {"path": f"{FIXTURES}/pairs.csv", "columns": {"prompt": "question", "completion": "answer"},
                    "task_column": "topic"},
                   {"path": "builtin:synthetic", "num_examples": 100, "tasks": ["uppercase"], "max_samples": 10},
                   eval_ratio=0.0)
    s = load_splits(cfg)
    tasks = [r["task"] for r in s.train]
    assert tasks.count("addition") == 200 and tasks.count("uppercase") == 10
    assert {"math", "geo", "nature"} <= set(tasks)


def test_synthetic_suite_is_deterministic_and_checkable():
    a, b = synthetic.generate(70, seed=3), synthetic.generate(70, seed=3)
    assert a == b and len({r["task"] for r in a}) == 7
    for r in a:
        if r["task"] == "addition":
            nums = [int(x) for x in r["instruction"].replace("?", " ").replace(".", " ").split() if x.isdigit()]
            assert int(r["output"]) == sum(nums)
        if r["task"] == "sort_numbers":
            assert r["output"] == ", ".join(map(str, sorted(int(x) for x in r["input"].split(", "))))
    assert synthetic.to_chinese_number(105) == "一百零五" and synthetic.to_chinese_number(13) == "十三"
    assert synthetic.to_chinese_number(230) == "二百三十"
    sql = [r for r in synthetic.generate(200, seed=1, tasks=["text_to_sql"]) if "JOIN" in r["output"]]
    assert sql and sql[0]["output"].startswith("SELECT")
    # every family has enough distinct prompts that deduplication leaves it a real share of a large mix
    # (antonym once had 144, and fell under 1 % of a 21k-row quickstart)
    for task in synthetic.TASKS:
        rows = synthetic.generate(2000, seed=0, tasks=[task])
        assert len({(r["instruction"], r["input"]) for r in rows}) >= 900, task
    for r in synthetic.generate(2000, seed=0, tasks=["antonym"]):
        ins = r["instruction"]
        word = r["input"] or (ins.split("'")[1] if "'" in ins else ins.rstrip(".?:").split()[-1])
        assert synthetic._ANTONYMS[word] == r["output"], r


def test_multi_turn_chat_files():
    s = load_splits(data_cfg({"path": f"{FIXTURES}/chat_messages.jsonl"}, eval_ratio=0.0))
    assert s.per_source["chat_messages"]["format"] == "messages"
    s = load_splits(data_cfg({"path": f"{FIXTURES}/chat_sharegpt.jsonl"}, eval_ratio=0.0))
    assert s.train[0]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
