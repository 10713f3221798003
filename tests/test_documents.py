"""Documents (`format: text`): causal windows with a stride, T5 span corruption, the Arrow and list paths equal,
the accounting of windows, and runs end to end."""

import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_cli, shared, tiny_recipe, write_recipe
from sft.data.documents import causal_windows, noise_mask, span_corrupt, span_windows
from sft.recipe import recipe_from_dict


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 300), max_length=st.integers(8, 64), data=st.data())
def test_causal_windows_train_every_token_once_and_end_with_eos(n, max_length, data):
    stride = data.draw(st.integers(0, max_length - 2))
    ids = list(range(1, n + 1))
    windows = causal_windows(ids, 0, max_length, stride)
    trained = [t for _, labels in windows for t in labels if t != -100]
    assert trained == ids + [0]  # every token, EOS included, trained exactly once and in order
    assert all(len(x) <= max_length and len(x) == len(y) for x, y in windows)
    assert [x[-1] == 0 for x, _ in windows] == [False] * (len(windows) - 1) + [True]  # EOS only where it ends
    for (a, _), (b, labels) in zip(windows, windows[1:]):
        assert b[:stride] == a[-stride:] if stride else True  # the overlap repeats the previous window's end
        assert labels[:stride] == [-100] * stride and len(a) == max_length


def _reference_noise_mask(length, rng, density=0.15, mean_span=3.0):
    """The segmentation of transformers' examples/flax/language-modeling/run_t5_mlm_flax.py (T5's own), with
    T5's span count round(noise / mean_span), on numpy's generator."""
    num_noise = min(max(int(np.round(length * density)), 1), length - 1)
    num_spans = max(int(np.round(num_noise / mean_span)), 1)
    num_nonnoise = length - num_noise

    def segmentation(items, segments):
        mask = np.arange(items - 1) < (segments - 1)
        rng.shuffle(mask)
        first = np.pad(mask, [[1, 0]])
        return np.unique(np.cumsum(first), return_counts=True)[1]

    lengths = np.stack([segmentation(num_nonnoise, num_spans), segmentation(num_noise, num_spans)], axis=1)
    starts = np.cumsum(lengths.reshape(-1))[:-1]
    indicator = np.zeros(length, dtype=np.int8)
    indicator[starts] = 1
    return (np.cumsum(indicator) % 2 == 1).tolist()


def _spans(mask):
    return sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))


def test_noise_mask_matches_t5s_counts_and_layout():
    """For every window length a 512-token T5 uses, the noise count and the span count equal the reference's, the
    mask starts with kept tokens and ends with noise, and over many draws each noise span has mean length ~3."""
    npr = np.random.default_rng(0)
    lengths = []
    for length in range(2, 512):
        ours, ref = noise_mask(length, random.Random(length)), _reference_noise_mask(length, npr)
        assert len(ours) == length and sum(ours) == sum(ref), length
        if sum(ref) <= length - sum(ref):  # both count spans the same way when noise is the minority
            assert _spans(ours) == _spans(ref), length
        assert not ours[0] and ours[-1]
        lengths.append(sum(ours) / _spans(ours))
    assert 2.7 < float(np.mean(lengths[100:])) < 3.3


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), seed=st.integers(0, 10 ** 6))
def test_span_corruption_inputs_and_targets_rebuild_the_window(n, seed):
    ids = list(range(1000, 1000 + n))
    sentinels = list(range(10, 20))
    x, y = span_corrupt(ids, sentinels, 0, random.Random(seed))
    assert x[-1] == 0 and y[-1] == 0
    used = [t for t in x if t in sentinels]
    assert used == sentinels[: len(used)] == [t for t in y if t in sentinels]  # in order, each once, both sides
    rebuilt, spans = [], {}
    cur = None
    for t in y[:-1]:
        if t in sentinels:
            cur = spans.setdefault(t, [])
        else:
            cur.append(t)
    for t in x[:-1]:
        rebuilt += spans[t] if t in sentinels else [t]
    assert rebuilt == ids
    assert len(x) <= n + 1  # a window of max_length - 1 tokens never corrupts into more than max_length
    if n >= 20:
        assert sum(len(v) for v in spans.values()) == round(0.15 * n)


def test_span_windows_cover_the_document():
    ids = list(range(300))
    w = span_windows(ids, 128, 0)
    assert [len(x) for x in w] == [127, 127, 46] and sum(w, []) == ids
    assert span_windows(ids, 128, 27)[1][0] == 100


def _docs(tmp_path, n=40):
    rng = random.Random(0)
    words = "the cat sat on a mat while rain fell over old stone roofs and quiet streets".split()
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"body": " ".join(rng.choice(words) for _ in range(rng.choice([3, 30, 300])))})
                            + "\n" for _ in range(n)))
    return str(path)


def _doc_recipe(tmp_path, arch="gpt2", **data):
    r = tiny_recipe(arch, tmp_path / "out", n=200, steps=4)
    r["data"]["sources"] = [{"path": _docs(tmp_path), "format": "text", "columns": {"text": "body"}},
                            {"path": "builtin:synthetic", "num_examples": 200, "weight": 1.5}]
    r["data"].update(max_length=64, cache_dir=str(tmp_path / "cache"), **data)
    r["eval"] = {"metrics": ["perplexity"], "before": False}
    return r


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_documents_become_windows_alike_on_the_arrow_and_list_paths(tmp_path, arch):
    from sft.data.encode import encode
    from sft.data.pipeline import load_splits
    from sft.prepare import build

    kind = "causal" if arch == "gpt2" else "seq2seq"
    r = recipe_from_dict(_doc_recipe(tmp_path, arch, text_stride=8), path="r.yaml")
    prep = build(r, kind)
    acc = prep.accounting
    docs = next(a for name, a in acc.items() if name.startswith("docs"))
    assert all(a["balanced"] for a in acc.values())
    assert docs["train_windows"] > docs["train"] > 0  # documents of 300 words need several 64-token windows
    assert "train_windows" not in acc["synthetic"]
    rows = [prep.train.dataset[i] for i in range(len(prep.train))]
    assert len(rows) == docs["train_windows"] + acc["synthetic"]["train_with_copies"]
    splits = load_splits(r.data)
    enc = encode(splits.train, prep.tokenizer, r.data.template, arch=kind, max_length=64, text_stride=8,
                 seed=r.data.seed)
    assert [(f["input_ids"], f["labels"]) for f in enc.features] == [(x["input_ids"], x["labels"]) for x in rows]
    tok = prep.tokenizer
    doc_rows = [x for x in rows if x["task"] == "docs"]
    if kind == "causal":
        assert all(len(x["input_ids"]) <= 64 for x in doc_rows)
        assert sum(x["input_ids"][-1] == tok.eos_token_id for x in doc_rows) == docs["train"]
    else:  # span corruption: sentinels in the input, each followed by its span in the labels
        from sft.data.documents import sentinel_ids

        assert len(sentinel_ids(tok)) == 100  # the built tokenizer gets T5's 100 sentinels
        first = tok.convert_tokens_to_ids("<extra_id_0>")
        assert first != tok.unk_token_id and all(first in x["input_ids"] and x["labels"][0] == first for x in doc_rows)
        assert all(len(x["input_ids"]) <= 64 and x["input_ids"][-1] == tok.eos_token_id for x in doc_rows)
        # the corruption is a function of the data seed: a second build gives the same features
        again = build(recipe_from_dict(_doc_recipe(tmp_path, arch, text_stride=8, num_proc=2), path="r.yaml"), kind)
        assert [again.train.dataset[i]["labels"] for i in range(len(again.train))] == [x["labels"] for x in rows]


def test_sft_data_reports_windows_and_documents_use_no_template(tmp_path):
    r = _doc_recipe(tmp_path, template="chatml")
    res = run_cli("data", write_recipe(tmp_path / "r.yaml", r), "--show", "40")
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("source docs") and "examples" in x)
    assert "train documents cut into" in line and "windows" in line, line
    assert "<|im_start|>" in res.stdout  # the synthetic examples are rendered with ChatML ...
    shown = res.stdout.split("=== example")[1:]
    assert any("(task docs" in s and "<|im_start|>" not in s for s in shown)  # ... the documents are not


def test_t5_trains_span_corruption_and_scores_it(tmp_path):
    r = _doc_recipe(tmp_path, "t5")
    r["data"]["sources"] = r["data"]["sources"][:1]
    res = run_cli("train", write_recipe(tmp_path / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.load(open(tmp_path / "out" / "metrics.json"))["metrics"]
    assert m["perplexity"] > 1
    # each held-out document is an item of its own (they all have the same, empty, prompt)
    report = (tmp_path / "out" / "eval_report.md").read_text()
    assert "split: eval, 4 items" in report and "references" not in report.split("split: eval")[1].split("\n")[0]


def test_bad_stride_and_a_tokenizer_without_sentinels_are_one_line_errors(tmp_path):
    res = run_cli("data", write_recipe(tmp_path / "a.yaml", _doc_recipe(tmp_path, text_stride=63)))
    assert res.returncode == 2 and "data.text_stride" in res.stderr and res.stderr.count("\n") == 1, res.stderr
    r = _doc_recipe(tmp_path, "t5")
    r["model"]["tokenizer"] = shared("tokenizers", "gpt2")
    res = run_cli("data", write_recipe(tmp_path / "b.yaml", r))
    assert res.returncode == 2 and "sentinel" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_the_real_t5_tokenizer_has_its_100_sentinels(tmp_path):
    """T5's own SentencePiece tokenizer (as ../shared/INVENTORY.md loads it): <extra_id_0> is id 32099, counting
    down, and span corruption reads them by name."""
    import shutil

    from transformers import AutoTokenizer

    from sft.data.documents import sentinel_ids

    shutil.copy(shared("tokenizers", "t5", "spiece.model"), tmp_path / "spiece.model")
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = sentinel_ids(tok)
    assert len(ids) == 100 and ids[0] == 32099 and ids[-1] == 32000


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_streamed_documents_train_in_windows(tmp_path, monkeypatch, arch):
    """A streamed text source is windowed as it is read (the same Encoder), and the run trains on it."""
    from sft.prepare import prepare_streaming
    from sft.train.run import train

    monkeypatch.setattr("datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    r = _doc_recipe(tmp_path, arch)
    r["data"].update(streaming=True, sources=r["data"]["sources"][:1], max_eval_samples=4)
    r["train"].update(max_steps=3)
    recipe = recipe_from_dict(r, path="s.yaml")
    stream = prepare_streaming(recipe, "causal" if arch == "gpt2" else "seq2seq")
    rows = list(stream.train.dataset.take(40))
    assert rows and all(len(x["input_ids"]) <= 64 for x in rows)
    summary = train(recipe)
    assert summary["global_step"] == 3 and summary["eval"]["metrics"]["perplexity"] > 1


def test_a_stride_beyond_the_window_still_ends_and_trains_each_token_once():
    """Evaluation windows can be shorter than data.text_stride (the model context is smaller than max_length): the
    overlap is capped so every window adds a token."""
    ids = list(range(1, 40))
    windows = causal_windows(ids, 0, 8, 20)
    assert [t for _, labels in windows for t in labels if t != -100] == ids + [0]
    assert span_windows(ids, 8, 20)[-1][-1] == ids[-1]
