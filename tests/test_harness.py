"""`sft eval RUN --harness TASKS`: lm-evaluation-harness on the run's model, offline through a task YAML over a
local file; its accuracy equals the log-likelihood choice computed here by hand, and it lands in metrics.json."""

import json

import pytest
import torch

from conftest import run_cli

pytest.importorskip("lm_eval")

DOCS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "gold": 0}
        for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 3), (4, 4), (6, 2), (8, 1), (9, 9), (3, 3)]]
TASK = """task: sft_local_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _by_hand(run_dir) -> float:
    """The harness's multiple-choice rule: context, then " " + choice; the choice with the highest summed
    log-likelihood of its tokens (encoded as the whole string minus the context's tokens) is the answer."""
    from sft.modeling import load_for_inference

    model, tok, _ = load_for_inference(str(run_dir))
    model.eval()
    right = 0
    for d in DOCS:
        ctx = tok(d["question"], add_special_tokens=False).input_ids
        scores = []
        for c in d["choices"]:
            whole = tok(d["question"] + " " + c, add_special_tokens=False).input_ids
            cont = whole[len(ctx):]
            ids = torch.tensor([(ctx + cont)[:-1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont)))
        right += int(max(range(len(scores)), key=scores.__getitem__) == d["gold"])
    return right / len(DOCS)


def test_harness_task_on_a_run_offline(tmp_path, trained_full):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    task = tmp_path / "tasks" / "sums.yaml"
    task.parent.mkdir()
    task.write_text(TASK.format(data=data))
    out = tmp_path / "out"
    res = run_cli("eval", str(trained_full), "--harness", str(task), "--out", str(out), "eval.metrics=[perplexity]",
                  env={"HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    got = m["harness"]["tasks"]["sft_local_sums"]
    assert got["acc"] == pytest.approx(_by_hand(trained_full), abs=1e-9)
    assert 0.0 <= got["acc"] <= 1.0 and "acc_stderr" in got and "perplexity" in m["metrics"]
    assert "Benchmarks (lm-evaluation-harness" in (out / "eval_report.md").read_text()
    assert "[sft] harness sft_local_sums: acc" in res.stdout


def test_unknown_tasks_and_bad_files_are_one_line_before_scoring(tmp_path, trained_full):
    res = run_cli("eval", str(trained_full), "--harness", "hellaswagg", "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "unknown harness task 'hellaswagg' (fix: did you mean 'hellaswag'?)" in res.stderr
    assert not (tmp_path / "a" / "metrics.json").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_path: json\n")
    res = run_cli("eval", str(trained_full), "--harness", str(bad), "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "the task YAML has no `task:` name" in res.stderr
