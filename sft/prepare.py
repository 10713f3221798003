"""recipe -> splits -> tokenizer -> encoded training examples, with the row accounting.

`sft data` and `sft train` both call `prepare_data`, so they count, drop and report exactly alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from .data.pipeline import Encoded, Splits, accounting, encode, load_splits
from .recipe import Recipe


@dataclass
class Prepared:
    splits: Splits
    tokenizer: object
    arch: str
    train: Encoded
    accounting: dict  # per source: examples = train + eval + test + dropped

    def summary(self) -> dict:
        return {"per_source": self.splits.per_source, "accounting": self.accounting,
                "drops": self.splits.report.to_dict(), "train": len(self.train.features),
                "eval": len(self.splits.eval), "test": len(self.splits.test)}


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def length_stats(lengths: list[int], max_length: int) -> dict:
    return {"p50": percentile(lengths, 50), "p95": percentile(lengths, 95), "max": max(lengths, default=0),
            "over_max_length": sum(n > max_length for n in lengths)}


def prepare_data(recipe: Recipe, arch: str, *, tokenizer=None) -> Prepared:
    from .modeling import get_tokenizer

    d = recipe.data
    splits = load_splits(d, recipe_file=recipe.path)
    tokenizer = tokenizer or get_tokenizer(recipe, splits.train, arch)
    enc = encode(splits.train, tokenizer, d.template, arch=arch, max_length=d.max_length,
                 overlong=d.clean.overlong, system=d.system_prompt, report=splits.report)
    return Prepared(splits, tokenizer, arch, enc, accounting(splits, enc.records))
