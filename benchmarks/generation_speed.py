"""Batched generation vs a one-example-at-a-time loop over 256 prompts with the tiny GPT-2
(target: >= 5x, identical outputs).   python benchmarks/generation_speed.py [--model OUTPUT_DIR]

Without --model, a tiny GPT-2 (2 layers, 128 dims) is initialised from config with a built tokenizer."""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from sft.data import synthetic  # noqa: E402
from sft.data.encode import encode_prompts# noqa: E402
from sft.evaluation.generate import generate_batched  # noqa: E402
from sft.recipe import GenerationConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="sft output dir (default: a scratch tiny GPT-2)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    rows = synthetic.generate(args.n, seed=5)
    records = [{"messages": [{"role": "user", "content": r["instruction"], "input": r["input"]}], "task": r["task"],
                "source": "bench"} for r in rows]
    if args.model:
        from sft.modeling import load_for_inference

        model, tok, arch = load_for_inference(args.model, device="cpu")
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        from sft.tokenizer import build_tokenizer

        tok = build_tokenizer("bpe", [r["instruction"] + " " + r["input"] + " " + r["output"] for r in rows],
                              vocab_size=1200, arch="causal")
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=128, n_head=4, n_positions=256,
                                           pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                           bos_token_id=tok.eos_token_id)).eval()
        arch = "causal"
    prompts = encode_prompts(records, tok, "chatml", arch=arch)
    # fixed-length generation (EOS suppressed) so both paths do the same amount of work
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    batched = generate_batched(model, tok, prompts, arch=arch, gen=gen, batch_size=args.batch_size)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [generate_batched(model, tok, [p], arch=arch, gen=gen, batch_size=1)[0] for p in prompts]
    t_single = time.perf_counter() - t0
    same = sum(a == b for a, b in zip(batched, single))
    print(f"{args.n} prompts, max_new_tokens={args.max_new_tokens}: batched (bs {args.batch_size}) {t_batched:.2f} s, "
          f"one at a time {t_single:.2f} s -> {t_single / t_batched:.1f}x faster; identical outputs {same}/{args.n}")


if __name__ == "__main__":
    main()
