"""Fuzz: mutate a valid recipe and valid data files; every run of `sft recipe show` and `sft data` exits
0 or 2 with at most one error line, never a traceback or an internal error, and writes nothing outside
its own folder."""

import copy
import json
import os

from hypothesis import HealthCheck, given, settings
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
         ("train", "warmup_steps"), ("lora", "target_modules"), ("lora", "use_dora"), ("train", "ddp_timeout")]

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2),
                   st.sampled_from(["{{ 1/0 }}", "{{ instruction }}", "nfkc", "cosine", "..", "/", "x.jinja",
                                    "builtin:synthetic", "plain", "-1", "1e-3", "tokenizer", "all-linear", "sdpa",
                                    "wrapped", "fp16"]),
                   st.sampled_from([{"neftune_noise_alpha": "x"}, {"lr_scheduler_kwargs": 5}, {"learning_rate": 1},
                                    {"max_memory": {}}, ["all-linear", "c_attn"]]))
ROW_VALUES = st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=3), max_size=2),
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
       csv_tail=st.sampled_from(["", "\nx,y,z", '\n"open quote,1', "\n,", "\n\x0c,\u2028"]))
def test_mutated_recipes_and_data_exit_0_or_2(tmp_path_factory, capsys, monkeypatch, mutations, row_edits, csv_tail):
    work = tmp_path_factory.mktemp("fuzz")
    monkeypatch.chdir(work)
    rows = [{"instruction": f"task {i}", "input": "", "output": f"answer {i}"} for i in range(20)]
    for i, key, value in row_edits:
        rows[i][key] = value
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "data.csv").write_text("q,a\n" + "".join(f"question {i},reply {i}\n" for i in range(10)) + csv_tail)
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
    assert set(os.listdir(work)) <= {"data.jsonl", "data.csv", "r.yaml", "out"}
    assert set(os.listdir(ROOT)) == before_root
