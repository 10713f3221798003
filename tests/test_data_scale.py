"""Data at scale: the Arrow tokenising stage (num_proc), the tokenised cache, streaming with resume."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, tiny_recipe, write_recipe
from sft.errors import DataError, RecipeError
from sft.recipe import recipe_from_dict


def _rows(prep):
    ds = prep.train.dataset
    return [ds[i] for i in range(len(ds))]


def _mixed_recipe(tmp_path, **data):
    """Two sources (one up-weighted, so copies exist), a too-long example dropped, a test split."""
    long = tmp_path / "long.jsonl"
    long.write_text("".join(json.dumps({"instruction": f"q{i} " + "word " * (200 if i % 7 == 0 else 3),
                                        "output": f"a{i}"}) + "\n" for i in range(60)))
    r = tiny_recipe("gpt2", tmp_path / "out", n=300)
    r["data"]["sources"] = [{"path": "builtin:synthetic", "num_examples": 300},
                            {"path": str(long), "weight": 2.5}]
    r["data"].update(test_ratio=0.05, cache_dir=str(tmp_path / "cache"), **data)
    return r


def test_arrow_stage_equals_list_encode_and_num_proc_2_equals_1(tmp_path):
    from sft.data.encode import encode
    from sft.prepare import build

    r = recipe_from_dict(_mixed_recipe(tmp_path), path="r.yaml")
    one = build(r, "causal")
    two = build(recipe_from_dict(_mixed_recipe(tmp_path, num_proc=2), path="r.yaml"), "causal")
    assert _rows(one) == _rows(two) and len(one.train) > 300
    assert one.splits.report.to_dict() == two.splits.report.to_dict()
    assert one.splits.report.dropped["longer than max_length=128 tokens"] > 0
    assert one.accounting == two.accounting and all(a["balanced"] for a in one.accounting.values())
    assert one.train.length_stats == two.train.length_stats and one.tasks == two.tasks
    # the list path (kept for evaluation sets) gives the same features, drops and lengths
    from sft.data.pipeline import load_splits

    splits = load_splits(r.data)
    enc = encode(splits.train, one.tokenizer, "alpaca", arch="causal", max_length=128, report=splits.report)
    assert [{"input_ids": f["input_ids"], "labels": f["labels"], "task": f["task"]} for f in enc.features] == \
        [{k: row[k] for k in ("input_ids", "labels", "task")} for row in _rows(one)]
    assert splits.report.to_dict() == one.splits.report.to_dict()


def test_fast_batch_tokenising_equals_the_tokenizer_call():
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from transformers import AutoTokenizer

    from conftest import shared
    from sft.data.encode import _tokenize_many
    from sft.tokenizer import build_tokenizer

    toks = [AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2")),
            build_tokenizer("bpe", ["warm up text 12 中文"] * 20, vocab_size=300, arch="causal",
                            markers=("<|im_start|>", "<|im_end|>"))]
    alphabet = st.sampled_from(list("ab 1\n\t中文é") + ["<|endoftext|>", "<|im_start|>", "  ", "\r\n"])

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.lists(alphabet, max_size=12).map("".join), min_size=1, max_size=5))
    def same(texts):
        for tok in toks:
            assert _tokenize_many(tok, texts) == tok(texts, add_special_tokens=False)["input_ids"]

    same()
    toks[0](["a b c d"], truncation=True, max_length=2)  # a backend left truncating: the plain call is used
    assert _tokenize_many(toks[0], ["a b c d"]) == [toks[0].encode("a b c d", add_special_tokens=False)]


def test_cache_hit_reads_no_source_and_equals_the_build(tmp_path, monkeypatch):
    from sft.data import sources
    from sft.prepare import prepare_data

    r = recipe_from_dict(_mixed_recipe(tmp_path), path="r.yaml")
    first = prepare_data(r, "causal")
    assert first.cache == "built" and os.path.isdir(first.cache_path)

    def no_reading(*a, **k):
        raise AssertionError("a cache hit read a source")

    monkeypatch.setattr(sources, "read_rows", no_reading)
    second = prepare_data(r, "causal")
    assert second.cache == "hit" and second.cache_path == first.cache_path
    assert _rows(first) == _rows(second)
    assert second.splits.eval == first.splits.eval and second.splits.test == first.splits.test
    assert second.splits.report.to_dict() == first.splits.report.to_dict()
    assert second.splits.report.dropped_by_source == first.splits.report.dropped_by_source
    assert second.accounting == first.accounting and second.tasks == first.tasks
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()  # the built tokenizer travels with it
    assert second.train.dataset.cache_files  # memory-mapped from the entry, not loaded into memory
    assert not [f for f in os.listdir(tmp_path / "cache") if ".tmp-" in f]


@pytest.mark.parametrize("change", ["data", "source", "tokenizer", "template", "version", "code"])
def test_each_key_part_invalidates_the_cache(tmp_path, monkeypatch, change):
    from sft.data import cache
    from sft.prepare import prepare_data

    d = _mixed_recipe(tmp_path)
    base = prepare_data(recipe_from_dict(d, path="r.yaml"), "causal")
    assert prepare_data(recipe_from_dict(d, path="r.yaml"), "causal").cache == "hit"
    if change == "data":
        d["data"]["max_length"] = 96
    elif change == "source":
        with open(d["data"]["sources"][1]["path"], "a") as fh:
            fh.write(json.dumps({"instruction": "one more", "output": "row"}) + "\n")
    elif change == "tokenizer":
        d["model"]["tokenizer_vocab_size"] = 420
    elif change == "template":
        d["data"]["template"] = "chatml"
    elif change == "version":
        monkeypatch.setattr("sft.__version__", "99.0")
    else:
        monkeypatch.setattr(cache, "code_digest", lambda files=(): "other code")
    again = prepare_data(recipe_from_dict(d, path="r.yaml"), "causal")
    assert again.cache == "built" and again.cache_path != base.cache_path
    # and nothing but the number of workers is ignored
    same = prepare_data(recipe_from_dict({**d, "data": {**d["data"], "num_proc": 2}}, path="r.yaml"), "causal")
    assert same.cache == "hit"


def test_pretrained_tokenizer_is_part_of_the_key(tmp_path):
    from conftest import shared
    from sft.prepare import prepare_data

    gpt2 = shared("tokenizers", "gpt2")
    d = _mixed_recipe(tmp_path)
    d["model"]["tokenizer"] = gpt2
    first = prepare_data(recipe_from_dict(d, path="r.yaml"), "causal")
    assert prepare_data(recipe_from_dict(d, path="r.yaml"), "causal").cache == "hit"
    import shutil

    other = tmp_path / "gpt2-more"
    shutil.copytree(gpt2, other)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(other))
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(str(other))
    d["model"]["tokenizer"] = str(other)
    again = prepare_data(recipe_from_dict(d, path="r.yaml"), "causal")
    assert again.cache == "built" and again.cache_path != first.cache_path


def test_damaged_entry_is_rebuilt(tmp_path):
    from sft.prepare import prepare_data

    r = recipe_from_dict(_mixed_recipe(tmp_path), path="r.yaml")
    first = prepare_data(r, "causal")
    rows = _rows(first)
    (tmp_path / "cache" / os.path.basename(first.cache_path) / "meta.json").write_text("{truncated")
    again = prepare_data(r, "causal")
    assert again.cache == "built" and _rows(again) == rows
    assert prepare_data(r, "causal").cache == "hit"


def test_cache_entry_holds_the_maps_files_and_rows_not_a_copy(tmp_path):
    import numpy as np

    from sft.data import cache
    from sft.prepare import build, prepare_data

    want = _rows(build(recipe_from_dict(_mixed_recipe(tmp_path), path="r.yaml"), "causal"))
    entries = {}
    for n in (1, 2):
        d = _mixed_recipe(tmp_path, num_proc=n)
        d["data"]["cache_dir"] = str(tmp_path / f"cache{n}")
        r = recipe_from_dict(d, path="r.yaml")
        prep = prepare_data(r, "causal")
        assert prep.cache == "built" and _rows(prep) == want
        folder = os.path.join(prep.cache_path, cache.TRAIN)
        # one Arrow file per map worker, moved in as written, and the row of each training example
        assert sorted(os.listdir(folder)) == [f"data-{i:05d}.arrow" for i in range(n)] + [cache.ROWS]
        assert len(np.load(os.path.join(folder, cache.ROWS))) == len(want) > len(set(map(str, want)))  # copies
        hit = prepare_data(r, "causal")
        assert hit.cache == "hit" and _rows(hit) == want
        assert sorted(os.listdir(folder)) == [f"data-{i:05d}.arrow" for i in range(n)] + [cache.ROWS]  # unwritten
        entries[n] = (r, prep.cache_path, folder)
    r, path, folder = entries[2]
    rows = np.load(os.path.join(folder, cache.ROWS))
    damages = [lambda: open(os.path.join(folder, cache.ROWS), "wb").write(b"\x93NUMPY"),
               lambda: np.save(os.path.join(folder, cache.ROWS), rows[:-1]),
               lambda: np.save(os.path.join(folder, cache.ROWS), rows + 10**6),
               lambda: os.remove(os.path.join(folder, "data-00001.arrow")),
               lambda: open(os.path.join(folder, "data-00000.arrow"), "r+b").truncate(100)]
    for damage in damages:  # each is a miss, rebuilt in place, then a hit again
        damage()
        again = prepare_data(r, "causal")
        assert again.cache == "built" and again.cache_path == path and _rows(again) == want
        assert prepare_data(r, "causal").cache == "hit"
    # an entry in the old layout (a flattened save_to_disk copy, format 1) is replaced, not misread
    meta_file = os.path.join(path, cache.META)
    meta = json.loads(open(meta_file).read())
    import shutil

    from datasets import Dataset

    shutil.rmtree(folder)
    Dataset.from_list(want).save_to_disk(folder)
    json.dump({k: v for k, v in meta.items() if k not in ("train_files", "train_columns")} | {"format": 1},
              open(meta_file, "w"))
    assert cache.load(os.path.dirname(path), os.path.basename(path)) is None
    rebuilt = prepare_data(r, "causal")
    assert rebuilt.cache == "built" and _rows(rebuilt) == want
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".stale-" in f or ".tmp-" in f]


def test_an_in_memory_training_set_is_stored_and_read_back(tmp_path):
    from sft.data import cache
    from sft.prepare import build

    prep = build(recipe_from_dict(_mixed_recipe(tmp_path), path="r.yaml"), "causal")
    assert not prep.train.files  # no work folder: the tokenised table is in memory
    cache.store(str(tmp_path / "c"), "k", prep.train, {"train_examples": len(prep.train)})
    train, meta, tok_dir = cache.load(str(tmp_path / "c"), "k")
    assert [train[i] for i in range(len(train))] == _rows(prep) and tok_dir is None and train.cache_files


def test_sft_data_prepare_builds_then_hits(tmp_path, capsys):
    from sft.cli import main

    path = write_recipe(tmp_path / "r.yaml", _mixed_recipe(tmp_path))
    assert main(["data", path, "--prepare"]) == 0
    out = capsys.readouterr().out
    assert "built:" in out and str(tmp_path / "cache") in out and "source synthetic:" in out
    assert main(["data", path, "--prepare"]) == 0
    assert "already cached:" in capsys.readouterr().out
    assert main(["data", path, "--prepare", "data.cache=false"]) == 2
    assert "data.cache" in capsys.readouterr().err


# ---- streaming ---------------------------------------------------------------------------------

def _shards(tmp_path, n=1200):
    """The synthetic suite written as Parquet shards (as Spark / datatrove write them) and gzipped JSON lines."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft.data.synthetic import generate

    rows = generate(n, seed=5)
    pq_dir = tmp_path / "parquet"
    pq_dir.mkdir()
    third = n // 3
    for i in range(2):
        pq.write_table(pa.Table.from_pylist(rows[i * third:(i + 1) * third]), pq_dir / f"part-{i:05d}.parquet")
    with gzip.open(tmp_path / "rest.jsonl.gz", "wt", encoding="utf-8") as fh:
        for row in rows[2 * third:]:
            fh.write(json.dumps({"prompt": row["instruction"] + " " + row["input"], "completion": row["output"]}) + "\n")
    return str(pq_dir / "*.parquet"), str(tmp_path / "rest.jsonl.gz")


def _stream_recipe(tmp_path, out, steps=16, **train):
    parquet, jsonl = _shards(tmp_path) if not (tmp_path / "parquet").exists() else \
        (str(tmp_path / "parquet" / "*.parquet"), str(tmp_path / "rest.jsonl.gz"))
    r = tiny_recipe("gpt2", out, steps=steps, **{f"train__{k}": v for k, v in train.items()})
    r["data"].update(streaming=True, sources=[{"path": parquet, "weight": 3.0}, {"path": jsonl, "weight": 1.0}],
                     eval_ratio=0.05, test_ratio=0.05, max_eval_samples=12)
    r["model"]["config_overrides"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return r


def test_streaming_splits_by_hash_and_mixes_by_weight(tmp_path, monkeypatch):
    from itertools import islice

    monkeypatch.setattr("datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # datasets' 5 s pause per closed stream

    from sft.data.clean import prompt_key
    from sft.data.split import split_hash
    from sft.data.stream import _mixed, _source_streams
    from sft.prepare import prepare_data
    from sft.data.clean import DropReport

    r = recipe_from_dict(_stream_recipe(tmp_path, tmp_path / "o"), path="s.yaml")
    prep = prepare_data(r, "causal")
    assert prep.cache == "streaming" and len(prep.splits.eval) == 12
    assert all(split_hash(prompt_key(e), 42) < 0.05 for e in prep.splits.eval)
    streams, _ = _source_streams(r.data, DropReport(), "s.yaml")
    records = [json.loads(x["record"]) for x in islice(iter(_mixed(streams, r.data, {prompt_key(e) for e in
                                                                                     prep.splits.eval},
                                                                   DropReport())), 600)]
    scored = {prompt_key(e) for e in prep.splits.eval}
    assert not scored & {prompt_key(x) for x in records}
    assert not [x for x in records if 0.05 <= split_hash(prompt_key(x), 42) < 0.10]  # the test side never trains
    share = sum(x["source"] == "parquet" for x in records) / len(records)
    assert 0.68 < share < 0.82  # weights 3 : 1
    batch = list(islice(iter(prep.train.dataset), 4))
    assert set(batch[0]) == {"input_ids", "labels"} and all(len(b["input_ids"]) <= 128 for b in batch)
    # `sft eval RECIPE` scores the same eval set, chosen from the stream: the corpus is not read through
    import sft.evaluation.run as ev

    monkeypatch.setattr(ev, "split_corpus", lambda *a, **k: pytest.fail("read the whole corpus"))
    assert ev.recipe_splits(r, with_train=False).eval == prep.splits.eval
    # the test (or train) split of a streaming recipe is the prepared path's, read through as before
    def prepared(*a, **k):
        raise LookupError("the prepared path")

    monkeypatch.setattr(ev, "split_corpus", prepared)
    with pytest.raises(LookupError, match="prepared path"):
        ev.recipe_splits(r, "test")


def test_streaming_needs_max_steps_and_readable_shards(tmp_path):
    d = _stream_recipe(tmp_path, tmp_path / "o")
    d["train"]["max_steps"] = -1
    with pytest.raises(RecipeError, match="train.max_steps"):
        recipe_from_dict(d, path="s.yaml")
    bad = tmp_path / "mixed"
    bad.mkdir()
    (bad / "a.parquet").write_bytes(b"x")
    (bad / "b.jsonl").write_text("{}\n")
    d = _stream_recipe(tmp_path, tmp_path / "o")
    d["data"]["sources"] = [{"path": str(bad)}]
    from sft.prepare import prepare_data

    with pytest.raises(DataError, match="mixed file types"):
        prepare_data(recipe_from_dict(d, path="s.yaml"), "causal")
    (bad / "b.jsonl").unlink()
    with pytest.raises(DataError, match="a.parquet|cannot read"):
        prepare_data(recipe_from_dict(d, path="s.yaml"), "causal")


def test_streaming_run_is_killed_resumes_and_finishes(tmp_path, monkeypatch):
    from sft.train.run import train
    from test_train import losses

    monkeypatch.setattr("datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # datasets' 5 s pause per closed stream
    ref, out = tmp_path / "ref", tmp_path / "killed"
    train(recipe_from_dict(_stream_recipe(tmp_path, ref, steps=24, save_steps=8, logging_steps=1), path="ref.yaml"))
    path = write_recipe(tmp_path / "killed.yaml", _stream_recipe(tmp_path, out, steps=24, save_steps=8,
                                                                 logging_steps=1))
    proc = subprocess.Popen([sys.executable, "-m", "sft", "train", path], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint-8" / "trainer_state.json").exists() and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.1)
    assert (out / "checkpoint-8").exists(), proc.communicate()[0][-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "train_summary.json").exists()
    summary = train(recipe_from_dict(_stream_recipe(tmp_path, out, steps=24, save_steps=8, logging_steps=1),
                                     path=path), resume=True)
    assert summary["global_step"] == 24 and summary["data"]["cache"] == "streaming"
    # the resumed run skipped the batches it had trained on: the steps after the checkpoint see the same data
    a, b = losses(ref), losses(out)
    assert b[-1] == pytest.approx(a[-1], rel=1e-4)


def test_streaming_trains_t5_on_jsonl_shards(tmp_path, monkeypatch):
    from sft.train.run import train

    monkeypatch.setattr("datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    _, jsonl = _shards(tmp_path, n=600)
    r = tiny_recipe("t5", tmp_path / "t5", steps=8)
    r["data"].update(streaming=True, sources=[{"path": jsonl}], max_eval_samples=8)
    r["eval"].update(after=True, metrics=["perplexity"])
    summary = train(recipe_from_dict(r, path="t5.yaml"))
    assert summary["global_step"] == 8 and summary["train_examples"] is None
    assert summary["eval"]["metrics"]["perplexity"] > 1 and summary["data"]["eval"] == 8


# ---- columnar split: sources read a piece at a time, the split and mix on positions ------------------------

def _reference_hash_split(records, sizes, seed):
    """The list algorithm the positional split replaced (kept here as the oracle): group by prompt, order groups
    by prompt hash, fill each held-out part with whole groups."""
    from sft.data.clean import prompt_key
    from sft.data.split import split_hash

    groups = {}
    for r in records:
        groups.setdefault(prompt_key(r), []).append(r)
    parts = [[] for _ in sizes] + [[]]
    for k in sorted(groups, key=lambda k: (split_hash(k, seed), k)):
        g = groups[k]
        target = next((i for i, n in enumerate(sizes) if len(parts[i]) + len(g) <= n or (not parts[i] and n > 0)),
                      len(sizes))
        parts[target].extend(g)
    return parts


def test_positional_hash_split_equals_the_list_algorithm():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from sft.data.split import hash_split

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(0, 30), min_size=0, max_size=80), st.lists(st.integers(0, 40), min_size=1, max_size=3),
           st.integers(0, 5))
    def check(prompts, sizes, seed):
        # repeated prompt numbers are same-prompt groups; the answer tells the copies apart
        records = [{"messages": [{"role": "user", "content": f"p{p}"}, {"role": "assistant", "content": f"a{i}"}]}
                   for i, p in enumerate(prompts)]
        assert hash_split(records, sizes, seed) == _reference_hash_split(records, sizes, seed)

    check()


def _big_jsonl(path, n, dup_every=7):
    with open(path, "w") as fh:
        for i in range(n):
            k = i - 1 if i % dup_every == 0 and i else i  # exact duplicates straddle piece boundaries
            row = {"instruction": f"question {k}", "output": f"answer {k}"}
            if i == n - 5:  # a row that cannot be converted, in the last piece (after duplicates were dropped)
                del row["output"]
            fh.write(json.dumps(row) + "\n")


def test_a_source_read_in_pieces_splits_exactly_as_read_whole(tmp_path, monkeypatch):
    from sft.data import sources
    from sft.data.pipeline import load_splits, split_corpus

    import pyarrow as pa
    import pyarrow.parquet as pq

    _big_jsonl(tmp_path / "a.jsonl", 1300)
    rows = [{"instruction": f"pq {i % 400}", "output": f"o {i}"} for i in range(900)]  # same-prompt groups
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet", row_group_size=128)
    r = tiny_recipe("gpt2", tmp_path / "out", n=10)
    r["data"].update(sources=[{"path": str(tmp_path / "a.jsonl"), "weight": 1.5},
                              {"path": str(tmp_path / "b.parquet"), "max_samples": 500}],
                     eval_ratio=0.1, test_ratio=0.05, max_eval_samples=90, max_samples=1800)
    data = recipe_from_dict(r, path="r.yaml").data
    whole = load_splits(data)
    monkeypatch.setattr(sources, "CHUNK", 97)
    pieces = load_splits(data)
    assert [json.dumps(x) for x in pieces.train] == [json.dumps(x) for x in whole.train]
    assert pieces.eval == whole.eval and pieces.test == whole.test and len(whole.eval) == 90
    # the same counts in the same order (a report read whole lists a source's conversion drops first)
    assert list(pieces.report.dropped.items()) == list(whole.report.dropped.items())
    assert list(whole.report.dropped)[:2] == ["a: null or missing field 'output'", "exact duplicate"]
    assert {k: dict(v) for k, v in pieces.report.dropped_by_source.items()} == \
        {k: dict(v) for k, v in whole.report.dropped_by_source.items()}
    assert pieces.per_source == whole.per_source
    # weighted copies are one object, as in the list algorithm
    assert len({id(x) for x in pieces.train}) < len(pieces.train)
    # with a work folder the records are an Arrow file, read back a batch at a time, not Python objects
    corpus = split_corpus(data, workdir=str(tmp_path))
    assert os.path.getsize(tmp_path / "records.arrow") > 0 and corpus.store.reader().path
    assert corpus.store.records(corpus.train) == pieces.train
    assert len(corpus.store.reader().starts) > 2  # several record batches
    with pytest.raises(RuntimeError):
        corpus.store.add([{"instruction": "late", "output": "row"}], "a")


def test_hub_source_is_read_a_batch_at_a_time(monkeypatch):
    import datasets

    from sft.data import sources

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(25)]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    monkeypatch.setattr(sources, "CHUNK", 10)
    chunks = list(sources.iter_rows("someone/data"))
    assert [len(c) for c in chunks] == [10, 10, 5] and [r for c in chunks for r in c] == rows


def test_large_streamed_files_are_fingerprinted_by_samples(tmp_path, monkeypatch):
    import hashlib

    from sft.data import fingerprint as fp
    from sft.recipe import SourceConfig

    monkeypatch.setattr(fp, "SAMPLED_OVER", 4 << 20)
    big = tmp_path / "shards" / "part-0.jsonl"
    big.parent.mkdir()
    line = json.dumps({"instruction": "q", "output": "a" * 80}) + "\n"
    big.write_text(line * (16 * (1 << 20) // len(line)))
    (tmp_path / "shards" / "small.jsonl").write_text(line)
    src = SourceConfig(path=str(tmp_path / "shards"))
    first = fp.source_fingerprint(src, streaming=True)["files"]["part-0.jsonl"]
    assert first.startswith("s") and not fp.source_fingerprint(src, streaming=True)["files"]["small.jsonl"
                                                                                      ].startswith("s")
    # a prepared source is hashed in full (its hash keys the tokenised cache)
    assert fp.source_fingerprint(src)["files"]["part-0.jsonl"] == fp.file_digest(str(big))

    hashed = []

    class Counting:  # sha256 that counts what it is fed
        def __init__(self, data=b""):
            self.h = hashlib.new("sha256", data)

        def update(self, b):
            hashed.append(len(b))
            self.h.update(b)

        def hexdigest(self):
            return self.h.hexdigest()

    with monkeypatch.context() as m:
        m.setattr(fp.hashlib, "sha256", Counting)
        assert fp.data_file_digest(str(big)) == first
    assert sum(hashed) == 2 * (1 << 20) + 64 * (1 << 16) < big.stat().st_size  # not read through
    data = bytearray(big.read_bytes())
    data[len(data) * 32 // 65 + 10] = ord("b")  # inside a sampled block
    big.write_bytes(bytes(data))
    changed = fp.data_file_digest(str(big))
    assert changed != first
    with open(big, "ab") as fh:  # an appended row changes the size
        fh.write(line.encode())
    assert fp.data_file_digest(str(big)) not in (first, changed)


def test_each_reader_resolves_files_as_before(tmp_path):
    """One glob rule: ** reaches into subfolders for prepared and streamed reading alike. Prepared reading: a
    build-data folder gives its split's file, a fingerprint lists a folder's top-level data files. Streaming:
    folders reach into subfolders, .gz counts, and a folder streams every file."""
    from sft.data import fingerprint as fp
    from sft.data.sources import local_files
    from sft.recipe import SourceConfig

    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    for f in ("train.jsonl", "eval.jsonl", "sub/deep.jsonl", "sub/more.jsonl.gz", "notes.txt"):
        (d / f).write_text(json.dumps({"instruction": "q", "output": f}) + "\n")
    names = lambda fs: [os.path.relpath(f, d) for f in fs]  # noqa: E731
    recursive = ["eval.jsonl", "sub/deep.jsonl", "train.jsonl"]
    assert names(local_files(str(d / "**" / "*.jsonl"))) == recursive
    assert names(local_files(str(d / "**" / "*.jsonl"), streaming=True)) == recursive
    assert names(local_files(str(d))) == ["train.jsonl"] and names(local_files(str(d), "eval")) == ["eval.jsonl"]
    assert names(local_files(str(d), None)) == ["eval.jsonl", "train.jsonl"]
    assert names(local_files(str(d), None, streaming=True)) == ["eval.jsonl", "sub/deep.jsonl", "sub/more.jsonl.gz",
                                                                "train.jsonl"]
    src = SourceConfig(path=str(d))
    assert sorted(fp.source_fingerprint(src)["files"]) == ["eval.jsonl", "train.jsonl"]
    assert sorted(fp.source_fingerprint(src, streaming=True)["files"]) == [
        "deep.jsonl", "eval.jsonl", "more.jsonl.gz", "train.jsonl"]
    (d / "sub" / "train.jsonl").write_text("{}\n")  # two files of one name: named from their common folder
    assert sorted(fp.source_fingerprint(src, streaming=True)["files"]) == [
        "eval.jsonl", "sub/deep.jsonl", "sub/more.jsonl.gz", "sub/train.jsonl", "train.jsonl"]
