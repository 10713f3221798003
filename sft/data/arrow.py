"""The tokenising stage on Arrow: records in, a memory-mappable `datasets.Dataset` of features out.

Rendering and tokenising run as one batched `Dataset.map` (over `data.num_proc` processes), calling the same
`encode_rows` as the list path, so the features are identical whatever the process count. Up-weighted copies
are tokenised once and repeated by index; drops and edits are counted exactly as `encode` counts them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .clean import DropReport
from .encode import encode_rows, tally
from .templates import get_template

BATCH = 1000


def feature_schema():
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                     "task": Value("string"), "source": Value("string"), "length": Value("int32"),
                     "drop": Value("string"), "edit": Value("string"), "part": Value("int32")})


class Encoder:
    """The batched map function: JSON records (a `record` column, or a `position` column read from `records`,
    a RecordReader) -> feature columns plus each record's drop reason and edit. A document gives one row per
    window: `part` numbers a record's rows from 0, and only part 0 carries its drop, edit and length. Picklable for
    worker processes (the template is built lazily in each one)."""

    def __init__(self, tokenizer, template_spec: str, *, arch: str, max_length: int, overlong: str,
                 system: str | None, records=None, text_stride: int = 0, seed: int = 0):
        self.tokenizer, self.template_spec, self.records = tokenizer, template_spec, records
        self.kw = dict(arch=arch, max_length=max_length, overlong=overlong, system=system, text_stride=text_stride,
                       seed=seed)
        self._template = None

    def __getstate__(self):
        return {**self.__dict__, "_template": None}

    def __call__(self, batch: dict) -> dict:
        if self._template is None:
            self._template = get_template(self.template_spec, self.tokenizer)
        texts = batch["record"] if self.records is None else self.records.read(batch["position"])
        records = [json.loads(r) for r in texts]
        return self.columns(records, encode_rows(records, self.tokenizer, self._template, **self.kw))

    @staticmethod
    def columns(records: list[dict], rows: list[tuple]) -> dict:
        cols: dict[str, list] = {k: [] for k in ("input_ids", "labels", "task", "source", "length", "drop", "edit",
                                                 "part")}
        for rec, (feat, reason, edit, length) in zip(records, rows):
            for part, f in enumerate(feat if isinstance(feat, list) else [feat]):
                cols["input_ids"].append(f["input_ids"] if f else [])
                cols["labels"].append(f["labels"] if f else [])
                cols["task"].append(rec.get("task") or "")
                cols["source"].append(rec.get("source") or "")
                cols["length"].append(-1 if length is None or part else length)
                cols["drop"].append("" if part else reason or "")
                cols["edit"].append("" if part else edit or "")
                cols["part"].append(part)
        return cols


COLUMNS = ["input_ids", "labels", "task", "source"]


def trainer_view(features):
    """What a trainer reads: a list of feature dicts (evaluation sets) as a Dataset, or the prepared Arrow /
    streaming dataset read directly; input_ids and labels only."""
    if isinstance(features, list):
        from datasets import Dataset

        return Dataset.from_list([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
    return features.select_columns(["input_ids", "labels"])


@dataclass
class TrainSet:
    """Tokenised training examples: `dataset` has input_ids, labels, task and source, one row per example as
    trained (weighted copies included); `length_stats` describe the token lengths before trimming. When the
    tokenised table is a file, `files` (the table's Arrow files, in order) and `rows` (its row per example)
    describe `dataset` without reading it: the cache stores those, not a flattened copy."""

    dataset: object
    length_stats: dict
    files: tuple = ()
    rows: object = None

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class Tokenised:
    """`encode_dataset`'s result: the features of the examples kept, in training order (a document's windows in a
    row); the records' positions of the examples kept and each one's feature count (its windows; 1 for all but
    documents); the token lengths before trimming; training features per task (copies included); the tokenised
    table's files (empty when it is in memory) and each feature's row in it."""

    features: object
    kept: list[int]
    lengths: list[int]
    tasks: dict
    files: tuple = ()
    rows: object = None
    windows: list[int] = ()


def encode_dataset(records, positions: list[int], tokenizer, template_spec: str, *, arch: str, max_length: int,
                   overlong: str = "drop", system: str | None = None, num_proc: int = 1, report: DropReport,
                   workdir: str | None = None, text_stride: int = 0, seed: int = 0) -> Tokenised:
    """Tokenise the examples at `positions` of `records` (a RecordReader; a position repeats for each weighted
    copy) on Arrow, each distinct example once. With `workdir`, the tokenised table is a file there
    (memory-mapped) instead of memory."""
    import os
    from collections import Counter

    import numpy as np
    from datasets import Dataset

    pos = np.asarray(positions, dtype=np.int64)
    unique = np.unique(pos)
    slot = np.searchsorted(unique, pos).tolist()  # each training position's row in the tokenised table
    table = Dataset.from_dict({"position": unique})  # the map reads each batch's records itself (RecordReader)
    encoder = Encoder(tokenizer, template_spec, arch=arch, max_length=max_length, overlong=overlong, system=system,
                      records=records, text_stride=text_stride, seed=seed)
    # a fingerprint of our own: datasets would otherwise hash the tokenizer object to name the result
    fp = hashlib.sha256(json.dumps([len(unique), template_spec, arch, max_length, overlong, system, text_stride,
                                    seed]).encode())
    out = table.map(encoder, batched=True, batch_size=BATCH, num_proc=num_proc if num_proc > 1 else None,
                    remove_columns=["position"], features=feature_schema(), new_fingerprint=fp.hexdigest()[:16],
                    desc="tokenising",
                    cache_file_name=os.path.join(workdir, "encoded.arrow") if workdir else None)
    part = out.data.column("part").to_numpy()
    first = np.flatnonzero(part == 0)  # each distinct example's first row (a document has one per window)
    count = np.diff(np.append(first, len(part)))
    drop, edit, length, source = (out.data.column(c).take(first).to_pylist() for c in ("drop", "edit", "length",
                                                                                       "source"))
    task = out.data.column("task").to_pylist()
    outcomes = ((drop[u], edit[u], length[u] if length[u] >= 0 else None) for u in slot)
    keep, lengths = tally(slot, outcomes, report, lambda i: source[slot[i]])
    kept_slots = np.asarray([slot[i] for i in keep], dtype=np.int64)
    n = count[kept_slots]
    # every row of each kept example, in training order: first row + 0..count-1
    rows = np.repeat(first[kept_slots], n) + (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n))
    rows = rows.astype(np.int64)
    tasks = dict(Counter(task[u] for u in rows.tolist()).most_common())
    # an index over the tokenised table, not a copy: flattening would read all of it (its pages count in RSS)
    features = out.select(rows, keep_in_memory=True).select_columns(COLUMNS)
    files = tuple(f["filename"] for f in out.cache_files)  # none when the table is in memory
    return Tokenised(features, [positions[i] for i in keep], lengths, tasks, files, rows, n.tolist())
