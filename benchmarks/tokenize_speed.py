"""Formatting + tokenising 20,000 synthetic examples (target: under 2 s per 10k on 2 cores).

    python benchmarks/tokenize_speed.py [--n 20000] [--template alpaca]
Measures the same code `sft train` runs: canonical records -> template -> batched fast tokenizer."""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sft.data.encode import encode# noqa: E402
from sft.data.pipeline import load_splits
from sft.tokenizer import build_tokenizer, load_tokenizer  # noqa: E402
from sft.recipe import recipe_from_dict  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--template", default="alpaca")
    args = ap.parse_args()
    cfg = recipe_from_dict({"data": {"sources": [{"path": "builtin:synthetic", "num_examples": args.n}],
                                     "eval_ratio": 0.0, "clean": {"dedupe": False}}}).data
    t0 = time.perf_counter()
    splits = load_splits(cfg)
    t_load = time.perf_counter() - t0
    shared_gpt2 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                               "tokenizers", "gpt2")
    tokenizers = {"bpe (built, vocab 2000)": build_tokenizer("bpe", ["warm up " * 50], vocab_size=2000, arch="causal")}
    if os.path.isdir(shared_gpt2):
        tokenizers["GPT-2 (50,257)"] = load_tokenizer(shared_gpt2)
    print(f"generate + convert + clean {len(splits.train)} records: {t_load:.2f} s")
    for name, tok in tokenizers.items():
        t0 = time.perf_counter()
        enc = encode(splits.train, tok, args.template, arch="causal", max_length=512)
        dt = time.perf_counter() - t0
        print(f"format + tokenise, {name}: {len(enc.features)} examples in {dt:.2f} s = "
              f"{dt / len(enc.features) * 1e4:.2f} s per 10k")


if __name__ == "__main__":
    main()
