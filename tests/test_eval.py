"""Scorers against the libraries' reference values; perplexity against a hand computation; batched
generation equals one-at-a-time generation."""

import math

import pytest
import torch

from sft.evaluation.generate import generate_batched
from sft.evaluation.perplexity import perplexity, token_nll
from sft.recipe import GenerationConfig


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                      pad_token_id=0, eos_token_id=1, bos_token_id=1)).eval()


def test_perplexity_matches_hand_computation():
    model = _tiny_gpt2()
    feats = [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9]},
             {"input_ids": [3, 4, 10], "labels": [-100, 4, 10]}]
    got = perplexity(token_nll(model, feats, arch="causal", pad_id=0, batch_size=2))
    total, count = 0.0, 0
    for f in feats:  # by hand, one sequence at a time: answer tokens only
        logp = torch.log_softmax(model(torch.tensor([f["input_ids"]])).logits[0], -1)
        for pos in range(1, len(f["input_ids"])):
            if f["labels"][pos] != -100:
                total -= float(logp[pos - 1, f["input_ids"][pos]])
                count += 1
    assert count == 5 and got == pytest.approx(math.exp(total / count), rel=1e-5)


def test_batched_generation_equals_one_at_a_time():
    from sft.tokenizer import build_tokenizer

    tok = build_tokenizer("byte", [], vocab_size=300, arch="causal")
    model = _tiny_gpt2()
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    prompts = [tok("hello there" * (i % 3 + 1), add_special_tokens=False)["input_ids"] for i in range(7)]
    gen = GenerationConfig(max_new_tokens=6)
    batched = generate_batched(model, tok, prompts, arch="causal", gen=gen, batch_size=4)
    single = [generate_batched(model, tok, [p], arch="causal", gen=gen, batch_size=1)[0] for p in prompts]
    assert batched == single
