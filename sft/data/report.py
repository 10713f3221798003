"""`sft data`: what training will see, with counts, drops and token lengths."""

from __future__ import annotations

from ..recipe import Recipe
from .pipeline import count_by, encode, load_splits


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def length_stats(lengths: list[int], max_length: int) -> dict:
    return {"p50": percentile(lengths, 50), "p95": percentile(lengths, 95), "max": max(lengths, default=0),
            "over_max_length": sum(n > max_length for n in lengths)}


def print_data_report(recipe: Recipe, show: int = 3) -> dict:
    from ..modeling import get_tokenizer, resolve_arch

    arch = resolve_arch(recipe.model)
    splits = load_splits(recipe.data, recipe_file=recipe.path)
    tokenizer = get_tokenizer(recipe, splits.train, arch)
    d = recipe.data
    enc = encode(splits.train, tokenizer, d.template, arch=arch, max_length=d.max_length,
                 overlong=d.clean.overlong, system=d.system_prompt, report=splits.report)
    ev = encode(splits.eval, tokenizer, d.template, arch=arch, max_length=d.max_length,
                overlong=d.clean.overlong, system=d.system_prompt, report=splits.report)
    tpl = d.template if "\n" not in d.template and len(d.template) < 60 else repr(d.template[:60])
    print(f"model architecture: {arch}; template: {tpl}; tokenizer: {type(tokenizer).__name__} "
          f"(vocab {len(tokenizer)})")
    for name, s in splits.per_source.items():
        how = "detected" if s["detected"] else "from recipe"
        print(f"source {name}: {s['path']} -> format {s['format']} ({how}), {s['rows']} rows -> "
              f"{s['examples']} examples")
    print(f"splits: train {len(enc.features)}, eval {len(ev.features)}, test {len(splits.test)}")
    print("train examples per task: " + ", ".join(f"{k} {v}" for k, v in count_by(enc.records, "task").items()))
    print("train examples per source: " + ", ".join(f"{k} {v}" for k, v in count_by(enc.records, "source").items()))
    rep = splits.report.to_dict()
    print("dropped: " + (", ".join(f"{k}: {v}" for k, v in rep["dropped"].items()) or "none"))
    if rep["edited"]:
        print("edited: " + ", ".join(f"{k}: {v}" for k, v in rep["edited"].items()))
    st = length_stats(enc.lengths, d.max_length)
    print(f"train token lengths: p50 {st['p50']}, p95 {st['p95']}, max {st['max']}; "
          f"{st['over_max_length']} over max_length={d.max_length}")
    for i, (feat, rec) in enumerate(zip(enc.features[:show], enc.records[:show])):
        if arch == "seq2seq":
            prompt = tokenizer.decode(feat["input_ids"])
            answer = tokenizer.decode(feat["labels"])
        else:
            cut = next(j for j, x in enumerate(feat["labels"]) if x != -100)
            prompt = tokenizer.decode(feat["input_ids"][:cut])
            answer = tokenizer.decode(feat["input_ids"][cut:])
        print(f"\n=== example {i + 1} (task {rec['task']}, source {rec['source']}) ===")
        print("--- prompt ---")
        print(prompt)
        print("--- answer (trained) ---")
        print(answer)
    return {"train": len(enc.features), "eval": len(ev.features), "drops": rep, "lengths": st}
