"""Every family in sft/families.py trains full and LoRA on CPU from a tiny scratch config, evaluates, generates
and merges (merged logits equal the adapter's); DoRA, rsLoRA and all-linear reach peft."""

import json
import os

import pytest
import torch

from conftest import ROOT, tiny_recipe
from sft.families import ATTENTION_AND_MLP

TINY = {  # model_type -> tiny config fields (the architecture's own code, two small layers)
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, sliding_window=None),
    "gemma": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16, max_position_embeddings=256),
    "phi3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=256, original_max_position_embeddings=256),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=256),
    "gpt2": dict(n_layer=2, n_embd=64, n_head=2, n_positions=256),
    "t5": dict(num_layers=2, num_decoder_layers=2, d_model=64, d_ff=128, num_heads=2, d_kv=32),
    "bart": dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=256),
}
SEQ2SEQ = {"t5", "bart"}


def _recipe(tmp_path, model_type, mode, **lora):
    from transformers import AutoConfig

    cfg_dir = tmp_path / f"{model_type}-config"
    if not cfg_dir.exists():
        AutoConfig.for_model(model_type, **TINY[model_type]).save_pretrained(cfg_dir)
    r = tiny_recipe("t5" if model_type in SEQ2SEQ else "gpt2", tmp_path / f"{model_type}-{mode}", mode=mode, steps=4,
                    n=120)
    r["model"] = {"name": str(cfg_dir), "init": "scratch", "tokenizer": "bpe", "tokenizer_vocab_size": 400}
    r["eval"] = {"before": False, "after": True, "max_samples": 4, "batch_size": 4,
                 "metrics": ["perplexity", "exact_match"], "generation": {"max_new_tokens": 4}}
    if mode == "lora":
        r["lora"].update(lora)
    return r


@pytest.mark.parametrize("model_type", list(TINY))
def test_family_trains_evaluates_generates_and_merges(model_type, tmp_path):
    from sft.families import family_of
    from sft.modeling import load_for_inference
    from sft.publish import merge_adapter
    from sft.recipe import recipe_from_dict
    from sft.train.run import train

    fam = family_of(model_type)
    full = train(recipe_from_dict(_recipe(tmp_path, model_type, "full"), path="f.yaml"))
    assert full["arch"] == fam.trainer and torch.isfinite(torch.tensor(full["train_loss"]))
    assert full["eval"]["metrics"]["perplexity"] > 1

    lora = train(recipe_from_dict(_recipe(tmp_path, model_type, "lora"), path="l.yaml"))
    out = tmp_path / f"{model_type}-lora"
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == sorted(fam.lora_targets)  # the family's default targets
    assert lora["eval"]["metrics"]["perplexity"] > 1
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["prediction"], str) for r in rows)

    merged = merge_adapter(str(out), str(tmp_path / f"{model_type}-merged"))
    a, tok, arch = load_for_inference(str(out), device="cpu")
    b, _, _ = load_for_inference(merged, device="cpu")
    ids = torch.tensor([tok.encode("add 2 and 3", add_special_tokens=False)[:12]])
    kw = {"decoder_input_ids": ids[:, :4]} if arch == "seq2seq" else {}
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids, **kw).logits, b(input_ids=ids, **kw).logits, rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("model_type,options,check", [
    ("llama", {"target_modules": ["all-linear"], "use_dora": True}, "dora"),
    ("qwen2", {"use_rslora": True}, "rslora"),
    ("gpt2", {"target_modules": ["all-linear"]}, "all-linear"),
])
def test_peft_choices_reach_peft_and_merge_exactly(model_type, options, check, tmp_path):
    from sft.modeling import load_for_inference
    from sft.publish import merge_adapter
    from sft.recipe import recipe_from_dict
    from sft.train.run import train

    r = _recipe(tmp_path, model_type, "lora", **options)
    r["eval"]["after"] = False
    r["train"]["learning_rate"] = 5e-2  # move the adapters off their initialisation so merging is not trivial
    train(recipe_from_dict(r, path="p.yaml"))
    out = tmp_path / f"{model_type}-lora"
    cfg = json.loads((out / "adapter_config.json").read_text())
    if check == "dora":
        leaves = {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]}
        assert cfg["use_dora"] is True and leaves == set(ATTENTION_AND_MLP)  # all seven projections
    elif check == "rslora":
        assert cfg["use_rslora"] is True
    else:
        leaves = {m.rsplit(".", 1)[-1] for m in cfg["target_modules"]}
        assert leaves == {"c_attn", "c_proj", "c_fc"}  # every Conv1D but the output head
    merged = merge_adapter(str(out), str(tmp_path / "merged"))
    a, tok, _ = load_for_inference(str(out), device="cpu")
    b, _, _ = load_for_inference(merged, device="cpu")
    ids = torch.tensor([tok.encode("sort 3 1 2", add_special_tokens=False)[:12]])
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_all_linear_with_other_names_is_refused(tmp_path):
    from sft.errors import RecipeError
    from sft.recipe import recipe_from_dict

    r = _recipe(tmp_path, "gpt2", "lora", target_modules=["all-linear", "c_attn"])
    with pytest.raises(RecipeError, match="lora.target_modules: all-linear stands alone"):
        recipe_from_dict(r, path="a.yaml")


def test_scratch_configs_of_modern_checkpoints_need_no_hub():
    from sft.families import SCRATCH
    from sft.modeling import context_length, load_config
    from sft.recipe import ModelConfig

    for name, size in (("HuggingFaceTB/SmolLM2-135M-Instruct", 134_515_008), ("Qwen/Qwen2.5-0.5B-Instruct",
                                                                              494_032_768)):
        cfg = load_config(ModelConfig(name=name, init="scratch"))
        assert cfg.model_type == SCRATCH[name][0] and context_length(cfg) == cfg.max_position_embeddings
        with torch.device("meta"):
            from transformers import AutoModelForCausalLM

            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        assert n == size, name  # the public parameter counts (tied embeddings)


def test_new_family_is_one_entry():
    """The seam: families.py is the one table that knows per-family facts."""
    src = {p: open(os.path.join(ROOT, "sft", p)).read() for p in ("modeling.py", "publish.py", "train/run.py")}
    for text in src.values():
        assert '"gpt2"' not in text and "'gpt2'" not in text  # no family named outside sft/families.py


def test_run_context_decides_once_and_prompt_format_agrees_with_the_pipeline():
    from sft.context import RunContext
    from sft.data.encode import encode, encode_prompts
    from sft.recipe import recipe_from_dict
    from sft.tokenizer import load_tokenizer

    from conftest import shared

    r = recipe_from_dict({"model": {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "init": "scratch",
                                    "tokenizer": shared("tokenizers", "gpt2")},
                          "data": {"sources": [{"path": "builtin:synthetic"}], "template": "chatml"}}, path="c.yaml")
    ctx = RunContext.build(r)
    assert (ctx.arch, ctx.family.name, ctx.on_gpu, ctx.precision.mode) == ("causal", "llama", False, "no")
    assert ctx.context_length == 8192 and (ctx.rank, ctx.world_size) == (0, 1)
    tok = load_tokenizer(shared("tokenizers", "gpt2"))
    fmt = ctx.prompt_format(tok)
    rec = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "task": "t",
           "source": "s"}
    assert fmt.encode_train([rec]).features == encode([rec], tok, "chatml", arch="causal", max_length=256).features
    assert fmt.encode_prompt([rec]) == encode_prompts([rec], tok, "chatml", arch="causal")
    assert fmt.stops == ("<|im_end|>",) and fmt.stop_ids[0] == tok.eos_token_id


def test_a_trained_models_context_on_a_machine_without_its_training_precision():
    """Using an fp16-trained run on a CPU (generate, chat, export, eval) computes as loaded: no precision, no error;
    training that recipe here is still refused."""
    import torch

    from sft.context import RunContext
    from sft.errors import RecipeError
    from sft.recipe import recipe_from_dict

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs fp16")
    r = recipe_from_dict({"model": {"name": "gpt2", "init": "scratch"}, "train": {"mixed_precision": "fp16"},
                          "data": {"sources": [{"path": "builtin:synthetic"}]}}, path="r.yaml")
    assert RunContext.build(r, check=False).precision is None
    with pytest.raises(RecipeError, match="fp16 mixed precision needs a CUDA GPU"):
        RunContext.build(r)
