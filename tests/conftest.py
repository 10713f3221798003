import os
import subprocess
import sys

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_DISABLED", "true")
# Under xdist the workers share the cores: each worker (and the processes it starts) gets its share of threads,
# or two workers' torch thread pools oversubscribe the cores and spin (a 155 s test took over 600 s in CI).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("MKL_NUM_THREADS", str(_share))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    os.environ["SFT_CACHE"] = str(tmp_path_factory.mktemp("sft-cache"))


def shared(*parts):
    """Path into ../shared, skipping the test when the shared data is absent (a user's fresh clone)."""
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} not present (../shared is only beside the project in CI and dev checkouts)")
    return path


def run_cli(*args, cwd=None, env=None, timeout=600, input=None):
    """Run `python -m sft ...` in a subprocess; returns CompletedProcess (text)."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sft", *args], cwd=cwd or ROOT, env=e, capture_output=True,
                          text=True, timeout=timeout, input=input)


def tiny_recipe(arch="gpt2", out="out", *, steps=30, mode="full", n=240, **extra):
    """A recipe dict for a tiny scratch model on the synthetic suite."""
    model = {
        "gpt2": {"name": "gpt2", "init": "scratch", "tokenizer": "bpe", "tokenizer_vocab_size": 400,
                 "config_overrides": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 256}},
        "t5": {"name": "t5-small", "init": "scratch", "tokenizer": "bpe", "tokenizer_vocab_size": 400,
               "config_overrides": {"num_layers": 2, "num_decoder_layers": 2, "d_model": 64, "d_ff": 128,
                                    "num_heads": 2, "d_kv": 32}},
    }[arch]
    r = {
        "model": model,
        "data": {"sources": [{"path": "builtin:synthetic", "num_examples": n}],
                 "template": "alpaca" if arch == "gpt2" else "plain", "max_length": 128, "eval_ratio": 0.1,
                 "max_eval_samples": 16},
        "train": {"output_dir": str(out), "max_steps": steps, "batch_size": 8, "learning_rate": 3e-3,
                  "logging_steps": 5, "save_steps": 1000, "report_to": ["none"]},
        "eval": {"before": False, "after": False, "batch_size": 16, "generation": {"max_new_tokens": 12}},
    }
    if mode in ("lora", "qlora"):
        r["lora"] = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0}
        r["train"]["learning_rate"] = 1e-2
    if mode == "qlora":
        r["quantization"] = {"load_in_4bit": True}
    for key, value in extra.items():
        section, field = key.split("__")
        r.setdefault(section, {})[field] = value
    return r


def write_recipe(path, recipe: dict) -> str:
    import yaml

    with open(path, "w") as fh:
        yaml.safe_dump(recipe, fh, sort_keys=False)
    return str(path)


def _trained(tmp_path_factory, name, arch, mode):
    from sft.recipe import recipe_from_dict
    from sft.train.run import train

    out = tmp_path_factory.mktemp(name) / "out"
    r = tiny_recipe(arch, out, mode=mode, steps=40, train__report_to=["tensorboard"])
    r["eval"] = {"before": True, "after": True, "max_samples": 12, "batch_size": 12,
                 "generation": {"max_new_tokens": 10}}
    train(recipe_from_dict(r, path=f"{name}.yaml"))
    return out


@pytest.fixture(scope="session")
def trained_full(tmp_path_factory):
    """A finished tiny GPT-2 full fine-tune with before/after evaluation."""
    return _trained(tmp_path_factory, "full", "gpt2", "full")


@pytest.fixture(scope="session")
def trained_lora(tmp_path_factory):
    return _trained(tmp_path_factory, "lora", "gpt2", "lora")


@pytest.fixture(scope="session")
def trained_t5_lora(tmp_path_factory):
    return _trained(tmp_path_factory, "t5lora", "t5", "lora")


def char_f1(p: str, refs: list[str]) -> dict:
    """A character-level F1 (best over references): a metric the registry does not ship, for registry tests."""
    best = 0.0
    for r in refs:
        common = sum(min(p.count(c), r.count(c)) for c in set(p))
        if common:
            prec, rec = common / len(p), common / len(r)
            best = max(best, 2 * prec * rec / (prec + rec))
    return {"char_f1": best}


@pytest.fixture
def char_f1_metric():
    """Registers `char_f1` for one test, then removes it."""
    from sft.metrics import METRICS, Metric, register

    m = register(Metric("char_f1", "text", ("char_f1",), per_sample=char_f1, display={"char_f1": "Character F1"},
                        corpus=lambda ps, rs: {"char_f1": sum(char_f1(p, r)["char_f1"] for p, r in zip(ps, rs))
                                               / len(ps)}))
    yield m
    METRICS.pop(m.name)
