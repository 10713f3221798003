"""`sft data RECIPE [--show N]`: what training will see, with the row accounting, drops and token lengths."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..recipe import Recipe


def segments(feature: dict, arch: str) -> list[tuple[str, list[int]]]:
    """Runs of (label, token ids) from the real labels: 'trained' where the loss is computed, else 'masked'."""
    from ..families import path_of

    if path_of(arch).encoder_decoder:
        return [("masked (encoder input)", feature["input_ids"]), ("trained", feature["labels"])]
    runs: list[tuple[str, list[int]]] = []
    for tok, lab in zip(feature["input_ids"], feature["labels"]):
        kind = "masked" if lab == -100 else "trained"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))
    return runs


ORDER = 2  # its place in `sft --help`


def add_parser(sub) -> None:
    from ._args import add_recipe_args

    p = sub.add_parser("data", help="load, clean, format and tokenise a recipe's data; print examples and stats")
    add_recipe_args(p)
    p.add_argument("--show", type=int, default=3, help="rendered examples to print")
    p.add_argument("--prepare", action="store_true",
                   help="build the tokenised cache ahead of training (e.g. once on a login node) and say where")


def run(args) -> int:
    from ..recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.prepare:
        prepare(recipe)
    else:
        report(recipe, show=args.show)
    return 0


# The data and model modules are imported inside the functions: `sft --help` builds every command's parser and
# must not load torch.
def prepare(recipe: Recipe) -> dict:
    from ..data.pipeline import accounting_lines
    from ..errors import RecipeError
    from ..modeling import resolve_arch
    from ..prepare import cache_size_mb, prepare_data

    if recipe.data.streaming:
        raise RecipeError("a streamed corpus is tokenised while training, there is nothing to prepare ahead",
                          file=recipe.path, field="data.streaming", fix="set data.streaming: false to --prepare")
    if not recipe.data.cache:
        raise RecipeError("--prepare builds the cache, which this recipe turns off", file=recipe.path,
                          field="data.cache", fix="set data.cache: true (or pass data.cache=true)")
    start = time.time()
    prep = prepare_data(recipe, resolve_arch(recipe.model))
    took = time.time() - start
    for line in accounting_lines(prep.accounting):
        print(line)
    verb = "built" if prep.cache == "built" else "already cached"
    print(f"{verb}: {len(prep.train)} training examples, eval {len(prep.splits.eval)}, test {len(prep.splits.test)} "
          f"in {prep.cache_path} ({cache_size_mb(prep.cache_path):.1f} MB, {took:.1f} s)")
    return {"cache": prep.cache, "path": prep.cache_path, "train": len(prep.train), "seconds": took}


def report(recipe: Recipe, show: int = 3) -> dict:
    from ..data.pipeline import accounting_lines
    from ..modeling import resolve_arch
    from ..prepare import prepare_data

    arch = resolve_arch(recipe.model)
    prep = prepare_data(recipe, arch)
    if prep.cache == "streaming":
        from ..errors import RecipeError

        raise RecipeError("sft data reports a prepared corpus; a streamed one is read while training", file=recipe.path,
                          field="data.streaming", fix="pass data.streaming=false to inspect it (it is then loaded whole)")
    d, enc, tokenizer = recipe.data, prep.train, prep.tokenizer
    tpl = d.template if "\n" not in d.template and len(d.template) < 60 else repr(d.template[:60])
    print(f"model architecture: {arch}; template: {tpl}; tokenizer: {type(tokenizer).__name__} "
          f"(vocab {len(tokenizer)})")
    for name, s in prep.splits.per_source.items():
        how = "detected" if s["detected"] else "from recipe"
        print(f"source {name}: {s['path']} -> format {s['format']} ({how})")
    for line in accounting_lines(prep.accounting):
        print(line)
    print(f"splits: train {len(enc)}, eval {len(prep.splits.eval)}, test {len(prep.splits.test)}")
    print("train examples per task: " + ", ".join(f"{k} {v}" for k, v in prep.tasks.items()))
    rep = prep.splits.report.to_dict()
    print("dropped: " + (", ".join(f"{k}: {v}" for k, v in rep["dropped"].items()) or "none"))
    if rep["edited"]:
        print("edited: " + ", ".join(f"{k}: {v}" for k, v in rep["edited"].items()))
    st = enc.length_stats
    print(f"train token lengths: p50 {st['p50']}, p95 {st['p95']}, max {st['max']}; "
          f"{st['over_max_length']} over max_length={d.max_length}")
    for i in range(min(show, len(enc))):
        feat = enc.dataset[i]
        print(f"\n=== example {i + 1} (task {feat['task']}, source {feat['source']}) ===")
        for kind, ids in segments(feat, arch):
            print(f"--- {kind} ---")
            print(tokenizer.decode(ids))
    return {"train": len(enc), "eval": len(prep.splits.eval), "test": len(prep.splits.test),
            "drops": rep, "lengths": st, "accounting": prep.accounting}
