"""Use the trained model (generate, chat, eval of an output dir) and publish it (push --to-dir, merge)."""

import json
import os

import pytest
import torch

from conftest import run_cli


def test_eval_outputs_written_by_train(trained_full):
    m = json.loads((trained_full / "metrics.json").read_text())
    assert m["schema"] == "sft.metrics/v1" and m["num_samples"] + sum(m["not_scored"].values()) == 12
    assert set(m["metrics"]) == {"perplexity", "bleu", "rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match"}
    assert m["metrics"]["perplexity"] < m["before"]["metrics"]["perplexity"]
    assert m["per_task"] and all("num_samples" in v for v in m["per_task"].values())
    preds = [json.loads(l) for l in (trained_full / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == m["num_samples"] and {"prompt", "messages", "references", "prediction", "scores", "nll"} <= set(preds[0])
    assert "## Before and after training" in (trained_full / "eval_report.md").read_text()


def test_sft_eval_on_output_dir_reproduces_train_metrics(trained_full, tmp_path):
    res = run_cli("eval", str(trained_full), "--out", str(tmp_path), "eval.max_samples=12")
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((trained_full / "metrics.json").read_text())["metrics"]
    b = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-4), k


def test_generate_from_file_and_stdin(trained_full, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "What is 2 plus 3?"}\n{"instruction": "Sort ascending.", "input": "3, 1, 2"}\n'
                   '{"messages": [{"role": "user", "content": "Add 1 and 1."}]}\n')
    res = run_cli("generate", str(trained_full), "--input", str(inp), "--out", str(tmp_path / "o.jsonl"),
                  "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(l) for l in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["prediction"], str) for r in rows)
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sft", "generate", str(trained_full)], input='{"prompt": "hi"}\n',
                       capture_output=True, text=True)
    assert p.returncode == 0 and "prediction" in json.loads(p.stdout.splitlines()[-1])


def test_generate_adapter_seq2seq(trained_t5_lora, tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"instruction": "Convert the text to upper case.", "input": "red cat"}\n')
    res = run_cli("generate", str(trained_t5_lora), "--input", str(inp))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "prediction" in json.loads(res.stdout.splitlines()[-1])


def test_chat_through_stdin_with_reset_and_compare(trained_full, trained_lora):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sft", "chat", str(trained_full), "--compare", str(trained_lora),
                        "--max-new-tokens", "6"], input="What is 1 plus 2?\nAnd 3 plus 4?\n/reset\nhello\n/exit\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    assert out.count("you> ") == 3 and out.count("model> ") == 3 and out.count("base> ") == 3
    assert "(history cleared)" in out and out.rstrip().endswith("bye")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_push_to_dir_roundtrip_adapter(trained_lora, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft.modeling import load_for_inference

    dest = tmp_path / "upload"
    res = run_cli("push", str(trained_lora), "--to-dir", str(dest), "--repo-id", "me/tiny-lora")
    assert res.returncode == 0, res.stderr[-2000:]
    files = set(os.listdir(dest))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml", "metrics.json",
            "tokenizer.json", "base_model"} <= files
    assert not any(f.startswith("checkpoint") for f in files)
    card = (dest / "README.md").read_text()
    front = card.split("---")[1]
    import yaml

    meta = yaml.safe_load(front)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {r["type"] for r in meta["model-index"][0]["results"][0]["metrics"]} >= {"perplexity", "rougeL"}
    assert "PeftModel.from_pretrained" in card
    base = AutoModelForCausalLM.from_pretrained(dest / "base_model")
    loaded = PeftModel.from_pretrained(base, dest).eval()
    trained, _, _ = load_for_inference(str(trained_lora), device="cpu")
    ids = [5, 17, 33, 2, 9]
    assert torch.allclose(_logits(loaded, ids), _logits(trained, ids), atol=1e-6)


def test_push_to_dir_roundtrip_full(trained_full, tmp_path):
    from transformers import AutoModelForCausalLM

    dest = tmp_path / "upload"
    assert run_cli("push", str(trained_full), "--to-dir", str(dest)).returncode == 0
    import yaml

    meta = yaml.safe_load((dest / "README.md").read_text().split("---")[1])
    assert meta["library_name"] == "transformers"
    a = AutoModelForCausalLM.from_pretrained(dest).eval()
    b = AutoModelForCausalLM.from_pretrained(trained_full).eval()
    ids = [5, 17, 33, 2, 9]
    assert torch.equal(_logits(a, ids), _logits(b, ids))


def test_merge_equals_adapter(trained_lora, tmp_path):
    from transformers import AutoModelForCausalLM

    from sft.modeling import load_for_inference

    res = run_cli("merge", str(trained_lora), "--out", str(tmp_path / "merged"))
    assert res.returncode == 0, res.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    adapter, _, _ = load_for_inference(str(trained_lora), device="cpu")
    ids = list(range(3, 40))
    assert torch.allclose(_logits(merged, ids), _logits(adapter, ids), atol=1e-5)


def test_push_without_token_fails_clearly(trained_full, tmp_path):
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf")}
    res = run_cli("push", str(trained_full), "--repo-id", "me/x", env=env)
    assert res.returncode == 2 and "no Hub token found" in res.stderr and "Traceback" not in res.stderr


def test_token_never_written(tmp_path):
    """A run with a fake token set: no file the project writes, nor its logs, contains the token."""
    from conftest import tiny_recipe, write_recipe

    token = "hf_FAKEtoken1234567890abcdefSECRET"
    out = tmp_path / "out"
    r = tiny_recipe("gpt2", out, steps=6, train__report_to=["tensorboard"])
    r["eval"] = {"after": True, "before": False, "max_samples": 4, "generation": {"max_new_tokens": 4}}
    path = write_recipe(tmp_path / "r.yaml", r)
    env = {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token}
    res = run_cli("train", path, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res2 = run_cli("push", str(out), "--to-dir", str(tmp_path / "up"), env=env)
    assert res2.returncode == 0
    for text in (res.stdout, res.stderr, res2.stdout, res2.stderr):
        assert token not in text
    for root, _, files in os.walk(tmp_path):
        for f in files:
            assert token.encode() not in open(os.path.join(root, f), "rb").read(), os.path.join(root, f)
