"""Tiny GPT-2 and T5 really train: full, LoRA and QLoRA; resume after SIGKILL; 2 processes on CPU."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, tiny_recipe, write_recipe
from sft.recipe import recipe_from_dict
from sft.train.run import train


def losses(out):
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        return [json.loads(l)["loss"] for l in fh if '"loss"' in l]


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_tiny_models_learn(tmp_path, arch, mode):
    out = tmp_path / "out"
    # adapters on random scratch weights move the loss slowly: they get twice the steps
    r = recipe_from_dict(tiny_recipe(arch, out, mode=mode, steps=40 if mode == "full" else 80), path="tiny.yaml")
    summary = train(r)
    ls = losses(out)
    if mode == "full":
        assert ls[-1] < 0.75 * ls[0], ls  # the loss really decreases
    else:  # adapters on random scratch weights learn slowly, but clearly
        assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.1, ls
    assert summary["trainable_params"] < summary["total_params"] if mode != "full" else \
        summary["trainable_params"] == summary["total_params"]
    files = set(os.listdir(out))
    assert {"recipe.yaml", "train_log.jsonl", "trainer_state.json", "tokenizer.json", "train_summary.json"} <= files
    if mode == "full":
        assert "model.safetensors" in files
    else:
        assert {"adapter_model.safetensors", "adapter_config.json", "base_model"} <= files


def _run_train(recipe_path, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "sft", "train", recipe_path, *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _resume_recipe(tmp_path, out):
    r = tiny_recipe("gpt2", out, steps=40, train__save_steps=10, train__save_total_limit=10, train__eval_steps=10,
                    train__load_best_model_at_end=True)
    r["eval"] = {"before": False, "after": True, "metrics": ["perplexity", "exact_match", "rouge"],
                 "max_samples": 16, "generation": {"max_new_tokens": 8}}
    return write_recipe(tmp_path / f"{out.name}.yaml", r)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref = _run_train(_resume_recipe(tmp_path, ref_out))
    proc = _run_train(_resume_recipe(tmp_path, out))
    deadline = time.time() + 300
    while not (out / "checkpoint-20").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert (out / "checkpoint-20").exists(), proc.communicate()[0][-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    assert ref.wait(timeout=600) == 0, ref.communicate()[0][-3000:]
    res = run_cli("train", str(tmp_path / "killed.yaml"), "--resume")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    a = json.loads((ref_out / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    for k, v in a["metrics"].items():  # CPU: resumed and uninterrupted runs agree (tolerance 1e-4 relative)
        assert b["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert losses(out)[-1] == pytest.approx(losses(ref_out)[-1], rel=1e-4)
    best_a, best_b = a["train"]["best"], b["train"]["best"]  # the best-so-far state survives the kill
    assert best_a["step"] == best_b["step"] and best_b["value"] == pytest.approx(best_a["value"], rel=1e-4)
    assert a["train"]["evaluations"] == b["train"]["evaluations"] == 4
    leftovers = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert not leftovers


def test_two_processes_match_one_process(tmp_path):
    def recipe(out, batch):
        r = tiny_recipe("gpt2", out, steps=12, train__batch_size=batch, train__report_to=["tensorboard"],
                        train__eval_steps=6)
        r["model"]["config_overrides"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        r["train"]["logging_steps"] = 1
        r["eval"].update(before=True, after=True, metrics=["perplexity", "rouge", "exact_match"],
                         during_training={"metrics": ["rouge"], "max_samples": 8})
        r["data"]["cache_dir"] = str(tmp_path / f"cache-{out.name}")  # each run tokenises into its own cache
        return write_recipe(tmp_path / f"{out.name}.yaml", r)

    one = run_cli("train", recipe(tmp_path / "one", 8))
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29531", "-m", "sft", "train", recipe(tmp_path / "two", 4)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("[sft] done") == 1 and two.stdout.count("trainable parameters") == 1  # rank 0 only
    # rank 0 tokenised once while rank 1 waited, then read the same cache entry; it equals one process's
    assert two.stdout.count("training data tokenised and cached") == 1, two.stdout[-3000:]
    assert "[sft] rank 0: training data tokenised and cached" in two.stdout
    assert "[sft] rank 1: training data read from the cache" in two.stdout
    from sft.data import cache

    (entry_one,), (entry_two,) = (os.listdir(tmp_path / f"cache-{n}") for n in ("one", "two"))
    assert entry_one == entry_two
    d1, d2 = (cache.load(str(tmp_path / f"cache-{n}"), entry_one)[0] for n in ("one", "two"))
    assert d1.to_list() == d2.to_list() and len(d1) > 100
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    events = [f for _, _, fs in os.walk(tmp_path / "two") for f in fs if f.startswith("events.out")]
    assert len(events) == 1  # one tensorboard writer
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) == 12
    for a, b in zip(l1, l2):  # same global batch of 8: per-step losses agree within 1e-3 relative
        assert b == pytest.approx(a, rel=1e-3)
    # every rank evaluates its shard (before, during and after training); the numbers equal one process
    m1, m2 = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "two"))
    for k, v in m1["before"]["metrics"].items():
        assert m2["before"]["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-9), k
    assert m2["metrics"]["perplexity"] == pytest.approx(m1["metrics"]["perplexity"], rel=1e-3)
    assert m1["num_samples"] == m2["num_samples"]
    e1, e2 = ([json.loads(x) for x in (tmp_path / n / "train_log.jsonl").read_text().splitlines() if "eval_loss" in x]
              for n in ("one", "two"))
    assert [e["step"] for e in e1] == [e["step"] for e in e2] == [6, 12]
    for a, b in zip(e1, e2):
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-3) and "eval_rougeL" in b


def test_nonfinite_loss_stops_with_step(tmp_path, monkeypatch):
    from sft.errors import TrainError
    from sft.train.causal import GuardedSFTTrainer

    real = GuardedSFTTrainer.compute_loss
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        if calls["n"] > 12:  # from step 13 on, the loss is NaN
            return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        return out

    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", steps=30, train__save_steps=10), path="t.yaml")
    monkeypatch.setattr(GuardedSFTTrainer, "compute_loss", poisoned)
    with pytest.raises(TrainError, match=r"loss became nan at step 13"):
        train(r)
    assert (tmp_path / "out" / "checkpoint-10").exists() and not (tmp_path / "out" / "checkpoint-20").exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()  # no final model from a broken run


@pytest.mark.parametrize("bad_from,logging,save,accum,want_step,kept", [
    (13, 7, 14, 1, 13, "checkpoint-7"),   # a checkpoint due right after the bad step is never written
    (29, 10, 1000, 1, 29, None),          # bad after the last logging step: caught at the end, no final model
    (9, 10, 1000, 2, 5, None),            # accumulation: the optimiser step of micro-batch 9 is step 5
])
def test_nonfinite_guard_checks_without_per_step_sync(tmp_path, monkeypatch, bad_from, logging, save, accum,
                                                      want_step, kept):
    """The guard zeroes the update on the device and reads its flag only at logs, saves, evaluations and the
    end: the weights of every checkpoint stay finite and the error names the first bad step."""
    import torch

    from sft.errors import TrainError
    from sft.train.causal import GuardedSFTTrainer

    real = GuardedSFTTrainer.compute_loss
    calls = {"n": 0, "syncs": 0}

    def poisoned(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        if calls["n"] >= bad_from:
            return (out[0] * float("nan"), *out[1:]) if isinstance(out, tuple) else out * float("nan")
        return out

    real_check = GuardedSFTTrainer.check_finite

    def counted(self):
        calls["syncs"] += 1
        return real_check(self)

    steps = 30 if accum == 1 else 15
    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", steps=steps, train__save_steps=save,
                                     train__logging_steps=logging, train__grad_accum=accum), path="t.yaml")
    if save == 14:
        r.train.save_steps = 7  # checkpoints at 7 and 14: 14 comes after the bad step 13
    monkeypatch.setattr(GuardedSFTTrainer, "compute_loss", poisoned)
    monkeypatch.setattr(GuardedSFTTrainer, "check_finite", counted)
    with pytest.raises(TrainError, match=rf"loss became nan at step {want_step}\b"):
        train(r)
    cks = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert cks == ([kept] if kept else [])
    assert calls["syncs"] < calls["n"] / accum  # fewer host reads than optimiser steps
    for ck in cks:
        from safetensors.torch import load_file

        weights = load_file(str(tmp_path / "out" / ck / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_nonfinite_guard_zeroes_gradients_only_when_flagged():
    """On CPU the guard reads its flag on the host: a clean step leaves the gradients alone, a flagged one
    zeroes every one of them before the optimiser runs."""
    import torch

    from sft.train.callbacks import NonFiniteLossGuard

    guard = object.__new__(NonFiniteLossGuard)
    guard.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2, bias=False))
    guard.model(torch.ones(2, 3)).sum().backward()
    before = [p.grad.clone() for p in guard.model.parameters()]
    assert all(g.abs().sum() > 0 for g in before)
    for flag in (None, torch.tensor(False)):
        guard._bad = flag
        guard.neutralise_update()
        assert all(torch.equal(p.grad, g) for p, g in zip(guard.model.parameters(), before))
    guard._bad = torch.tensor(True)
    guard.neutralise_update()
    assert all(torch.count_nonzero(p.grad) == 0 for p in guard.model.parameters())


def test_qlora_cpu_evaluates_before_and_after(tmp_path):
    """bitsandbytes repacks 4-bit CPU weights on first inference; scoring the base must not break training."""
    r = tiny_recipe("gpt2", tmp_path / "out", mode="qlora", steps=6)
    r["eval"] = {"before": True, "after": True, "max_samples": 4, "metrics": ["perplexity", "exact_match"],
                 "generation": {"max_new_tokens": 4}}
    summary = train(recipe_from_dict(r, path="q.yaml"))
    assert "before" in summary["eval"] and summary["eval"]["metrics"]["perplexity"] > 0


def test_packing_trains(tmp_path):
    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", steps=15, train__packing=True), path="p.yaml")
    train(r)
    ls = losses(tmp_path / "out")
    assert ls[-1] < ls[0]


def test_same_recipe_twice_gives_identical_metrics(tmp_path):
    def run(name):
        r = tiny_recipe("gpt2", tmp_path / name, steps=12)
        r["eval"] = {"before": True, "after": True, "max_samples": 8, "generation": {"max_new_tokens": 6}}
        train(recipe_from_dict(r, path="twice.yaml"))
        m = json.loads((tmp_path / name / "metrics.json").read_text())
        return {k: m[k] for k in ("metrics", "per_task", "before", "num_samples")}

    assert run("a") == run("b")


def test_trust_remote_code_warns_and_pickle_needs_opt_in(tmp_path):
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    from sft.errors import ModelError
    from sft.modeling import load_model
    from sft.tokenizer import build_tokenizer

    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    r = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "o", model__trust_remote_code=True), path="t.yaml")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(r, tok, "causal")
    assert any("trust_remote_code is on" in str(w.message) for w in caught)

    import torch

    pickled = tmp_path / "pickled"
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2))
    m.config.save_pretrained(pickled)
    torch.save(m.state_dict(), pickled / "pytorch_model.bin")  # a pickle checkpoint, no safetensors
    base = tiny_recipe("gpt2", tmp_path / "o")
    base["model"] = {"name": str(pickled), "init": "pretrained"}
    with pytest.raises(ModelError, match="allow_pickle"):
        load_model(recipe_from_dict(base, path="p.yaml"), tok, "causal")
    base["model"]["allow_pickle"] = True
    model = load_model(recipe_from_dict(base, path="p.yaml"), tok, "causal")
    assert model.config.n_layer == 1


def test_resume_skips_checkpoint_cut_off_while_saving(tmp_path):
    """A kill during a checkpoint save leaves a folder without trainer_state.json: resume uses the one before."""
    import shutil

    out = tmp_path / "out"
    path = _resume_recipe(tmp_path, out)
    res = run_cli("train", path)
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.rmtree(out / "checkpoint-40")
    (out / "checkpoint-40").mkdir()
    shutil.copy(out / "checkpoint-30" / "model.safetensors", out / "checkpoint-40")  # weights, no state
    (out / "metrics.json").unlink()
    res = run_cli("train", path, "--resume")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipping incomplete checkpoint-40" in res.stdout and (out / "metrics.json").exists()


def test_accelerate_launch_cpu_config_runs_two_processes(tmp_path):
    r = tiny_recipe("gpt2", tmp_path / "out", steps=6)
    path = write_recipe(tmp_path / "r.yaml", r)
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          os.path.join(ROOT, "accelerate_configs", "cpu_multiprocess.yaml"), "--main_process_port",
                          "29533", "-m", "sft", "train", path], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["world_size"] == 2
    assert res.stdout.count("[sft] done") == 1


def test_cpu_lm_head_scores_labelled_positions_only_with_the_same_loss_and_gradients():
    """sft makes TRL's fused head skip prompt and padding positions on CPU: same loss and gradients as TRL's own
    every-position path (and as the model's plain cross-entropy), fewer rows through the LM head. Under
    torch.compile it scores every position again (a fixed shape)."""
    import torch
    import trl.trainer.utils as trl_utils
    from transformers import GPT2Config, GPT2LMHeadModel

    from sft.train.causal import configure_lm_head

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_layer=1, n_embd=32, n_head=2, n_positions=32)).eval()
    ids = torch.randint(0, 97, (3, 12))
    labels = ids.clone()
    labels[:, :7] = -100  # prompt
    labels[2, 9:] = -100  # padding
    plain = model(input_ids=ids, labels=labels).loss
    trl_utils.add_fused_lm_head(model)

    def loss_and_grad():
        model.zero_grad()
        loss = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
        loss.backward()
        return loss.detach(), model.lm_head.weight.grad.clone()

    installed = trl_utils._use_triton  # an earlier sft run in this process may have installed it already
    original = getattr(installed, "_sft_original", installed)
    rows = []
    real_apply = trl_utils._ChunkedLogProbFunction.apply
    try:
        trl_utils._use_triton = original
        trl_utils._ChunkedLogProbFunction.apply = lambda h, *a: rows.append(h.shape[0]) or real_apply(h, *a)
        every_loss, every_grad = loss_and_grad()
        assert configure_lm_head() and configure_lm_head()  # idempotent
        compact_loss, compact_grad = loss_and_grad()
        assert configure_lm_head(all_positions=True)
        compiled_loss, _ = loss_and_grad()
    finally:
        configure_lm_head(all_positions=False)
        trl_utils._use_triton = installed
        trl_utils._ChunkedLogProbFunction.apply = real_apply
    assert rows == [3 * 11, int((labels[:, 1:] != -100).sum()), 3 * 11]
    torch.testing.assert_close(compiled_loss, every_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(compact_loss, every_loss, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(compact_loss, plain.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact_grad, every_grad, rtol=1e-5, atol=1e-7)
