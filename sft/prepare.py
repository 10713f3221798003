"""recipe -> splits -> tokenizer -> tokenised training set (Arrow), with the row accounting.

`sft data` and `sft train` both call `prepare_data`, so they count, drop and report exactly alike. The result
is cached (see data/cache.py): under torchrun / accelerate rank 0 prepares while the other ranks wait at a
barrier, then every rank memory-maps the same files. With data.streaming, nothing is tokenised ahead: the
training set is an IterableDataset (see data/stream.py).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .data.arrow import TrainSet, encode_dataset
from .data.clean import DropReport
from .data.pipeline import Splits, accounting_of, split_corpus
from .families import path_of
from .recipe import Recipe


@dataclass
class Prepared:
    splits: Splits
    tokenizer: object
    arch: str
    train: TrainSet
    accounting: dict  # per source: examples = train + eval + test + dropped
    cache: str = "off"  # built | hit | off | streaming
    cache_path: str | None = None
    tasks: dict = field(default_factory=dict)  # training examples per task (weighted copies included)

    def summary(self) -> dict:
        return {"per_source": self.splits.per_source, "accounting": self.accounting,
                "drops": self.splits.report.to_dict(), "train": len(self.train) if self.cache != "streaming" else None,
                "eval": len(self.splits.eval), "test": len(self.splits.test), "cache": self.cache}


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def length_stats(lengths: list[int], max_length: int) -> dict:
    return {"p50": percentile(lengths, 50), "p95": percentile(lengths, 95), "max": max(lengths, default=0),
            "over_max_length": sum(n > max_length for n in lengths)}


def _report_dict(report: DropReport) -> dict:
    return {"dropped": dict(report.dropped), "edited": dict(report.edited),
            "by_source": {k: dict(v) for k, v in report.dropped_by_source.items()}}


def _report_from(d: dict) -> DropReport:
    r = DropReport()
    r.dropped.update(d["dropped"])
    r.edited.update(d["edited"])
    for src, c in d["by_source"].items():
        r.dropped_by_source[src] = Counter(c)
    return r


def build(recipe: Recipe, arch: str, tokenizer=None, workdir: str | None = None) -> Prepared:
    """Load, split, (build the tokenizer,) tokenise: the whole preparation, uncached. With `workdir`, the
    records and tokenised tables are files there rather than memory."""
    from .tokenizer import builds_tokenizer, get_tokenizer

    d = recipe.data
    corpus = split_corpus(d, recipe_file=recipe.path, workdir=workdir)
    if tokenizer is None:
        tokenizer = get_tokenizer(recipe, corpus.store.records(corpus.train) if builds_tokenizer(recipe) else None,
                                  arch)
    text = [i for i, info in enumerate(corpus.per_source.values()) if info.get("format") == "text"]
    if path_of(arch).encoder_decoder and text:  # checked before tokenising: every document would need them
        from .data.documents import require_sentinels

        require_sentinels(tokenizer, f"data.sources.{text[0]}.format", recipe.path)
    enc = encode_dataset(corpus.store.reader(), corpus.train, tokenizer, d.template, arch=arch,
                         max_length=d.max_length, overlong=d.clean.overlong, system=d.system_prompt,
                         num_proc=d.num_proc, report=corpus.report, workdir=workdir, text_stride=d.text_stride,
                         seed=d.seed)
    # per source: distinct training examples and all of them with weighted copies
    source = corpus.store.arrays()[0]
    names = corpus.store.names
    kept = np.asarray(enc.kept, dtype=np.int64)
    total = np.bincount(source[kept], minlength=len(names))
    distinct = np.bincount(source[np.unique(kept)], minlength=len(names))
    windows = np.bincount(source[kept], weights=np.asarray(enc.windows, dtype=np.float64), minlength=len(names))
    counts = {n: (int(distinct[i]), int(total[i]), int(windows[i])) for i, n in enumerate(names)}
    splits = corpus.splits(with_train=False)  # the records are not needed past this point (nor on a cache hit)
    train = TrainSet(enc.features, length_stats(enc.lengths, d.max_length), enc.files, enc.rows)
    return Prepared(splits, tokenizer, arch, train, accounting_of(splits, counts), tasks=enc.tasks)


def _meta(prep: Prepared) -> dict:
    s = prep.splits
    return {"eval": s.eval, "test": s.test, "report": _report_dict(s.report), "per_source": s.per_source,
            "accounting": prep.accounting, "length_stats": prep.train.length_stats, "tasks": prep.tasks,
            "train_examples": len(prep.train)}


def _from_cache(hit, tokenizer, arch: str, path: str) -> Prepared:
    train, meta, tok_dir = hit
    if tok_dir is not None:
        from .tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok_dir)
    splits = Splits([], meta["eval"], meta["test"], _report_from(meta["report"]), meta["per_source"])
    return Prepared(splits, tokenizer, arch, TrainSet(train, meta["length_stats"]), meta["accounting"], cache="hit",
                    cache_path=path, tasks=meta["tasks"])


def _build_into_cache(recipe: Recipe, arch: str, tokenizer, root: str, key: str, built_tokenizer: bool) -> Prepared:
    from .data import cache

    with cache.workdir(root) as work:
        prep = build(recipe, arch, tokenizer, workdir=work)
        if not len(prep.train):  # nothing fits: the caller reports it, and there is nothing worth keeping
            prep.train = TrainSet(prep.train.dataset.flatten_indices(keep_in_memory=True), prep.train.length_stats)
            return prep
        cache.store(root, key, prep.train, _meta(prep), prep.tokenizer if built_tokenizer else None)
    # train from the stored, memory-mapped copy (as the other ranks do), not the build's scratch tables
    hit = cache.load(root, key)
    if hit is None:
        raise OSError(f"the data cache entry just written does not read back: {cache.entry_path(root, key)}")
    prep.train = TrainSet(hit[0], prep.train.length_stats)
    prep.cache, prep.cache_path = "built", cache.entry_path(root, key)
    return prep


def prepare_streaming(recipe: Recipe, arch: str, tokenizer=None) -> Prepared:
    """A `Prepared` whose training set is an IterableDataset, tokenised on the fly (data/stream.py)."""
    from .data.stream import open_corpus
    from .tokenizer import builds_tokenizer, get_tokenizer

    corpus = open_corpus(recipe.data, recipe.path)
    if tokenizer is None:
        tokenizer = get_tokenizer(recipe, corpus.tokenizer_sample() if builds_tokenizer(recipe) else None, arch)
    return Prepared(corpus.splits(), tokenizer, arch, TrainSet(corpus.tokenised(tokenizer, arch), {}), {},
                    cache="streaming")


def prepare_data(recipe: Recipe, arch: str, *, tokenizer=None) -> Prepared:
    """The recipe's training data, from the cache when it holds this exact preparation. `splits.train` (the
    records) comes back empty: everything downstream reads the tokenised `train` and the accounting."""
    import sft

    from . import tokenizer as tokenizer_module
    from .data import cache
    from .distributed import barrier, rank_world
    from .tokenizer import builds_tokenizer, get_tokenizer

    d = recipe.data
    if d.streaming:
        return prepare_streaming(recipe, arch, tokenizer)
    if not d.cache:
        return build(recipe, arch, tokenizer)
    built_tokenizer = tokenizer is None and builds_tokenizer(recipe)
    if tokenizer is None and not built_tokenizer:
        tokenizer = get_tokenizer(recipe, None, arch)
    root = cache.cache_dir(d, tokenizer_module.cache_root())
    # the version is read now (not at import), and the pipeline's own code is part of the key
    key = cache.key_of(cache.key_parts(recipe, arch, None if built_tokenizer else tokenizer, version=sft.__version__,
                                       code=cache.code_digest([__file__, tokenizer_module.__file__])))
    path = cache.entry_path(root, key)
    rank, world = rank_world()
    prep = None
    if rank == 0:
        hit = cache.load(root, key)
        if hit is not None:
            prep = _from_cache(hit, tokenizer, arch, path)
        else:
            prep = _build_into_cache(recipe, arch, tokenizer, root, key, built_tokenizer)
    if world > 1:
        barrier()  # the other ranks wait here while rank 0 prepares
        if rank != 0:
            hit = cache.load(root, key)
            prep = _from_cache(hit, tokenizer, arch, path) if hit is not None else build(recipe, arch, tokenizer)
    return prep


def cache_size_mb(path: str) -> float:
    return sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(path) for f in fs) / 2**20
