"""Precision in one place, the speed switches and their refusals, chunked perplexity, the GPU kit's smoke."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, shared
from sft.errors import RecipeError
from sft.precision import decide
from sft.recipe import recipe_from_dict

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


# (requested, on_gpu, bf16_supported, model_type, frozen_base) -> (mode, load dtype, compute dtype)
TABLE = [
    ("auto", False, False, "gpt2", False, ("no", F32, F32)),
    ("auto", False, False, "gpt2", True, ("no", F32, F32)),
    ("auto", True, True, "gpt2", False, ("bf16", F32, BF16)),   # full: fp32 master weights, bf16 autocast
    ("auto", True, True, "llama", True, ("bf16", BF16, BF16)),  # LoRA: frozen base in bf16
    ("auto", True, False, "gpt2", False, ("fp16", F32, F16)),   # T4/V100: fp16 AMP with a scaler
    ("auto", True, False, "gpt2", True, ("fp16", F16, F16)),
    ("auto", True, False, "t5", False, ("no", F32, F32)),       # T5 overflows in fp16: fp32, not fp16
    ("auto", True, True, "t5", False, ("bf16", F32, BF16)),
    ("bf16", False, False, "gpt2", False, ("bf16", F32, BF16)),  # CPU autocast
    ("fp16", True, True, "llama", False, ("fp16", F32, F16)),
    ("no", True, True, "gpt2", True, ("no", F32, F32)),
]


@pytest.mark.parametrize("req,gpu,bf16_ok,mt,frozen,want", TABLE)
def test_precision_decision_table(req, gpu, bf16_ok, mt, frozen, want):
    p = decide(req, on_gpu=gpu, bf16_supported=bf16_ok, model_type=mt, frozen_base=frozen)
    assert (p.mode, p.load_dtype, p.compute_dtype) == want
    flags = p.trainer_flags()
    assert flags == {"bf16": want[0] == "bf16", "fp16": want[0] == "fp16"}  # autocast and scaler follow the mode


@pytest.mark.parametrize("req,gpu,bf16_ok,mt,msg", [
    ("fp16", True, True, "t5", "t5 overflows in float16"),
    ("fp16", True, False, "mt5", "mt5 overflows in float16"),
    ("fp16", False, False, "gpt2", "fp16 mixed precision needs a CUDA GPU"),
    ("bf16", True, False, "gpt2", "does not support bfloat16"),
])
def test_precision_refusals_name_the_field(req, gpu, bf16_ok, mt, msg):
    with pytest.raises(RecipeError, match=msg) as e:
        decide(req, on_gpu=gpu, bf16_supported=bf16_ok, model_type=mt, frozen_base=False, file="r.yaml")
    assert "r.yaml: train.mixed_precision" in str(e.value)


def test_qlora_compute_dtype_follows_the_decision():
    pytest.importorskip("bitsandbytes")
    from sft.modeling import quantization_config

    r = recipe_from_dict({"data": {"sources": [{"path": "builtin:synthetic"}]}, "lora": {"enabled": True},
                          "quantization": {"load_in_4bit": True}, "model": {"init": "scratch"}})
    for req, gpu, bf16_ok, want in (("no", False, False, F32), ("bf16", True, True, BF16), ("fp16", True, True, F16)):
        p = decide(req, on_gpu=gpu, bf16_supported=bf16_ok, model_type="gpt2", frozen_base=True)
        assert quantization_config(r, p).bnb_4bit_compute_dtype == want


@pytest.mark.parametrize("old,new", [("bfloat16", "bf16"), ("float16", "fp16"), ("float32", "no")])
def test_old_dtype_fields_migrate_to_mixed_precision(old, new):
    r = recipe_from_dict({"model": {"dtype": old}, "data": {"sources": [{"path": "builtin:synthetic"}]}})
    assert r.train.mixed_precision == new
    r = recipe_from_dict({"quantization": {"compute_dtype": old}, "data": {"sources": [{"path": "builtin:synthetic"}]}})
    assert r.train.mixed_precision == new


def test_yaml_no_means_no():
    from sft.recipe import load_recipe

    r = load_recipe(os.path.join(ROOT, "recipes", "quickstart.yaml"), ["train.mixed_precision=no"])
    assert r.train.mixed_precision == "no"


# ---- speed switches ---------------------------------------------------------------------------

def _recipe(**sections):
    base = {"model": {"name": "gpt2", "init": "scratch"}, "data": {"sources": [{"path": "builtin:synthetic"}]}}
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return recipe_from_dict(base, path="r.yaml")


@pytest.mark.parametrize("sections,arch,mt,msg", [
    ({"train": {"use_liger_kernel": True}}, "causal", "llama", "train.use_liger_kernel: Liger kernels are Triton"),
    ({"model": {"attn_implementation": "flash_attention_2"}}, "causal", "llama",
     "model.attn_implementation: flash_attention_2 needs a CUDA GPU"),
    ({"model": {"attn_implementation": "sdpa2"}}, "causal", "gpt2", "did you mean 'sdpa'"),
    ({"train": {"packing_strategy": "wrapped"}}, "causal", "gpt2", "train.packing_strategy=wrapped has no effect"),
    ({"train": {"padding_free": True}}, "seq2seq", "t5", "train.padding_free is for causal models"),
    ({"train": {"padding_free": True, "packing": True, "packing_strategy": "wrapped"}}, "causal", "gpt2",
     "attend across their boundaries"),
    ({"train": {"fsdp": True}}, "causal", "gpt2", "train.fsdp needs CUDA GPUs"),
])
def test_switches_refused_with_reason_on_cpu(sections, arch, mt, msg):
    from sft.precision import for_recipe
    from sft.switches import check

    r = _recipe(**sections)
    with pytest.raises(RecipeError, match=msg) as e:
        check(r, arch=arch, model_type=mt, on_gpu=False, precision=for_recipe(r, mt))
    assert str(e.value).startswith("r.yaml: ")


def test_liger_refused_for_a_family_it_has_no_kernels_for(monkeypatch):
    from sft import switches

    monkeypatch.setattr(switches, "_installed", lambda m: True)
    monkeypatch.setattr(switches, "liger_model_types", lambda: {"llama", "qwen2"})
    r = _recipe(train={"use_liger_kernel": True})
    p = decide("bf16", on_gpu=True, bf16_supported=True, model_type="gpt2", frozen_base=False)
    with pytest.raises(RecipeError, match="no kernels for model type 'gpt2'"):
        switches.check(r, arch="causal", model_type="gpt2", on_gpu=True, precision=p)
    switches.check(r, arch="causal", model_type="llama", on_gpu=True, precision=p)  # supported: no error


def test_a_switch_is_one_declaration():
    """Every switch in switches.SWITCHES is a recipe field (its default and help), a refusal in train.trainer_args
    pointing at that field, and the trainer arguments it owns; the schema names no switch field of its own."""
    import dataclasses

    from sft import switches
    from sft.passthrough import TRAINER_OWNED
    from sft.recipe import ModelConfig, TrainConfig, describe_schema

    sections = {"train": TrainConfig, "model": ModelConfig}
    schema = "\n".join(describe_schema())
    for s in switches.SWITCHES:
        f = {f.name: f for f in dataclasses.fields(sections[s.section])}[s.name]
        assert f.default == s.default and f.metadata["help"] == s.help and s.field in schema
        for arg in s.owns:
            assert TRAINER_OWNED[arg] == s.field
            if arg in ("packing", "torch_compile", "fsdp"):
                with pytest.raises(RecipeError, match=f"train.trainer_args.{arg}.*{s.field}"):
                    _recipe(train={"trainer_args": {arg: True}})
    on = _recipe(train={"torch_compile": True, "gradient_checkpointing": True})
    from sft.precision import for_recipe

    kw = switches.trainer_arguments(on, for_recipe(on, "gpt2"))
    assert kw["torch_compile"] and kw["dataloader_drop_last"] and kw.get(
        "activation_checkpointing", kw.get("gradient_checkpointing"))
    source = open(switches.__file__.replace("switches.py", "recipe.py")).read()
    assert not any(f"    {s.name}:" in source for s in switches.SWITCHES)  # declared in switches.py only


def test_switches_reach_the_trainer_arguments():
    from sft.precision import for_recipe
    from sft.train.run import training_arguments
    from sft.switches import sft_config_arguments

    r = _recipe(train={"torch_compile": True, "ddp_timeout": 7200, "packing": True, "packing_strategy": "wrapped"})
    kw = training_arguments(r, on_gpu=False, precision=for_recipe(r, "gpt2"))
    assert kw["torch_compile"] and kw["ddp_timeout"] == 7200 and kw["dataloader_drop_last"]
    assert (kw["bf16"], kw["fp16"]) == (False, False)
    assert sft_config_arguments(r)["packing_strategy"] == "wrapped"
    from sft.switches import fsdp_arguments

    model = _tiny("llama", "sdpa")
    fsdp = fsdp_arguments(_recipe(train={"fsdp": True}), model)
    assert fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]  # the model's own block
    assert fsdp_arguments(_recipe(), model) == {}
    pf = sft_config_arguments(_recipe(train={"padding_free": True}))
    assert pf["padding_free"] and pf["max_length"] is None  # features are already cut to data.max_length


def _tiny(mt, attn):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {"gpt2": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=64),
          "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)}[mt]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(mt, bos_token_id=0, eos_token_id=1, **kw),
                                            attn_implementation=attn)


@pytest.mark.parametrize("mt", ["gpt2", "llama"])
def test_sdpa_and_eager_give_the_same_logits(mt):
    ids = torch.randint(2, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    a = _tiny(mt, "sdpa").eval()(input_ids=ids, attention_mask=mask).logits
    b = _tiny(mt, "eager").eval()(input_ids=ids, attention_mask=mask).logits
    keep = mask.bool()
    torch.testing.assert_close(a[keep], b[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mt", ["gpt2", "llama"])
def test_padding_free_loss_equals_padded_loss(mt):
    """TRL's padding-free collator (what train.padding_free and bfd packing use) against padded batches."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    g = torch.Generator().manual_seed(2)
    examples = []
    for n in (11, 5, 17, 8):
        ids = torch.randint(2, 97, (n,), generator=g).tolist()
        labels = [-100] * (n // 2) + ids[n // 2:]
        examples.append({"input_ids": ids, "labels": labels})
    model = _tiny(mt, "sdpa").train()
    for m in model.modules():  # no dropout: compare the arithmetic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    loss_padded = model(**padded, use_cache=False).loss
    loss_flat = model(**flat, use_cache=False).loss
    torch.testing.assert_close(loss_flat, loss_padded, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mt,attn", [("gpt2", "sdpa"), ("llama", "sdpa"), ("gpt2", "eager")])
def test_row_packed_loss_equals_padded_loss(mt, attn):
    """bfd-packed rows through the per-row padding-free collator (what packing uses without a varlen kernel):
    each row is masked block-diagonally, so the loss equals each example padded on its own."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sft.train.causal import REAL_TOKENS, RowPackedCollator

    g = torch.Generator().manual_seed(4)
    examples = []
    for n in (11, 5, 17, 8, 3, 14, 9):
        ids = torch.randint(2, 97, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    rows = list(pack_dataset(Dataset.from_list(examples), seq_length=24, strategy="bfd"))
    assert 1 < len(rows) < len(examples)
    model = _tiny(mt, attn).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    batch = RowPackedCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].shape[0] == len(rows) and "attention_mask" not in batch
    assert batch.pop(REAL_TOKENS).tolist() == [len(r["input_ids"]) for r in rows]
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)
    loss_rows = model(**batch, use_cache=False).loss
    loss_padded = model(**padded, use_cache=False).loss
    torch.testing.assert_close(loss_rows, loss_padded, rtol=1e-5, atol=1e-6)


# ---- chunked perplexity -----------------------------------------------------------------------

def _reference_nll(model, features, pad_id):
    """The previous implementation: one forward per batch, fp32 logits of the whole batch."""
    import torch.nn.functional as F

    from sft.evaluation.generate import _pad

    ids, mask = _pad([f["input_ids"] for f in features], pad_id, left=False)
    labels, _ = _pad([f["labels"] for f in features], -100, left=False)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                          reduction="none").view(target.shape)
    return [(float(nll[j].sum()), int((target[j] != -100).sum())) for j in range(len(features))]


def test_chunked_perplexity_equals_the_whole_batch_computation(monkeypatch):
    from sft.evaluation import perplexity as ppl

    g = torch.Generator().manual_seed(3)
    feats = []
    for n in (30, 7, 19, 25, 12):
        ids = torch.randint(2, 97, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * 4 + ids[4:]})
    model = _tiny("gpt2", "sdpa").eval()
    want = _reference_nll(model, feats, pad_id=0)
    monkeypatch.setattr(ppl, "CE_CHUNK", 4)  # several position chunks per row
    for budget in (1, 30 * 97 * 4 * 2, 10**12):  # one row per forward, two rows, the whole batch
        got = ppl.token_nll(model, feats, arch="causal", pad_id=0, batch_size=5, logits_budget=budget)
        assert [c for _, c in got] == [c for _, c in want]
        for (a, _), (b, _) in zip(got, want):
            assert math.isclose(a, b, rel_tol=1e-5)
    assert ppl._rows_per_forward(2048, 150_000, 2, ppl.LOGITS_BUDGET) == 1  # the Axolotl #3203 case


# ---- the GPU kit ------------------------------------------------------------------------------

def test_gpu_kit_smoke(tmp_path):
    """`benchmarks/gpu/run.sh --smoke`: the kit's code path on CPU with tiny models, sft beside plain TRL."""
    tok = shared("tokenizers", "gpt2")
    alpaca = shared("data", "llamafactory", "alpaca_en_demo.json")
    out = tmp_path / "out"
    p = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "run.sh"), "--smoke", "--out", str(out),
                        "--work", str(tmp_path / "work"), "--tokenizer", tok, "--alpaca", alpaca],
                       capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHON": sys.executable})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    for name in ("gpt2-small-full-trl", "gpt2-small-full-sft", "gpt2-small-lora-sft", "gpt2-small-qlora-sft",
                 "gpt2-small-qlora-trl", "gpt2-small-full-sft-pack_wrapped", "gpt2-small-full-sft-pack_bfd",
                 "llama-small-full-sft", "llama-1b-full-sft-seq512-ckpt", "llama-1b-qlora-sft-seq512-ckpt"):
        assert rows[name].get("tokens_per_s", 0) > 0, (name, rows[name].get("error"))
        assert math.isfinite(rows[name]["loss"])
        assert 0 < rows[name]["first_step_s"] < rows[name]["wall_s"]  # what a user waits for the first step
    assert "need a CUDA GPU" in rows["gpt2-small-full-sft-liger"]["error"]
    # sft and TRL train the same model on the same rows: the same number of parameters, similar losses
    assert rows["gpt2-small-full-sft"]["params"] == rows["gpt2-small-full-trl"]["params"]
    assert abs(rows["gpt2-small-full-sft"]["loss"] - rows["gpt2-small-full-trl"]["loss"]) < 0.1
    md = (out / "results.md").read_text()
    assert "| gpt2-small-full-sft |" in md and "## Goals" in md and "| first step |" in md
    assert "QLoRA peak memory <= 40 % of full, weight-dominated" in md


# ---- validated pass-through -------------------------------------------------------------------

@pytest.mark.parametrize("sections,msg", [
    ({"train": {"trainer_args": {"neftune_noise_alpa": 5}}}, "train.trainer_args.neftune_noise_alpa: 'neftune_noise_alpa' "
     "is not a field of trl.SFTConfig or transformers.Seq2SeqTrainingArguments (fix: did you mean 'neftune_noise_alpha'?)"),
    ({"train": {"trainer_args": {"learning_rate": 1e-4}}}, "train.trainer_args.learning_rate: learning_rate is set by "
     "train.learning_rate"),
    ({"train": {"trainer_args": {"warmup_ratio": 0.1}}}, "is set by train.warmup_steps (a value below 1 is a ratio"),
    ({"train": {"trainer_args": {"remove_unused_columns": False}}}, "fixed by sft"),
    ({"model": {"init": "pretrained", "init_kwargs": {"attn_implementation": "eager"}}},
     "model.init_kwargs.attn_implementation: "
     "attn_implementation is set by model.attn_implementation"),
    ({"model": {"init": "pretrained", "init_kwargs": {"max_memroy": {}}}}, "did you mean 'max_memory'"),
    ({"train": {"trainer_args": {"neftune_noise_alpha": "x"}}}, "train.trainer_args.neftune_noise_alpha: got 'x', "
     "expected float | None"),
    ({"train": {"trainer_args": {"lr_scheduler_kwargs": 5}}}, "train.trainer_args.lr_scheduler_kwargs: got 5"),
    ({"train": {"lr_scheduler": "cosine", "trainer_args": {"lr_scheduler_kwargs": {"min_lr": 1e-5}}}},
     "train.trainer_args.lr_scheduler_kwargs.min_lr: cosine takes no argument 'min_lr' (fix: use last_epoch, "
     "num_cycles)"),
    ({"model": {"init_kwargs": {"max_memory": {}}}}, "model.init_kwargs apply when loading pretrained weights"),
])
def test_passthrough_is_checked_by_name(sections, msg):
    with pytest.raises(RecipeError) as e:
        _recipe(**sections)
    assert msg in str(e.value)


def _lr_and_losses(tmp_path, name, **train):
    from conftest import tiny_recipe
    from sft.train.run import train as run_train

    r = tiny_recipe("gpt2", tmp_path / name, steps=20, train__logging_steps=1, **{f"train__{k}": v for k, v in
                                                                                   train.items()})
    r["model"]["config_overrides"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    run_train(recipe_from_dict(r, path=f"{name}.yaml"))
    log = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
    logs = [x for x in log if "loss" in x and "learning_rate" in x]
    return [x["learning_rate"] for x in logs], [x["loss"] for x in logs]


def test_passthrough_reaches_the_trainer_neftune_warmup_ratio_min_lr(tmp_path):
    base_lr, base_loss = _lr_and_losses(tmp_path, "base", lr_scheduler="constant")
    _, noisy_loss = _lr_and_losses(tmp_path, "neftune", lr_scheduler="constant",
                                   trainer_args={"neftune_noise_alpha": 5.0})
    assert noisy_loss[0] != base_loss[0] and all(math.isfinite(x) for x in noisy_loss)  # noise on the embeddings
    lr, _ = _lr_and_losses(tmp_path, "warm", lr_scheduler="constant_with_warmup", warmup_steps=0.25)
    assert lr[:5] == sorted(lr[:5]) and lr[0] < 3e-3  # 25 % of 20 steps = 5 warm-up steps
    assert all(x == pytest.approx(3e-3) for x in lr[6:])
    lr, _ = _lr_and_losses(tmp_path, "minlr", lr_scheduler="cosine_with_min_lr",
                           trainer_args={"lr_scheduler_kwargs": {"min_lr": 1e-3}})
    assert lr[-1] == pytest.approx(1e-3, rel=0.05) and min(lr) >= 1e-3 * 0.999  # cosine floors at min_lr


# ---- the training loss never holds the batch's full-vocabulary logits ---------------------------------------

def test_training_loss_never_materialises_the_batch_logits(tmp_path):
    """The causal path's loss goes through TRL's fused LM head (tiles of labelled positions x a vocabulary slice,
    recomputed in the backward): no tensor of the batch's (batch x length x vocab) logits exists in the forward or
    the backward, and the loss and gradients equal the model's own full-logits cross-entropy."""
    from torch.utils import _pytree as pytree
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from conftest import tiny_recipe
    from sft.precision import for_recipe
    from sft.train.causal import build_trainer
    from sft.train.run import training_arguments

    class Widest(TorchDispatchMode):
        """The largest tensor any op makes whose last dimension is at least a vocabulary slice wide."""

        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] >= 1000:
                    self.numel = max(self.numel, t.numel())
            return out

    tok = AutoTokenizer.from_pretrained(shared("tokenizers", "gpt2"))
    tok.pad_token = tok.eos_token
    vocab = len(tok)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gpt2", n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=vocab,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = AutoModelForCausalLM.from_config(cfg)
    g = torch.Generator().manual_seed(5)
    feats = []
    for n in (40, 61, 33, 52):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * (n - 8) + ids[n - 8:]})  # 8 answer tokens each
    recipe = recipe_from_dict(tiny_recipe("gpt2", tmp_path / "out", train__batch_size=4), path="t.yaml")
    trainer = build_trainer(recipe, model, tok, feats,
                            training_arguments(recipe, on_gpu=False, precision=for_recipe(recipe, "gpt2")) |
                            {"output_dir": str(tmp_path / "out")}, callbacks=[])
    batch = trainer.data_collator(feats)
    full = batch["input_ids"].numel() * vocab  # the batch's logits
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    model.train()

    with Widest() as seen:
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
    fused_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert 0 < seen.numel <= labelled * min(vocab, 32768) < full / 10, (seen.numel, full)

    with Widest() as control:  # the model's own forward: the recorder does see whole-batch logits
        ref = model(**{k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}).loss
        ref.backward()
    assert control.numel >= full
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for a, p in zip(fused_grads, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-6)


# ---- torch.compile over wrapped packing: fixed shapes, no recompiles ----------------------------------------

def _compiled_losses(tmp_path, name, monkeypatch, **train):
    """Train 6 steps with train.torch_compile (dynamo's eager backend: the graph capture and guards are the same as
    inductor's, without minutes of C++ compiling on CPU); every recompile is an error."""
    import torch._dynamo

    from conftest import tiny_recipe
    from sft import switches
    from sft.train.run import train as run_train

    real = switches.trainer_arguments
    monkeypatch.setattr(switches, "trainer_arguments",  # (a backend alone would turn compiling on)
                        lambda recipe, precision: {**real(recipe, precision), **(
                            {"torch_compile_backend": "eager"} if recipe.train.torch_compile else {})})
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    r = tiny_recipe("gpt2", tmp_path / name, steps=6, train__logging_steps=1, **{f"train__{k}": v
                                                                             for k, v in train.items()})
    r["model"]["config_overrides"].update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    r["data"]["cache_dir"] = str(tmp_path / f"cache-{name}")
    run_train(recipe_from_dict(r, path=f"{name}.yaml"))
    with open(tmp_path / name / "train_log.jsonl") as fh:
        return [json.loads(line)["loss"] for line in fh if '"loss"' in line]


def test_compile_with_wrapped_packing_never_recompiles_and_keeps_the_loss(tmp_path, monkeypatch):
    packed = dict(packing=True, packing_strategy="wrapped")
    compiled = _compiled_losses(tmp_path, "compiled", monkeypatch, torch_compile=True, **packed)
    eager = _compiled_losses(tmp_path, "eager", monkeypatch, torch_compile=False, **packed)
    assert len(compiled) == 6 and compiled == pytest.approx(eager, rel=1e-5)
    # the control: padded batches change length from step to step, and the same guard catches the recompile
    with pytest.raises(Exception, match="[Rr]ecompil"):
        _compiled_losses(tmp_path, "ragged", monkeypatch, torch_compile=True)
