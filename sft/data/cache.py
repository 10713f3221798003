"""The tokenised data cache: one folder per key, written whole then renamed into place.

An entry holds the tokenised training set (the tokenising map's own Arrow files, memory-mapped on load, and
each training example's row in them), the eval/test records, the drop report, the per-source accounting
and, for tokenizers built from the data, the tokenizer. Its key covers the data section of the recipe, each
source's content hash, the tokenizer, the template, the sft version and the source code of the data
pipeline, so any change to one of them is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid

FORMAT = 2  # 1: a flattened `save_to_disk` copy of the training set
META = "meta.json"
TRAIN = "train"
ROWS = "rows.npy"
TOKENIZER = "tokenizer"


def cache_dir(data_cfg, default_root: str) -> str:
    """data.cache_dir, else `data` under sft's cache root."""
    return os.path.expanduser(data_cfg.cache_dir) if data_cfg.cache_dir else os.path.join(default_root, "data")


def code_digest(extra_files: list[str] = ()) -> str:
    """The data pipeline's own source (this package, plus `extra_files`): a cache written by other code is never
    reused (covers dev installs, where the version string does not move)."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for path in sorted(os.path.join(here, f) for f in os.listdir(here) if f.endswith(".py")) + list(extra_files):
        with open(path, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


def key_parts(recipe, arch: str, tokenizer, *, version: str, code: str) -> dict:
    """Everything the cached result depends on. `tokenizer` is None for tokenizers built from the data (then the
    recipe's tokenizer settings and the data itself determine it); `version` and `code` identify sft."""
    import dataclasses

    from ..recipe import PREPARATION_ONLY
    from .fingerprint import file_digest, sources_fingerprint, template_digest, tokenizer_digest

    d = recipe.data
    data = dataclasses.asdict(d)
    for k in PREPARATION_ONLY:
        data.pop(k)
    m = recipe.model
    if tokenizer is None:
        tok = {"built": m.tokenizer or m.name, "vocab_size": m.tokenizer_vocab_size, "digits": m.tokenizer_digits}
    else:
        tok = {"digest": tokenizer_digest(tokenizer), "class": type(tokenizer).__name__,
               "eos": tokenizer.eos_token_id}
    chat = d.chat_template_path
    return {"format": FORMAT, "sft": version, "code": code, "arch": arch, "data": data,
            **sources_fingerprint(d),  # d.streaming is false here: the cache serves prepared data only
            "template": template_digest(d.template),
            "chat_template": file_digest(chat) if chat and os.path.isfile(chat) else chat, "tokenizer": tok}


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:24]


def entry_path(root: str, key: str) -> str:
    return os.path.join(root, key)


def open_train(folder: str, files: list[str], columns: list[str]):
    """The training set of an entry: its Arrow files memory-mapped, indexed by the stored rows (nothing is
    read through; the index lives in memory, so loading writes nothing into the entry)."""
    import numpy as np
    from datasets import Dataset, concatenate_datasets

    parts = [Dataset.from_file(os.path.join(folder, f)) for f in files]
    table = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    rows = np.load(os.path.join(folder, ROWS))
    if len(rows) and (rows.min() < 0 or rows.max() >= len(table)):
        raise ValueError(f"row index out of range in {folder}")
    return table.select(rows, keep_in_memory=True).select_columns(columns)


def load(root: str, key: str):
    """(train dataset, meta, tokenizer dir or None), or None on a miss or an unreadable entry."""
    import pyarrow as pa

    path = entry_path(root, key)
    try:
        with open(os.path.join(path, META), encoding="utf-8") as fh:
            meta = json.load(fh)
        if meta.get("format") != FORMAT or meta.get("key") != key:
            return None
        train = open_train(os.path.join(path, TRAIN), meta["train_files"], meta["train_columns"])
        if len(train) != meta["train_examples"]:
            return None
    except (OSError, ValueError, IndexError, KeyError, TypeError, pa.ArrowException):
        return None  # missing, damaged or empty: a miss (store replaces it)
    tok_dir = os.path.join(path, TOKENIZER)
    return train, meta, tok_dir if os.path.isdir(tok_dir) else None


@contextlib.contextmanager
def workdir(root: str):
    """A private scratch folder beside the entries for the intermediate tables of one build; removed after."""
    import shutil
    import tempfile

    os.makedirs(root, exist_ok=True)
    path = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)  # ours alone: mkdtemp made it for this build


def store(root: str, key: str, train, meta: dict, tokenizer=None) -> str:
    """Write the entry into a private temporary folder, then rename it into place (atomic: a reader sees all
    of it or none). If another process stored the same key first, this copy (ours) is removed.

    `train` is a TrainSet whose tokenised table is files (a build's scratch files, which are moved in) plus
    its rows; one held in memory is written as a single Arrow file."""
    import shutil

    import numpy as np

    os.makedirs(root, exist_ok=True)
    final = entry_path(root, key)
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder = os.path.join(tmp, TRAIN)
        os.makedirs(folder)
        if train.files:
            names = [f"data-{i:05d}.arrow" for i in range(len(train.files))]
            for src, name in zip(train.files, names):
                os.replace(src, os.path.join(folder, name))  # same file system: the scratch folder is in root
            rows = np.asarray(train.rows, dtype=np.int64)
        else:
            names = ["data-00000.arrow"]
            train.dataset.flatten_indices(cache_file_name=os.path.join(folder, names[0]))
            rows = np.arange(len(train.dataset), dtype=np.int64)
        np.save(os.path.join(folder, ROWS), rows)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, TOKENIZER))
        with open(os.path.join(tmp, META), "w", encoding="utf-8") as fh:
            json.dump({**meta, "format": FORMAT, "key": key, "train_files": names,
                       "train_columns": list(train.dataset.column_names)}, fh, ensure_ascii=False)
        if os.path.isdir(final) and load(root, key) is None:
            # an entry sft wrote that no longer reads (damaged, or an older format): set it aside, then replace
            stale = f"{final}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # someone else's identical entry won the race
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own temporary folder
        raise
    return final
