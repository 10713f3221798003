"""Safe with any input: sft deletes only what it wrote, reads data byte-faithfully, never runs a model
folder's code, remembers its data, guards its run folder, and validates before it works. Each bad input
ends in exit code 2 with one line naming the file or field, or in a counted drop."""

import csv
import json
import os
import shutil
import socket

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, tiny_recipe, write_recipe
from sft.cli import main
from test_errors import cli, one_line_error, recipe_file


def _touch(path, text="keep me"):
    path.write_text(text)
    return path


# ---- 1. sft deletes only what sft wrote ---------------------------------------------------------------

def test_overwrite_refuses_the_current_folder_and_the_recipe_folder(tmp_path, capsys, monkeypatch):
    notes = _touch(tmp_path / "notes.txt")
    monkeypatch.chdir(tmp_path)
    r = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", "."))
    err = one_line_error(capsys, "train", r, "--overwrite")
    assert "train.output_dir" in err and "current folder" in err
    sub = tmp_path / "recipes"
    sub.mkdir()
    r2 = write_recipe(sub / "r.yaml", tiny_recipe("gpt2", str(sub)))
    monkeypatch.chdir(tmp_path / "recipes")
    err = one_line_error(capsys, "train", r2, "--overwrite")
    assert "refusing" in err
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, "train", r2, "--overwrite")
    assert "folder of the recipe itself" in err
    assert notes.read_text() == "keep me" and (sub / "r.yaml").exists()


def test_forbidden_folders():
    from sft.rundir import forbidden_reason

    assert "root" in forbidden_reason("/", None)
    assert "home" in forbidden_reason(os.path.expanduser("~"), None)
    assert forbidden_reason(os.path.join(os.getcwd(), "outputs", "x"), None) is None


def test_unmarked_or_foreign_folders_are_never_written_or_cleared(tmp_path, capsys):
    out = tmp_path / "data_folder"
    out.mkdir()
    mine = _touch(out / "thesis.tex")
    r = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", out))
    for extra in ([], ["--overwrite"]):
        err = one_line_error(capsys, "train", r, *extra)
        assert "files that sft did not write" in err
    from sft.rundir import MARKER

    _touch(out / MARKER, "{}")
    err = one_line_error(capsys, "train", r, "--overwrite")
    assert "--overwrite refused" in err and "thesis.tex" in err
    assert mine.read_text() == "keep me"


def test_clear_removes_only_own_files(tmp_path):
    from sft import rundir

    out = tmp_path / "run"
    rundir.create(str(out))
    for name in ("metrics.json", "recipe.yaml", "train_log.jsonl"):
        _touch(out / name)
    (out / "checkpoint-5").mkdir()
    _touch(out / "checkpoint-5" / "x")
    removed = rundir.clear(str(out))
    assert sorted(removed) == ["checkpoint-5", "metrics.json", "recipe.yaml", "train_log.jsonl"]
    assert os.listdir(out) == [rundir.MARKER]


# ---- 2. byte-faithful readers (property tests) --------------------------------------------------------

TRICKY = st.text(alphabet=st.sampled_from(list("ab ,\"'\n\r\t\x0c\u2028\u2029\u0085\x1c\x1d\x1e中文😀é\\{}[]")),
                 max_size=30)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(TRICKY, TRICKY), min_size=1, max_size=8))
def test_jsonl_csv_parquet_read_back_identical(tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sft.data.sources import read_rows

    records = [{"instruction": a, "output": b} for a, b in rows]
    for ascii_only in (True, False):
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records), encoding="utf-8")
        assert read_rows(str(p)) == records
    p = tmp_path / "d.json"
    p.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    assert read_rows(str(p)) == records
    p = tmp_path / "d.csv"
    with open(p, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["instruction", "output"])
        w.writeheader()
        w.writerows(records)
    assert read_rows(str(p)) == records
    p = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(records), p)
    assert read_rows(str(p)) == records


def test_bom_crlf_and_json_array_saved_as_jsonl(tmp_path):
    from sft.data.sources import read_rows

    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"instruction": "a", "output": "b"}\r\n{"instruction": "c", "output": "d"}\r\n')
    assert read_rows(str(p)) == [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    p = tmp_path / "array.jsonl"
    p.write_text('[{"instruction": "a", "output": "b"}]')
    assert read_rows(str(p)) == [{"instruction": "a", "output": "b"}]
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufeffinstruction,output\r\n\"line one\nline two\",x\r\n".encode("utf-8"))
    assert read_rows(str(p)) == [{"instruction": "line one\nline two", "output": "x"}]


# ---- 3. duplicate YAML keys ----------------------------------------------------------------------------

def test_duplicate_yaml_keys_are_an_error(tmp_path, capsys):
    path = recipe_file(tmp_path, "train:\n  epochs: 1\ndata:\n  sources: [{path: builtin:synthetic}]\n"
                                 "train:\n  epochs: 3\n")
    err = one_line_error(capsys, "recipe", "show", path)
    assert "key 'train' appears twice" in err and "lines 1 and 5" in err and path in err


# ---- 4. no foreign code --------------------------------------------------------------------------------

def _booby_trap(folder, marker):
    """Give a model folder an auto_map whose module writes `marker` when imported."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
                       "AutoModelForSeq2SeqLM": "evil.EvilModel"}
    cfg_path.write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import GPT2Config as EvilConfig\n"
                                    "from transformers import GPT2LMHeadModel as EvilModel\n")


def test_model_folders_never_run_their_code(tmp_path, trained_full, trained_lora):
    from conftest import run_cli

    full = tmp_path / "full"
    shutil.copytree(trained_full, full)
    lora = tmp_path / "lora"
    shutil.copytree(trained_lora, lora)
    marker = tmp_path / "RAN"
    _booby_trap(full, marker)
    _booby_trap(lora / "base_model", marker)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "hi"}\n')
    runs = [("generate", str(full), "--input", str(prompts), "--max-new-tokens", "2"),
            ("eval", str(full), "--max-samples", "2", "--out", str(tmp_path / "e")),
            ("chat", str(full), "--max-new-tokens", "2"),
            ("merge", str(lora), "--out", str(tmp_path / "merged"))]
    for args in runs:
        res = run_cli(*args, env={"HF_HUB_OFFLINE": "1"}, input="/exit\n")
        assert not marker.exists(), args
        assert "Traceback" not in res.stderr and "[y/N]" not in res.stdout + res.stderr, (args, res.stderr)
        assert res.returncode in (0, 2), (args, res.stderr[-500:])


# ---- 5. runs remember their data -----------------------------------------------------------------------

def _alpaca_file(path, n=60, salt=""):
    rows = [{"instruction": f"say {i}{salt}", "output": f"{i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_eval_of_a_run_scores_its_own_split_or_says_the_data_changed(tmp_path):
    from sft.errors import EvalError
    from sft.evaluation.run import saved_split
    from sft.recipe import recipe_from_dict
    from sft.data.fingerprint import data_fingerprint
    from sft.rundir import FINGERPRINT
    from sft.data.pipeline import load_splits
    from sft.tokenizer import build_tokenizer

    data = tmp_path / "d.jsonl"
    rows = _alpaca_file(data)
    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", data__sources=[{"path": str(data)}],
                                     data__eval_ratio=0.25))
    splits = load_splits(r.data)
    out = tmp_path / "out"
    out.mkdir()
    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    (out / FINGERPRINT).write_text(json.dumps(data_fingerprint(r, tok, splits)))
    before = [x["messages"] for x in splits.eval]
    data.write_text("".join(json.dumps(x) + "\n" for x in reversed(rows)))  # same rows, other order
    assert [x["messages"] for x in saved_split(str(out), r, "eval")] == before
    _alpaca_file(data, salt="!")  # other rows
    with pytest.raises(EvalError, match="the data changed since training: 15 of the run's 15 eval examples"):
        saved_split(str(out), r, "eval")


def test_resume_refuses_changed_data(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    _alpaca_file(data, n=40)
    rec = tiny_recipe("gpt2", tmp_path / "out", steps=4, data__sources=[{"path": str(data)}])
    rec["train"]["save_steps"] = 2
    path = write_recipe(tmp_path / "r.yaml", rec)
    assert main(["train", path]) == 0
    _alpaca_file(data, n=40, salt="?")
    err = one_line_error(capsys, "train", path, "--resume")
    assert "cannot resume: the data changed" in err and "d.jsonl changed" in err


# ---- 6. run lifecycle ----------------------------------------------------------------------------------

def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path, capsys):
    from sft.rundir import LOCK, MARKER

    out = tmp_path / "out"
    out.mkdir()
    _touch(out / MARKER, "{}")
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", out, steps=2))
    err = one_line_error(capsys, "train", path)
    assert f"another sft run is using this output_dir (pid {os.getpid()}" in err
    (out / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    assert main(["train", path]) == 0
    assert "taking over a stale lock" in capsys.readouterr().err and not (out / LOCK).exists()


def test_failed_start_writes_no_recipe(tmp_path, capsys):
    out = tmp_path / "out"
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", out, data__sources=[{"path": str(tmp_path / "no.jsonl")}]))
    one_line_error(capsys, "train", path)
    assert not (out / "recipe.yaml").exists()


def test_merge_and_push_refuse_their_own_input(tmp_path, capsys, trained_lora):
    err = one_line_error(capsys, "merge", str(trained_lora), "--out", str(trained_lora))
    assert "--out must be a folder outside the input folder" in err
    err = one_line_error(capsys, "push", str(trained_lora), "--to-dir", str(trained_lora))
    assert "--to-dir must be a folder outside the input folder" in err


def test_build_data_split_names_stay_inside_out(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"tasks": [{"builtin": "synthetic", "per_task": 2}],
                                    "splits": {"../../escape": 0.5, "train": 0.5}}))
    err = one_line_error(capsys, "build-data", str(spec), "--out", str(tmp_path / "o"))
    assert "splits.../../escape" in err and "not a plain file name" in err
    assert not (tmp_path.parent / "escape.jsonl").exists()


# ---- 7. validation before work -------------------------------------------------------------------------

BASE = "data:\n  sources: [{path: builtin:synthetic}]\n"
BAD_VALUES = [
    ("train:\n  learning_rate: .nan\n", "train.learning_rate: got nan, expected a finite number"),
    ("train:\n  epochs: .inf\n", "train.epochs: got inf, expected a finite number"),
    ("data:\n  sources: [{path: builtin:synthetic, weight: .inf}]\n", "data.sources.0.weight: got inf"),
    ("data:\n  sources: [{path: builtin:synthetic}]\n  eval_ratio: .nan\n", "data.eval_ratio: got nan"),
    ("train:\n  seed: -1\n", "train.seed: got -1, expected a value >= 0"),
    ("model:\n  tokenizer_vocab_size: 1000000000\n", "model.tokenizer_vocab_size: got 1000000000"),
    ("model:\n  tokenizer: bpe\n  tokenizer_digits: 4\n", "model.tokenizer_digits: got 4, expected a value <= 3"),
    ("model:\n  name: gpt2\n  tokenizer_digits: 2\n",
     "model.tokenizer_digits: digit grouping applies only to a tokenizer built with tokenizer: bpe"),
    ("model:\n  tokenizer: byte\n  tokenizer_digits: 2\n", "model.tokenizer_digits: digit grouping applies only"),
    ("train:\n  lr_scheduler: cosin\n", "train.lr_scheduler: unknown name 'cosin' (fix: did you mean 'cosine'?)"),
    ("train:\n  optim: adamw_torc\n", "train.optim: unknown name 'adamw_torc' (fix: did you mean 'adamw_torch'?)"),
    ("train:\n  report_to: [tensorbord]\n", "train.report_to.0: unknown name 'tensorbord'"),
    ("train:\n  output_dir: ''\n", "train.output_dir: is empty"),
    ("hub:\n  push_to_hub: true\n", "hub.repo_id: push_to_hub is on but no repo_id is set"),
]


@pytest.mark.parametrize("text,expected", BAD_VALUES)
def test_bad_values(tmp_path, capsys, text, expected):
    path = recipe_file(tmp_path, BASE + text if "sources" not in text else text)
    err = one_line_error(capsys, "recipe", "show", path)
    assert expected in err


BAD_OVERRIDES = [
    ("train.batch_size.x=1", "train.batch_size: got {'x': 1}, expected an integer"),
    ("data.sources.0.path.x=a", "data.sources.0.path is a single value, it has no field 'x'"),
    ("data.sources.x.path=a.jsonl", "data.sources.x: no list item x"),
    ("data.sources.first=a", "'first' is not a list index"),
]


@pytest.mark.parametrize("override,expected", BAD_OVERRIDES)
def test_bad_overrides(tmp_path, capsys, override, expected):
    err = one_line_error(capsys, "recipe", "show", recipe_file(tmp_path, BASE), override)
    assert expected in err


def test_inline_jinja_override_is_a_template(tmp_path):
    from sft.recipe import load_recipe

    r = load_recipe(recipe_file(tmp_path, BASE), ["data.template={{ instruction }} =>"])
    assert r.data.template == "{{ instruction }} =>"


def test_model_config_consistency(tmp_path, capsys):
    r = tiny_recipe("gpt2", tmp_path / "out")
    r["model"]["config_overrides"]["n_head"] = 3
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", r))
    assert "n_head=3 does not divide n_embd=64" in err


def test_max_length_over_model_context(tmp_path, capsys):
    r = tiny_recipe("gpt2", tmp_path / "out", data__max_length=512)
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", r))
    assert "data.max_length=512 is longer than the model's context (256 tokens)" in err


@pytest.mark.parametrize("out_kind", ["file", "uncreatable"])
def test_output_dir_file_or_uncreatable(tmp_path, capsys, out_kind):
    if out_kind == "file":
        out = _touch(tmp_path / "afile")
        expected = "output_dir is a file"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        out = ro / "x" / "y"
        expected = "cannot create output_dir"
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: every folder is writable")
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", out)))
    assert expected in err


def test_template_files(tmp_path, capsys):
    d = tmp_path / "tpl.jinja"
    d.mkdir()
    assert "template path is a directory" in one_line_error(
        capsys, "data", write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__template=str(d))))
    f = tmp_path / "latin.jinja"
    f.write_bytes("caf\xe9 {{ instruction }}".encode("latin-1"))
    assert "not UTF-8" in one_line_error(
        capsys, "data", write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__template=str(f))))
    for tpl, expected in [("{{ 1/0 }}", "ZeroDivisionError"), ("{{ range(10**9) | list }}", "Range too big"),
                          ("{{ 'x' * 10**9 }}", "over 1,000,000 characters"),
                          ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
                           "took longer than 1 s")]:
        err = one_line_error(capsys, "data", write_recipe(tmp_path / "r.yaml",
                                                          tiny_recipe("gpt2", tmp_path / "o", data__template=tpl)))
        assert "data.template" in err and expected in err, err


def test_bad_rows_are_counted_drops(tmp_path, capsys):
    p = tmp_path / "rows.jsonl"
    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(6)]
    bad = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                                              "loss_weight": "high"}]},
           {"messages": "not a list"},
           {"messages": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "a", "loss_weight": 0}]}]
    p.write_text("".join(json.dumps(r) + "\n" for r in good + bad))
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__sources=[{"path": str(p)}],
                                                         data__eval_ratio=0.0))
    assert main(["data", path, "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "loss_weight 'high' is not a number: 1" in out and "'messages' is not a non-empty list: 1" in out
    assert "no trained token (no answer, or every answer has loss_weight 0): 1" in out
    h = tmp_path / "hist.jsonl"
    h.write_text(json.dumps({"instruction": "a", "output": "b", "history": [["only one"]]}) + "\n" +
                 "".join(json.dumps({"instruction": f"x{i}", "output": "y"}) + "\n" for i in range(4)))
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__sources=[{"path": str(h)}],
                                                         data__eval_ratio=0.0))
    assert main(["data", path, "--show", "0"]) == 0
    assert "'history' is not a list of [instruction, answer] pairs: 1" in capsys.readouterr().out


def test_csv_row_with_an_extra_unquoted_comma(tmp_path, capsys):
    p = tmp_path / "x.csv"
    p.write_text("prompt,completion\nhello,world\nsay hi, please,hi\n")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o", data__sources=[{"path": str(p)}]))
    err = one_line_error(capsys, "data", path)
    assert "line 3: 3 fields for 2 header columns" in err and "quote fields" in err


def test_sources_with_the_same_basename_are_reported_apart(tmp_path):
    from sft.data.pipeline import load_splits
    from sft.recipe import recipe_from_dict

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        _alpaca_file(tmp_path / sub / "train.jsonl", n=10, salt=sub)
    r = recipe_from_dict(tiny_recipe("gpt2", "o", data__sources=[{"path": str(tmp_path / "a" / "train.jsonl")},
                                                                 {"path": str(tmp_path / "b" / "train.jsonl")}],
                                     data__eval_ratio=0.0))
    s = load_splits(r.data)
    assert set(s.per_source) == {"a/train", "b/train"}


def test_inference_inputs(tmp_path, capsys, trained_full, trained_lora):
    cases = [('[1, 2]\n', "line 1: expected a JSON object, got list"),
             ('{"messages": [{"role": "wizard", "content": "x"}]}\n', "line 1: unknown role 'wizard'")]
    for text, expected in cases:
        p = tmp_path / "in.jsonl"
        p.write_text(text)
        assert expected in one_line_error(capsys, "generate", str(trained_full), "--input", str(p))
    p = tmp_path / "latin.jsonl"
    p.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    assert "not UTF-8 text" in one_line_error(capsys, "generate", str(trained_full), "--input", str(p))
    p.write_text('{"prompt": "hi"}\n')
    for flags, expected in [(["--max-new-tokens", "0"], "--max-new-tokens: got 0"),
                            (["--num-beams", "0"], "--num-beams: got 0"),
                            (["--do-sample", "--temperature", "0"], "--temperature: got 0.0"),
                            (["--out", str(tmp_path)], "--out is a directory")]:
        assert expected in one_line_error(capsys, "generate", str(trained_full), "--input", str(p), *flags)
    assert "--max-samples must be at least 1" in one_line_error(capsys, "eval", str(trained_full), "--max-samples", "0")
    broken = tmp_path / "broken"
    shutil.copytree(trained_lora, broken)
    shutil.rmtree(broken / "base_model")
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(broken / "base_model")
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    assert "base model" in one_line_error(capsys, "generate", str(broken), "--input", str(p))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint-2").mkdir()
    assert "--resume" in one_line_error(capsys, "generate", str(unfinished), "--input", str(p))


def test_bench_spec_and_reference_are_checked_before_any_run(tmp_path, capsys):
    from conftest import ROOT

    quick = os.path.join(ROOT, "recipes", "quickstart.yaml")
    cases = [("recipes: [a\n", "not valid YAML"),
             (f"recipes: {{q: {quick}}}\nmethods: [full]\n", "methods must map"),
             (f"recipes: {{q: {quick}}}\ntolerance: 3\n", "tolerance must map"),
             (f"recipes: {{q: {quick}}}\ntolerance: {{bleu: fast}}\n", "tolerance.bleu: got 'fast'"),
             (f"recipes: {{q: {quick}}}\noverrides: [eval.after=false]\n", "eval.after: false")]
    for text, expected in cases:
        b = tmp_path / "b.yaml"
        b.write_text(text)
        assert expected in one_line_error(capsys, "bench", str(b), "--out", str(tmp_path / "o"))
    b.write_text(f"recipes: {{q: {quick}}}\n")
    ref = tmp_path / "ref.md"
    ref.write_text("| run | BLEU |\n|---|---|\n| q-full | 1 |\n")
    assert "lacks column(s)" in one_line_error(capsys, "bench", str(b), "--check", str(ref))
    assert not (tmp_path / "o" / "runs").exists()


def test_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import sft.evaluation.score as score

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(score, "write_json_atomic", full)
    p = tmp_path / "p.jsonl"
    p.write_text('{"prediction": "a", "reference": "a"}\n')
    err = one_line_error(capsys, "score", str(p), "--out", str(tmp_path / "o"))
    assert "No space left on device" in err and "free some disk space" in err
