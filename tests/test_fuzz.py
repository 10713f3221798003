"""Fuzz: mutate a valid recipe and valid data files; every run of `sft recipe show` and `sft data` exits
0 or 2 with at most one error line, never a traceback or an internal error, and writes nothing outside
its own folder."""

import copy
import json
import os

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from sft.cli import main

VALID = {
    "model": {"name": "gpt2", "init": "scratch", "tokenizer": "byte",
              "config_overrides": {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 256}},
    "data": {"sources": [{"path": "data.jsonl"}, {"path": "data.csv", "columns": {"prompt": "q", "completion": "a"}}],
             "template": "alpaca", "max_length": 200, "eval_ratio": 0.2, "max_eval_samples": 4},
    "train": {"output_dir": "out", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3, "report_to": ["none"]},
    "eval": {"metrics": ["perplexity", "bleu"], "generation": {"max_new_tokens": 4}},
}
PATHS = [("model", "tokenizer"), ("model", "config_overrides", "n_head"), ("train", "mixed_precision"), ("data", "template"),
         ("data", "max_length"), ("data", "eval_ratio"), ("data", "max_eval_samples"), ("data", "sources", 0, "path"),
         ("data", "sources", 0, "format"), ("data", "sources", 0, "weight"), ("data", "sources", 1, "columns"),
         ("data", "sources", 0, "max_samples"), ("data", "clean"), ("data", "clean", "normalize"), ("train", "seed"),
         ("train", "lr_scheduler"), ("train", "learning_rate"), ("train", "output_dir"), ("eval", "metrics"),
         ("eval", "generation", "max_new_tokens"), ("lora",), ("data", "seed"), ("data", "system_prompt"),
         ("train", "trainer_args"), ("model", "init_kwargs"), ("model", "attn_implementation"),
         ("data", "chat_template_path"), ("train", "packing_strategy"), ("train", "padding_free"), ("train", "fsdp"),
         ("train", "warmup_steps"), ("lora", "target_modules"), ("lora", "use_dora"), ("train", "ddp_timeout"),
         ("data", "sources", 0, "task_column"), ("data", "sources", 1, "columns", "task"), ("data", "sources", 0, "task"),
         ("lora", "modules_to_save"), ("hub", "push_to_hub"), ("hub", "repo_id"), ("data", "cache_dir")]

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
                   st.sampled_from(["{{ 1/0 }}", "{{ instruction }}", "nfkc", "cosine", "..", "/", "x.jinja",
                                    "builtin:synthetic", "plain", "-1", "1e-3", "tokenizer", "all-linear", "sdpa",
                                    "wrapped", "fp16", "~/x", "$SFT_FUZZ_UNSET/x", "${HOME}/x", "**/*.jsonl",
                                    "*.csv", "\ud800", "lm_haed", "me/x", "bad//id", "categroy"]),
                   st.sampled_from([{"neftune_noise_alpha": "x"}, {"lr_scheduler_kwargs": 5}, {"learning_rate": 1},
                                    {"max_memory": {}}, ["all-linear", "c_attn"]]))
ROW_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=3), max_size=2),
                       st.sampled_from(["x\ud800", "\udfff", "ok \ud83d\ude00", "x" * 5000]),
                       st.dictionaries(st.sampled_from(["role", "content", "from", "value"]), st.text(max_size=3),
                                       max_size=2))


def _set(tree, path, value):
    node = tree
    for p in path[:-1]:
        node = node[p] if not isinstance(node, dict) or p in node else node.setdefault(p, {})
    node[path[-1]] = value


@settings(max_examples=int(os.environ.get("SFT_FUZZ_EXAMPLES", "300")), deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(mutations=st.lists(st.tuples(st.sampled_from(PATHS), VALUES), max_size=3),
       row_edits=st.lists(st.tuples(st.integers(0, 19), st.sampled_from(["instruction", "output", "input", "x"]),
                                    ROW_VALUES), max_size=3),
       csv_tail=st.sampled_from(["", "\nx,y,z", '\n"open quote,1', "\n,", "\n\x0c,\u2028"]),
       csv_head=st.sampled_from(["q,a", "q,a,a", "q,q,a", "a,q"]))
def test_mutated_recipes_and_data_exit_0_or_2(tmp_path_factory, capsys, monkeypatch, mutations, row_edits, csv_tail,
                                              csv_head):
    work = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work / "home"))  # `~` in a mutated path stays in the sandbox
    monkeypatch.delenv("SFT_FUZZ_UNSET", raising=False)
    rows = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(20)]
    for i, key, value in row_edits:
        rows[i][key] = value
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # ASCII: surrogates as escapes
    extra = ",x" * (csv_head.count(",") - 1)
    (work / "data.csv").write_text(csv_head + "\n" + "".join(f"question {i},reply {i}{extra}\n" for i in range(10))
                                   + csv_tail)
    recipe = copy.deepcopy(VALID)
    for path, value in mutations:
        try:
            _set(recipe, path, value)
        except (TypeError, KeyError, IndexError):
            pass
    (work / "r.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    before_root = set(os.listdir(ROOT))
    for args in (["recipe", "show", "r.yaml"], ["data", "r.yaml", "--show", "1"]):
        code = main(args)
        err = capsys.readouterr().err
        assert code in (0, 2), (args, recipe, err[-800:])
        assert "Traceback" not in err and "internal error" not in err, err[-800:]
        if code == 2:
            last = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()][-1]
            assert last.startswith("sft: error: "), last
    # a mutated data.cache_dir is a folder the recipe asked for (`0` -> ./0): sft may write there, nowhere else
    cache_dir = recipe.get("data", {}).get("cache_dir") if isinstance(recipe.get("data"), dict) else None
    asked = {str(cache_dir).split("/")[0]} if isinstance(cache_dir, (str, int, float)) and cache_dir is not True else set()
    assert set(os.listdir(work)) <= {"data.jsonl", "data.csv", "r.yaml", "out", "home"} | asked
    assert set(os.listdir(ROOT)) == before_root


# ---- the inputs other commands read: YAML with anchors, generate input lines, build-data tasks, score files ----

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                              st.text(max_size=8), st.sampled_from(["x\ud800", "{c}", "{0}", "{c.x}", "{"])),
                    lambda kids: st.one_of(st.lists(kids, max_size=3),
                                           st.dictionaries(st.sampled_from(["role", "content", "instruction", "input",
                                                                            "prompt", "messages", "text", "c",
                                                                            "tool_calls", "from", "value"]),
                                                           kids, max_size=3)), max_leaves=12)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(anchors=st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 5), max_size=12)), min_size=1,
                        max_size=8), depth=st.integers(0, 150))
def test_yaml_with_any_anchors_and_nesting_exits_0_or_2(tmp_path_factory, capsys, anchors, depth):
    """Alias trees of any shape (bombs, self-references) and any nesting: a value or one line, never a hang."""
    lines, defined = [], set()
    for i, (anchor, refs) in enumerate(anchors):
        known = [f"*a{r}" for r in refs if r in defined or r == anchor]
        lines.append(f"k{i}: &a{anchor} [{', '.join(known + ['1'])}]")
        defined.add(anchor)
    lines.append("deep: " + "[" * depth + "]" * depth)
    path = tmp_path_factory.mktemp("yaml") / "r.yaml"
    path.write_text("\n".join(lines) + "\n")
    code = main(["recipe", "show", str(path)])
    err = capsys.readouterr().err
    assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, err[-800:]


@settings(max_examples=300, deadline=None, database=None)
@given(row=JSON)
def test_any_generate_input_line_is_messages_or_one_line_error(row):
    from sft.errors import DataError
    from sft.inference import row_to_messages, row_to_text

    for convert in (row_to_messages, row_to_text):
        try:
            out = convert(row, 3, "in.jsonl")
        except DataError as e:
            assert "line 3" in str(e) and "\n" not in str(e)
            continue
        texts = [m["content"] for m in out] if convert is row_to_messages else [out]
        assert all(isinstance(t, str) for t in texts)
        for t in texts:
            t.encode("utf-8")  # valid Unicode, or it was refused


@settings(max_examples=300, deadline=None, database=None)
@given(task=st.fixed_dictionaries({"name": st.sampled_from(["caps", "", None])},
                                  optional={"instructions": JSON, "output": JSON, "input": JSON, "rows": JSON,
                                            "per_task": JSON, "negatives": JSON}))
def test_any_build_data_template_task_builds_or_is_one_line(task):
    import random

    from sft.construct.build import template_task
    from sft.errors import SftError

    try:
        rows = template_task(task, random.Random(0), "spec.yaml")
    except SftError as e:
        assert "spec.yaml" in str(e) and "\n" not in str(e)
        return
    assert all(isinstance(r["instruction"], str) and isinstance(r["output"], str) for r in rows)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(JSON, min_size=1, max_size=4), flags=st.lists(st.sampled_from(
    [["--metrics", "bleu"], ["--metrics", "rouge,exact_match"], ["--metrics", "nope"], ["--metrics", "perplexity"],
     ["--pred-field", "text"], ["--ref-field", "content"], ["--out", "o"], ["--out", "data.csv"]]), max_size=2))
def test_any_score_input_and_flags_exit_0_or_2(tmp_path_factory, capsys, monkeypatch, rows, flags):
    work = tmp_path_factory.mktemp("score")
    monkeypatch.chdir(work)
    (work / "data.csv").write_text("not a folder")
    (work / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["score", "p.jsonl"] + [x for f in flags for x in f])
    err = capsys.readouterr().err
    assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, err[-800:]
    assert (work / "data.csv").read_text() == "not a folder"


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(model=st.sampled_from(["run", "missing", "afile", "empty", "junk", "unfinished", "owner/not-cached", "..", ""]),
       host=st.sampled_from(["127.0.0.1", "::1", "localhost", "", "[::1]", "127.0.0.1:80"]),
       port=st.one_of(st.integers(-5, 70000), st.sampled_from([0, 1, 65535, 65536, -1])),
       engine=st.sampled_from(["transformers", "vllm", "", "Transformers", "tgi"]),
       batching=st.booleans(), engine_args=st.lists(st.sampled_from(["--dtype=bfloat16", "", "--x", "\u2028"]),
                                                    max_size=2))
@example(model="run", host="127.0.0.1", port=8791, engine="transformers", batching=True, engine_args=["--x"])
def test_any_serve_flags_exit_0_or_2_and_leave_no_scratch(tmp_path_factory, capsys, monkeypatch, trained_full, model,
                                                          host, port, engine, batching, engine_args):
    """`sft serve` with any model spec and flags: the server is started (here: recorded) or one line, exit 2;
    a scratch folder sft made is gone either way. No server runs: sft.serve.run is replaced by a recorder."""
    import tempfile

    import sft.serve

    work = tmp_path_factory.mktemp("serve")
    monkeypatch.chdir(work)
    (work / "afile").write_text("x")
    (work / "empty").mkdir()
    (work / "junk").mkdir()
    (work / "junk" / "config.json").write_text("{not json")
    (work / "unfinished").mkdir()
    (work / "unfinished" / "checkpoint-5").mkdir()
    os.symlink(trained_full, work / "run")
    started = []

    def record(launch):
        started.append(launch)
        if launch.scratch:
            import shutil

            shutil.rmtree(launch.scratch, ignore_errors=True)
        return 0

    monkeypatch.setattr(sft.serve, "run", record)
    before = {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("sft-serve-")}
    args = ["serve", model, "--host", host, "--port", str(port), "--engine", engine] + \
        (["--continuous-batching"] if batching else []) + [f"--engine-arg={a}" for a in engine_args]
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 2) and "internal error" not in err and "Traceback" not in err, (args, err[-800:])
    if (model, host, port, engine) == ("run", "127.0.0.1", 8791, "transformers"):
        assert code == 0, err[-800:]  # the explicit example: a finished run on a free loopback port starts
    if code == 2:
        last = [ln for ln in err.splitlines() if ln.strip()][-1]
        assert last.startswith("sft: error: "), last
        assert not started
    else:
        assert len(started) == 1 and model == "run" and engine == "transformers" and 0 < port < 65536
    after = {d for d in os.listdir(tempfile.gettempdir()) if d.startswith("sft-serve-")}
    assert after <= before
