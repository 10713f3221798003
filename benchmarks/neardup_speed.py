"""Near-duplicate filtering of 10,000 instructions against each other (target: <= 60 s on 2 cores).

    python benchmarks/neardup_speed.py [--n 10000]
Instructions are built from a vocabulary so that most are distinct and about 10% are planted
near-duplicates (a word swapped or dropped) - English and Chinese. Reports time, candidate pairs
checked (vs all pairs), and recall on the planted pairs."""

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sft.construct.neardup import dedupe_near  # noqa: E402

VERBS = "write explain summarise list describe compare translate classify rewrite generate outline evaluate".split()
OBJS = ("a poem story email essay tweet recipe plan report review summary headline slogan joke riddle letter "
        "speech dialogue list table").split()
TOPICS = ("the sea mountains friendship climate change coffee cats a city at night space travel gardening "
          "history of rome machine learning a rainy day healthy food a job interview football the moon music "
          "electric cars a birthday party").split()
ZH = list("写一首关于大海山脉友谊气候变化咖啡猫城市夜晚旅行园艺历史机器学习雨天健康食物面试足球月亮音乐汽车生日派对")


def make(n: int, rng: random.Random):
    texts, planted = [], []
    while len(texts) < n:
        if rng.random() < 0.85:
            words = [rng.choice(VERBS), rng.choice(OBJS), "about"] + rng.sample(TOPICS, 4) + \
                [rng.choice(["in", "with", "for"]), str(rng.randint(2, 999)), rng.choice(["words", "lines", "people"])]
            t = " ".join(words).capitalize() + "."
        else:
            t = "请" + "".join(rng.sample(ZH, 14)) + "。"
        texts.append(t)
        if rng.random() < 0.1 and len(texts) < n:  # plant a near-duplicate of t
            if t.startswith("请"):
                chars = list(t)
                chars[rng.randrange(1, len(chars) - 1)] = rng.choice(ZH)
                texts.append("".join(chars))
            else:
                w = t.split()
                del w[rng.randrange(1, len(w) - 1)]
                texts.append(" ".join(w))
            planted.append((len(texts) - 1, len(texts) - 2))
    return texts[:n], [(i, j) for i, j in planted if i < n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    args = ap.parse_args()
    texts, planted = make(args.n, random.Random(0))
    t0 = time.perf_counter()
    keep, dropped = dedupe_near(texts, threshold=0.7)
    dt = time.perf_counter() - t0
    found = {i for i, _, _ in dropped}
    recall = sum(i in found for i, _ in planted) / max(len(planted), 1)
    n = len(texts)
    print(f"{n} instructions: {dt:.1f} s; dropped {len(dropped)} near-duplicates; planted pairs found "
          f"{recall:.1%} of {len(planted)}; all-pairs would be {n * (n - 1) // 2:,} ROUGE-L computations")
    # Exactness on a subset: the LSH result equals a brute-force all-pairs ROUGE-L (> 0.7) greedy pass.
    from sft.construct.neardup import rouge_l_f1, tokens

    m = 1500
    sub = texts[:m]
    toks = [tokens(t) for t in sub]
    t0 = time.perf_counter()
    kept_bf: list[int] = []
    for i in range(m):
        if all(rouge_l_f1(toks[j], toks[i]) <= 0.7 for j in kept_bf):
            kept_bf.append(i)
    t_bf = time.perf_counter() - t0
    keep_lsh, _ = dedupe_near(sub, threshold=0.7)
    print(f"first {m}: brute force all-pairs {t_bf:.1f} s keeps {len(kept_bf)}; LSH keeps {len(keep_lsh)}; "
          f"identical: {kept_bf == keep_lsh}")


if __name__ == "__main__":
    main()
