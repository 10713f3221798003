"""Scoring 1,000 prediction/reference pairs (half English, half Chinese) with BLEU, ROUGE and exact
match, per-sample scores included (target: under 2 s).   python benchmarks/scoring_speed.py"""

import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sft.metrics import score_texts  # noqa: E402

rng = random.Random(0)
words = "the a cat dog sat on mat river stone cloud bird flew over quickly slowly".split()
zh = "今天天气很好不错我们去公园散步吃饭学习工作"
preds, refs = [], []
for i in range(500):
    preds.append(" ".join(rng.choices(words, k=12)))
    refs.append(" ".join(rng.choices(words, k=12)))
for i in range(500):
    preds.append("".join(rng.choices(zh, k=15)))
    refs.append("".join(rng.choices(zh, k=15)))
t0 = time.perf_counter()
corpus, per = score_texts(preds[:500], refs[:500], ["bleu", "rouge", "exact_match"])
corpus_zh, per_zh = score_texts(preds[500:], refs[500:], ["bleu", "rouge", "exact_match"])
dt = time.perf_counter() - t0
print(f"scored {len(per) + len(per_zh)} pairs (500 English with 13a BLEU, 500 Chinese with zh BLEU and "
      f"character ROUGE) in {dt:.3f} s; BLEU en {corpus['bleu']:.2f}, zh {corpus_zh['bleu']:.2f}")
