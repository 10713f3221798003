"""sources -> formats -> clean -> split -> mix -> render -> tokenise.

`load_splits` returns canonical records per split with a report of counts and drops;
`encode` turns records into model features exactly as training and evaluation read them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import DataError
from ..recipe import DataConfig, SourceConfig
from . import formats, sources
from .clean import DropReport, clean_records, prompt_key
from .templates import TemplateRejected, get_template, render_prompt, render_prompt_segments, render_training


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
                     **({"allow_empty_prompt": True, "document": True} if fmt == "text" else {})} for p in parts]
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


class RecordReader:
    """Reads a `RecordStore`'s JSON strings at sorted positions, one record batch at a time. The file is read
    with plain reads, not memory-mapped: mapped pages stay in the process's RSS once touched, and the
    tokenising stage touches every record. Picklable for num_proc workers (each opens the file itself)."""

    def __init__(self, path: str | None, starts: list[int], batches: list | None = None):
        import numpy as np

        self.path, self.starts, self.batches = path, np.asarray(starts, dtype=np.int64), batches
        self._reader = None
        self._cached: tuple = (None, None)

    def __getstate__(self):
        return {**self.__dict__, "_reader": None, "_cached": (None, None)}

    def _column(self, b: int):
        if self._cached[0] != b:  # the map asks for consecutive positions: one batch serves many calls
            if self.batches is not None:
                column = self.batches[b].column(0)
            else:
                if self._reader is None:
                    import pyarrow as pa

                    self._reader = pa.ipc.open_file(pa.OSFile(self.path))
                column = self._reader.get_batch(b).column(0)
            self._cached = (b, column)
        return self._cached[1]

    def read(self, positions) -> list[str]:
        """The JSON strings at `positions` (ascending), in that order."""
        import numpy as np
        import pyarrow as pa

        pos = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.starts, pos, side="right") - 1
        out: list[str] = []
        for b in np.unique(which).tolist():
            out.extend(self._column(b).take(pa.array(pos[which == b] - self.starts[b])).to_pylist())
        return out


class RecordStore:
    """Every cleaned example as one JSON string, appended a piece at a time: to an Arrow file in `workdir`
    (read back a record batch at a time, see RecordReader) or to memory. Beside each, what splitting and
    mixing work on: its source and its prompt's digest. So a million examples are never a million Python dicts
    at once, nor a million records' pages in RSS."""

    def __init__(self, seed: int, workdir: str | None = None):
        from array import array

        self.seed = seed
        self.names: list[str] = []  # source names; `source[i]` is a position in it
        self._source, self._hash, self._tie = array("H"), array("Q"), array("Q")
        self._path = os.path.join(workdir, "records.arrow") if workdir else None
        self._batches: list = []
        self._starts: list[int] = []  # each record batch's first position
        self._sink = self._writer = self._reader = self._arrays = None

    def __len__(self) -> int:
        return len(self._source)

    def add(self, records: list[dict], name: str) -> None:
        import pyarrow as pa

        if self._reader is not None:
            raise RuntimeError("RecordStore.add after reader(): the records are already read")
        if name not in self.names:
            self.names.append(name)
        if not records:
            return
        self._starts.append(len(self))
        self._source.extend([self.names.index(name)] * len(records))
        for r in records:
            h, t = prompt_digest(prompt_key(r), self.seed)
            self._hash.append(h)
            self._tie.append(t)
        # ASCII JSON: a lone surrogate (valid in a JSON string) survives the UTF-8 Arrow column
        batch = pa.record_batch([pa.array([json.dumps(r) for r in records], pa.string())],
                                schema=self.schema())
        if self._path is None:
            self._batches.append(batch)
            return
        self._open_file().write_batch(batch)

    @staticmethod
    def schema():
        import pyarrow as pa

        return pa.schema([("record", pa.string())])

    def _open_file(self):
        import pyarrow as pa

        if self._writer is None:
            self._sink = pa.OSFile(self._path, "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema())  # the file format: batches by index
        return self._writer

    def arrays(self):
        """(source, hash, tie) per example, as numpy arrays."""
        import numpy as np

        if self._arrays is None or len(self._arrays[0]) != len(self):
            # copies: a view would pin the growable arrays' buffers
            self._arrays = tuple(np.frombuffer(a, dtype=t).copy() for a, t in
                                 ((self._source, np.uint16), (self._hash, np.uint64), (self._tie, np.uint64)))
        return self._arrays

    def reader(self) -> RecordReader:
        """A reader of the records; no more can be added."""
        if self._reader is None:
            if self._path is None:
                self._reader = RecordReader(None, self._starts, self._batches)
            else:
                self._open_file().close()
                self._sink.close()
                self._reader = RecordReader(self._path, self._starts)
        return self._reader

    def records(self, positions: list[int]) -> list[dict]:
        """The examples at `positions`, in that order; a position repeated is the same object each time."""
        unique = sorted(set(positions))
        loaded = dict(zip(unique, map(json.loads, self.reader().read(unique))))
        return [loaded[i] for i in positions]

    def source_name(self, position: int) -> str:
        return self.names[self._source[position]]

    def split(self, positions: range, sizes: list[int]) -> list[list[int]]:
        _, hashes, ties = self.arrays()
        return split_by_hash(positions, hashes, ties, sizes)

    def prompts_in(self, positions: list[int], among: list[int]) -> list[bool]:
        """For each of `among`: does its prompt equal that of one of `positions`?"""
        import numpy as np

        _, hashes, ties = self.arrays()
        held = set(zip(hashes[positions].tolist(), ties[positions].tolist()))
        among = np.asarray(among, dtype=np.int64)
        maybe = np.isin(hashes[among], np.fromiter((h for h, _ in held), dtype=np.uint64, count=len(held)))
        return [bool(m) and (int(hashes[i]), int(ties[i])) in held for m, i in zip(maybe.tolist(), among.tolist())]


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


# ---- tokenisation -----------------------------------------------------------------------------

@dataclass
class Encoded:
    features: list[dict]  # input_ids, labels (+ task, index into the records)
    records: list[dict]  # the records kept, aligned with features
    report: DropReport
    lengths: list[int]  # token lengths before trimming


def _tokenize_many(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    fast = getattr(backend, "encode_batch_fast", None)
    if fast is not None and backend.truncation is None and backend.padding is None and \
            backend.encode_special_tokens == bool(getattr(tokenizer, "split_special_tokens", False)):
        # the same ids as tokenizer(texts) (which calls this backend), without offsets it never reads: ~25 % faster
        return [e.ids for e in fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _whole_text_runs(tokenizer, rendered: list[list]) -> list[list[tuple[list[int], bool]]]:
    """Each rendering tokenised as one text, cut into runs of tokens that are trained (overlap a trained span)
    or not."""
    texts = ["".join(t for t, _ in segs) for segs in rendered]
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for segs, ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        spans, pos = [], 0
        for text, trained in segs:
            if trained and text:
                spans.append((pos, pos + len(text)))
            pos += len(text)
        runs: list[tuple[list[int], bool]] = []
        for tok, (a, b) in zip(ids, offsets):
            flag = any(a < e and s < max(b, a + 1) for s, e in spans)
            if runs and runs[-1][1] == flag:
                runs[-1][0].append(tok)
            else:
                runs.append(([tok], flag))
        out.append(runs)
    return out


def encode_rows(records: list[dict], tokenizer, template, *, arch: str, max_length: int, overlong: str = "drop",
                system: str | None = None, final_only: bool = False, text_stride: int = 0, seed: int = 0,
                window: int | None = None) -> list[tuple]:
    """Per record: (feature or None, drop reason or None, edit or None, token length before trimming or None).
    A document (`format: text`) has a list of features instead, its windows of `window` (default `max_length`)
    tokens (`documents.py`). The one implementation behind `encode` (lists) and the batched Arrow stage
    (`arrow.encode_dataset`)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer has no EOS token", field="model.tokenizer", fix="use a tokenizer with an eos_token")
    docs = [i for i, r in enumerate(records) if r.get("document")]
    if docs:
        return _encode_mixed(records, docs, tokenizer, template, arch=arch, max_length=max_length,
                             overlong=overlong, system=system, final_only=final_only, text_stride=text_stride,
                             seed=seed, window=window)
    rendered, out = [], []
    for r in records:
        try:
            rendered.append(render_training(template, r["messages"], system, r.get("tools")))
        except TemplateRejected as e:  # one conversation the chat template refuses: dropped and counted
            rendered.append(e.reason)
    # A chat template's text is tokenised whole, as apply_chat_template(tokenize=True) and a server tokenise it, and
    # a token is trained where it overlaps a trained span (as return_assistant_tokens_mask marks it); built-in
    # templates tokenise span by span (their recorded losses and benchmark tables pin that).
    whole = getattr(template, "whole_text", False) and arch == "causal" and getattr(tokenizer, "is_fast", False)
    kept = [segs for segs in rendered if not isinstance(segs, str)]
    if whole:
        runs = iter(_whole_text_runs(tokenizer, kept))
    else:
        ids_flat = iter(_tokenize_many(tokenizer, [t for segs in kept for t, _ in segs]))
    no_answer = "no trained token (no answer, or every answer has loss_weight 0)"
    for rec, segs in zip(records, rendered):
        if isinstance(segs, str):
            out.append((None, segs, None, None))
            continue
        seg_ids = next(runs) if whole else [(next(ids_flat), trained) for _, trained in segs]
        last = max((i for i, (_, t) in enumerate(seg_ids) if t), default=None)
        if last is None:
            out.append((None, no_answer, None, None))
            continue
        edit = None
        if arch == "seq2seq":
            src = [i for ids, _ in seg_ids[:last] for i in ids] + [eos]
            tgt = seg_ids[last][0] + [eos]
            length = len(src) + len(tgt)
            if len(src) > max_length or len(tgt) > max_length:
                if overlong == "drop":
                    out.append((None, f"longer than max_length={max_length} tokens", None, length))
                    continue
                edit = f"trimmed to max_length={max_length} tokens"
                src, tgt = src[: max_length - 1] + [eos], tgt[: max_length - 1] + [eos]
            out.append(({"input_ids": src, "labels": tgt, "task": rec["task"]}, None, edit, length))
            continue
        input_ids, labels = [], []
        for i, (ids, trained) in enumerate(seg_ids):
            input_ids += ids
            labels += ids if trained and (not final_only or i == last) else [-100] * len(ids)
        if template.appends_eos:
            input_ids.append(eos)
            labels.append(eos)
        length = len(input_ids)
        if length > max_length:
            if overlong == "drop":
                out.append((None, f"longer than max_length={max_length} tokens", None, length))
                continue
            input_ids, labels = input_ids[:max_length], labels[:max_length]
            if all(x == -100 for x in labels):
                out.append((None, f"prompt fills max_length={max_length} (answer fully truncated)", None, length))
                continue
            edit = f"trimmed to max_length={max_length} tokens"
        out.append(({"input_ids": input_ids, "labels": labels, "task": rec["task"]}, None, edit, length))
    return out


def _encode_mixed(records, docs, tokenizer, template, *, text_stride, seed, window, **kw) -> list[tuple]:
    """`encode_rows` for a batch holding documents: they are windowed raw text (no template), the rest as usual."""
    from . import documents

    arch, max_length = kw["arch"], kw["max_length"]
    if arch == "seq2seq":
        documents.require_sentinels(tokenizer)
    doc_set = set(docs)
    rest = [r for i, r in enumerate(records) if i not in doc_set]
    others = iter(encode_rows(rest, tokenizer, template, **kw)) if rest else iter(())
    texts = [records[i]["messages"][-1]["content"] for i in docs]
    ids = iter(_tokenize_many(tokenizer, texts))
    size = window or max_length
    out = []
    for i, rec in enumerate(records):
        if i not in doc_set:
            out.append(next(others))
            continue
        toks = next(ids)
        if not toks:
            out.append((None, "no trained token (no answer, or every answer has loss_weight 0)", None, None))
            continue
        feats = documents.document_features(toks, rec["messages"][-1]["content"], tokenizer, arch=arch,
                                            max_length=size, stride=text_stride, seed=seed, task=rec["task"])
        out.append((feats, None, None, len(toks) + 1))
    return out


def encode(records: list[dict], tokenizer, template_spec: str, *, arch: str, max_length: int,
           overlong: str = "drop", system: str | None = None, report: DropReport | None = None,
           final_only: bool = False, text_stride: int = 0, seed: int = 0, window: int | None = None) -> Encoded:
    """Render and tokenise. Causal: input_ids = all segments + EOS, labels -100 on untrained tokens
    (`final_only`: only the final answer is labelled, as evaluation scores it).
    Seq2seq: input_ids = source + EOS, labels = final answer + EOS. A document gives one feature per window,
    each aligned with the document's record."""
    template = get_template(template_spec, tokenizer)
    report = report or DropReport()
    rows = encode_rows(records, tokenizer, template, arch=arch, max_length=max_length, overlong=overlong,
                       system=system, final_only=final_only, text_stride=text_stride, seed=seed, window=window)
    keep, lengths = tally([id(r) for r in records], [row[1:] for row in rows], report,
                          lambda i: records[i].get("source"))
    features, kept = [], []
    for i in keep:
        feats = rows[i][0] if isinstance(rows[i][0], list) else [rows[i][0]]
        features += feats
        kept += [records[i]] * len(feats)
    return Encoded(features, kept, report, lengths)


def tally(keys: list, outcomes, report: DropReport, source_of) -> tuple[list[int], list[int]]:
    """Count one tokenising pass, in training order: example i has identity keys[i] (a weighted copy shares its
    original's) and outcome (drop reason, edit, token length; each None where there is none). A dropped example
    counts once against its source, `source_of(i)`, however many copies it has. Returns the positions kept and
    the token lengths."""
    counted: set = set()
    keep, lengths = [], []
    for i, (key, (reason, edit, length)) in enumerate(zip(keys, outcomes)):
        if length is not None:
            lengths.append(length)
        if reason:
            report.drop(reason, 1, source=None if key in counted else source_of(i))
            counted.add(key)
            continue
        if edit:
            report.edit(edit)
        keep.append(i)
    return keep, lengths


def encode_prompts(records: list[dict], tokenizer, template_spec: str, *, arch: str,
                   system: str | None = None) -> list[list[int]]:
    """Inference prompts, tokenised exactly as the training prefix of the final answer."""
    template = get_template(template_spec, tokenizer)
    rendered = [render_prompt_segments(template, r["messages"], system, r.get("tools")) for r in records]
    flat = [t for segs in rendered for t, _ in segs]
    ids_flat = iter(_tokenize_many(tokenizer, flat))
    out = []
    for segs in rendered:
        ids = [i for _ in segs for i in next(ids_flat)]
        if arch == "seq2seq":
            ids = ids + [tokenizer.eos_token_id]
        out.append(ids)
    return out


def final_answer(record: dict) -> str:
    """The reference an evaluation scores: the final answer's text, and its tool calls in the built-in tool
    format (`<tool_call>` JSON, which the tool-call metrics parse); its reasoning is not part of it."""
    from .templates import answer_body

    return answer_body(next(m for m in reversed(record["messages"]) if m["role"] == "assistant"))


def prompt_text(record: dict, template_spec: str, system: str | None = None, tokenizer=None) -> str:
    return render_prompt(get_template(template_spec, tokenizer), record["messages"], system, record.get("tools"))


def count_by(records: list[dict], key: str) -> dict:
    return dict(Counter(r[key] for r in records).most_common())
