"""FSDP2 through the Trainer path users run, on 2 CPU processes (gloo, fp32): the parameters really are DTensors,
and losses, evaluation during and after training, the saved full model and a kill-and-resume equal one process.

accelerate builds FSDP only for GPU-family distributed types, so these runs go through `tests/fsdp_cpu.py`, a
test-only launcher that switches accelerate's MULTI_CPU state to FSDP; users keep sft's refusal on CPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli, tiny_recipe, write_recipe

LAUNCHER = os.path.join(ROOT, "tests", "fsdp_cpu.py")
pytestmark = pytest.mark.slow


def _torchrun(script, *args, port, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), script, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


GUARD = r'''
import sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.tensor import DTensor
if sys.argv[2] == "helper":
    import fsdp_cpu; fsdp_cpu.enable()
acc = Accelerator(cpu=True, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2))
AcceleratorState()  # a later construction keeps the type (accelerate copies PartialState's back)
model = acc.prepare(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)))
kinds = {type(p).__name__ for p in model.parameters()}
if dist.get_rank() == 0:
    print("STATE", acc.distributed_type.value, sorted(kinds), flush=True)
'''


def test_guard_accelerate_still_needs_the_helper_and_the_helper_still_shards(tmp_path):
    """Without the helper accelerate still runs FSDP on CPU as plain MULTI_CPU (so sft's refusal stays right);
    with it, the plugin shards into DTensors. Fails if accelerate changes either way."""
    script = tmp_path / "guard.py"
    script.write_text(GUARD)
    plain = _torchrun(str(script), os.path.join(ROOT, "tests"), "plain", port=29541)
    helped = _torchrun(str(script), os.path.join(ROOT, "tests"), "helper", port=29542)
    assert plain.returncode == 0 and helped.returncode == 0, plain.stderr[-2000:] + helped.stderr[-2000:]
    assert "STATE MULTI_CPU ['Parameter']" in plain.stdout, plain.stdout
    assert "STATE FSDP ['DTensor']" in helped.stdout, helped.stdout


def test_users_keep_the_refusal_on_cpu(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe("gpt2", tmp_path / "out", train__fsdp=True))
    res = run_cli("train", path)
    assert res.returncode == 2 and "train.fsdp needs CUDA GPUs" in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()


def _recipe(tmp_path, name, *, batch, fsdp):
    r = tiny_recipe("gpt2", tmp_path / name, steps=12, train__batch_size=batch, train__eval_steps=6,
                    train__save_steps=6, train__save_total_limit=5, train__fsdp=fsdp)
    r["model"]["config_overrides"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    r["train"]["logging_steps"] = 1
    r["train"]["mixed_precision"] = "no"  # fp32 on both sides: TRL's bf16 default would hide differences
    r["eval"].update(before=True, after=True, metrics=["perplexity", "rouge", "exact_match"],
                     during_training={"metrics": ["rouge"], "max_samples": 8})
    r["data"]["cache_dir"] = str(tmp_path / f"cache-{name}")
    return write_recipe(tmp_path / f"{name}.yaml", r)


def _log(out, key):
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        return [json.loads(line) for line in fh if f'"{key}"' in line]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "model.safetensors"))


def test_fsdp_two_processes_equal_one_process_and_resume(tmp_path):
    one = run_cli("train", _recipe(tmp_path, "one", batch=8, fsdp=False))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(LAUNCHER, "train", _recipe(tmp_path, "fsdp", batch=4, fsdp=True), port=29543)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    killed_recipe = _recipe(tmp_path, "killed", batch=4, fsdp=True)
    killed = _torchrun(LAUNCHER, "train", killed_recipe, port=29544, env={"SFT_TEST_KILL_AFTER_CHECKPOINT": "6"})
    assert killed.returncode != 0 and not (tmp_path / "killed" / "metrics.json").exists()
    assert (tmp_path / "killed" / "checkpoint-6").is_dir() and not (tmp_path / "killed" / "checkpoint-12").exists()
    resumed = _torchrun(LAUNCHER, "train", killed_recipe, "--resume", port=29545)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout, resumed.stdout[-2000:]

    ref = tmp_path / "one"
    for name in ("fsdp", "killed"):
        out = tmp_path / name
        summary = json.loads((out / "train_summary.json").read_text())
        # the Trainer ran FSDP and the parameters were DTensors (not DDP under an FSDP label)
        assert summary["distributed"] == "FSDP" and summary["accelerate_distributed_type"] == "FSDP", summary
        assert summary["world_size"] == 2
        # same global batch of 8: per-step training losses equal one process (fp32, CPU)
        l1 = [e["loss"] for e in _log(ref, "loss")]
        l2 = [e["loss"] for e in _log(out, "loss")]
        assert len(l1) == len(l2) == 12
        assert l2 == pytest.approx(l1, rel=1e-5), name
        # evaluation during training (eval loss and generated ROUGE) at the same steps, with the same numbers
        e1, e2 = _log(ref, "eval_loss"), _log(out, "eval_loss")
        assert [e["step"] for e in e1] == [e["step"] for e in e2] == [6, 12]
        for a, b in zip(e1, e2):
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-5)
            assert b["eval_rougeL"] == pytest.approx(a["eval_rougeL"], rel=1e-5, abs=1e-9)
        # evaluation before and after training, every metric
        m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
        for section in ("before", None):
            a = m1[section]["metrics"] if section else m1["metrics"]
            b = m2[section]["metrics"] if section else m2["metrics"]
            assert set(a) == set(b)
            for k, v in a.items():
                assert b[k] == pytest.approx(v, rel=1e-5, abs=1e-9), (name, section, k)
        # the saved model is the full (gathered) model, equal to one process's; FSDP's gathered state dict also
        # writes the tied lm_head as its own copy, which must equal the embedding it is tied to
        w1, w2 = _weights(ref), _weights(out)
        assert set(w1) <= set(w2) and set(w2) - set(w1) <= {"lm_head.weight"}
        if "lm_head.weight" in w2:
            assert (w2["lm_head.weight"] == w2["transformer.wte.weight"]).all()
        for k in w1:
            assert w2[k].shape == w1[k].shape, k
            assert (w2[k] - w1[k]).abs().max().item() <= 1e-5 * max(1.0, w1[k].abs().max().item()), k
        # and it loads as the same model
        import torch
        from transformers import AutoModelForCausalLM

        ids = torch.tensor([[1, 2, 3, 4, 5]])
        logits = [AutoModelForCausalLM.from_pretrained(d).eval()(ids).logits for d in (ref, out)]
        assert torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)
