"""Evaluation while training: eval rows every N steps, the best checkpoint as the output, early stopping,
curves, and the metrics registry reaching every output."""

import json

import pytest

from conftest import tiny_recipe
from sft.recipe import recipe_from_dict
from sft.train.run import train


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_eval_every_n_steps_logs_rows_and_matches_the_final_eval(tmp_path):
    out = tmp_path / "out"
    r = tiny_recipe("gpt2", out, steps=40, train__eval_steps=20, train__report_to=["tensorboard"])
    r["eval"] = {"before": False, "after": True, "metrics": ["perplexity"], "max_samples": 16,
                 "during_training": {"metrics": ["exact_match", "rouge"], "max_samples": 6}}
    summary = train(recipe_from_dict(r, path="t.yaml"))
    evals = [x for x in _log(out) if "eval_loss" in x]
    assert [e["step"] for e in evals] == [20, 40]
    assert {"eval_perplexity", "eval_exact_match", "eval_rougeL"} <= set(evals[0])
    # the last in-training evaluation and the after-training evaluation are the same computation
    assert summary["eval"]["metrics"]["perplexity"] == pytest.approx(evals[-1]["eval_perplexity"], rel=1e-6)
    assert summary["stopped"] == "max_steps reached" and summary["evaluations"] == 2
    assert (out / "training_curves.png").exists() and "Training curves" in (out / "report.html").read_text()


def test_diverging_run_stops_early_and_keeps_the_best_checkpoint(tmp_path):
    out = tmp_path / "out"
    r = tiny_recipe("gpt2", out, steps=200, train__learning_rate=0.3, train__eval_steps=5,
                    train__load_best_model_at_end=True, train__early_stopping_patience=2, train__lr_scheduler="constant")
    r["eval"] = {"before": True, "after": True, "metrics": ["perplexity"], "max_samples": 16}
    summary = train(recipe_from_dict(r, path="t.yaml"))
    evals = [x for x in _log(out) if "eval_loss" in x]
    best = min(evals, key=lambda e: e["eval_perplexity"])
    assert summary["stopped"].startswith("early stopping: perplexity did not improve in 2 evaluations")
    assert summary["global_step"] < 200 and summary["best"]["step"] == best["step"]
    assert evals[-1]["step"] - best["step"] == 10  # two evaluations without improvement, then stop
    # the output is the best checkpoint: scoring it again gives the best evaluation's perplexity
    m = json.loads((out / "metrics.json").read_text())
    assert m["metrics"]["perplexity"] == pytest.approx(best["eval_perplexity"], rel=1e-6)
    assert m["train"]["best"]["loaded_at_end"] is True


def test_training_eval_needs_a_schedule_and_a_known_metric(tmp_path):
    from sft.errors import RecipeError

    with pytest.raises(RecipeError, match="load_best_model_at_end needs evaluations during training"):
        recipe_from_dict(tiny_recipe("gpt2", "o", train__load_best_model_at_end=True))
    with pytest.raises(RecipeError, match="'rougeL' is not measured during training"):
        recipe_from_dict(tiny_recipe("gpt2", "o", train__eval_steps=5, train__metric_for_best_model="rougeL"))
    with pytest.raises(RecipeError, match="evaluation during training needs an eval split"):
        recipe_from_dict(tiny_recipe("gpt2", "o", train__eval_steps=5, data__eval_ratio=0.0))
    r = recipe_from_dict(tiny_recipe("gpt2", "o", train__eval_steps=5, train__metric_for_best_model="rougeL",
                                     eval__during_training={"metrics": ["rouge"]}))
    assert r.train.metric_for_best_model == "rougeL"


def test_a_metric_registered_once_reaches_every_output(tmp_path, char_f1_metric):
    from sft.bench import table
    from sft.publish import model_card

    out = tmp_path / "out"
    r = tiny_recipe("gpt2", out, steps=10, train__eval_steps=5, train__metric_for_best_model="char_f1")
    r["eval"] = {"before": False, "after": True, "metrics": ["perplexity", "char_f1"], "max_samples": 6,
                 "during_training": {"metrics": ["char_f1"], "max_samples": 4}, "generation": {"max_new_tokens": 6}}
    summary = train(recipe_from_dict(r, path="t.yaml"))
    m = json.loads((out / "metrics.json").read_text())
    assert "char_f1" in m["metrics"] and all("char_f1" in t for t in m["per_task"].values())
    assert "eval_char_f1" in [x for x in _log(out) if "eval_loss" in x][0]
    assert summary["best"]["metric"] == "char_f1"
    assert "Character F1" in (out / "eval_report.md").read_text()
    assert "Character F1" in (out / "report.html").read_text()
    card = model_card(str(out), "me/tiny")
    assert "name: Character F1" in card and "type: char_f1" in card
    row = {"run": "gpt2-full", "model": "gpt2", "method": "full", "trainable_params": 1, "train_time_s": 1.0,
           "tokens_per_second": 1.0, "peak_memory_mb": 1.0, "metrics": m["metrics"]}
    assert table([row]).splitlines()[0].endswith("| Character F1 |")
