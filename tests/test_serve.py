"""From a run to a service: `sft serve` (transformers serve under the official openai client, on 127.0.0.1, stopped by
the test), `sft generate` / `sft chat` on any model (a plain Hugging Face folder, a Hub id from the cache, --raw),
sampling flags, and `sft export` (merged safetensors whose logits equal the run's)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, shared, tiny_recipe, write_recipe

pytestmark = pytest.mark.slow
PROMPTS = [[{"role": "user", "content": "What is 2 plus 3?"}],
           [{"role": "user", "content": "Convert the text to upper case.\n\nred cat"}],
           [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Sort ascending: 3, 1, 2"}]]
MAX_TOKENS = 48


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sft serve MODEL` on a free 127.0.0.1 port, up within `timeout` s, stopped (SIGINT, then kill) on exit."""

    def __init__(self, model, tmp_path, *extra, timeout=180, env=None, cwd=ROOT):
        self.port = _free_port()
        self.log = open(tmp_path / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "sft", "serve", str(model), "--port", str(self.port),
                                      *extra], cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        import openai

        self.client = openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", timeout=60,
                                    max_retries=0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.model = self.client.models.list().data[0].id
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"sft serve did not come up: {self.text()[-3000:]}")
                time.sleep(0.5)

    def text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _generate(model, tmp_path, rows, *flags) -> list[dict]:
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("generate", str(model), "--input", str(inp), "--max-new-tokens", str(MAX_TOKENS), *flags)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(x) for x in res.stdout.splitlines()]


def _check_served_equals_generate(server, model_dir, tmp_path):
    expected = [r["prediction"] for r in _generate(model_dir, tmp_path, [{"messages": m} for m in PROMPTS])]
    assert any(expected), "the trained model should answer something"
    stopped = 0
    for msgs, want in zip(PROMPTS, expected):
        r = server.client.chat.completions.create(model=server.model, messages=msgs, temperature=0,
                                                  max_tokens=MAX_TOKENS)
        assert r.choices[0].message.content == want, (msgs, want)
        chunks = list(server.client.chat.completions.create(model=server.model, messages=msgs, temperature=0,
                                                            max_tokens=MAX_TOKENS, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == [r.choices[0].finish_reason]
        if r.choices[0].finish_reason == "stop":  # ended at the end-of-turn token, before the length limit
            assert r.usage.completion_tokens < MAX_TOKENS
            stopped += 1
    assert stopped >= 2, "the served model should end its answers at the end-of-turn token"
    return expected


@pytest.fixture(scope="module")
def chatml_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chatml") / "out"
    r = tiny_recipe("gpt2", out, steps=80, n=400, data__template="chatml")
    res = run_cli("train", write_recipe(out.parent / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def tokenizer_template_run(tmp_path_factory):
    """A tiny Llama on the real GPT-2 tokenizer, trained with template: tokenizer and Qwen2.5's real chat template."""
    from transformers import AutoConfig, AutoTokenizer

    base = tmp_path_factory.mktemp("qwen-tpl")
    tok = AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.save_pretrained(base / "tok")
    AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512).save_pretrained(base / "llama")
    r = tiny_recipe("gpt2", base / "out", steps=150, n=400, data__template="tokenizer",
                    data__chat_template_path=shared("chat_templates", "chat_templates", "qwen2.5-instruct.jinja"))
    r["model"] = {"name": str(base / "llama"), "init": "scratch", "tokenizer": str(base / "tok")}
    r["data"]["max_length"] = 256
    r["train"]["learning_rate"] = 5e-3  # 80 steps at 1e-2 learnt only to end the turn at once
    res = run_cli("train", write_recipe(base / "r.yaml", r))
    assert res.returncode == 0, res.stderr[-3000:]
    return base / "out"


def test_served_builtin_template_run_answers_as_sft_generate(chatml_run, tmp_path):
    with Server(chatml_run, tmp_path) as server:
        assert server.model == str(chatml_run)  # a full run whose generation config stops at <|im_end|>: as it is
        _check_served_equals_generate(server, chatml_run, tmp_path)
        # /v1/completions continues raw text, as `sft generate --raw` does
        want = _generate(chatml_run, tmp_path, [{"prompt": "Sort ascending"}], "--raw")[0]["prediction"]
        got = server.client.completions.create(model=server.model, prompt="Sort ascending", temperature=0,
                                               max_tokens=MAX_TOKENS)
        assert got.choices[0].text == want
    assert server.proc.returncode is not None


def test_served_chat_template_run_answers_as_sft_generate(tokenizer_template_run, tmp_path):
    with Server(tokenizer_template_run, tmp_path) as server:
        _check_served_equals_generate(server, tokenizer_template_run, tmp_path)


def test_served_and_exported_lora_run_answer_as_the_run(trained_lora, tmp_path):
    """A LoRA run is merged into a scratch folder for the server (removed when it stops); its export and the
    export's greedy answers equal the run's."""
    import glob
    import tempfile

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "sft-serve-*")))
    rows = [{"messages": m} for m in PROMPTS]
    want = [r["prediction"] for r in _generate(trained_lora, tmp_path, rows)]
    res = run_cli("export", str(trained_lora), "--out", str(tmp_path / "export"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["prediction"] for r in _generate(tmp_path / "export", tmp_path, rows)] == want
    with Server(trained_lora, tmp_path) as server:
        assert "merged into its base" in server.text()
        scratch = set(glob.glob(os.path.join(tempfile.gettempdir(), "sft-serve-*"))) - before
        assert len(scratch) == 1
        for msgs, w in zip(PROMPTS, want):
            r = server.client.chat.completions.create(model=server.model, messages=msgs, temperature=0,
                                                      max_tokens=MAX_TOKENS)
            assert r.choices[0].message.content == w
    assert not any(os.path.exists(p) for p in scratch)  # sft removed the scratch folder it made, and only that


def test_export_is_standalone_with_equal_logits(trained_lora, trained_full, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from sft.modeling import load_for_inference

    for run in (trained_lora, trained_full):
        out = tmp_path / f"exp-{run.parent.name}"
        res = run_cli("export", str(run), "--out", str(out))
        assert res.returncode == 0, res.stderr[-2000:]
        assert sorted(p for p in os.listdir(out) if p.endswith(".safetensors")) == ["model.safetensors"]
        assert not os.path.exists(out / "adapter_config.json")
        mine, tok, _ = load_for_inference(str(run), device="cpu")
        theirs = AutoModelForCausalLM.from_pretrained(out).eval()
        ids = torch.tensor([tok("Sort ascending: 3, 1, 2")["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, mine(ids).logits, rtol=1e-5, atol=1e-5)
        saved = AutoTokenizer.from_pretrained(out)
        assert saved.chat_template == tok.chat_template
        assert GenerationConfig.from_pretrained(out).eos_token_id in (tok.eos_token_id, [tok.eos_token_id])
    res = run_cli("export", str(trained_full), "--out", str(tmp_path / "bf16"), "--dtype", "bf16")
    assert res.returncode == 0, res.stderr[-2000:]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    res = run_cli("export", str(trained_full), "--out", str(tmp_path / "x"), "--dtype", "int3")
    assert res.returncode == 2 and "--dtype: unknown dtype 'int3'" in res.stderr


def _plain_folder(path, chat_template=None):
    """A GPT-2 that sft never touched: save_pretrained of a config-built model and the real GPT-2 tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))
    if chat_template:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = chat_template
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2,
                                                                   vocab_size=len(tok)))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok


def test_generate_on_any_model_folder_uses_its_own_chat_template(tmp_path):
    import torch

    chatml = open(shared("chat_templates", "chat_templates", "chatml.jinja"), encoding="utf-8").read()
    model, tok = _plain_folder(tmp_path / "m", chatml)
    msgs = [{"role": "user", "content": "Name a colour."}]
    rows = _generate(tmp_path / "m", tmp_path, [{"messages": msgs}], "--max-new-tokens", "6")
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.eos_token_id,
                                    eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")])
    want = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert rows[0]["prediction"] == want


def test_raw_continues_a_base_model_and_a_folder_without_template_says_so(tmp_path):
    import torch

    model, tok = _plain_folder(tmp_path / "base")
    row = _generate(tmp_path / "base", tmp_path, [{"prompt": "Once upon a time"}], "--raw", "--max-new-tokens", "5")[0]
    ids = tok("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert row["prediction"] == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    res = run_cli("generate", str(tmp_path / "base"), input='{"prompt": "hi"}\n')
    assert res.returncode == 2 and "no chat template" in res.stderr and "--raw" in res.stderr
    res = run_cli("generate", str(tmp_path / "base"), "--raw", input='{"instruction": "hi"}\n')
    assert res.returncode == 2 and "line 1: --raw continues a 'prompt' or 'text' string" in res.stderr
    res = run_cli("chat", str(tmp_path / "base"), "--raw", "--max-new-tokens", "3", input="Once upon\n/exit\n")
    assert res.returncode == 0 and "model> " in res.stdout, res.stderr[-2000:]


def test_generate_a_hub_id_from_the_cache_offline(trained_full, tmp_path):
    """A Hub id resolves through the Hugging Face cache (offline: only what is cached), then runs as the folder."""
    import shutil

    hub = tmp_path / "hub"
    snap = hub / "models--someone--tiny-sft" / "snapshots" / ("a" * 40)
    shutil.copytree(trained_full, snap, ignore=shutil.ignore_patterns("checkpoint-*", "runs"))
    (hub / "models--someone--tiny-sft" / "refs").mkdir()
    (hub / "models--someone--tiny-sft" / "refs" / "main").write_text("a" * 40)
    env = {"HF_HUB_CACHE": str(hub)}
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"instruction": "What is 2 plus 3?"}) + "\n")
    res = run_cli("generate", "someone/tiny-sft", "--input", str(inp), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    want = run_cli("generate", str(trained_full), "--input", str(inp))
    assert json.loads(res.stdout) == json.loads(want.stdout)
    res = run_cli("generate", "someone/not-cached", "--input", str(inp), env=env)
    assert res.returncode == 2 and "cannot fetch 'someone/not-cached' from the Hub" in res.stderr


def test_sampling_flags_and_seed(trained_full, tmp_path):
    rows = [{"instruction": "What is 2 plus 3?"}, {"instruction": "Sort ascending.", "input": "3, 1, 2"}]
    a = _generate(trained_full, tmp_path, rows, "--temperature", "1.5", "--top-k", "20", "--seed", "7",
                  "--num-return-sequences", "4")
    b = _generate(trained_full, tmp_path, rows, "--temperature", "1.5", "--top-k", "20", "--seed", "7",
                  "--num-return-sequences", "4")
    assert a == b and all(len(r["predictions"]) == 4 and r["prediction"] == r["predictions"][0] for r in a)
    c = _generate(trained_full, tmp_path, rows, "--temperature", "1.5", "--top-k", "20", "--seed", "8",
                  "--num-return-sequences", "4")
    assert c != a  # another seed, other samples
    greedy = _generate(trained_full, tmp_path, rows)
    assert _generate(trained_full, tmp_path, rows, "--temperature", "0") == greedy  # OpenAI's meaning: greedy
    assert _generate(trained_full, tmp_path, rows, "--top-k", "1", "--seed", "3") == greedy  # top-1 sampling
    assert _generate(trained_full, tmp_path, rows, "--repetition-penalty", "1.0") == greedy
    res = run_cli("generate", str(trained_full), "--num-return-sequences", "2", input='{"prompt": "hi"}\n')
    assert res.returncode == 2 and "--num-return-sequences" in res.stderr and "--do-sample" in res.stderr
    res = run_cli("generate", str(trained_full), "--top-k", "-1", input='{"prompt": "hi"}\n')
    assert res.returncode == 2 and "--top-k: got -1" in res.stderr


def test_serve_refuses_bad_setups_in_one_line(trained_full, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_cli("serve", str(trained_full), "--port", str(port))
    assert res.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    for args, expected in [((str(tmp_path / "empty"),), "not a model folder"),
                           ((str(tmp_path / "nothing-here"),), "model directory not found"),
                           ((str(trained_full), "--engine", "vllm"), "vLLM is not installed"),
                           ((str(trained_full), "--engine", "tgi"), "unknown engine 'tgi'"),
                           ((str(trained_full), "--port", "70000"), "expected a port from 1 to 65535")]:
        res = run_cli("serve", *args, "--port", str(_free_port())) if "--port" not in args else run_cli("serve", *args)
        assert res.returncode == 2 and expected in res.stderr, (args, res.stderr[-1000:])


def test_serve_without_the_serve_extra_says_how_to_install_it(trained_full, monkeypatch, capsys):
    import importlib.util

    from sft.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a))
    assert main(["serve", str(trained_full), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert "needs the serve extra (missing: fastapi)" in err and "pip install 'sft[serve]'" in err


def _blocks(card: str, lang: str) -> list[str]:
    parts = card.split("```" + lang + "\n")[1:]
    return [p.split("```")[0] for p in parts]


def test_the_model_cards_use_lines_work_as_written(trained_lora, tmp_path):
    """The card of a pushed LoRA run (a Hub repo, here in a Hugging Face cache offline): its Python, its sft lines
    and its openai snippet run as written (the vllm line needs vLLM, which needs a GPU: not run here)."""
    import shutil

    hub = tmp_path / "hub"
    repo = hub / "models--me--tiny"
    snap = repo / "snapshots" / ("b" * 40)
    res = run_cli("push", str(trained_lora), "--repo-id", "me/tiny", "--to-dir", str(snap))
    assert res.returncode == 0, res.stderr[-2000:]
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    env = {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}
    card = (snap / "README.md").read_text()
    (python_block, openai_block), (bash_block,) = _blocks(card, "python"), _blocks(card, "bash")
    res = subprocess.run([sys.executable, "-c", python_block + "\nprint(type(model).__name__)"], capture_output=True,
                         text=True, env={**os.environ, **env}, cwd=tmp_path, timeout=300)
    assert res.returncode == 0 and res.stdout.split()[-1].startswith("Peft"), res.stderr[-2000:]
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"instruction": "What is 2 plus 3?"}) + "\n")
    want = _generate(trained_lora, tmp_path, [{"instruction": "What is 2 plus 3?"}])
    commands = [line.split("#")[0].split() for line in bash_block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["sft", "generate"], ["sft", "chat"], ["sft", "serve"], ["sft", "export"],
                                         ["vllm", "serve"]]
    for cmd in commands:
        if cmd[1] == "generate":
            res = run_cli(*cmd[1:], "--max-new-tokens", str(MAX_TOKENS), cwd=tmp_path, env=env)
            assert res.returncode == 0 and [json.loads(x) for x in res.stdout.splitlines()] == want, res.stderr[-2000:]
        elif cmd[1] == "chat":
            res = run_cli(*cmd[1:], cwd=tmp_path, env=env, input="What is 2 plus 3?\n/exit\n")
            assert res.returncode == 0 and "model> " in res.stdout, res.stderr[-2000:]
        elif cmd[1] == "export":
            res = run_cli(*cmd[1:], cwd=tmp_path, env=env)
            assert res.returncode == 0 and (tmp_path / "exported" / "model.safetensors").exists(), res.stderr[-2000:]
    with Server("me/tiny", tmp_path, env=env, cwd=tmp_path) as server:
        code = openai_block.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.rstrip("\n") == _generate(trained_lora, tmp_path, [{"messages": [
            {"role": "user", "content": "Hello"}]}])[0]["prediction"]
    shutil.rmtree(hub)
