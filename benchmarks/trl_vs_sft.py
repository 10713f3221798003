"""Training throughput of `sft train` against plain TRL SFTTrainer on the same tiny GPT-2 and the same data, in
one run, interleaved (target ratio >= 1.0).

    python benchmarks/trl_vs_sft.py [--blocks 6] [--steps 40] [--batch-size 32]

Two shared cores make one long run of each a coin toss (0.42, 0.68 and 1.58 were seen on one commit), so the two
alternate in short blocks, A B B A A B ... (each pair's order flips, so neither side always runs second), and the
median of the per-pair ratios is reported with its range.

Both train the same scratch model (same seed) on the same rendered prompt/completion pairs with the same batch
size and steps; tokens/s = non-padding tokens fed (the Trainer's num_input_tokens_seen) / train runtime, for both.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=6, help="pairs of (sft, TRL) runs")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM  # noqa: F401  (imported once, outside the timed blocks)
    from trl import SFTConfig, SFTTrainer

    from sft.data.encode import final_answer, prompt_text
    from sft.data.pipeline import load_splits
    from sft.modeling import load_model
    from sft.tokenizer import get_tokenizer
    from sft.recipe import load_recipe
    from sft.train.run import train

    tmp = tempfile.mkdtemp()

    def sft_recipe(i):
        # unpacked, as plain TRL's prompt/completion batches below (the quickstart itself packs)
        return load_recipe(os.path.join(ROOT, "recipes", "quickstart.yaml"), [
            f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.report_to=none",
            "train.packing=false", "eval.before=false", "eval.after=false", "train.save_steps=100000",
            f"train.output_dir={tmp}/sft-{i}"])

    recipe = sft_recipe("setup")
    splits = load_splits(recipe.data)
    tok = get_tokenizer(recipe, splits.train, "causal")
    # Plain TRL on the same texts: prompt/completion strings, its own tokenisation and collator.
    ds = Dataset.from_list([{"prompt": prompt_text(r, recipe.data.template),
                             "completion": final_answer(r) + "<|im_end|>"} for r in splits.train])

    def run_sft(i):
        return train(sft_recipe(i))["tokens_per_second"]

    def run_trl(i):
        model = load_model(recipe, tok, "causal")
        cfg = SFTConfig(output_dir=f"{tmp}/trl-{i}", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                        learning_rate=recipe.train.learning_rate, lr_scheduler_type="cosine", warmup_steps=20,
                        optim=recipe.train.optim, bf16=False,
                        logging_steps=10, save_strategy="no", report_to="none", seed=recipe.train.seed,
                        max_length=recipe.data.max_length, use_cpu=True, disable_tqdm=True,
                        include_num_input_tokens_seen="non_padding")
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
        t0 = time.time()
        trainer.train()
        return trainer.state.num_input_tokens_seen / (time.time() - t0)  # counted the same way as sft's

    run_sft("warm")  # first-run costs (cache build, imports) outside the timed blocks
    run_trl("warm")
    rows = []
    for i in range(args.blocks):
        order = ("sft", "trl") if i % 2 == 0 else ("trl", "sft")
        tps = {}
        for side in order:
            tps[side] = run_sft(i) if side == "sft" else run_trl(i)
        rows.append({"block": i, "order": "/".join(order), "sft_tokens_per_s": round(tps["sft"], 1),
                     "trl_tokens_per_s": round(tps["trl"], 1), "ratio": round(tps["sft"] / tps["trl"], 3)})
        print(f"block {i} ({rows[-1]['order']}): sft {tps['sft']:.0f} tokens/s, TRL {tps['trl']:.0f} tokens/s, "
              f"ratio {rows[-1]['ratio']:.2f}", flush=True)
    ratios = [r["ratio"] for r in rows]
    result = {"median_ratio": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
              "blocks": rows, "steps": args.steps, "batch_size": args.batch_size, "examples": len(splits.train)}
    print(f"sft/TRL tokens/s: median {result['median_ratio']:.2f} (range {result['min_ratio']:.2f}-"
          f"{result['max_ratio']:.2f}) over {args.blocks} interleaved pairs of {args.steps} steps, batch "
          f"{args.batch_size}, {len(splits.train)} examples")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
