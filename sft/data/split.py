"""The split: each example's place decided by a stable hash of its prompt (`data.seed`), so the same data gives
the same eval and test sets in any row order and on any machine; the shared eval budget across sources."""

from __future__ import annotations

import hashlib
import json

from .clean import prompt_key


def prompt_digest(key: str, seed: int) -> tuple[int, int]:
    """A prompt's place in the split order: its 60-bit split hash, then 64 more bits of the same digest that
    order (and, with it, identify) prompts whose hashes tie."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") >> 4, int.from_bytes(digest[8:16], "big")


def split_hash(key: str, seed: int) -> float:
    """A stable number in [0, 1) for a prompt: the split never depends on row order or the machine."""
    return prompt_digest(key, seed)[0] / 16 ** 15


def record_id(record: dict) -> str:
    """Identity of one example (its messages, task and source), stored with a run's eval/test split."""
    body = json.dumps([record["messages"], record.get("task"), record.get("source")], ensure_ascii=False,
                      sort_keys=True)
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def split_by_hash(positions, hashes, ties, sizes: list[int]) -> list[list[int]]:
    """Hold out groups of same-prompt examples (`positions` into the `hashes` / `ties` arrays of
    `prompt_digest`), lowest prompt hash first, until each of `sizes` is reached; the rest comes last, in
    hash order. Every copy of one prompt lands on the same side."""
    import numpy as np

    pos = np.asarray(positions, dtype=np.int64)
    if not len(pos):
        return [[] for _ in sizes] + [[]]
    order = pos[np.lexsort((pos, ties[pos], hashes[pos]))]  # by hash, then tie bits, then position
    h, t = hashes[order], ties[order]
    starts = np.flatnonzero(np.r_[True, (h[1:] != h[:-1]) | (t[1:] != t[:-1])]).tolist()
    parts: list[list[int]] = [[] for _ in sizes]
    held = np.zeros(len(order), dtype=bool)
    for s, e in zip(starts, starts[1:] + [len(order)]):
        if all(len(p) >= n for p, n in zip(parts, sizes)):
            break  # every held-out part is full: the rest trains
        # the first held-out part this whole group fits in (a part still empty takes one group even if it
        # is larger, so a small cap still gets an example); otherwise it trains
        target = next((i for i, n in enumerate(sizes)
                       if len(parts[i]) + e - s <= n or (not parts[i] and n > 0)), None)
        if target is not None:
            parts[target].extend(order[s:e].tolist())
            held[s:e] = True
    return parts + [order[~held].tolist()]


def hash_split(records: list[dict], sizes: list[int], seed: int) -> list[list[dict]]:
    """`split_by_hash` over a list of records."""
    import numpy as np

    digests = [prompt_digest(prompt_key(r), seed) for r in records]
    hashes = np.array([d[0] for d in digests], dtype=np.uint64)
    ties = np.array([d[1] for d in digests], dtype=np.uint64)
    return [[records[i] for i in part] for part in split_by_hash(range(len(records)), hashes, ties, sizes)]


def allocate(wanted: list[int], cap: int | None) -> list[int]:
    """Share `cap` across sources in proportion to what each wants (largest remainder), at least one for
    every source that wants any, when the cap allows."""
    total = sum(wanted)
    if cap is None or total <= cap:
        return list(wanted)
    has = [i for i, w in enumerate(wanted) if w > 0]
    floor = 1 if cap >= len(has) else 0
    rest = cap - floor * len(has)
    share = [(w - floor) * rest / max(total - floor * len(has), 1) if w else 0.0 for w in wanted]
    out = [(floor if w else 0) + int(x) for w, x in zip(wanted, share)]
    left = cap - sum(out)
    for i in sorted(has, key=lambda i: (-(share[i] - int(share[i])), i))[:left]:
        out[i] += 1
    return [min(o, w) for o, w in zip(out, wanted)]
