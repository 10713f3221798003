"""data.streaming: sources read lazily as `datasets.IterableDataset`s, for corpora bigger than memory.

Per source: raw rows -> records (the same converters and cleaning as the prepared path) -> a split from the
stable prompt hash (so no prompt is on both sides, on any machine, whatever the row order) -> a shuffle
buffer. Sources are mixed with `interleave_datasets` (probabilities from the weights) and tokenised on the fly
by the same `encode_rows`. Exact-duplicate removal needs the whole corpus and is off here (deduplicate
upstream, e.g. with datatrove). Parquet shards written by Spark or datatrove are read as they are.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import DataError
from ..recipe import SourceConfig
from . import sources
from .arrow import Encoder, feature_schema
from .clean import DropReport, clean_records, prompt_key
from .pipeline import eval_source_names, load_source, records_from_rows, source_format, source_names
from .split import allocate, hash_split, split_hash

BUILDERS = sources.STREAM_BUILDERS
SHUFFLE_BUFFER = 10_000  # records held per source to decorrelate file order (LLaMA-Factory's default is 16,384)
TOKENIZER_SAMPLE = 20_000  # training examples a tokenizer built from the data learns from


def _files(src: SourceConfig, field: str) -> list[str]:
    files = [f for f in sources.local_files(src.path, None, streaming=True) if os.path.exists(f)]
    if not files:
        raise DataError("no data files found", file=src.path, field=field,
                        fix="check the path or glob (relative paths are resolved from the current directory)")
    kinds = {BUILDERS.get(sources.file_ext(f)) for f in files}
    if None in kinds:
        bad = next(f for f in files if sources.file_ext(f) not in BUILDERS)
        raise DataError(f"unsupported file type for streaming ({os.path.basename(bad)})", file=src.path, field=field,
                        fix=f"stream {', '.join(sorted(BUILDERS))} files")
    if len(kinds) > 1:
        raise DataError(f"mixed file types in one source ({', '.join(sorted(kinds))})", file=src.path, field=field,
                        fix="give each file type its own source")
    if kinds == {"csv"}:
        for f in files:
            sources.check_csv_header(f, field)
    return files


def open_stream(src: SourceConfig, *, field: str, seed: int):
    """A source's raw rows as an IterableDataset."""
    import datasets

    if src.path.startswith("builtin:"):
        return datasets.Dataset.from_list(sources.read_rows(src.path, split=src.split, field=field,
                                                            num_examples=src.num_examples, tasks=src.tasks,
                                                            seed=seed)).to_iterable_dataset(num_shards=1)
    if sources.is_local_path(src.path) or os.path.isdir(os.path.expanduser(src.path)):
        files = _files(src, field)
        builder = BUILDERS[sources.file_ext(files[0])]
        try:
            return datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        except Exception as e:  # a shard that is not what its name says: one line naming the source
            raise DataError(f"cannot read ({type(e).__name__}: {str(e).splitlines()[0][:160]})", file=src.path,
                            field=field, fix=f"check that every {sources.file_ext(files[0])} file is valid") from e
    try:
        return datasets.load_dataset(src.path, src.subset, split=src.split, streaming=True)
    except Exception as e:  # offline, missing repo or split: one line
        raise DataError(f"cannot stream Hub dataset {src.path!r} split {src.split!r} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})", field=field,
                        fix="check the id and your connection, or point path at local Parquet / jsonl shards") from e


def _peek(stream, n: int, src: SourceConfig, field: str) -> list[dict]:
    try:
        return list(stream.take(n))
    except DataError:
        raise
    except Exception as e:  # a malformed first shard: name the source, not an Arrow traceback
        raise DataError(f"cannot read ({type(e).__name__}: {str(e).splitlines()[0][:160]})", file=src.path,
                        field=field, fix="check that every shard is valid Parquet / JSON lines") from e


class ToRecords:
    """Batched map: raw rows -> JSON records with their split ('train', 'eval' or 'test') from the prompt hash.
    Drops and edits are counted in `report` as rows are read."""

    def __init__(self, src: SourceConfig, fmt: str, name: str, data_cfg, report: DropReport):
        self.src, self.fmt, self.name, self.d, self.report = src, fmt, name, data_cfg, report

    def __call__(self, batch: dict) -> dict:
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        records, _ = records_from_rows(self.src, self.fmt, rows, self.name, self.report, self.d.reasoning)
        c = self.d.clean
        records = clean_records(records, normalize_form=c.normalize, dedupe=False, strip_eos_markers=c.strip_eos_markers,
                                report=self.report)
        ev, te = 0.0 if self.d.eval_sources else self.d.eval_ratio, self.d.test_ratio
        out = {"record": [], "split": [], "key": []}
        for r in records:
            key = prompt_key(r)
            h = split_hash(key, self.d.seed)
            out["record"].append(json.dumps(r, ensure_ascii=False))
            out["split"].append("eval" if h < ev else "test" if h < ev + te else "train")
            out["key"].append(key)
        return out


class CountingEncoder(Encoder):
    """Tokenise a stream; examples that do not fit are counted and dropped as they pass."""

    def __init__(self, *a, report: DropReport, **k):
        super().__init__(*a, **k)
        self.report = report

    def __call__(self, batch: dict) -> dict:
        cols = super().__call__(batch)
        keep = [i for i, reason in enumerate(cols["drop"]) if not reason]
        for reason, src in zip(cols["drop"], cols["source"]):
            if reason:
                self.report.drop(reason, 1, source=src)
        for edit in cols["edit"]:
            if edit:
                self.report.edit(edit)
        return {k: [v[i] for i in keep] for k, v in cols.items()}


def _source_streams(d, report: DropReport, recipe_file: str | None):
    out, per_source = [], {}
    names = source_names(d.sources)
    for i, (src, name) in enumerate(zip(d.sources, names)):
        field = f"data.sources.{i}"
        raw = open_stream(src, field=f"{field}.path", seed=d.seed)
        sample = _peek(raw, 200, src, f"{field}.path")
        if not sample:
            raise DataError("source has no rows", file=src.path, field=f"{field}.path")
        fmt = source_format(src, sample, field, recipe_file)
        per_source[name] = {"path": src.path, "format": fmt, "rows": None, "examples": None,
                            "detected": src.format == "auto", "role": "train", "streaming": True}
        columns = list(sample[0])
        out.append((src, name, fmt, raw, columns))
    return out, per_source


def _records(raw, columns, src, fmt, name, d, report):
    from datasets import Features, Value

    mapped = raw.map(ToRecords(src, fmt, name, d, report), batched=True, batch_size=256, remove_columns=columns)
    # known features spare interleave_datasets a read of each source's head; select_columns also drops any
    # column a later shard adds
    return mapped.select_columns(["record", "split", "key"]).cast(
        Features({k: Value("string") for k in ("record", "split", "key")}))


def _eval_records(streams, d, recipe_file, per_source) -> list[dict]:
    """The eval split: explicit eval sources (read whole: they are small), or the first rows on the eval side of
    the hash, shared across sources by data.max_eval_samples. Counted into a throwaway report: the training
    stream counts its own rows."""
    if d.eval_sources:
        report, recs = DropReport(), []
        names = eval_source_names(d)
        for i, src in enumerate(d.eval_sources):
            part = load_source(src, i, field_prefix="data.eval_sources", seed=d.seed, report=report,
                               per_source=per_source, recipe_file=recipe_file, name=names[i], reasoning=d.reasoning)
            recs.append(clean_records(part, normalize_form=d.clean.normalize, dedupe=d.clean.dedupe,
                                      strip_eos_markers=d.clean.strip_eos_markers, report=report))
        sizes = allocate([len(p) for p in recs], d.max_eval_samples)  # chosen as the prepared path chooses them
        return [r for part, n in zip(recs, sizes) for r in hash_split(part, [n], d.seed)[0]]
    if not d.eval_ratio:
        return []
    if d.max_eval_samples is None:
        raise DataError("a streamed eval split needs a size", file=recipe_file, field="data.max_eval_samples",
                        fix="set data.max_eval_samples (e.g. 200): the eval side of the hash is read until it is met")
    wanted = allocate([d.max_eval_samples] * len(streams), d.max_eval_samples)
    out = []
    for (src, name, fmt, raw, columns), n in zip(streams, wanted):
        got = []
        for row in _records(raw, columns, src, fmt, name, d, DropReport()):
            if row["split"] == "eval":
                got.append(json.loads(row["record"]))
                if len(got) >= n:
                    break
        out += got
    return out


@dataclass
class Stream:
    """A streamed corpus, opened: per-source record streams, the eval records, the live drop report."""

    data: object  # the recipe's DataConfig
    sources: list
    eval: list[dict]
    per_source: dict
    report: DropReport

    def splits(self, train: list[dict] = ()):
        """As `pipeline.Splits`: the eval records (a stream has no test set), with `train` records if given."""
        from .pipeline import Splits

        return Splits(list(train), self.eval, [], self.report, self.per_source)

    @property
    def held(self) -> set:
        return {prompt_key(r) for r in self.eval}

    def tokenizer_sample(self) -> list[dict]:
        return _tokenizer_sample(self.sources, self.data)

    def tokenised(self, tokenizer, arch: str):
        """The training examples (input_ids, labels) as an IterableDataset, tokenised as they are read."""
        d = self.data
        encoder = CountingEncoder(tokenizer, d.template, arch=arch, max_length=d.max_length,
                                  overlong=d.clean.overlong, system=d.system_prompt, report=self.report,
                                  text_stride=d.text_stride, seed=d.seed)
        mixed = _mixed(self.sources, d, self.held, self.report)
        train = mixed.map(encoder, batched=True, batch_size=256, remove_columns=["record", "split", "key"],
                          features=feature_schema())
        return train.select_columns(["input_ids", "labels"])


def open_corpus(d, recipe_file: str | None) -> Stream:
    report = DropReport()
    streams, per_source = _source_streams(d, report, recipe_file)
    return Stream(d, streams, _eval_records(streams, d, recipe_file, per_source), per_source, report)


def _tokenizer_sample(streams, d) -> list[dict]:
    """What a tokenizer built from the data learns from: the first training records of each source, shared by
    weight (read in file order: datasets' shuffle and interleave pause 5 s on closing, an Arrow workaround)."""
    weights = [s.weight for s in d.sources]
    out = []
    for (src, name, fmt, raw, columns), w in zip(streams, weights):
        part = _records(raw, columns, src, fmt, name, d, DropReport())
        part = part.filter(lambda split: split == "train", input_columns=["split"])
        out += [json.loads(r["record"]) for r in part.take(max(1, round(TOKENIZER_SAMPLE * w / sum(weights))))]
    return out


def _mixed(streams, d, held: set, report: DropReport):
    """The training records of every source, mixed by weight."""
    from datasets import interleave_datasets

    parts = []
    for src, name, fmt, raw, columns in streams:
        part = _records(raw, columns, src, fmt, name, d, report)
        # train: everything but the test side of the hash and the prompts scored in eval (eval-side rows beyond
        # max_eval_samples train, as in the prepared path)
        part = part.filter(lambda split, key: split != "test" and key not in held, input_columns=["split", "key"])
        part = part.shuffle(seed=d.seed, buffer_size=SHUFFLE_BUFFER)
        if src.max_samples:
            part = part.take(src.max_samples)
        parts.append(part)
    weights = [s.weight for s in d.sources]
    mixed = parts[0] if len(parts) == 1 else interleave_datasets(
        parts, probabilities=[w / sum(weights) for w in weights], seed=d.seed, stopping_strategy="all_exhausted")
    if d.max_samples:
        mixed = mixed.take(d.max_samples)
    return mixed
