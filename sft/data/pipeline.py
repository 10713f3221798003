"""sources -> formats -> clean -> split -> mix, then the row accounting.

`load_splits` returns canonical records per split with a report of counts and drops (`split.py` decides each
example's split, `store.py` holds the records); `encode.py` turns records into model features.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import DataError
from ..recipe import DataConfig, SourceConfig
from . import formats, sources
from .clean import DropReport, clean_records
from .split import allocate
from .store import RecordStore


@dataclass
class Splits:
    train: list[dict]
    eval: list[dict]
    test: list[dict]
    report: DropReport
    per_source: dict = field(default_factory=dict)  # source -> {"format":, "rows":, "examples":}

    def split(self, name: str) -> list[dict]:
        if name in ("eval", "validation"):
            return self.eval
        if name in ("train", "test"):
            return getattr(self, name)
        raise DataError(f"unknown split {name!r}", field="--split", fix="use train, eval or test")


def _task_of(src: SourceConfig, row: dict, default: str) -> str:
    if src.task:
        return src.task
    col = src.task_column or src.columns.get("task") or "task"
    value = formats.lookup(row, col)
    if isinstance(value, str) and value:
        return value
    if src.task_column:
        return "unknown"
    return default


def eval_source_names(cfg: DataConfig) -> list[str]:
    """Names of data.eval_sources: as `source_names`, with `:eval` added where a training source has the same
    name (the same file or builtin read twice), so each side's counts stay its own."""
    train = set(source_names(cfg.sources))
    return [f"{n}:eval" if n in train else n for n in source_names(cfg.eval_sources)]


def source_names(srcs: list[SourceConfig]) -> list[str]:
    """Report names for sources: the file's base name, widened with its folder (or the source's position)
    where two sources would otherwise share one."""
    base = [sources.source_name(s.path) for s in srcs]
    names = []
    for i, (s, b) in enumerate(zip(srcs, base)):
        if base.count(b) == 1:
            names.append(b)
            continue
        parent = os.path.basename(os.path.dirname(os.path.abspath(os.path.expanduser(s.path))))
        wide = f"{parent}/{b}" if not s.path.startswith("builtin:") else b
        clash = sum(1 for j, (t, c) in enumerate(zip(srcs, base)) if c == b and not t.path.startswith("builtin:")
                    and os.path.basename(os.path.dirname(os.path.abspath(os.path.expanduser(t.path)))) == parent)
        names.append(wide if clash == 1 else f"{b}#{i}")
    return names


def iter_source(src: SourceConfig, index: int, *, field_prefix: str, seed: int, report: DropReport,
                per_source: dict, recipe_file: str | None = None, name: str | None = None,
                reasoning: str = "train") -> Iterator[list[dict]]:
    """One source's canonical records, a piece at a time (the format is detected and the columns checked on the
    first rows); its `per_source` entry is written once the source has been read through."""
    field_name = f"{field_prefix}.{index}"
    name = name or sources.source_name(src.path)
    fmt, rows, examples, rows_dropped = None, 0, 0, 0
    for chunk in sources.iter_rows(src.path, split=src.split, subset=src.subset, field=f"{field_name}.path",
                                   num_examples=src.num_examples, tasks=src.tasks, seed=seed):
        fmt = fmt or source_format(src, chunk, field_name, recipe_file)
        records, dropped = records_from_rows(src, fmt, chunk, name, report, reasoning)
        rows, examples, rows_dropped = rows + len(chunk), examples + len(records), rows_dropped + dropped
        yield records
    if not rows:
        raise DataError("source has no rows", file=src.path, field=f"{field_name}.path")
    key = name if field_prefix == "data.sources" else f"{name} ({field_prefix.split('.')[-1]}, {src.split})"
    per_source[key] = {"path": src.path, "format": fmt, "rows": rows, "examples": examples,
                       "rows_dropped": rows_dropped, "detected": src.format == "auto",
                       "role": "train" if field_prefix == "data.sources" else "eval"}


def load_source(src: SourceConfig, index: int, **kw) -> list[dict]:
    """One source's canonical records (see `iter_source`), as one list."""
    return [r for chunk in iter_source(src, index, **kw) for r in chunk]


def source_format(src: SourceConfig, sample: list[dict], field_name: str, recipe_file: str | None) -> str:
    """The source's format (detected from `sample` rows when auto), its columns checked against them."""
    fmt = src.format
    if fmt == "auto":
        fmt = "columns" if src.columns and not set(src.columns) <= {"task"} else \
            formats.detect_format(sample, file=src.path, field=f"{field_name}.format")
    elif fmt not in formats.FORMATS:
        import difflib

        close = difflib.get_close_matches(fmt, list(formats.FORMATS), n=1)
        raise DataError(f"unknown format {fmt!r}", file=recipe_file, field=f"{field_name}.format",
                        fix=f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(formats.FORMATS)}")
    formats.check_columns(fmt, sample, src.columns, file=src.path, field=field_name, task_column=src.task_column)
    return fmt


def records_from_rows(src: SourceConfig, fmt: str, rows: list[dict], name: str, report: DropReport,
                      reasoning: str = "train") -> tuple[list[dict], int]:
    """Raw rows -> canonical records (messages, tools, task, source), and how many rows could not be converted
    (each counted in `report` by reason). `reasoning` (data.reasoning): train, mask (kept out of the loss) or drop;
    a conversation is split after each turn whose kept reasoning a later turn follows (`formats.split_at_reasoning`)."""
    if src.replace:
        rows = [_replace_placeholders(r, src.replace) for r in rows]
    converted, drops, edits = formats.convert_rows(fmt, rows, src.columns)
    for reason, n in drops.items():
        report.drop(f"{name}: {reason}", n)
    records = []
    for msgs, row, tools in converted:
        if any(m.get("reasoning") for m in msgs):
            msgs = [apply_reasoning(m, reasoning) for m in msgs]
        parts = formats.split_at_reasoning(msgs)
        if len(parts) > 1:
            edits["conversation split after turns with reasoning"] = \
                edits.get("conversation split after turns with reasoning", 0) + 1
        records += [{"messages": p, "task": _task_of(src, row, name), "source": name,
                     **({"tools": tools} if tools else {}),
                     **({"document": True} if fmt == "text" else {})} for p in parts]
    for reason, n in edits.items():
        report.edit(f"{name}: {reason}", n)
    return records, sum(drops.values())


def apply_reasoning(m: dict, mode: str) -> dict:
    """data.reasoning on one message: drop removes its reasoning, mask keeps it out of the loss."""
    if not m.get("reasoning") or mode == "train":
        return m
    if mode == "drop":
        return {k: v for k, v in m.items() if k != "reasoning"}
    return {**m, "reasoning_loss": False}


def _replace_placeholders(row, mapping: dict):
    if isinstance(row, str):
        for k, v in mapping.items():
            row = row.replace(k, str(v))
        return row
    if isinstance(row, dict):
        return {k: _replace_placeholders(v, mapping) for k, v in row.items()}
    if isinstance(row, list):
        return [_replace_placeholders(v, mapping) for v in row]
    return row


def _weighted(records: list[dict], weight: float, cap: int | None, rng: random.Random) -> list[dict]:
    """Up- or down-sample by weight (whole copies plus a random remainder), then cap."""
    whole, frac = int(weight), weight - int(weight)
    out = records * whole + rng.sample(records, round(len(records) * frac))
    if cap is not None and len(out) > cap:
        out = rng.sample(out, cap)
    return out


@dataclass
class Corpus:
    """The split as positions into a `RecordStore`: training order with weighted copies repeated; eval and
    test (small) as records."""

    store: RecordStore
    train: list[int]
    eval: list[dict]
    test: list[dict]
    report: DropReport
    per_source: dict

    def splits(self, with_train: bool = True) -> Splits:
        return Splits(self.store.records(self.train) if with_train else [], self.eval, self.test, self.report,
                      self.per_source)


def load_splits(cfg: DataConfig, *, recipe_file: str | None = None) -> Splits:
    """Sources -> formats -> clean -> hash split per source -> weight -> mix, as lists of records."""
    return split_corpus(cfg, recipe_file=recipe_file).splits()


def split_corpus(cfg: DataConfig, *, recipe_file: str | None = None, workdir: str | None = None) -> Corpus:
    """Sources -> formats -> clean -> hash split per source -> weight -> mix. Every example is counted. Sources
    are read, converted and cleaned a piece at a time into a `RecordStore` (an Arrow file under `workdir`);
    the split and the mix work on positions into it."""
    report = DropReport()
    per_source: dict = {}
    rng = random.Random(cfg.seed)
    store = RecordStore(cfg.seed, workdir)

    def load_all(srcs: list[SourceConfig], prefix: str) -> list[range]:
        out = []
        names = source_names(srcs) if prefix == "data.sources" else eval_source_names(cfg)
        for i, (src, name) in enumerate(zip(srcs, names)):
            start, seen, cleaning = len(store), set(), DropReport()  # duplicates are found within a source
            for recs in iter_source(src, i, field_prefix=prefix, seed=cfg.seed, report=report, per_source=per_source,
                                    recipe_file=recipe_file, name=name, reasoning=cfg.reasoning):
                store.add(clean_records(recs, normalize_form=cfg.clean.normalize, dedupe=cfg.clean.dedupe,
                                        strip_eos_markers=cfg.clean.strip_eos_markers, report=cleaning, seen=seen),
                          name)
            report.merge(cleaning)  # after the source's conversion drops: the report reads in the same order
            out.append(range(start, len(store)))
        return out

    pooled = load_all(cfg.sources, "data.sources")
    names = source_names(cfg.sources)
    # Eval/test are held out per source before weighting, so upsampled copies cannot leak across splits.
    # max_eval_samples is shared across sources, so the carve takes only what is kept: no surplus is lost.
    eval_ratio = 0.0 if cfg.eval_sources else cfg.eval_ratio
    eval_sizes = allocate([round(len(r) * eval_ratio) for r in pooled], cfg.max_eval_samples)
    test_sizes = [round(len(r) * cfg.test_ratio) for r in pooled]
    train_parts, eval_pos, test_pos = [], [], []
    for name, src, part, n_eval, n_test in zip(names, cfg.sources, pooled, eval_sizes, test_sizes):
        ev, te, rest = store.split(part, [n_eval, n_test])
        eval_pos += ev
        test_pos += te
        rng.shuffle(rest)
        weighted = _weighted(rest, src.weight, src.max_samples, rng)
        report.drop(f"not sampled (weight {src.weight:g}" + (f", max_samples {src.max_samples})" if src.max_samples
                                                             else ")"),
                    len(rest) - len(set(weighted)), source=name)
        train_parts.append(weighted)
    if cfg.eval_sources:
        parts = load_all(cfg.eval_sources, "data.eval_sources")
        sizes = allocate([len(p) for p in parts], cfg.max_eval_samples)
        for part, n in zip(parts, sizes):
            ev, rest = store.split(part, [n])
            eval_pos += ev
            if rest:
                report.drop("eval source beyond data.max_eval_samples", len(rest), source=store.source_name(part[0]))
    train = [i for part in train_parts for i in part]
    rng.shuffle(train)
    if cfg.max_samples is not None and len(train) > cfg.max_samples:
        _drop_unique(train[cfg.max_samples:], train[: cfg.max_samples], "over data.max_samples", report,
                     store.source_name)
        train = train[: cfg.max_samples]

    # Exact-duplicate prompts never in both train and eval/test (matters for explicit eval sources).
    if train and (eval_pos or test_pos):
        clash = store.prompts_in(eval_pos + test_pos, train)
        kept = [i for i, c in zip(train, clash) if not c]
        _drop_unique([i for i, c in zip(train, clash) if c], kept, "train prompt also in eval/test", report,
                     store.source_name)
        train = kept
    if not train:
        raise DataError("every training example was dropped or held out", file=recipe_file, field="data.sources",
                        fix=f"check the drop report: {report.to_dict()['dropped']}")
    return Corpus(store, train, store.records(eval_pos), store.records(test_pos), report, per_source)


def _drop_unique(removed: list[int], kept: list[int], reason: str, report: DropReport, source_of) -> None:
    """Count removed examples once each (copies from up-weighting are not examples of their own)."""
    still = set(kept)
    for i in dict.fromkeys(i for i in removed if i not in still):
        report.drop(reason, 1, source=source_of(i))


def accounting(splits: Splits, train_records: list[dict]) -> dict:
    """Per source: examples = train + eval + test + dropped. `train_records` are the examples that survived
    tokenisation (weighting may repeat one: it counts once in train, every time in train_with_copies)."""
    counts: dict[str, list[int]] = {}
    seen: set[int] = set()
    for r in train_records:
        c = counts.setdefault(r["source"], [0, 0])
        c[0] += id(r) not in seen
        c[1] += 1
        seen.add(id(r))
    return accounting_of(splits, counts)


def accounting_of(splits: Splits, train: dict) -> dict:
    """`accounting` from per-source training counts: source -> (distinct examples, with copies)."""
    out = {}
    for name, info in splits.per_source.items():
        if info.get("role") == "eval":
            src = name.split(" (")[0]
            ev = sum(r["source"] == src for r in splits.eval)
            dropped = dict(splits.report.dropped_by_source.get(src, {}))
            out[name] = {"rows": info["rows"], "rows_dropped": info.get("rows_dropped", 0),
                         "examples": info["examples"], "train": 0, "train_with_copies": 0, "eval": ev, "test": 0,
                         "dropped": dropped, "balanced": info["examples"] == ev + sum(dropped.values())}
            continue
        src = name
        unique, total, *windows = train.get(src, (0, 0))
        dropped = dict(splits.report.dropped_by_source.get(src, {}))
        row = {"rows": info["rows"], "rows_dropped": info.get("rows_dropped", 0), "examples": info["examples"],
               "train": int(unique), "train_with_copies": int(total),
               "eval": sum(r["source"] == src for r in splits.eval),
               "test": sum(r["source"] == src for r in splits.test), "dropped": dropped}
        if windows and windows[0] != total:  # documents cut into windows: the features trained
            row["train_windows"] = int(windows[0])
        row["balanced"] = row["examples"] == row["train"] + row["eval"] + row["test"] + sum(dropped.values())
        out[name] = row
    return out


def accounting_lines(acc: dict) -> list[str]:
    """The identity, one line per source, as `sft data` and `sft train` print it."""
    lines = []
    for name, a in acc.items():
        drops = ", ".join(f"{k} {v}" for k, v in sorted(a["dropped"].items(), key=lambda kv: -kv[1]))
        rows = f"{a['rows']} rows" + (f" ({a['rows_dropped']} unreadable)" if a["rows_dropped"] else "")
        copies = a["train_with_copies"] - a["train"]
        lines.append(f"source {name}: {rows} -> {a['examples']} examples = train {a['train']} + eval {a['eval']} + "
                     f"test {a['test']} + dropped {sum(a['dropped'].values())}" + (f" ({drops})" if drops else "")
                     + (f"; train repeats {copies} by weight" if copies else "")
                     + (f"; train documents cut into {a['train_windows']} windows" if "train_windows" in a else "")
                     + ("" if a["balanced"] else " [does not add up: please report]"))
    return lines
