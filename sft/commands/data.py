"""`sft data RECIPE [--show N]`: what training will see, with the row accounting, drops and token lengths."""

from __future__ import annotations

from ..data.pipeline import accounting_lines, count_by
from ..modeling import resolve_arch
from ..prepare import length_stats, prepare_data
from ..recipe import Recipe


def segments(feature: dict, arch: str) -> list[tuple[str, list[int]]]:
    """Runs of (label, token ids) from the real labels: 'trained' where the loss is computed, else 'masked'."""
    if arch == "seq2seq":
        return [("masked (encoder input)", feature["input_ids"]), ("trained", feature["labels"])]
    runs: list[tuple[str, list[int]]] = []
    for tok, lab in zip(feature["input_ids"], feature["labels"]):
        kind = "masked" if lab == -100 else "trained"
        if runs and runs[-1][0] == kind:
            runs[-1][1].append(tok)
        else:
            runs.append((kind, [tok]))
    return runs


def add_parser(sub) -> None:
    from ._args import add_recipe_args

    p = sub.add_parser("data", help="load, clean, format and tokenise a recipe's data; print examples and stats")
    add_recipe_args(p)
    p.add_argument("--show", type=int, default=3, help="rendered examples to print")


def run(args) -> int:
    from ..recipe import load_recipe

    report(load_recipe(args.recipe, args.overrides), show=args.show)
    return 0


def report(recipe: Recipe, show: int = 3) -> dict:
    arch = resolve_arch(recipe.model)
    prep = prepare_data(recipe, arch)
    d, enc, tokenizer = recipe.data, prep.train, prep.tokenizer
    tpl = d.template if "\n" not in d.template and len(d.template) < 60 else repr(d.template[:60])
    print(f"model architecture: {arch}; template: {tpl}; tokenizer: {type(tokenizer).__name__} "
          f"(vocab {len(tokenizer)})")
    for name, s in prep.splits.per_source.items():
        how = "detected" if s["detected"] else "from recipe"
        print(f"source {name}: {s['path']} -> format {s['format']} ({how})")
    for line in accounting_lines(prep.accounting):
        print(line)
    print(f"splits: train {len(enc.features)}, eval {len(prep.splits.eval)}, test {len(prep.splits.test)}")
    print("train examples per task: " + ", ".join(f"{k} {v}" for k, v in count_by(enc.records, "task").items()))
    rep = prep.splits.report.to_dict()
    print("dropped: " + (", ".join(f"{k}: {v}" for k, v in rep["dropped"].items()) or "none"))
    if rep["edited"]:
        print("edited: " + ", ".join(f"{k}: {v}" for k, v in rep["edited"].items()))
    st = length_stats(enc.lengths, d.max_length)
    print(f"train token lengths: p50 {st['p50']}, p95 {st['p95']}, max {st['max']}; "
          f"{st['over_max_length']} over max_length={d.max_length}")
    for i, (feat, rec) in enumerate(zip(enc.features[:show], enc.records[:show])):
        print(f"\n=== example {i + 1} (task {rec['task']}, source {rec['source']}) ===")
        for kind, ids in segments(feat, arch):
            print(f"--- {kind} ---")
            print(tokenizer.decode(ids))
    return {"train": len(enc.features), "eval": len(prep.splits.eval), "test": len(prep.splits.test),
            "drops": rep, "lengths": st, "accounting": prep.accounting}
