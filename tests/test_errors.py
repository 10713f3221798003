"""The bad-input catalogue: each case ends in exit code 2 with one line naming the file/field and the fix,
or in counted drops. Runs through the real CLI entry point (in-process for speed; one subprocess check)."""

import os
import sys

import pytest

from conftest import FIXTURES, run_cli, tiny_recipe, write_recipe
from sft.cli import main


def cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    # progress bars (model saving, tqdm) may precede the error on stderr; the error is the last line
    return code, err.replace("\r", "\n").splitlines()[-1] if err else err


def one_line_error(capsys, *args):
    code, err = cli(capsys, *args)
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("sft: error: ")
    return err


def recipe_file(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def data_recipe(tmp_path, source: dict, **data):
    r = tiny_recipe("gpt2", tmp_path / "out")
    r["data"]["sources"] = [source]
    r["data"].update(data)
    return write_recipe(tmp_path / "r.yaml", r)


BAD_RECIPES = [
    ("not: [valid", "not valid YAML (line"),
    ("- a\n- b\n", "top level is a list, expected a mapping"),
    ("train:\n  learnin_rate: 0.1\n", "train.learnin_rate: unknown key (fix: did you mean 'train.learning_rate'?)"),
    ("trian:\n  epochs: 1\n", "trian: unknown key (fix: did you mean 'train'?)"),
    ("train:\n  batch_size: many\n", "train.batch_size: got 'many', expected an integer"),
    ("train:\n  batch_size: 0\n", "train.batch_size: got 0, expected a value >= 1"),
    ("train:\n  epochs: -1\n", "train.epochs: got -1, expected a value > 0.0"),  # as written
    ("train:\n  learning_rate: 5.0\n", "train.learning_rate: got 5.0, expected a value <= 1.0"),
    ("data:\n  max_length: -3\n", "data.max_length: got -3, expected a value >= 8"),
    ("model:\n  dtype: float64\n", "model.dtype: got 'float64'; this field is now train.mixed_precision"),
    ("train:\n  mixed_precision: fp8\n", "train.mixed_precision: got 'fp8', expected one of 'auto', 'bf16'"),
    ("data:\n  sources: []\n", "data.sources: no data sources"),
    ("data:\n  sources: [{path: builtin:synthetic}]\nquantization:\n  load_in_4bit: true\n",
     "a quantised base cannot be trained in full (fix: set lora.enabled: true"),
    ("data:\n  sources: [{path: builtin:synthetic}]\neval:\n  metrics: [bleuu]\n", "unknown metric 'bleuu'"),
]


@pytest.mark.parametrize("text,expected", BAD_RECIPES)
def test_bad_recipe(tmp_path, capsys, text, expected):
    path = recipe_file(tmp_path, text)
    err = one_line_error(capsys, "recipe", "show", path)
    assert expected in err and path in err


def test_recipe_missing_and_non_utf8(tmp_path, capsys):
    assert "recipe file not found" in one_line_error(capsys, "recipe", "show", str(tmp_path / "nope.yaml"))
    p = tmp_path / "latin.yaml"
    p.write_bytes("train:\n  output_dir: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(capsys, "recipe", "show", str(p))


def test_bad_override(tmp_path, capsys):
    path = recipe_file(tmp_path, "data:\n  sources: [{path: builtin:synthetic}]\n")
    err = one_line_error(capsys, "recipe", "show", path, "train.learning_rate=fast")
    assert "train.learning_rate: got 'fast', expected a number" in err
    code, _ = cli(capsys, "recipe", "show", path, "train.learning_rate=1e-4", "data.sources.0.num_examples=50")
    out = capsys.readouterr()
    assert code == 0


def test_overrides_are_typed(tmp_path):
    from sft.recipe import load_recipe

    path = recipe_file(tmp_path, "data:\n  sources: [{path: builtin:synthetic}]\n")
    r = load_recipe(path, ["train.learning_rate=1e-4", "data.max_samples=200", "lora.enabled=true",
                           "lora.target_modules=[c_attn, c_proj]", "data.sources.0.num_examples=50",
                           "data.sources.1.path=x.jsonl"])
    assert r.train.learning_rate == 1e-4 and isinstance(r.train.learning_rate, float)
    assert r.data.max_samples == 200 and r.lora.enabled is True and r.lora.target_modules == ["c_attn", "c_proj"]
    assert r.data.sources[0].num_examples == 50 and r.data.sources[1].path == "x.jsonl"


READINGS = [  # what a YAML recipe may mean (sft/schema.py), and what stays an error
    ("train.batch_size", 8.0, 8), ("train.learning_rate", "1e-4", 1e-4), ("train.report_to", "none", ["none"]),
    ("train.mixed_precision", False, "no"), ("model.revision", 2024, "2024"), ("train.epochs", 2, 2.0),
    ("data.sources.0.columns", {"prompt": 7}, {"prompt": "7"}),
    ("train.packing", "yes", "train.packing: got 'yes', expected true/false"),
    ("train.batch_size", "8", "train.batch_size: got '8', expected an integer"),
    ("train.batch_size", 4.5, "train.batch_size: got 4.5, expected an integer"),
    ("train.epochs", True, "train.epochs: got True, expected a number"),
    ("train.learning_rate", float("inf"), "train.learning_rate: got inf, expected a finite number"),
    ("train.output_dir", "  ", "train.output_dir: is empty (fix: give a value)"),
    ("data.sources.0.path", None, "data.sources.0.path: is required"),
    ("data.sources.0.pth", "x", "data.sources.0.pth: unknown key (fix: did you mean 'data.sources.0.path'?)"),
    ("data.sources.0.columns", {"prompt": {}}, "data.sources.0.columns.prompt: got {}, expected a string"),
    ("train.warmup_steps", "some", "train.warmup_steps: got 'some', expected an integer or a number"),
    ("train.seed", 2 ** 40, "train.seed: got 1099511627776, expected a value <= 4294967295"),
    ("train.warmup_steps", -1.5, "train.warmup_steps: got -1.5, expected a value >= 0"),  # (a union: out of range)
    ("train.warmup_steps", float("inf"), "train.warmup_steps: got inf, expected a finite number"),
    ("path", "x.yaml", "path: unknown key (fix: did you mean 'data'?)"),
]


@pytest.mark.parametrize("key,value,expected", READINGS)
def test_recipe_values_are_read_or_refused_by_the_schema(key, value, expected):
    from sft.errors import RecipeError
    from sft.recipe import recipe_from_dict

    data = {"data": {"sources": [{"path": "builtin:synthetic"}]}}
    *parents, last = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(int(p) if p.isdigit() else p, {}) if not p.isdigit() else node[int(p)]
    node[last] = value
    if isinstance(expected, str) and (": " in expected):
        with pytest.raises(RecipeError) as e:
            recipe_from_dict(data, path="r.yaml")
        assert str(e.value) == "r.yaml: " + expected
        return
    r = recipe_from_dict(data, path="r.yaml")
    obj = r
    for p in key.split("."):
        obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
    assert obj == expected and type(obj) is type(expected)


def test_a_misspelt_required_key_is_an_unknown_key_first():
    from sft.errors import RecipeError
    from sft.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match=r"data.sources.0.pth: unknown key \(fix: did you mean 'data.sources.0.path'"):
        recipe_from_dict({"data": {"sources": [{"pth": "a.jsonl"}]}}, path="r.yaml")
    with pytest.raises(RecipeError, match=r"r.yaml: trian: unknown key"):  # before the bad value in another section
        recipe_from_dict({"train": {"batch_size": "x"}, "trian": {}}, path="r.yaml")


BAD_DATA = [
    ({"path": "missing.jsonl"}, "dataset file not found"),
    ({"path": f"{FIXTURES}/latin1.jsonl"}, "not UTF-8 text (byte 0xe9"),
    ({"path": f"{FIXTURES}/truncated.jsonl"}, "line 3: invalid JSON"),
    ({"path": f"{FIXTURES}/pairs.csv"}, "cannot detect the data format from columns ['answer', 'question', 'topic']"),
    ({"path": f"{FIXTURES}/pairs.csv", "columns": {"prompt": "q", "completion": "answer"}},
     "mapped column 'q' is not in the data; columns found: ['answer', 'question', 'topic']"),
    ({"path": f"{FIXTURES}/pairs.csv", "format": "alpacca"}, "unknown format 'alpacca' (fix: did you mean 'alpaca'?)"),
    ({"path": f"{FIXTURES}/pairs.csv", "format": "alpaca"}, "format 'alpaca' needs column(s) ['instruction', 'output']"),
    ({"path": "someone/some-dataset"}, "cannot load Hub dataset 'someone/some-dataset' split 'train': the Hub is unreachable"),
    ({"path": "builtin:synthetic", "tasks": ["poetry"]}, "unknown synthetic task(s) ['poetry']"),
]


@pytest.mark.parametrize("source,expected", BAD_DATA)
def test_bad_data(tmp_path, capsys, source, expected):
    err = one_line_error(capsys, "data", data_recipe(tmp_path, source), "--show", "0")
    assert expected in err


def test_unknown_template(tmp_path, capsys):
    err = one_line_error(capsys, "data", data_recipe(tmp_path, {"path": "builtin:synthetic"}, template="alpacca"))
    assert "data.template: unknown template 'alpacca'" in err


def test_all_rows_dropped(tmp_path, capsys):
    p = tmp_path / "empty.jsonl"
    p.write_text('{"instruction": "a", "output": ""}\n{"instruction": "b", "output": null}\n')
    err = one_line_error(capsys, "data", data_recipe(tmp_path, {"path": str(p)}))
    assert "every training example was dropped" in err and "empty answer" in err


def test_null_and_non_string_rows_are_counted_drops(tmp_path, capsys):
    code = main(["data", data_recipe(tmp_path, {"path": f"{FIXTURES}/dirty_alpaca.jsonl"}, eval_ratio=0.0)])
    out = capsys.readouterr().out
    assert code == 0
    assert "dirty_alpaca: null or missing field 'output': 1" in out and "dirty_alpaca: non-string field 'output': 1" in out
    assert "exact duplicate: 1" in out and "empty prompt: 1" in out and "empty answer: 1" in out


def test_prompt_longer_than_max_length(tmp_path, capsys):
    p = tmp_path / "long.jsonl"
    p.write_text(('{"instruction": "' + "word " * 200 + '", "output": "ok"}\n') * 3)
    err = one_line_error(capsys, "train", data_recipe(tmp_path, {"path": str(p)}, max_length=32, eval_ratio=0.0,
                                                      clean={"overlong": "trim", "dedupe": False}))
    assert "no training example fits" in err and "answer fully truncated" in err


def test_lora_target_not_in_model(tmp_path, capsys):
    r = tiny_recipe("gpt2", tmp_path / "out", mode="lora")
    r["lora"]["target_modules"] = ["q_proj"]
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", r))
    assert "lora.target_modules: LoRA target(s) ['q_proj'] match no layer of gpt2" in err and "c_attn" in err


def test_qlora_without_bitsandbytes(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as on a machine without it
    r = tiny_recipe("gpt2", tmp_path / "out", mode="qlora")
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", r))
    assert "quantization.load_in_4bit: bitsandbytes cannot run here" in err


def test_packing_with_seq2seq(tmp_path, capsys):
    r = tiny_recipe("t5", tmp_path / "out", train__packing=True)
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", r))
    assert "train.packing: packing is for causal models" in err


def test_output_dir_of_another_recipe(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = tiny_recipe("gpt2", out, train__learning_rate=0.5)
    write_recipe(out / "recipe.yaml", other)
    (out / ".sft-run").write_text("{}")  # an sft run folder
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", out)))
    assert "output_dir holds a run of a different recipe" in err and "--overwrite" in err


def test_resume_without_checkpoint(tmp_path, capsys):
    err = one_line_error(capsys, "train", write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "o")),
                         "--resume")
    assert "nothing to resume" in err


def test_eval_split_empty(tmp_path, capsys):
    r = tiny_recipe("gpt2", tmp_path / "out", data__eval_ratio=0.0)
    err = one_line_error(capsys, "eval", write_recipe(tmp_path / "r.yaml", r))
    assert "the eval split is empty" in err


def test_evaluate_metric_offline(tmp_path, capsys):
    pytest.importorskip("evaluate")
    r = tiny_recipe("gpt2", tmp_path / "out")
    r["eval"]["metrics"] = ["evaluate:bleu"]
    err = one_line_error(capsys, "eval", write_recipe(tmp_path / "r.yaml", r), "eval.max_samples=4")
    assert "cannot load metric evaluate:bleu" in err


def test_subprocess_exit_code_and_debug_traceback(tmp_path):
    path = recipe_file(tmp_path, "train:\n  learnin_rate: 0.1\n")
    res = run_cli("recipe", "show", path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = run_cli("--debug", "recipe", "show", path)
    assert res.returncode != 0 and "Traceback" in res.stderr
