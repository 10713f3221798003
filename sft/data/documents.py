"""Documents (`format: text`): pre-training text cut into training windows instead of dropped or trimmed.

Causal models train on every token of a document: its tokens plus EOS are cut into `max_length` windows, each
sharing `data.text_stride` tokens of context with the one before (those overlap tokens are context there, loss off,
so every token is trained exactly once); only the last window ends with EOS, where the document ends.

T5 models train T5's own objective on documents, span corruption (Raffel et al. 2020, section 3.1.4; the
segmentation of `random_spans_noise_mask` in T5's and transformers' pre-training code): 15 % of a window's tokens,
in spans of mean length 3, are replaced in the input by one sentinel each (`<extra_id_0>`, `<extra_id_1>`, ...);
the target is each sentinel followed by the tokens it replaced. The corruption is drawn from a seed of the data
seed, the document and the window, so a document is corrupted the same way in every process and on every cache
rebuild (a static corruption, as T5's own TFDS preprocessing writes once per epoch).

Written here because neither transformers nor datasets ships either step as a library function (transformers keeps
span corruption in an example script).
"""

from __future__ import annotations

import hashlib
import random

NOISE_DENSITY = 0.15
MEAN_SPAN = 3.0
SENTINEL = "<extra_id_{}>"
SENTINELS = 100  # as many as T5's own tokenizer has


def document_text(record: dict) -> str:
    """A document record's text (`format: text` makes it the one answer of an empty prompt)."""
    return record["messages"][-1]["content"]


def _starts(n: int, size: int, overlap: int) -> tuple[list[int], int]:
    """Where each `size`-token window over `n` tokens starts (at least one window), each after the first repeating
    `overlap` tokens of the one before (at most size - 1, so every window adds a token); and that overlap."""
    overlap = min(overlap, size - 1)
    starts = [0]
    while starts[-1] + size < n:
        starts.append(starts[-1] + size - overlap)
    return starts, overlap


def causal_windows(ids: list[int], eos: int, max_length: int, stride: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per window of `ids + [eos]`; windows after the first start `stride` tokens before the
    previous one ended, and those tokens are labelled -100."""
    tokens = ids + [eos]
    starts, overlap = _starts(len(tokens), max_length, stride)
    out = []
    for start in starts:
        window = tokens[start:start + max_length]
        skip = overlap if start else 0
        out.append((window, [-100] * skip + window[skip:]))
    return out


def span_windows(ids: list[int], max_length: int, stride: int = 0) -> list[list[int]]:
    """Raw token windows for span corruption: `max_length - 1` tokens each (the corrupted input, plus EOS, is never
    longer than its window plus one)."""
    size = max_length - 1
    return [ids[start:start + size] for start in _starts(len(ids), size, stride)[0]]


def _segments(rng: random.Random, items: int, segments: int) -> list[int]:
    """`items` split into `segments` non-empty runs at random (T5's _random_segmentation)."""
    cuts = sorted(rng.sample(range(1, items), segments - 1))
    bounds = [0] + cuts + [items]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def noise_mask(length: int, rng: random.Random, *, max_spans: int = SENTINELS, density: float = NOISE_DENSITY,
               mean_span: float = MEAN_SPAN) -> list[bool]:
    """Which of `length` tokens are noise: round(density * length) of them (at least one, and at least one kept
    when length > 1), in round(noise / mean_span) spans (at least one, at most `max_spans`, the sentinels there
    are), alternating kept / noise, starting kept."""
    if length < 2:
        return [True] * length
    noise = min(max(int(round(length * density)), 1), length - 1)
    spans = max(1, min(int(round(noise / mean_span)), noise, length - noise, max_spans))
    noise_lengths, kept_lengths = _segments(rng, noise, spans), _segments(rng, length - noise, spans)
    mask: list[bool] = []
    for k, n in zip(kept_lengths, noise_lengths):
        mask += [False] * k + [True] * n
    return mask


def span_corrupt(ids: list[int], sentinels: list[int], eos: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """(input_ids, labels): each noise span of `ids` replaced by the next sentinel in the input; the labels are
    each sentinel followed by the tokens it replaced; both end with EOS."""
    mask = noise_mask(len(ids), rng, max_spans=len(sentinels))
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (tok, noisy) in enumerate(zip(ids, mask)):
        if noisy:
            if i == 0 or not mask[i - 1]:
                span += 1
                inputs.append(sentinels[span])
                targets.append(sentinels[span])
            targets.append(tok)
        else:
            inputs.append(tok)
    return inputs + [eos], targets + [eos]


def sentinel_ids(tokenizer) -> list[int] | None:
    """The tokenizer's sentinel token ids in order, or None when it has none (T5's tokenizer has 100)."""
    unk = tokenizer.unk_token_id
    ids = []
    for i in range(SENTINELS):
        t = tokenizer.convert_tokens_to_ids(SENTINEL.format(i))
        if t is None or t == unk:
            break
        ids.append(t)
    return ids or None


def require_sentinels(tokenizer, field: str = "model.tokenizer", file: str | None = None) -> list[int]:
    """The sentinel ids, or the one-line error a T5 run on documents without them gets."""
    from ..errors import DataError

    ids = sentinel_ids(tokenizer)
    if ids is None:
        raise DataError("format: text trains T5's span corruption, which needs sentinel tokens (<extra_id_0>, ...) "
                        "and this tokenizer has none", file=file, field=field,
                        fix="use a T5 tokenizer or tokenizer: bpe (built with sentinels), or give the text as "
                            "prompt-completion pairs")
    return ids


def document_features(ids: list[int], text: str, *, eos: int, sentinels: list[int] | None, max_length: int,
                      stride: int, seed: int, task: str) -> list[dict]:
    """A document's training features: causal windows, or (given the tokenizer's `sentinels`) T5 span-corrupted
    windows, each corrupted by a generator seeded from `seed`, the document's hash and the window's index."""
    if sentinels is None:
        return [{"input_ids": x, "labels": y, "task": task} for x, y in causal_windows(ids, eos, max_length, stride)]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    out = []
    for w, window in enumerate(span_windows(ids, max_length, stride)):
        x, y = span_corrupt(window, sentinels, eos, random.Random(f"{seed}:{digest}:{w}"))
        out.append({"input_ids": x, "labels": y, "task": task})
    return out
