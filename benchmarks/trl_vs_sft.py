"""Training throughput of `sft train` against plain TRL SFTTrainer on the same tiny GPT-2 and the same
data, in one run (target ratio >= 1.0).   python benchmarks/trl_vs_sft.py [--steps 150]

Both train the same scratch model (same seed) on the same rendered prompt/completion pairs with the
same batch size and steps; tokens/s = non-padding tokens fed (the Trainer's num_input_tokens_seen) /
train runtime, for both."""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from sft.data.pipeline import final_answer, load_splits, prompt_text
    from sft.modeling import get_tokenizer, load_model
    from sft.recipe import load_recipe
    from sft.train.run import train

    tmp = tempfile.mkdtemp()
    # unpacked, as plain TRL's prompt/completion batches below (the quickstart itself packs)
    overrides = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.report_to=none",
                 "train.packing=false",
                 "eval.before=false", "eval.after=false", "train.save_steps=100000",
                 f"train.output_dir={tmp}/sft"]
    recipe = load_recipe(os.path.join(ROOT, "recipes", "quickstart.yaml"), overrides)
    summary = train(recipe, overwrite=True)
    sft_tps = summary["tokens_per_second"]

    # Plain TRL on the same texts: prompt/completion strings, its own tokenisation and collator.
    splits = load_splits(recipe.data)
    tok = get_tokenizer(recipe, splits.train, "causal")
    ds = Dataset.from_list([{"prompt": prompt_text(r, recipe.data.template),
                             "completion": final_answer(r) + "<|im_end|>"} for r in splits.train])
    model = load_model(recipe, tok, "causal")
    cfg = SFTConfig(output_dir=f"{tmp}/trl", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                    learning_rate=recipe.train.learning_rate, lr_scheduler_type="cosine", warmup_steps=20,
                    optim=recipe.train.optim,
                    logging_steps=10, save_strategy="no", report_to="none", seed=recipe.train.seed,
                    max_length=recipe.data.max_length, use_cpu=True, disable_tqdm=True,
                    include_num_input_tokens_seen="non_padding")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    t0 = time.time()
    trainer.train()
    elapsed = time.time() - t0
    trl_tps = trainer.state.num_input_tokens_seen / elapsed  # counted the same way as sft's
    print(f"sft train: {sft_tps:.0f} tokens/s; plain TRL SFTTrainer: {trl_tps:.0f} tokens/s; "
          f"ratio sft/TRL = {sft_tps / trl_tps:.2f} ({args.steps} steps, batch {args.batch_size}, "
          f"{len(splits.train)} examples)")


if __name__ == "__main__":
    main()
