"""Safe with any input, part 3: the one rule for folders sft writes, mapped columns and CSV headers, one glob rule,
checks before training, resume integrity, bounded YAML and tokenizer work, invalid Unicode and malformed build-data
templates. Each class ends in a one-line error (exit 2) or a counted drop, and loses nothing."""

import json
import os
import shutil

import pytest
import yaml

from conftest import run_cli, tiny_recipe
from sft import rundir
from sft.cli import main
from sft.errors import DataError, RecipeError, TrainError


def one_line(capsys, *args) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err[-1500:]
    lines = [ln for ln in err.splitlines() if ln.startswith("sft: ")]
    assert len(lines) == 1 and lines[0].startswith("sft: error: "), err[-1500:]
    return lines[0]


def write_recipe(tmp_path, r: dict, name="r.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(r))
    return str(path)


# ---- 1. one rule for every folder sft writes ----------------------------------------------------------

@pytest.mark.parametrize("cmd,flag,theirs", [("push", "--to-dir", "README.md"), ("merge", "--out", "config.json"),
                                              ("export", "--out", "model.safetensors"),
                                              ("eval", "--out", "predictions.jsonl")])
def test_commands_never_write_into_a_users_folder(tmp_path, capsys, trained_lora, cmd, flag, theirs):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / theirs).write_text("the user's own file")
    err = one_line(capsys, cmd, str(trained_lora), flag, str(dest))
    assert "already holds files that sft did not write" in err and theirs in err and flag in err
    assert os.listdir(dest) == [theirs] and (dest / theirs).read_text() == "the user's own file"


def test_restaging_removes_only_sfts_earlier_files(tmp_path, trained_full, trained_lora):
    dest = tmp_path / "stage"
    assert run_cli("push", str(trained_full), "--to-dir", str(dest)).returncode == 0
    assert (dest / "model.safetensors").exists() and (dest / rundir.MARKER).exists()
    res = run_cli("push", str(trained_lora), "--to-dir", str(dest))
    assert res.returncode == 0, res.stderr[-1500:]
    assert (dest / "adapter_model.safetensors").exists()
    assert not (dest / "model.safetensors").exists()  # the old full model does not sit beside the new adapter
    (dest / "notes.txt").write_text("mine")  # a file of the user's in the staged folder: never replaced or removed
    res = run_cli("push", str(trained_lora), "--to-dir", str(dest))
    assert res.returncode == 2 and "notes.txt" in res.stderr
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "adapter_model.safetensors").exists()


def test_a_folder_sft_made_for_one_purpose_is_not_cleared_for_another(tmp_path, capsys, trained_full, trained_lora):
    export = tmp_path / "exported"
    assert run_cli("export", str(trained_lora), "--out", str(export)).returncode == 0
    assert rundir.marked_kind(str(export)) == "export"
    err = one_line(capsys, "push", str(trained_full), "--to-dir", str(export))
    assert "holds an sft export folder" in err and (export / "model.safetensors").exists()
    # a re-export into its own earlier export is fine, and a run folder is refused as an export target
    assert run_cli("export", str(trained_lora), "--out", str(export), "--dtype", "bf16").returncode == 0
    err = one_line(capsys, "export", str(trained_lora), "--out", str(trained_full))
    assert "holds an sft run folder" in err and (trained_full / "model.safetensors").exists()


def test_build_data_out_follows_the_same_rule(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "seed": 0, "splits": {"train": 0.8, "validation": 0.2},
                                    "tasks": [{"name": "caps", "instructions": ["Capital of {c}?"], "output": "{k}",
                                               "rows": [{"c": f"C{i}", "k": f"K{i}"} for i in range(10)],
                                               "per_task": 10}]}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.jsonl").write_text("precious\n")
    err = one_line(capsys, "build-data", str(spec), "--out", str(mine))
    assert "did not write" in err and (mine / "train.jsonl").read_text() == "precious\n"
    out = tmp_path / "built"
    assert main(["build-data", str(spec), "--out", str(out)]) == 0
    assert main(["build-data", str(spec), "--out", str(out)]) == 0  # a rebuild replaces its own files
    assert sorted(os.listdir(out))[:2] == [".sft-run", "DATACARD.md"]


# ---- 2. column mappings, CSV headers, globs ------------------------------------------------------------

def _rows(n=30):
    return "".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}", "category": "qa"}) + "\n" for i in range(n))


@pytest.mark.parametrize("source,field,hint", [
    ({"columns": {"task": "categroy"}}, "columns.task", "did you mean 'category'?"),
    ({"task_column": "catgory"}, "task_column", "did you mean 'category'?"),
    ({"format": "columns", "columns": {"prompt": "instructoin", "completion": "output"}}, "columns.prompt",
     "did you mean 'instruction'?")])
def test_a_mapped_column_missing_from_the_file_is_an_error(tmp_path, capsys, source, field, hint):
    (tmp_path / "d.jsonl").write_text(_rows())
    r = tiny_recipe(out=tmp_path / "out")
    r["data"]["sources"] = [{"path": str(tmp_path / "d.jsonl"), **source}]
    err = one_line(capsys, "data", write_recipe(tmp_path, r))
    assert "d.jsonl" in err and field in err and hint in err and "columns found" in err


@pytest.mark.parametrize("streaming", [False, True])
def test_duplicate_csv_headers_are_an_error(tmp_path, capsys, streaming):
    (tmp_path / "d.csv").write_text("prompt,completion,completion\n" + "".join(f"p{i},c{i},d{i}\n" for i in range(20)))
    r = tiny_recipe(out=tmp_path / "out", data__streaming=streaming, train__max_steps=2)
    r["data"]["sources"] = [{"path": str(tmp_path / "d.csv")}]
    err = one_line(capsys, "data", write_recipe(tmp_path, r))
    assert "d.csv" in err and "['completion'] more than once" in err


def test_a_double_star_glob_reaches_every_level_prepared_and_streamed(tmp_path):
    from sft.data.sources import local_files

    for sub in ("", "a", "a/b"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / "part.jsonl").write_text(_rows(2))
    pattern = str(tmp_path / "**" / "*.jsonl")
    prepared, streamed = local_files(pattern, "train"), local_files(pattern, None, streaming=True)
    assert prepared == streamed and len(prepared) == 3


# ---- 3. checks before training ----------------------------------------------------------------------

@pytest.mark.parametrize("extra,expect", [
    ({"lora": {"enabled": True, "modules_to_save": ["lm_haed"]}}, "lora.modules_to_save.0: lora.modules_to_save names "
                                                                  "'lm_haed'"),
    ({"lora": {"enabled": True, "target_modules": ["q_proj"]}}, "LoRA target(s) ['q_proj'] match no layer"),
    ({"eval": {"after": True, "metrics": ["bleu"], "generation": {"max_new_tokens": 300}}},
     "max_new_tokens=300 leaves no room for a prompt in the model's 256-token context"),
    ({"hub": {"push_to_hub": True, "repo_id": "me/tiny"}}, "HF_HUB_OFFLINE=1 is set"),
    ({"hub": {"push_to_hub": True, "repo_id": "bad//id"}}, "not a valid repo id"),
])
def test_model_and_hub_checks_run_before_any_data_is_read(tmp_path, capsys, extra, expect):
    r = tiny_recipe(out=tmp_path / "out")
    for section, values in extra.items():
        r.setdefault(section, {}).update(values)
    code = main(["train", write_recipe(tmp_path, r)])
    captured = capsys.readouterr()
    assert code == 2 and expect in captured.err, captured.err[-1500:]
    assert "loading data" not in captured.out


# ---- 4. resume integrity, the saved recipe, path spellings ---------------------------------------------

def _checkpoint(out, step, *, skip=()):
    ck = out / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        if name not in skip:
            (ck / name).write_text("{}")
    return ck


def test_an_incomplete_newest_checkpoint_is_skipped_naming_what_it_lacks(tmp_path, capsys):
    from sft.recipe import recipe_from_dict
    from sft.train.run import check_output_dir

    out = tmp_path / "out"
    rundir.create(str(out))
    recipe = recipe_from_dict(tiny_recipe(out=out))
    _checkpoint(out, 10)
    _checkpoint(out, 20, skip=("optimizer.pt",))
    assert check_output_dir(recipe, resume=True, overwrite=False) == str(out / "checkpoint-10")
    said = capsys.readouterr().out
    assert "skipping incomplete checkpoint-20 (no optimizer state); resuming from checkpoint-10" in said
    assert (out / "checkpoint-20" / "model.safetensors").exists()  # not cut off while saving: kept
    shutil.rmtree(out / "checkpoint-10")
    with pytest.raises(TrainError, match=r"checkpoint-20 lacks its optimizer state"):
        check_output_dir(recipe, resume=True, overwrite=False)
    _checkpoint(out, 30, skip=("model.safetensors",))
    with pytest.raises(TrainError, match=r"checkpoint-30 lacks its weights"):
        check_output_dir(recipe, resume=True, overwrite=False)


def test_a_run_resumes_from_its_own_saved_recipe(tmp_path):
    out = tmp_path / "out"
    r = tiny_recipe(out=out, steps=10, train__save_steps=5)
    path = write_recipe(tmp_path, r)
    assert run_cli("train", path).returncode == 0
    shutil.rmtree(out / "checkpoint-10")
    (out / "metrics.json").unlink(missing_ok=True)
    (out / "train_summary.json").unlink()
    res = run_cli("train", str(out / "recipe.yaml"), "--resume")
    assert res.returncode == 0, res.stderr[-1500:]
    assert "resum" in res.stdout.lower() and (out / "train_summary.json").exists()


def test_home_and_variables_in_paths_are_expanded_once_or_refused(tmp_path, monkeypatch):
    from sft.recipe import recipe_from_dict

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SFT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("SFT_NOT_SET", raising=False)
    r = recipe_from_dict(tiny_recipe(out="~/out"))
    assert r.train.output_dir == str(tmp_path / "out")
    r = recipe_from_dict(tiny_recipe(out="${SFT_RUNS}/a"))
    assert r.train.output_dir == str(tmp_path / "runs" / "a")
    with pytest.raises(RecipeError, match=r"train.output_dir: '\$SFT_NOT_SET/a' uses \$SFT_NOT_SET, which is not set"):
        recipe_from_dict(tiny_recipe(out="$SFT_NOT_SET/a"))
    d = tiny_recipe()
    d["data"]["sources"] = [{"path": "~/data.jsonl"}]
    assert recipe_from_dict(d).data.sources[0].path == str(tmp_path / "data.jsonl")


# ---- 5. bounded work ----------------------------------------------------------------------------------

BOMB = "\n".join([f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")])


@pytest.mark.parametrize("text,expect", [
    ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + BOMB, "expands to more than 1,000,000"),
    ("a: &a [1, *a]\n", "an anchor refers to itself"),
    ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 100 levels deep"),
    ("a: &a 1\nb: [" + ", ".join(["*a"] * 1001) + "]\n", "more than 1000 alias references"),
])
def test_yaml_bombs_are_refused_before_they_expand(tmp_path, capsys, text, expect):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert expect in one_line(capsys, "recipe", "show", str(path))


def test_an_alias_bomb_in_an_override_is_refused(tmp_path, capsys):
    path = write_recipe(tmp_path, tiny_recipe(out=tmp_path / "out"))
    assert "an anchor refers to itself" in one_line(capsys, "recipe", "show", path, "data.system_prompt=&a [*a]")


def test_an_unbroken_megabyte_token_reaches_the_bpe_trainer_in_pieces(tmp_path, monkeypatch):
    from sft.tokenizer import LONG_WORD, _break_long_words, build_tokenizer

    text = "Plain words, and a longish-but-normal identifier_like_this one."
    assert _break_long_words(text) == text
    broken = _break_long_words("x" * 1_000_000)
    assert max(len(w) for w in broken.split()) == LONG_WORD and broken.replace(" ", "") == "x" * 1_000_000
    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    tok = build_tokenizer("bpe", ["hello world " * 40] * 40 + ["y" * 1_000_000], vocab_size=300, arch="causal")
    assert tok("hello world").input_ids


# ---- 6. text that is not valid Unicode, malformed templates, null fields ---------------------------------

def test_a_lone_surrogate_in_data_is_a_counted_drop(tmp_path, capsys):
    rows = [{"instruction": "bad \ud800 text", "output": "x"}] + [{"instruction": f"q{i}", "output": f"a{i}"}
                                                                 for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # \ud800 as a JSON escape
    r = tiny_recipe(out=tmp_path / "out")
    r["data"]["sources"] = [{"path": str(tmp_path / "d.jsonl")}]
    assert main(["data", write_recipe(tmp_path, r)]) == 0
    assert "text is not valid Unicode (a lone surrogate): 1" in capsys.readouterr().out


@pytest.mark.parametrize("line,expect", [
    ('{"instruction": null}', "line 2: 'instruction' is null, expected text"),
    ('{"instruction": ["a"]}', "line 2: 'instruction' is list, expected text"),
    ('{"prompt": {"a": 1}}', "line 2: 'prompt' is dict, expected text"),
    ('{"instruction": "bad \\ud800"}', "line 2: text is not valid Unicode"),
    ('{"messages": [{"role": "user", "content": "x\\udfff"}]}', "line 2: text is not valid Unicode"),
    ('[' * 100000 + ']' * 100000, "line 2: JSON nested too deeply"),
])
def test_generate_refuses_bad_input_lines_in_one_line(tmp_path, capsys, trained_full, line, expect):
    path = tmp_path / "in.jsonl"
    path.write_text('{"instruction": "fine"}\n' + line + "\n")
    err = one_line(capsys, "generate", str(trained_full), "--input", str(path), "--max-new-tokens", "2")
    assert expect in err and "in.jsonl" in err


def test_generate_refuses_non_utf8_bytes(tmp_path, capsys, trained_full):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"instruction": "caf\xe9"}\n')
    assert "not UTF-8 text (byte 0xe9" in one_line(capsys, "generate", str(trained_full), "--input", str(path))


def test_chat_skips_a_stdin_line_that_is_not_utf8(trained_full):
    import subprocess
    import sys

    from conftest import ROOT

    res = subprocess.run([sys.executable, "-m", "sft", "chat", str(trained_full), "--max-new-tokens", "3"],
                         input=b"caf\xe9\nhello\n/exit\n", capture_output=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-1500:]
    assert b"skipped a line of stdin that is not UTF-8 text (byte 0xe9" in res.stderr
    assert b"you> hello" in res.stdout and b"bye" in res.stdout


@pytest.mark.parametrize("task,expect", [
    ({"instructions": ["Capital of {c?"]}, "tasks.caps.instructions.0: template 'Capital of {c?' does not format"),
    ({"instructions": ["Capital of {0}?"]}, "template field {0} is not a plain name"),
    ({"instructions": ["{c.__class__}"]}, "template field {c.__class__} is not a plain name"),
    ({"instructions": ["{c[0]}"]}, "is not a plain name"),
    ({"instructions": [7]}, "tasks.caps.instructions.0: a template must be text, got int"),
    ({"instructions": "Capital of {c}?"}, "instructions must be a list of phrasings"),
    ({"output": "{k"}, "tasks.caps.output: template '{k' does not format"),
    ({"rows": ["France"]}, "rows must be a list of mappings"),
    ({"per_task": "many"}, "per_task must be a whole number"),
    ({"negatives": {"ratio": 0.5, "rows": [{"c": "X"}], "output": "{nope"}}, "negatives.output: template"),
])
def test_build_data_templates_that_do_not_format_name_the_task(tmp_path, capsys, task, expect):
    base = {"name": "caps", "instructions": ["Capital of {c}?"], "output": "{k}",
            "rows": [{"c": f"C{i}", "k": f"K{i}"} for i in range(5)], "per_task": 10}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "seed": 0, "tasks": [{**base, **task}]}))
    err = one_line(capsys, "build-data", str(spec), "--out", str(tmp_path / "out"))
    assert expect in err, err
