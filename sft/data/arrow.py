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
from .pipeline import encode_rows
from .templates import get_template

BATCH = 1000


def feature_schema():
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32")),
                     "task": Value("string"), "source": Value("string"), "length": Value("int32"),
                     "drop": Value("string"), "edit": Value("string")})


class Encoder:
    """The batched map function: JSON records -> feature columns plus each row's drop reason and edit.
    Picklable for worker processes (the template is built lazily in each one)."""

    def __init__(self, tokenizer, template_spec: str, *, arch: str, max_length: int, overlong: str,
                 system: str | None):
        self.tokenizer, self.template_spec = tokenizer, template_spec
        self.kw = dict(arch=arch, max_length=max_length, overlong=overlong, system=system)
        self._template = None

    def __getstate__(self):
        return {**self.__dict__, "_template": None}

    def __call__(self, batch: dict) -> dict:
        if self._template is None:
            self._template = get_template(self.template_spec, self.tokenizer)
        records = [json.loads(r) for r in batch["record"]]
        return self.columns(records, encode_rows(records, self.tokenizer, self._template, **self.kw))

    @staticmethod
    def columns(records: list[dict], rows: list[tuple]) -> dict:
        cols: dict[str, list] = {k: [] for k in ("input_ids", "labels", "task", "source", "length", "drop", "edit")}
        for rec, (feat, reason, edit, length) in zip(records, rows):
            cols["input_ids"].append(feat["input_ids"] if feat else [])
            cols["labels"].append(feat["labels"] if feat else [])
            cols["task"].append(rec.get("task") or "")
            cols["source"].append(rec.get("source") or "")
            cols["length"].append(-1 if length is None else length)
            cols["drop"].append(reason or "")
            cols["edit"].append(edit or "")
        return cols


@dataclass
class TrainSet:
    """Tokenised training examples: `dataset` has input_ids, labels, task and source, one row per example as
    trained (weighted copies included); `length_stats` describe the token lengths before trimming."""

    dataset: object
    length_stats: dict

    def __len__(self) -> int:
        return len(self.dataset)


def _records_table(unique: list[dict], workdir: str | None):
    """The records as one JSON string column: in memory, or (with `workdir`) written in chunks to an Arrow file
    and memory-mapped, so a corpus never sits in memory twice."""
    from datasets import Dataset

    if workdir is None:
        return Dataset.from_dict({"record": [json.dumps(r, ensure_ascii=False) for r in unique]})
    import os

    import pyarrow as pa

    path = os.path.join(workdir, "records.arrow")
    schema = pa.schema([("record", pa.string())])
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for i in range(0, len(unique), 10_000):
            writer.write_batch(pa.record_batch([pa.array([json.dumps(r, ensure_ascii=False)
                                                          for r in unique[i:i + 10_000]], pa.string())],
                                               schema=schema))
    return Dataset.from_file(path)


def encode_dataset(records: list[dict], tokenizer, template_spec: str, *, arch: str, max_length: int,
                   overlong: str = "drop", system: str | None = None, num_proc: int = 1,
                   report: DropReport, workdir: str | None = None) -> tuple[object, list[int], list[dict]]:
    """Tokenise `records` on Arrow. Returns (features dataset, token lengths, records kept in order). With
    `workdir`, the intermediate tables are files there (memory-mapped) instead of memory."""
    import os

    index: dict[int, int] = {}
    unique: list[dict] = []
    positions = []
    for r in records:
        u = index.setdefault(id(r), len(unique))
        if u == len(unique):
            unique.append(r)
        positions.append(u)
    table = _records_table(unique, workdir)
    encoder = Encoder(tokenizer, template_spec, arch=arch, max_length=max_length, overlong=overlong, system=system)
    # a fingerprint of our own: datasets would otherwise hash the tokenizer object to name the result
    fp = hashlib.sha256(json.dumps([len(unique), template_spec, arch, max_length, overlong, system]).encode())
    out = table.map(encoder, batched=True, batch_size=BATCH, num_proc=num_proc if num_proc > 1 else None,
                    remove_columns=["record"], features=feature_schema(), new_fingerprint=fp.hexdigest()[:16],
                    desc="tokenising",
                    cache_file_name=os.path.join(workdir, "encoded.arrow") if workdir else None)
    del table
    drop, edit, length = (out.data.column(c).to_pylist() for c in ("drop", "edit", "length"))
    counted: set[int] = set()
    keep, kept_records, lengths = [], [], []
    for u in positions:
        rec = unique[u]
        if length[u] >= 0:
            lengths.append(length[u])
        if drop[u]:
            report.drop(drop[u], 1, source=None if u in counted else rec.get("source"))
            counted.add(u)
            continue
        if edit[u]:
            report.edit(edit[u])
        keep.append(u)
        kept_records.append(rec)
    features = out.select(keep).select_columns(["input_ids", "labels", "task", "source"])
    return features, lengths, kept_records
